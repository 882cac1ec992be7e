#!/usr/bin/env bash
# Set up a fresh machine for aiayn, then run one thing:
#   bash bootstrap.sh quickstart [--minutes M] [--out DIR]   train a tiny en→es model on the shipped corpus
#   bash bootstrap.sh test [pytest args]                     run the whole test suite
#   bash bootstrap.sh                                        set up only
# Set-up: a virtual environment in .venv, PyTorch first (TORCH_SPEC, default the CPU build
# torch==2.13.0; e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" on a
# CUDA machine), then aiayn itself, editable, with the extras the tests use.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install $TORCH_SPEC
"$VENV/bin/python" -c "import torch" || { echo "bootstrap: PyTorch did not install ($TORCH_SPEC)" >&2; exit 1; }

what=${1:-setup}
[ $# -gt 0 ] && shift
case "$what" in
  quickstart)
    pip_install -e .
    exec "$VENV/bin/aiayn" quickstart "$@" ;;
  test)
    pip_install -e ".[dev]"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  setup)
    pip_install -e ".[dev]"
    echo "aiayn is installed in $VENV: source $VENV/bin/activate, then run 'aiayn --help'" ;;
  *)
    echo "usage: bash bootstrap.sh [quickstart|test|setup] [args]" >&2; exit 2 ;;
esac
