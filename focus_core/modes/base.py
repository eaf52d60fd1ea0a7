"""What every mode is: one class with the same small interface (docs/design.md, "Modes").

A mode decides how a prompt is read and decoded. It is bound to one engine's parts
(:class:`EngineParts`) and answers four questions about a call:

- ``check(cfg)``: the settings it cannot serve on this model (:class:`FocusConfigError`, before
  anything runs);
- ``layout(ids, plan, cfg)``: the KV buffers the call allocates (:class:`~focus_core.memory.Layout`);
- ``read(request)``: what decoding reads: the relevance of the prompt's units (chunks or passages)
  and the chosen ones (:class:`Reading`);
- ``start(request, reading)``: the decoding state (``next_logits()``, ``append(token)``).

The engine resolves the mode once per call and carries it on the :class:`~focus_core.request.Request`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..distributed import ChunkGroup
from ..encoding import ChunkEncoder
from ..kv_cache import PrefixKV
from ..memory import KVBlock, Layout, Windows
from ..runner import ModelRunner, SequenceBatch
from ..selection import Span

if TYPE_CHECKING:
    from ..request import Request

Unit = tuple[int, tuple[int, int], float]  # (index, [start, end) in the memory's tokens, score)


class DecodingState(Protocol):
    """Turns what was read into the next token's logits and advances by the chosen token."""

    def next_logits(self) -> torch.Tensor: ...  # [vocab]

    def append(self, token: int) -> None: ...


@dataclass
class EngineParts:
    """What modes work with: one engine's model, tokenizer, runner, chunk encoder, process group (``None``:
    this process reads every chunk), native window and end-of-sequence ids."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    runner: ModelRunner
    encoder: ChunkEncoder
    group: ChunkGroup | None
    native_window: int
    eos_token_ids: frozenset[int] = frozenset()

    @property
    def model_name(self) -> str:
        return str(getattr(self.model.config, "name_or_path", "") or type(self.model).__name__)

    def my_chunks(self, plan: ChunkPlan) -> ChunkPlan:
        """The chunks this process holds: all of them, or its share in a process group."""
        if self.group is None:
            return plan
        return dataclasses.replace(plan, chunks=plan.chunks[self.group.share(len(plan.chunks))])

    def fits(self, tokens: int, cfg: FocusConfig) -> bool:
        """Whether a prompt of ``tokens`` fits the native window with its answer."""
        return tokens + cfg.max_new_tokens <= self.native_window

    def progress(self, cfg: FocusConfig) -> bool:
        return cfg.progress if cfg.progress is not None else sys.stderr.isatty()

    def windows(self, cfg: FocusConfig) -> Windows:
        return self.runner.windows(cfg.encode_batch_tokens)

    def stored_prefixes(self, lengths: list[int], layers: int | None = None) -> tuple[KVBlock, ...]:
        """What prefixes of ``lengths`` tokens take in the prefix cache (:class:`PrefixKV`): every layer
        they hold (all, or the first ``layers``), the sliding-window ones with their window only."""
        r = self.runner
        held = r.num_layers if layers is None else layers
        windowed = sum(1 for i in r.windowed_layers if i < held)
        blocks = (KVBlock(1, sum(lengths), held - windowed),)
        if windowed:
            blocks += (KVBlock(1, sum(min(n, r.sliding_window) for n in lengths), windowed),)
        return blocks

    def sequence(self, layout: Layout, cfg: FocusConfig) -> SequenceBatch:
        """The one sequence a layout's state declares, read ``encode_batch_tokens`` at a time."""
        return SequenceBatch(
            self.runner, rows=1, capacity=layout.state[0].slots, forward_tokens=cfg.encode_batch_tokens
        )


@dataclass
class Reading:
    """What the parallel pass found in a long prompt: the relevance of every unit of its memory (chunks,
    or passages) and what decoding reads: the chosen chunks (document order) with their prefix KV, or
    the chosen spans of the memory."""

    units: list[tuple[int, int]]  # [start, end) memory token ranges that were scored
    relevance: torch.Tensor  # [units]: nats of query likelihood, or attention mass
    chosen: list[int] = field(default_factory=list)  # chunks decoding reads, document order
    prefixes: list[PrefixKV] = field(default_factory=list)  # their [BOS] + chunk KV
    spans: list[Span] = field(default_factory=list)  # the memory spans decoding reads, document order

    def scored_units(self) -> list[Unit]:
        """Every unit with its score, document order."""
        return [(i, unit, float(score)) for i, (unit, score) in enumerate(zip(self.units, self.relevance))]

    def sources(self) -> list[Unit]:
        """What decoding read: chunks (by chunk index) or spans."""
        if self.spans:
            return [(i, (s.start, s.end), s.score) for i, s in enumerate(self.spans)]
        return [self.scored_units()[i] for i in self.chosen]


@dataclass(frozen=True)
class Handover:
    """A mode's word, after reading a request under ``auto``, that another mode should serve it, and why."""

    mode: str
    reason: str


class Mode:
    """One way of reading and decoding a prompt. Subclasses set ``name`` and implement ``layout``,
    ``read`` and ``start``; register them in :mod:`focus_core.modes`."""

    name: ClassVar[str]
    chunked: ClassVar[bool] = True  # reads the prompt in chunks (a chunk plan); False: reads it whole

    def __init__(self, parts: EngineParts):
        self.parts = parts

    def __str__(self) -> str:
        return self.name

    def check(self, cfg: FocusConfig) -> None:
        """Refuse settings this mode cannot serve on this model (nothing, by default)."""

    def prepare(self, cfg: FocusConfig) -> None:
        """Build what a call needs before it is resolved (nothing, by default)."""

    def serves_auto(self, cfg: FocusConfig) -> bool:
        """Whether ``auto`` resolves to this mode under ``cfg`` (asked in the registry's ``auto`` order)."""
        return False

    def reads_inside_window(self, tokens: int, cfg: FocusConfig) -> bool:
        """Whether this mode reads a prompt of ``tokens`` that fits the native window with its answer
        (``False``, by default: such a prompt is read whole, by ``plain``)."""
        return False

    def describe(self, cfg: FocusConfig) -> str:
        """The mode as ``describe()`` names it."""
        return self.name

    def layout(self, ids: Sequence[int], plan: ChunkPlan | None, cfg: FocusConfig) -> Layout:
        raise NotImplementedError

    def read(self, request: Request, keep: int | None = None) -> Reading | None:
        """The parallel pass over the request's chunks (``keep``: prefixes kept for decoding, by default
        what the layout declares; ``0`` scores alone). ``None``: nothing to read (the prompt fits)."""
        raise NotImplementedError

    def hand_over(self, request: Request, reading: Reading) -> Handover | None:
        """Under ``auto``, after :meth:`read`: another mode that should serve this request (``None``: this one)."""
        return None

    def start(self, request: Request, reading: Reading | None) -> DecodingState:
        raise NotImplementedError
