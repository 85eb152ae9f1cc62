#!/usr/bin/env bash
# One command for a GPU machine, after `pip install -e ".[gpu-cuda12]"` (or gpu-cuda13):
#   1. the GPU tests (pytest -m gpu),
#   2. the GPU benchmark (bench/bench_gpu.py; its figures also go to bench/results/gpu-<date>.json),
#   3. a short real training run on the GPU (built-in data, no download),
# then a summary table. Without a usable GPU it says so and exits 0.
#   bash bench/gpu_check.sh
#   BENCH_ARGS="--only mini1 mini4 --iters 30" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! python - <<'PY'
import sys
try:
    import cupy
    ok = cupy.is_available()
except Exception as exc:                      # not installed, or a broken CUDA install
    print(f"gpu_check: CuPy unusable ({type(exc).__name__}: {exc})")
    ok = False
sys.exit(0 if ok else 1)
PY
then
    echo "gpu_check: no usable GPU here (CuPy missing or cupy.is_available() is False): nothing to check"
    exit 0
fi

python - <<'PY'
import json, cupy, minixception as mx
p = cupy.cuda.runtime.getDeviceProperties(0)
print(f"gpu_check: {p['name'].decode()}, CuPy {cupy.__version__}, CUDA runtime "
      f"{cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
print("kernels:", json.dumps(mx.kernels.cuda.status()["reason"]))
PY

log=$(mktemp -d)
results="bench/results/gpu-$(date -u +%Y%m%d-%H%M).json"

echo "== 1. pytest -m gpu"
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$log/tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== 2. bench/bench_gpu.py ${BENCH_ARGS:-} --json $results"
python bench/bench_gpu.py ${BENCH_ARGS:-} --json "$results" 2>&1 | tee "$log/bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "== 3. python -m minixception train --device gpu (built-in shapes data, 2 epochs)"
run=$(mktemp -d)
python -m minixception train --device gpu --epochs 2 --batch-size 128 --width 2 --no-progress \
    --out "$run" 2>&1 | tee "$log/train.txt"
train_rc=${PIPESTATUS[0]}

echo
echo "================ gpu_check summary ================"
printf "%-34s %s\n" "GPU tests (pytest -m gpu)" "$([ "$tests_rc" = 0 ] && echo passed || echo "FAILED (rc $tests_rc)"): $(tail -n 1 "$log/tests.txt")"
printf "%-34s %s\n" "benchmark (bench/bench_gpu.py)" "$([ "$bench_rc" = 0 ] && echo "ran: $results" || echo "FAILED (rc $bench_rc)")"
printf "%-34s %s\n" "training run (--device gpu)" "$([ "$train_rc" = 0 ] && echo "ran: $(tail -n 1 "$run/metrics.csv" 2>/dev/null)" || echo "FAILED (rc $train_rc)")"
grep -E "KERNEL BUILD FAILED" "$log/bench.txt" || true
# the benchmark's own table (ms/step, ratio to the best PyTorch layout, launches per step)
sed -n '/^shape /,$p' "$log/bench.txt" | grep -v "^written:" || true
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$train_rc" = 0 ]
