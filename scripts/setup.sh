#!/usr/bin/env bash
# Installs what the project needs into the current Python environment.
#   scripts/setup.sh          runtime requirements (torch, numpy, h5py)
#   scripts/setup.sh --dev    also what the tests and style checks need, and the optional packages (so that the
#                             tests of audio, SentencePiece and ONNX export run instead of being skipped)
# An installed torch is kept as it is. Where there is none, the CPU build of torch 2.13.0 is installed: an unpinned
# `pip install torch` would fetch a multi-GB CUDA build (install your own CUDA build first if you want one).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
pip_install() { "$python" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$python" -c "import torch" >/dev/null 2>&1; then
  pip_install "torch==2.13.0"
fi
pip_install -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  pip_install -r requirements-dev.txt -r requirements-optional.txt
fi
