#!/usr/bin/env bash
# The measurements that need a GPU node, in one go (about 8 minutes on one H200 + 16 cores):
#   - gpu_compute_check.py on the GPU: axolab's one-rank overhead in bf16, and the planner's
#     compute model against a step of the published Alps run's layer shape;
#   - at the same time, on the node's other cores (one core per rank, none shared):
#     perfmodel_validation.py on 4 and 8 gloo ranks, then fsdp2_compare.py on 4 ranks.
# Usage: bash benchmarks/gpu_node_checks.sh [OUT_DIR]   (PYTHON=python3 by default)
set -u
out=${1:-results/bench/gpu_node}
py=${PYTHON:-python3}
mkdir -p "$out/val"
if [ -d .whl ]; then  # packages the node's Python lacks (setproctitle), carried as wheels
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
lscpu 2>/dev/null | grep -E "^Model name|^CPU\(s\)|^Thread|^Core"
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
n=$(nproc)
pin() {  # pin <cpu list> cmd...: keep the GPU job and the CPU ranks off each other's cores
    local cpus=$1; shift
    if command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi
}
( OMP_NUM_THREADS=2 pin "$((n - 2))-$((n - 1))" timeout 400 \
    "$py" benchmarks/gpu_compute_check.py --out "$out/gpu_compute_check.json" 2>&1 \
    | grep -v "^USDT" | sed 's/^/[gpu] /' ) &
gpu=$!
# 3 rounds (the benchmark's default is 5): what the device time and VAL_TIMEOUT were sized for.
pin "0-$((n - 3))" timeout ${VAL_TIMEOUT:-330} "$py" benchmarks/perfmodel_validation.py --ranks 4,8 \
    --steps ${VAL_STEPS:-3} --out "$out/val" 2>&1 | sed 's/^/[val] /'
pin "0-$((n - 3))" timeout ${FSDP2_TIMEOUT:-150} "$py" benchmarks/fsdp2_compare.py --repeats 7 \
    --grids "${FSDP2_GRIDS:-4,1,1,1;2,1,2,1;1,4,1,1;1,4,1,1:prefetch_late_in_backward=1;1,2,2,1;1,2,2,1:prefetch_late_in_backward=1}" \
    --out "$out/fsdp2_compare.json" 2>&1 | sed 's/^/[fsdp2] /'
wait $gpu
ls -la "$out" "$out/val"
