"""Every example runs on the embedded default model, offline, and shows what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=900, cwd=EXAMPLES, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout)
    return out.stdout


def test_langchain_chain_answers_over_a_document_longer_than_the_window():
    out = run_example("langchain_chain.py")
    tokens, window = map(int, re.search(r"document: (\d+) tokens, model window: (\d+)", out).groups())
    assert tokens > window
    assert "Okonkwo" in out.split("answer:")[1]


def test_langchain_chat_streams_an_answer():
    out = run_example("langchain_chat.py")
    assert "<|im_start|>system\nYou are a concise assistant." in out
    assert "Paris" in out
    assert re.search(r"usage: \{'input_tokens': \d+, 'output_tokens': \d+", out)


def test_llamaindex_query_engine_reuses_the_encoded_documents():
    out = run_example("llamaindex_query_engine.py")
    first, second = re.findall(r"-> (.*)  \((\d+\.\d) s, \d+ source passages, chunks encoded so far: (\d+)", out)
    assert "Okonkwo" in first[0] and "Lighthouse" in second[0]
    assert out.count("top source: part") == 2  # passages with their document's metadata
    assert int(second[2]) - int(first[2]) <= 2  # only the tail chunk(s) holding the new question


def test_retrieval_free_rag_finds_what_top_k_retrieval_misses():
    out = run_example("retrieval_free_rag.py")
    rank = int(re.search(r"ranked (\d+) of \d+ by the retriever \(top-(\d+)", out).group(1))
    assert rank > 2
    assert "Okonkwo" not in out.split("vector RAG")[1].split("\n")[0]
    assert "Okonkwo" in out.split("FocusLLM (all")[1]
