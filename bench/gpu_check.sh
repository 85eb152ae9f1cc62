#!/usr/bin/env bash
# One command for a GPU machine: the GPU tests, then the GPU benchmark, then a short real
# training run on the GPU. No network needed (built-in / synthetic data, no CIFAR download).
#   bench/gpu_check.sh                 # defaults
#   BENCH_ARGS="--width 4" bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import cupy, sys; sys.exit(0 if cupy.is_available() else 1)" || {
    echo "gpu_check: CuPy sees no GPU (cupy.is_available() is False)"; exit 1; }
status=0
echo "== pytest -m gpu"
python -m pytest -m gpu -q -p no:cacheprovider tests || status=1
echo "== bench/bench_gpu.py ${BENCH_ARGS:-}"
python bench/bench_gpu.py ${BENCH_ARGS:-} || status=1
echo "== python -m minixception train --device gpu (built-in data, 3 epochs)"
out=$(mktemp -d)
python -m minixception train --device gpu --epochs 3 --subset 0 --batch-size 128 --width 2 \
    --no-progress --out "$out" || status=1
cat "$out/metrics.csv" 2>/dev/null
exit $status
