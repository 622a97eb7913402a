#!/bin/bash
# Build steps of the serving image, the same commands the fm9g_python_env role runs on a host:
# a venv on the base's python3 (cpu) or a conda env from the Miniforge installer and the locked
# conda packages (the guide's stack), then the lock's wheels; offline, with every file's hash required.
#   make-env.sh create        make the env at $ENV_PREFIX
#   make-env.sh wheels        install /build/wheels/requirements.txt into it
#   make-env.sh check-system  fail unless $SYSTEM_PACKAGES are installed in the base
set -euo pipefail

create() {
    case "$ENV_MANAGER" in
    venv)
        local have
        have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if [ "$have" != "$ENV_PYTHON" ]; then
            echo "the base image's python3 is $have; the profile needs $ENV_PYTHON" >&2
            exit 1
        fi
        python3 -m venv "$ENV_PREFIX"
        ;;
    conda)
        local installer explicit
        installer=$(find /build/installer -maxdepth 1 -name 'Miniforge3-*.sh' | head -n 1)
        if [ -z "$installer" ]; then
            echo "no Miniforge installer in the build context" >&2
            exit 1
        fi
        bash "$installer" -b -p "$CONDA_ROOT"
        explicit=/build/conda/explicit.txt
        if [ ! -f "$explicit" ]; then
            # The image is made offline, as hosts are: never from a conda channel.
            echo "no explicit conda spec in the build context (the lock's conda packages)" >&2
            exit 1
        fi
        "$CONDA_ROOT/bin/conda" create --yes --quiet --offline --prefix "$ENV_PREFIX" --file "$explicit"
        ;;
    *)
        echo "unknown ENV_MANAGER '$ENV_MANAGER' (venv or conda)" >&2
        exit 1
        ;;
    esac
}

wheels() {
    # --no-deps: the lock is the complete, resolved set; nothing outside it may be installed.
    "$ENV_PREFIX/bin/python" -m pip install \
        --no-index --no-deps --require-hashes --only-binary=:all: \
        --no-cache-dir --disable-pip-version-check --no-input --progress-bar off \
        --find-links /build/wheels --requirement /build/wheels/requirements.txt
    sha256sum /build/wheels/requirements.txt | cut -d' ' -f1 > "$ENV_PREFIX/fm9g-requirements.sha256"
}

check_system() {
    local package missing=()
    for package in ${SYSTEM_PACKAGES:-}; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "the base image lacks OS packages the wheels need: ${missing[*]}; use a base that has them" >&2
        exit 1
    fi
}

case "${1:-}" in
create) create ;;
wheels) wheels ;;
check-system) check_system ;;
*) echo "usage: make-env.sh create|wheels|check-system" >&2; exit 2 ;;
esac
