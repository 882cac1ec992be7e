#!/usr/bin/env bash
# Set up a fresh machine for aiayn, then run one thing:
#   bash bootstrap.sh quickstart [--minutes M] [--out DIR]   train a tiny en→es model on the shipped corpus
#   bash bootstrap.sh test [pytest args]                     lint (ruff), then run the whole test suite
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
has_torch() { "$VENV/bin/python" -W ignore -c "import torch" 2>/dev/null; }  # (numpy may not be there yet)
has_torch || pip_install $TORCH_SPEC
"$VENV/bin/python" -W ignore -c "import torch" || { echo "bootstrap: PyTorch did not install ($TORCH_SPEC)" >&2; exit 1; }

# Debian packages some tests and demos use, installed with apt when missing and apt-get is there
# (quietly; a failure only warns, and what needs the package then skips with the reason):
#   chromium               the browser test of `aiayn serve` (Playwright from PyPI drives it: no browser download)
#   dataset-fashion-mnist  `aiayn prepare --task images --dataset fashion-mnist` (/usr/share/datasets/fashion-mnist)
#   fonts-noto-color-emoji `aiayn prepare --task image-text --dataset emoji` (the emoji, named by Unicode)
install_debian() {  # PACKAGE PATH-IT-PROVIDES WHAT-NEEDS-IT
  local package=$1 provides=$2 what=$3
  [ -e "$provides" ] && return 0
  command -v apt-get >/dev/null 2>&1 || { echo "bootstrap: no $provides and no apt-get: $what will be skipped" >&2; return 0; }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || { echo "bootstrap: installing $package needs root (or sudo): $what will be skipped" >&2; return 0; }
    sudo="sudo -n"
  fi
  echo "bootstrap: installing $package with apt-get (for $what)" >&2
  local log; log=$(mktemp)
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "bootstrap: warning: $package did not install: $what will be skipped" >&2
  fi
  rm -f "$log"
}
install_debian_packages() {
  install_debian chromium /usr/bin/chromium "the browser test"
  install_debian dataset-fashion-mnist /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz "Fashion-MNIST"
  install_debian fonts-noto-color-emoji /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf "the emoji dataset"
}

what=${1:-setup}
[ $# -gt 0 ] && shift
case "$what" in
  quickstart)
    pip_install -e .
    exec "$VENV/bin/aiayn" quickstart "$@" ;;
  test)
    pip_install -e ".[dev]"
    install_debian_packages
    "$VENV/bin/ruff" check src tests benchmarks
    "$VENV/bin/ruff" format --check src tests benchmarks
    exec "$VENV/bin/python" -m pytest "$@" ;;
  setup)
    pip_install -e ".[dev]"
    install_debian_packages
    echo "aiayn is installed in $VENV: source $VENV/bin/activate, then run 'aiayn --help'" ;;
  *)
    echo "usage: bash bootstrap.sh [quickstart|test|setup] [args]" >&2; exit 2 ;;
esac
