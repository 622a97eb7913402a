#!/bin/bash
# fm9g-entrypoint: run vLLM's OpenAI server with the arguments of the systemd replica unit
# (fm9g_deploy/replica_spec.py builds it for fm9g-deploy), taken from FM9G_* variables, under the
# same replica supervisor (it restarts an engine that died, whatever its exit status, and gives
# up after a crash loop: then it exits 0, so Docker's on-failure policy leaves the container
# stopped, marked failed in the state file under $FM9G_STATE_DIR). FM9G_SUPERVISE=0 runs vLLM bare.
#   fm9g-entrypoint [EXTRA VLLM ARGS...]   start the server
#   fm9g-entrypoint --print-argv [-- ...]  print the command, one argument a line, and exit
#   fm9g-entrypoint -- COMMAND...          run COMMAND as given (a replica spec's, which is how
#                                          fm9g-deploy runs replicas); like systemd, a word that
#                                          is exactly ${NAME} becomes that variable's value
# The API key is never an argument (it would show in `ps`): vLLM reads VLLM_API_KEY, set here
# from the environment or from the file $FM9G_API_KEY_FILE (a plain key, or VLLM_API_KEY=... as
# in the hosts' api-key.env), which is mounted at run time and never part of the image.
set -euo pipefail

argv=("${FM9G_PYTHON:?}" -m vllm.entrypoints.openai.api_server
      --host "${FM9G_HOST:-0.0.0.0}" --port "${FM9G_PORT:-8020}"
      --model "${FM9G_MODEL_DIR:-/model}"
      --tokenizer-mode "${FM9G_TOKENIZER_MODE:-auto}"
      --dtype "${FM9G_DTYPE:-auto}")
if [ "${FM9G_TRUST_REMOTE_CODE:-1}" = 1 ] || [ "${FM9G_TRUST_REMOTE_CODE:-}" = true ]; then
    argv+=(--trust-remote-code)
fi
argv+=(--served-model-name "${FM9G_SERVED_MODEL_NAME:-9g}"
       --gpu-memory-utilization "${FM9G_GPU_MEMORY_UTILIZATION:-0.9}")
if [ -n "${FM9G_MAX_MODEL_LEN:-}" ]; then
    argv+=(--max-model-len "$FM9G_MAX_MODEL_LEN")
fi
argv+=(--tensor-parallel-size "${FM9G_TENSOR_PARALLEL_SIZE:-1}")
read -r -a extra <<< "${FM9G_EXTRA_ARGS:-}"
argv+=("${extra[@]}")
if [ "${FM9G_SUPERVISE:-1}" = 1 ]; then
    read -r -a supervisor <<< "${FM9G_SUPERVISOR_ARGS:-}"
    argv=("$FM9G_PYTHON" "${FM9G_SUPERVISOR:-/usr/local/lib/fm9g/fm9g_replica_supervisor.py}"
          --state-file "${FM9G_STATE_DIR:-/var/lib/fm9g/state}/replica.state.json"
          --textfile "${FM9G_STATE_DIR:-/var/lib/fm9g/state}/replica.prom" --replica "${FM9G_REPLICA_INDEX:-0}"
          --port "${FM9G_PORT:-8020}"
          "${supervisor[@]}" --give-up-exit-code 0 -- "${argv[@]}")
fi

print_only=0
if [ "${1:-}" = --print-argv ]; then
    print_only=1
    shift
fi
if [ "${1:-}" = -- ]; then
    shift
    argv=()
    for word in "$@"; do
        if [[ $word =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
            name=${BASH_REMATCH[1]}
            word=${!name:-}
        fi
        argv+=("$word")
    done
    set --
fi
if [ "$print_only" = 1 ]; then
    printf '%s\n' "${argv[@]}"
    exit 0
fi
argv+=("$@")

if [ "${FM9G_ACCELERATOR:-}" = cpu ]; then
    export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-${FM9G_CPU_KVCACHE_SPACE_GIB:-1}}"
fi
key_file="${FM9G_API_KEY_FILE:-/run/secrets/fm9g_api_key}"
if [ -z "${VLLM_API_KEY:-}" ] && [ -f "$key_file" ]; then
    if [ ! -r "$key_file" ]; then
        echo "fm9g-entrypoint: cannot read the API key file $key_file as uid $(id -u); make it readable by that uid" >&2
        exit 78
    fi
    key=$(sed -n 's/^VLLM_API_KEY=//p' "$key_file" | head -n 1)
    [ -n "$key" ] || key=$(head -n 1 "$key_file")
    VLLM_API_KEY=$(printf '%s' "$key" | tr -d '\r\n')
    export VLLM_API_KEY
fi
if [ -z "${VLLM_API_KEY:-}" ]; then
    echo "fm9g-entrypoint: no API key; mount a key file at $key_file or set VLLM_API_KEY" >&2
    exit 78
fi
exec "${argv[@]}"
