#!/usr/bin/env bash
# The GPU path, on a machine with an NVIDIA GPU (CI has none; run it by hand there):
#   - NVML statistics (nvidia-ml-py) read for the machine and inside a Ray GPU actor;
#   - a resolute worker group on GPU slots: the torch backend forms an NCCL process group
#     and trains on the slot's GPU;
#   - elastic snapshots on the GPU and in pinned host memory;
#   - DDP throughput inside resolute vs. plain torchrun on the GPU.
# Usage: scripts/gpu-check.sh [results-dir]   (from the repository root, resolute importable;
# on a machine without Ray, carry the wheels scripts/gpu-wheels.sh makes)
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
status=0

nvidia-smi -L || { echo "gpu-check: nvidia-smi failed: no NVIDIA driver here"; exit 2; }
python3 - <<'PY'
import ray, torch
print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} devices={torch.cuda.device_count()} nccl={torch.distributed.is_nccl_available()}")
print(f"ray {ray.__version__}")
PY

export RAY_TMPDIR=${RAY_TMPDIR:-$(mktemp -d /tmp/resolute-gpu-XXXX)}
python3 -m pytest -q -rs -p no:cacheprovider \
    tests/unit/elastic/test_gpu_stats.py tests/unit/elastic/test_state_snapshot.py \
    tests/integration/elastic/test_gpu.py \
    2>&1 | tee "$out/gpu-tests.log" || status=1

python3 benchmarks/ddp_overhead.py --gpu --ranks 1 --steps 400 --warmup 50 --hidden 4096 --batch 512 --repeats 2 \
    2>&1 | tee "$out/gpu-ddp-overhead.log" || status=1
exit $status
