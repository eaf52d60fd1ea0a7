"""FocusLLM settings, validated on construction.

Notation follows docs/design.md: a model with native window ``W``; the prompt's last ``local_window`` (Lw)
tokens form the local context, the rest is cut into chunks of ``chunk_size`` (C) tokens, and the last
``dynamic_prompt_len`` (P) local tokens are appended to every chunk.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from . import modes
from .errors import FocusConfigError
from .memory import GiB
from .settings import check_minimums, setting

Aggregation = Literal["auto", "select", "whole", "focus", "entropy", "kv"]
FocusKV = Literal["reuse", "reencode"]
FOCUS_KV: tuple[str, ...] = typing.get_args(FocusKV)
# Settings of what the engine holds across calls; a per-call override of them is refused.
ENGINE_SETTINGS: tuple[str, ...] = ("native_window", "prefix_cache_bytes")


@dataclass(frozen=True)
class FocusConfig:
    """Everything that decides what FocusLLM computes and how much memory it may use.

    Each field is declared once, with its help and lowest value (:func:`~focus_core.settings.setting`):
    the CLI's options and the wrappers' fields come from these declarations.

    Every setting can be overridden per call (``engine.generate(prompt, max_new_tokens=8)``) except
    :data:`ENGINE_SETTINGS`, which size what the engine holds across calls (its window, its prefix
    cache): those are refused per call, and set in the engine's own ``FocusConfig``.
    """

    chunk_size: int = setting(1024, "tokens per memory chunk", minimum=1)
    local_window: int = setting(
        512, "the prompt's last N tokens, which hold the question, stay local context", minimum=1
    )
    dynamic_prompt_len: int = setting(
        64, "the last N local tokens, appended to every chunk; at most the local window", minimum=1
    )
    aggregation: Aggregation = setting(
        "auto", "how the chunks are read and their candidates decide each token (README, Choosing a mode)"
    )
    top_chunks: int | None = setting(
        None, "chunks decoding reads, most relevant first (default: a native window's worth)", minimum=1
    )
    focus_kv: FocusKV = setting("reuse", "focus: reuse the chunks' cached KV (re-positioned) or re-encode them")
    select_tokens: int = setting(1024, "select: document tokens read, in passages the question attends to", minimum=1)
    passage_tokens: int = setting(128, "select: tokens per passage (the unit chosen)", minimum=1)
    select_drop: float | None = setting(
        2.0,
        "select: stop at the first passage drawing under 1/N of the attention of the one chosen before it (the "
        "relevant passages end where the attention falls off); None or inf: always read select_tokens",
        minimum=1,
    )
    select_cascade: float | None = setting(
        0.5,
        "select: the share of chunks the question's words keep for the exit layer to rank, in (0, 1] (at least "
        "the P passages select_tokens holds, at most sqrt(chunks x P): half of 32 chunks for 8 passages, a quarter of "
        "128); 1 or None: every chunk runs to the exit layer",
    )
    read_whole_tokens: int | None = setting(
        None,
        "select: prompts up to N tokens that fit the window are read whole, longer ones through the selection even "
        "inside the window (default: what the selection reads, passage_tokens + select_tokens + local_window)",
        minimum=1,
    )
    exit_layer: int | None = setting(
        None, "select: the layer whose attention chooses the passages (default: 60% of the model's depth)", minimum=0
    )
    extract_tokens: int = setting(
        64, "whole: longest extraction each chunk writes for the request before they are read together", minimum=1
    )
    max_new_tokens: int = setting(64, "longest answer in tokens", minimum=1)
    temperature: float = setting(0.0, "sampling temperature; 0 = greedy", minimum=0)
    top_k: int = setting(0, "sample among the k likeliest tokens; 0 = no top-k filter", minimum=0)
    top_p: float = setting(1.0, "sample among the likeliest tokens holding this much probability, in (0, 1]")
    seed: int | None = setting(None, "random seed for sampling", minimum=0)
    stop: tuple[str, ...] = setting((), "stop where the answer produces one of these strings (not returned)")
    repeat_stop: int | None = setting(
        8,
        "end the answer where its last N or more tokens repeat, back to back, the ones before them (a loop); "
        "None: never",
        minimum=2,
    )
    native_window: int | None = setting(
        None,
        "pretend the model's window is N tokens, reading shorter prompts in chunks (default: the model's)",
        minimum=2,
    )
    encode_batch_tokens: int = setting(
        4096,
        "tokens per forward: a micro-batch of chunks being encoded, or a piece of a prompt read whole (halved until "
        "the memory budget fits)",
        minimum=1,
    )
    prefix_cache_bytes: int = setting(
        2 * GiB, "bytes of encoded chunks kept for later questions over the same documents (LRU)", minimum=0
    )
    memory_budget_bytes: int | None = setting(
        None, "bytes one call may use (default: 80% of the memory available on the device)", minimum=1
    )
    progress: bool | None = setting(None, "progress bars: True, False, or None for only on a terminal")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", _normalise_stop(self.stop))
        check_minimums(self)
        if self.passage_tokens > self.select_tokens:
            raise FocusConfigError(
                f"passage_tokens ({self.passage_tokens}) must not exceed select_tokens ({self.select_tokens}): "
                "the selection is made of passages",
                setting="passage_tokens",
            )
        if self.dynamic_prompt_len > self.local_window:
            raise FocusConfigError(
                f"dynamic_prompt_len ({self.dynamic_prompt_len}) must not exceed local_window ({self.local_window}): "
                "the dynamic prompt is the tail of the local context",
                setting="dynamic_prompt_len",
            )
        choices = ("auto", *modes.names())
        if self.aggregation not in choices:
            raise FocusConfigError(
                f"aggregation must be one of {choices}, got {self.aggregation!r}", setting="aggregation"
            )
        if self.focus_kv not in FOCUS_KV:
            raise FocusConfigError(f"focus_kv must be one of {FOCUS_KV}, got {self.focus_kv!r}", setting="focus_kv")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise FocusConfigError(f"top_p must be in (0, 1], got {self.top_p!r}", setting="top_p")
        if self.select_cascade is not None and not (_is_number(self.select_cascade) and 0 < self.select_cascade <= 1):
            raise FocusConfigError(
                f"select_cascade must be in (0, 1] or None, got {self.select_cascade!r}", setting="select_cascade"
            )
        if self.progress is not None and not isinstance(self.progress, bool):
            raise FocusConfigError(f"progress must be True, False or None, got {self.progress!r}", setting="progress")

    def replace(self, **overrides) -> FocusConfig:
        """A copy with some fields changed (validated again); unknown names are an error."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise FocusConfigError(
                f"unknown FocusConfig setting(s): {', '.join(sorted(unknown))}", setting=sorted(unknown)[0]
            )
        return dataclasses.replace(self, **overrides)

    def check_window(self, native_window: int) -> None:
        """``[BOS] + chunk + local context + new tokens`` must fit in the model's window: every chunk pass
        (``[BOS] + chunk + dynamic prompt + new tokens``) and the focus sequence with one chunk."""
        needed = 1 + self.chunk_size + self.local_window + self.max_new_tokens
        if needed > native_window:
            raise FocusConfigError(
                f"1 + chunk_size + local_window + max_new_tokens = {needed} exceeds the native window "
                f"{native_window}; lower chunk_size (now {self.chunk_size}), local_window or max_new_tokens",
                setting="chunk_size",
            )

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
        raise FocusConfigError(
            f"stop must be a string or a list of strings, got {type(stop).__name__}", setting="stop"
        ) from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise FocusConfigError(f"stop sequences must be non-empty strings, got {item!r}", setting="stop")
    return items


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
