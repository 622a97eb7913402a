#!/usr/bin/env bash
# Make this machine able to run the sandbox: install docker.io, debootstrap and the SSH client when
# absent (Debian), and start the Docker engine when none answers. Safe to run again.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "ensure-engine: missing ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
        exit 2
    fi
    echo "ensure-engine: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
else
    echo "ensure-engine: starting dockerd (log: /var/log/fm9g-dockerd.log)"
    setsid nohup dockerd >/var/log/fm9g-dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "ensure-engine: Docker engine is up"
        exit 0
    fi
    sleep 1
done
echo "ensure-engine: the Docker engine did not come up in 60s; see /var/log/fm9g-dockerd.log" >&2
exit 1
