"""FocusLLM settings, validated on construction.

Notation follows docs/design.md: a model with native window ``W``; the prompt's last ``local_window`` (Lw)
tokens form the local context, the rest is cut into chunks of ``chunk_size`` (C) tokens, and the last
``dynamic_prompt_len`` (P) local tokens are appended to every chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import FocusConfigError
from .memory import GiB

Aggregation = Literal["auto", "select", "focus", "entropy", "kv"]
AGGREGATIONS: tuple[str, ...] = ("auto", "select", "focus", "entropy", "kv")
FocusKV = Literal["reuse", "reencode"]
FOCUS_KV: tuple[str, ...] = ("reuse", "reencode")
# Settings of what the engine holds across calls; a per-call override of them is refused.
ENGINE_SETTINGS: tuple[str, ...] = ("native_window", "prefix_cache_bytes")


@dataclass(frozen=True)
class FocusConfig:
    """Everything that decides what FocusLLM computes and how much memory it may use.

    Every setting can be overridden per call (``engine.generate(prompt, max_new_tokens=8)``) except
    :data:`ENGINE_SETTINGS`, which size what the engine holds across calls (its window, its prefix
    cache): those are refused per call, and set in the engine's own ``FocusConfig``.
    """

    chunk_size: int = 1024
    local_window: int = 512
    dynamic_prompt_len: int = 64
    aggregation: Aggregation = "auto"
    top_chunks: int | None = None  # chunks decoding reads, most relevant first; None: a native window's worth
    focus_kv: FocusKV = "reuse"  # focus: reuse the chunks' cached KV (re-positioned) or re-encode them together
    select_tokens: int = 1024  # select: document tokens read (passages chosen by the question's attention)
    passage_tokens: int = 128  # select: tokens per passage (the unit chosen)
    exit_layer: int | None = None  # select: the layer whose attention chooses; None: derived from the depth
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    native_window: int | None = None  # None: the model's own max_position_embeddings
    encode_batch_tokens: int = 4096  # tokens per micro-batch when encoding chunks
    prefix_cache_bytes: int = 2 * GiB  # LRU budget of the content-addressed chunk-prefix cache
    memory_budget_bytes: int | None = None  # None: 80% of the memory available on the device
    progress: bool | None = None  # None: show bars only on a TTY

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", _normalise_stop(self.stop))
        for name in (
            "chunk_size",
            "local_window",
            "dynamic_prompt_len",
            "max_new_tokens",
            "encode_batch_tokens",
            "select_tokens",
            "passage_tokens",
        ):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("top_k", self.top_k, minimum=0)
        _require_int("prefix_cache_bytes", self.prefix_cache_bytes, minimum=0)
        if self.top_chunks is not None:
            _require_int("top_chunks", self.top_chunks, minimum=1)
        if self.exit_layer is not None:
            _require_int("exit_layer", self.exit_layer, minimum=0)
        if self.passage_tokens > self.select_tokens:
            raise FocusConfigError(
                f"passage_tokens ({self.passage_tokens}) must not exceed select_tokens ({self.select_tokens}): "
                "the selection is made of passages"
            )
        if self.native_window is not None:
            _require_int("native_window", self.native_window, minimum=2)
        if self.memory_budget_bytes is not None:
            _require_int("memory_budget_bytes", self.memory_budget_bytes, minimum=1)
        if self.seed is not None:
            _require_int("seed", self.seed, minimum=0)
        if self.dynamic_prompt_len > self.local_window:
            raise FocusConfigError(
                f"dynamic_prompt_len ({self.dynamic_prompt_len}) must not exceed local_window ({self.local_window}): "
                "the dynamic prompt is the tail of the local context"
            )
        if self.aggregation not in AGGREGATIONS:
            raise FocusConfigError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.focus_kv not in FOCUS_KV:
            raise FocusConfigError(f"focus_kv must be one of {FOCUS_KV}, got {self.focus_kv!r}")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise FocusConfigError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise FocusConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise FocusConfigError(f"progress must be True, False or None, got {self.progress!r}")

    def replace(self, **overrides) -> FocusConfig:
        """A copy with some fields changed (validated again); unknown names are an error."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise FocusConfigError(f"unknown FocusConfig setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def check_window(self, native_window: int) -> None:
        """``[BOS] + chunk + local context + new tokens`` must fit in the model's window: every chunk pass
        (``[BOS] + chunk + dynamic prompt + new tokens``) and the focus sequence with one chunk."""
        needed = 1 + self.chunk_size + self.local_window + self.max_new_tokens
        if needed > native_window:
            raise FocusConfigError(
                f"1 + chunk_size + local_window + max_new_tokens = {needed} exceeds the native window "
                f"{native_window}; lower chunk_size (now {self.chunk_size}), local_window or max_new_tokens"
            )

    def select_window(self) -> int:
        """Tokens ``select`` decodes over: [BOS], the opening passage, the selection, the local context
        and the answer."""
        return 1 + self.passage_tokens + self.select_tokens + self.local_window + self.max_new_tokens

    def chunks_read(self, native_window: int, mode: str) -> int:
        """How many chunks decoding reads in aggregation ``mode``: ``top_chunks``, by default as many
        as fit the window beside the local context and the answer. In ``focus`` their tokens share the
        window, in ``kv`` their candidate entries do, so there it is also the most allowed."""
        room = native_window - 1 - self.local_window - self.max_new_tokens
        fit = room // self.chunk_size
        if self.top_chunks is None:
            return fit
        limit = {"focus": fit, "kv": room}.get(mode, self.top_chunks)
        return min(self.top_chunks, limit)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _normalise_stop(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    try:
        items = tuple(stop)
    except TypeError:
        raise FocusConfigError(f"stop must be a string or a list of strings, got {type(stop).__name__}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise FocusConfigError(f"stop sequences must be non-empty strings, got {item!r}")
    return items


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FocusConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
