#!/usr/bin/env bash
# Every GPU check in one go, on a CUDA host, inside 10 minutes, its figures in one file.
#
#   tests/gpu/run_all.sh [FIGURES]     FIGURES default: $OUT/gpu-figures.jsonl where OUT is set (a lent device's
#                                      folder that comes back), else bench/results/gpu-figures.jsonl
#
# The vLLM share test runs first (two replicas on a 0.45 share each, then the fp8 and 4-bit links), then the rest of
# tests/gpu (the loading chain under a real out-of-memory, estimates against measured bytes, the allocator's settings,
# admission's prediction against a batch's measured peak, request out-of-memory). Each part has its own time limit
# and all of them fit 570 s; a part past its limit is stopped and recorded as such, and the next one runs.
# The figures file gets one JSON line per figure a check records (tests/gpu/conftest.py's record_figure), one per
# part (its exit status and seconds), and the device first. The project's environment and vLLM's CUDA build are
# used where they are (bin/ensure-venv, bin/ensure-vllm-venv --build cuda: a host with the package index builds
# them; a host without one must have them already, or vLLM's checks skip, saying so).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
figures="${1:-${OUT:-$root/bench/results}/gpu-figures.jsonl}"
mkdir -p "$(dirname "$figures")"
: >"$figures"
export VD_GPU_FIGURES="$figures" PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled

note() { printf '%s\n' "$1" >>"$figures"; echo "$1"; }
device="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
note "{\"device\": \"${device:-no CUDA device found}\"}"
[ -n "$device" ] || { echo "tests/gpu/run_all.sh: no CUDA device (nvidia-smi); the GPU checks need one" >&2; exit 2; }

bin/ensure-venv >/dev/null || exit 2
bin/ensure-vllm-venv --build cuda >/dev/null || note '{"part": "vllm environment", "status": "not built: vLLM checks skip"}'

status=0
part() {  # part NAME SECONDS PYTEST-ARGS...
    local name=$1 limit=$2 started code
    shift 2
    started=$(date +%s)
    timeout -k 10 "$limit" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    code=$?
    note "{\"part\": \"$name\", \"exit\": $code, \"timed_out\": $([ $code -eq 124 ] && echo true || echo false), \"seconds\": $(( $(date +%s) - started ))}"
    [ $code -eq 0 ] || status=1
}
part "vllm shares" 240 tests/gpu/test_vllm_shares.py
part "the rest of tests/gpu" 330 tests/gpu --ignore=tests/gpu/test_vllm_shares.py
exit $status
