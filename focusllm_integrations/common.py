"""What the LangChain and LlamaIndex wrappers share (no engine of its own): wrapper fields to a FocusEngine and
generation overrides. All real work stays in focus_core."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from focus_core import ChunkScore, FocusConfig, FocusConfigError, FocusEngine, FocusInputTypeError


class FocusFields(BaseModel):
    """Every FocusConfig setting but the generation ones (``GENERATION_FIELDS``, and ``stop``, which both
    ecosystems pass per call), as both wrappers' own fields; None keeps FocusConfig's default. Written
    out for IDEs and type checkers; a test keeps them equal to FocusConfig's declarations."""

    chunk_size: int | None = None
    local_window: int | None = None
    dynamic_prompt_len: int | None = None
    aggregation: str | None = None
    top_chunks: int | None = None
    focus_kv: str | None = None
    select_tokens: int | None = None
    passage_tokens: int | None = None
    select_drop: float | None = None
    select_cascade: float | None = None
    repeat_stop: int | None = None
    read_whole_tokens: int | None = None
    exit_layer: int | None = None
    extract_tokens: int | None = None
    native_window: int | None = None
    encode_batch_tokens: int | None = None
    prefix_cache_bytes: int | None = None
    memory_budget_bytes: int | None = None
    progress: bool | None = None

    def focus_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FocusFields.model_fields}


GENERATION_FIELDS: tuple[str, ...] = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def resolve_engine(
    engine: FocusEngine | None, model_id: str | None, model_kwargs: dict[str, Any] | None, settings: dict[str, Any]
) -> FocusEngine:
    """The given engine, or one loading ``model_id`` (None: the embedded default) with ``model_kwargs``
    for :func:`focus_core.load_model` and the non-None FocusConfig ``settings`` (``progress`` also decides
    whether loading shows transformers' bars: None = only on a terminal)."""
    chosen = {k: v for k, v in settings.items() if v is not None}
    recipe = (model_id, dict(model_kwargs or {}), chosen)
    if engine is not None and _BUILT.get(engine) == recipe:  # pydantic re-validating a wrapper we built
        return engine
    if engine is not None:
        if model_id is not None or model_kwargs or chosen:
            raise FocusConfigError("give either an engine or model/FocusLLM settings to build one, not both")
        if not isinstance(engine, FocusEngine):
            raise FocusInputTypeError(f"engine must be a focus_core.FocusEngine, got {type(engine).__name__}")
        return engine
    config = FocusConfig(**chosen)  # bad settings are refused before a model is loaded
    load_kwargs = dict(model_kwargs or {})
    load_kwargs.setdefault("progress", settings.get("progress"))  # loading bars follow the progress setting
    engine = FocusEngine.from_pretrained(model_id, config, **load_kwargs)
    _BUILT[engine] = recipe
    return engine


# The settings each engine built here came from: a wrapper handed to another (``ChatFocusLLM(llm=...)``)
# is validated again with its engine and those settings both set, which must keep that engine.
_BUILT: weakref.WeakKeyDictionary[FocusEngine, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def generation_overrides(
    defaults: dict[str, Any], call_kwargs: dict[str, Any], stop: list[str] | None
) -> dict[str, Any]:
    """Per-call settings: the wrapper's generation fields, then the call's keyword arguments and stop."""
    overrides = {k: v for k, v in defaults.items() if v is not None}
    overrides.update(call_kwargs)
    if stop:
        overrides["stop"] = tuple(stop)
    return overrides


@dataclass(frozen=True)
class Passage:
    """Part of one input document that decoding read: ``text`` is ``document_text[start:end]``."""

    document: int  # index into the documents given
    start: int
    end: int
    text: str
    score: float  # the relevance of the chunk it lies in (focus_core.ChunkScore.score)


def source_passages(sources: Sequence[ChunkScore], prompt: str, texts: Sequence[str]) -> list[Passage]:
    """The passages of ``texts`` (joined by blank lines somewhere in ``prompt``) that the chunks an
    answer was read from cover, most relevant first. Chunks that fall outside the documents (the
    template, the question) give none."""
    offset = prompt.find("\n\n".join(texts))
    if offset < 0:
        return []
    starts, at = [], offset
    for text in texts:
        starts.append(at)
        at += len(text) + 2
    passages = []
    for chunk in sorted(sources, key=lambda c: -c.score):
        if chunk.char_span is None:
            continue
        for i, (start, text) in enumerate(zip(starts, texts)):
            lo, hi = max(chunk.char_span[0], start) - start, min(chunk.char_span[1], start + len(text)) - start
            if lo < hi:
                passages.append(Passage(i, lo, hi, text[lo:hi], chunk.score))
    return passages
