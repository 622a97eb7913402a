#!/usr/bin/env bash
# One call's work on the lent GPU host (benchmarks/gpu_proof/README.md):
#   device.sh piece    copy the carried piece folder(s) of .gpu/pieces to /tmp/fm9g-pieces
#   device.sh serve    reassemble and check the wheels, install them offline, run.py serve
#   device.sh warm     run.py warm
#   device.sh numerics reassemble and install as serve does, then run.py numerics alone
# $OUT is where the results go back to the caller.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIECES=/tmp/fm9g-pieces WHEELS=/tmp/fm9g-wheels SITE=/tmp/fm9g-site
export PYTHONUNBUFFERED=1
case "${1:?step}" in
  piece)
    mkdir -p "$PIECES" && cp -r .gpu/pieces/piece-* "$PIECES"/
    ls "$PIECES"; df -h /tmp /opt | tail -2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch; print(sys.executable, torch.__version__, torch.cuda.is_available())'
    command -v ss || echo "no ss"
    ;;
  serve)
    python3 -m fm9g_deploy.artifacts.pieces join --out "$WHEELS" "$PIECES"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl .gpu/extra/*.whl
    export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH"
    python3 benchmarks/gpu_proof/run.py serve --out "$OUT"
    ;;
  warm)
    export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH"
    python3 benchmarks/gpu_proof/run.py warm --out "$OUT"
    ;;
  numerics)
    python3 -m fm9g_deploy.artifacts.pieces join --out "$WHEELS" "$PIECES" | tail -1
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl .gpu/extra/*.whl
    export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH"
    python3 benchmarks/gpu_proof/run.py numerics --out "$OUT"
    ;;
esac
