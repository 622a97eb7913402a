#!/usr/bin/env bash
# `make demo`: the whole rollout on the local sandbox, the way an operator rehearses one.
# Each step is one fm9g-deploy command; all of them are safe to run again (nothing changes).
set -euo pipefail
cli=${FM9G_CLI:-fm9g-deploy}
hosts=${FM9G_DEMO_HOSTS:-2}

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "sandbox: $hosts hosts (containers with systemd and sshd) and an artifact mirror"
inventory=$("$cli" sandbox up --hosts "$hosts")
config="$(dirname "$inventory")/fm9g.yml"
echo "inventory: $inventory" >&2
"$cli" config check -i "$inventory"
"$cli" ping -i "$inventory"

step "artifacts: the profile's locked wheels and the model, into the local cache"
read -r profile model < <(python3 -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); print(c["profile"], c["model"]["name"])' "$config")
"$cli" artifacts fetch --profile "$profile" --model "$model" --config "$config"

step "plan, provision and deploy"
"$cli" plan -i "$inventory"
"$cli" provision -i "$inventory"
"$cli" deploy -i "$inventory"
"$cli" status -i "$inventory"

step "verify: the testinfra suite against every host"
"$cli" verify -i "$inventory"

step "one streamed chat reply through the first host's gateway"
url=$(python3 -c 'import sys, yaml; h = yaml.safe_load(open(sys.argv[1]))["all"]["children"]["serving"]["hosts"]; print(h[sorted(h)[0]]["fm9g_sandbox_gateway_url"])' "$inventory")
echo "gateway: $url  (API key: the sandbox's sample key from $config)" >&2
FM9G_API_KEY=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["serving"]["api_key"])' "$config") \
  "$cli" chat --url "$url" --message "你好，请介绍一下你自己。" --max-tokens 32
echo >&2
echo "demo: done. The service answers at $url (model 9g). Remove the sandbox with: make demo-down" >&2
