"""What the LangChain and LlamaIndex wrappers share: turning wrapper fields into a FocusEngine and
generation overrides. All real work stays in focus_core."""

from __future__ import annotations

from typing import Any

from focus_core import FocusConfig, FocusEngine

# FocusConfig fields a wrapper exposes as its own fields (names match FocusConfig).
FOCUS_FIELDS: tuple[str, ...] = (
    "chunk_size", "local_window", "dynamic_prompt_len", "aggregation", "native_window",
    "encode_batch_tokens", "prefix_cache_bytes", "memory_budget_bytes", "progress",
)
GENERATION_FIELDS: tuple[str, ...] = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def resolve_engine(engine: FocusEngine | None, model_id: str | None, model_kwargs: dict[str, Any] | None,
                   settings: dict[str, Any]) -> FocusEngine:
    """The given engine, or one loading ``model_id`` (None: the embedded default) with ``model_kwargs``
    for :func:`focus_core.load_model` and the non-None FocusConfig ``settings``."""
    chosen = {k: v for k, v in settings.items() if v is not None}
    if engine is not None:
        if model_id is not None or model_kwargs or chosen:
            raise ValueError("give either an engine or model/FocusLLM settings to build one, not both")
        if not isinstance(engine, FocusEngine):
            raise TypeError(f"engine must be a focus_core.FocusEngine, got {type(engine).__name__}")
        return engine
    return FocusEngine.from_pretrained(model_id, FocusConfig(**chosen), **(model_kwargs or {}))


def generation_overrides(defaults: dict[str, Any], call_kwargs: dict[str, Any], stop: list[str] | None) -> dict[str, Any]:
    """Per-call settings: the wrapper's generation fields, then the call's keyword arguments and stop."""
    overrides = {k: v for k, v in defaults.items() if v is not None}
    overrides.update(call_kwargs)
    if stop:
        overrides["stop"] = tuple(stop)
    return overrides
