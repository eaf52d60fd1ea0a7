#!/usr/bin/env bash
# The tests that exercise transformers' internals (KV caches, attention, rotary embeddings, training),
# run against the LOWEST transformers the package supports, read from pyproject.toml; the main .venv
# (scripts/setup.sh) has the highest. Uses its own .venv-lowest; tiny random models only.
set -euo pipefail
cd "$(dirname "$0")/.."
lowest=$(sed -n 's/^ *"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
[ -n "$lowest" ] || { echo "no transformers>=X,... requirement in pyproject.toml" >&2; exit 1; }
python3 -m venv .venv-lowest
. .venv-lowest/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -q -e ".[dev,train,langchain,llamaindex]" "transformers==$lowest"
python -c "import transformers; print('transformers', transformers.__version__, '(lowest supported)')"
python -m pytest -q -m "not slow" tests/test_engine.py tests/test_focus.py tests/test_generation.py tests/test_training.py \
    tests/test_decode_step.py
