#!/usr/bin/env bash
# The checks that need CUDA GPUs (a few minutes): the CUDA tests, DDP over NCCL on 1, 2 and all GPUs, bf16/fp16
# AMP, rnn.py under torchrun with DDP and FSDP2, and the throughput of training fed by the data pipeline; prints one
# table (see benchmarks/gpu_check.py).
# Usage: bash scripts/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU is visible; nothing to check" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_check.py "$@"
