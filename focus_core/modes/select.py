"""``select``: the model as its own retriever (docs/design.md, "Selection").

Every chunk runs up to an early exit layer with the question's rows appended; the attention each
question token pays the memory there chooses passages (:mod:`focus_core.selection`), and decoding reads
``[BOS] + opening + chosen passages + local context`` with ordinary attention, as a prompt is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ..aggregation import PlainDecoding
from ..cascade import survivors, survivors_kept, word_mass, word_scores
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..errors import FocusConfigError
from ..memory import Layout, one_sequence, parallel_buffers
from ..request import Request
from ..selection import (
    SENTENCE_REACH,
    Sentences,
    Span,
    choose_spans,
    default_exit_layer,
    memory_mass,
    merge,
    probed,
    question_marks,
    question_rows,
)
from .base import Handover, Mode, Reading


def select_reach(cfg: FocusConfig) -> int:
    """Prompt tokens ``select`` reads at most: the opening passage, the selection and the local context."""
    return cfg.passage_tokens + cfg.select_tokens + cfg.local_window


def read_whole_line(cfg: FocusConfig) -> int:
    """Prompt tokens up to which a prompt that fits the window is read whole: ``read_whole_tokens``, by
    default :func:`select_reach` (below it the selection would read the whole prompt anyway)."""
    return cfg.read_whole_tokens or select_reach(cfg)


def select_window(cfg: FocusConfig) -> int:
    """Tokens ``select`` decodes over: [BOS], what it reads and the answer."""
    return 1 + select_reach(cfg) + cfg.max_new_tokens


def chosen_spans(
    mass: torch.Tensor, plan: ChunkPlan, question: Sequence[int], cfg: FocusConfig, tokenizer: PreTrainedTokenizerBase
) -> list[Span]:
    """What ``select`` reads of the memory: the opening passage, then the passages the ``question``'s
    attention ``mass`` (``[queries, memory tokens]``) and its rare words choose under ``cfg``, each window
    moved to hold whole sentences (:mod:`focus_core.selection`)."""
    opening = min(cfg.passage_tokens, plan.memory_tokens)
    sentences = Sentences.of(tokenizer, plan.memory, int(SENTENCE_REACH * cfg.passage_tokens))
    spans = choose_spans(
        mass,
        passage=cfg.passage_tokens,
        budget=cfg.select_tokens,
        skip=opening,
        drop=cfg.select_drop,
        sentences=sentences,
        words=word_mass(plan, question),
    )
    return [Span(0, opening, float(mass[:, :opening].sum())), *spans]


class Select(Mode):
    name = "select"

    def exit_layer(self, cfg: FocusConfig) -> int:
        """The layer whose attention chooses the passages (the early exit)."""
        layers = self.parts.runner.num_layers
        if cfg.exit_layer is None:
            return default_exit_layer(self.parts.model.config.get_text_config())
        if cfg.exit_layer >= layers:
            raise FocusConfigError(
                f"exit_layer must be in [0, {layers - 1}] for {self.parts.model_name} ({layers} layers), "
                f"got {cfg.exit_layer}",
                setting="exit_layer",
            )
        return cfg.exit_layer

    def check(self, cfg: FocusConfig) -> None:
        self.exit_layer(cfg)
        if select_window(cfg) > self.parts.native_window:
            raise FocusConfigError(
                f"1 + passage_tokens + select_tokens + local_window + max_new_tokens = {select_window(cfg)} "
                f"exceeds the native window {self.parts.native_window}; lower select_tokens (now {cfg.select_tokens})",
                setting="select_tokens",
            )

    def serves_auto(self, cfg: FocusConfig) -> bool:
        return select_window(cfg) <= self.parts.native_window  # its reading fits the window

    def reads_inside_window(self, tokens: int, cfg: FocusConfig) -> bool:
        """A prompt longer than :func:`read_whole_line`: a small
        model answers better from the passages its attention picks than from a whole prompt that merely
        fits its window (docs/benchmarks.md, "Inside the window"), and sooner."""
        return tokens > read_whole_line(cfg)

    def describe(self, cfg: FocusConfig) -> str:
        layers = f"exit layer {self.exit_layer(cfg)} of {self.parts.runner.num_layers}"
        layer = f"select ({layers}) past {read_whole_line(cfg)} tokens"
        if cfg.aggregation != "auto" or cfg.select_drop is None:
            return layer
        return f"{layer}, or whole where the question's attention spreads over more passages than select reads"

    def layout(self, ids: Sequence[int], plan: ChunkPlan, cfg: FocusConfig) -> Layout:
        """The parallel pass's buffers for the chunks this process runs to the exit layer (every probed chunk
        one length), and the sequence that reads the selection."""
        parts, exit_layers, group = self.parts, self.exit_layer(cfg) + 1, self.parts.group
        deep = self.deep_chunks(plan, cfg)
        mine = deep if group is None else group.sizes(deep)[group.rank]
        prefix_slots = len(parts.encoder.bos) + len(probed(plan).chunks[0])
        read = len(parts.encoder.bos) + min(cfg.passage_tokens + cfg.select_tokens, plan.memory_tokens)
        slots, windows = read + len(plan.local) + cfg.max_new_tokens, parts.windows(cfg)
        # the read of the selection is kept too, where the sequence holds it whole (ChunkEncoder.read)
        kept_read = parts.stored_prefixes([read]) if windows.kept_slots(slots) is None else ()
        parallel = parallel_buffers(
            chunks=mine,
            prefix_slots=prefix_slots,
            dynamic_prompt=len(plan.dynamic_prompt),
            read=0,
            batch_tokens=cfg.encode_batch_tokens,
            cached=parts.stored_prefixes([prefix_slots] * mine, exit_layers) + kept_read,
            exit_layers=exit_layers,
        )
        return one_sequence(slots, slots - cfg.max_new_tokens, windows, **parallel)

    def deep_chunks(self, plan: ChunkPlan, cfg: FocusConfig) -> int:
        """How many chunks run to the exit layer: those the cascade's first stage keeps, or every one."""
        chunks = len(plan.chunks)
        if cfg.select_cascade is None:
            return chunks
        return survivors_kept(chunks, cfg.select_cascade, cfg.select_tokens // cfg.passage_tokens)

    def read(self, request: Request, keep: int | None = None) -> Reading:
        """The early-exit pass: the attention the question pays every memory token in the exit layer
        (gathered from every process in a group; with a cascade, over the chunks its first stage kept),
        the passages it chooses, and the opening."""
        plan, cfg = request.plan, request.config
        probe = probed(plan)  # every chunk at one length
        rows = question_rows(plan.dynamic_prompt, *question_marks(self.parts.tokenizer, plan.dynamic_prompt))
        question = plan.dynamic_prompt[rows[0] : rows[1]]
        kept = self.first_stage(request, question)
        deep = probe if kept is None else dataclasses.replace(probe, chunks=tuple(probe.chunks[i] for i in kept))
        mass = memory_mass(self.attention(request, deep, self.exit_layer(cfg), rows), plan, kept)  # [queries, memory]
        spans = chosen_spans(mass, plan, question, cfg, self.parts.tokenizer)
        mass = mass.sum(dim=0)  # [memory tokens]: what the whole question draws
        n, size = plan.memory_tokens, cfg.passage_tokens
        units = [(a, min(a + size, n)) for a in range(0, n, size)]
        relevance = torch.stack([mass[a:b].sum() for a, b in units])
        return Reading(units, relevance, spans=spans)

    def first_stage(self, request: Request, question: Sequence[int]) -> list[int] | None:
        """The chunks the cascade's first stage keeps for the exit layer (:mod:`focus_core.cascade`) by the
        ``question``'s words, the same in every process of a group; ``None`` where it is off or would keep
        them all."""
        cfg, plan = request.config, request.plan
        keep = self.deep_chunks(plan, cfg)
        if keep >= len(plan.chunks):
            return None
        return survivors(word_scores(plan, question, cfg.passage_tokens), keep)

    def attention(self, request: Request, probe: ChunkPlan, layer: int, rows: tuple[int, int]) -> torch.Tensor:
        """``[chunks of probe, queries, C]``: the attention the question's ``rows`` pay each token of every
        chunk of ``probe`` (one length, :func:`probed`) in ``layer``, from every process of a group."""
        parts = self.parts
        mine = parts.my_chunks(probe)
        grid = parts.encoder.attend(
            mine, layers=(layer,), rows=rows, layout=request.layout, progress=parts.progress(request.config)
        )
        width = len(probe.chunks[0]) if probe.chunks else 0
        grid = grid[layer].reshape(len(mine.chunks), rows[1] - rows[0], width)
        return grid if parts.group is None else parts.group.gather_rows(grid, len(probe.chunks))

    def hand_over(self, request: Request, reading: Reading) -> Handover | None:
        """A request about the whole document goes to ``whole``: more passages draw near the most attended
        one's attention (at least ``1 / select_drop`` of it, the cliff the selection stops at) than the
        selection holds (``select_tokens / passage_tokens``), so what it needs is spread wider than select
        reads; one that fits the native window with its answer goes to ``plain``, which reads it whole.
        Without a cliff (``select_drop=None``) nothing is handed over."""
        cfg = request.config
        passages = reading.relevance[1:]  # after the opening, which is read anyway
        if cfg.select_drop is None or len(passages) == 0 or float(passages.max()) <= 0:
            return None
        near = int((passages * cfg.select_drop >= passages.max()).sum())
        room = cfg.select_tokens // cfg.passage_tokens
        if near <= room:
            return None
        reason = (
            f"{near} passages draw at least 1/{cfg.select_drop:g} of the most attended one's attention, more than "
            f"the {room} the selection holds"
        )
        if self.parts.fits(len(request.ids), cfg):
            return Handover("plain", f"{reason}; the prompt fits the window, so it is read whole")
        return Handover("whole", reason)

    def start(self, request: Request, reading: Reading) -> PlainDecoding:
        """Ordinary attention over the opening, the selection and the local context."""
        plan, parts = request.plan, self.parts
        memory = plan.memory
        read = [t for start, end in merge(reading.spans) for t in memory[start:end]]
        sequence = parts.sequence(request.layout, request.config)
        parts.encoder.read(sequence, parts.encoder.bos + tuple(read))
        return PlainDecoding(sequence, sequence.append(torch.tensor(plan.local, device=parts.runner.device)))
