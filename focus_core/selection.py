"""Selection: the passages the question attends to, chosen across the whole document (docs/design.md,
"Selection").

The early-exit pass gives every memory token an attention mass per query of the question: how much
each of the question's tokens attends to it in the probe layer. A fact the question needs draws attention to a few
neighbouring tokens (a phrase), so the mass is pooled over a window of ``passage`` tokens (InfiniRetri's
phrase pooling); the best-pooled window is chosen, centred on its peak, then the next best window that
does not overlap it, and so on until ``budget`` tokens are chosen or the attention falls off a cliff (a
window drawing under ``1 / drop`` of the mass of the one chosen before it). Windows are taken from
anywhere in the document, so an answer made of several needles in several chunks is read together; and
where one or a few passages stand far above the rest, only they are read (a small model answers a
distractor's value when the filler around the answer holds lookalikes). That ranking sums the queries;
besides it, each part of the question whose own queries point at one passage (a key of a question that
names several) keeps that passage, so a cliff in the sum does not cut the weaker keys, and so does each
part of its words spelled in one place only (a key, which a small model's attention may pass over by a
few dozen tokens). A chosen window moves by at most a fraction of its length to hold whole the
sentences that draw the most (a window cut mid-sentence reads half a fact).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence, Set
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from .chunking import ChunkPlan

# Chosen by measurement on the embedded model (docs/benchmarks.md, "Selection"; SmolLM2-135M, 30 layers, RULER and
# needle cases at 32K): the question's attention points at every needle from 60% of the way up (layer
# 18; GemFilter finds the same band, 40-60%, on 8B-12B models); the first SINK_TOKENS tokens of every
# chunk draw attention whatever they hold (attention sinks, as a BOS does) and say nothing of relevance.
# The queries are the question's own tokens (:func:`question_rows`): a line of at least MIN_QUESTION_TOKENS
# words, so that an answer cue ("Answer:") or a chat template's turn markers are not taken for it.
EXIT_DEPTH = 0.6
MIN_QUESTION_TOKENS = 4
MIN_PART_QUERIES = 2
SINK_TOKENS = 4
# How far a chosen window may move to hold whole sentences, as a share of its length.
SENTENCE_REACH = 0.125


def default_exit_layer(config: PretrainedConfig, depth: float = EXIT_DEPTH) -> int:
    """The probe layer for a model of this depth: ``depth`` of the way up, moved up to the next layer with
    full (not sliding-window) attention where layers differ (Gemma 2/3, ...)."""
    layers = config.num_hidden_layers
    layer = int(depth * layers)
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    return next((i for i in full if i >= layer), full[-1] if full else layer)


def probed(plan: ChunkPlan) -> ChunkPlan:
    """The chunks the probe reads: the plan's, with a short last chunk widened to the memory's last
    ``chunk_size`` tokens (overlapping its neighbour). A chunk's attention is a softmax over its own
    tokens, so a chunk of 80 tokens hands each far more than a chunk of 1,024 does; at one length they
    compare."""
    chunks = plan.chunks
    if len(chunks) < 2 or len(chunks[-1]) == len(chunks[0]):
        return plan
    tail = (chunks[-2] + chunks[-1])[-len(chunks[0]) :]
    return dataclasses.replace(plan, chunks=(*chunks[:-1], tail))


def memory_mass(grid: torch.Tensor, plan: ChunkPlan, chunks: Sequence[int] | None = None) -> torch.Tensor:
    """Per query and memory token of ``plan``, its mass in ``grid`` (``[chunks, queries, C]``, what the
    probe read for :func:`probed` ``(plan)``) less what a typical chunk's token draws at the same place
    from the same query; returns ``[queries, memory tokens]``.

    Every chunk is read on its own with the question right after it, so its first tokens draw attention
    whatever they hold (sinks) and so do its last (recency); over a hundred chunks of filler those chunk
    edges together outscore a needle. The median over chunks at each position is that positional share
    (what attention gives a place whatever the document says there); what is left is the attention a
    token draws for what it says (with fewer than three chunks there is no median to take and the mass
    is kept as it is). The overlap of a widened last chunk is dropped.

    ``chunks``: the plan's chunks ``grid`` holds, in order (default: all); the others' mass is 0."""
    if grid.shape[0] >= 3:
        grid = (grid - grid.median(dim=0).values).clamp_min(0)
    if chunks is not None:
        every = grid.new_zeros((len(plan.chunks), *grid.shape[1:]))
        every[list(chunks)] = grid
        grid = every
    grid = grid.transpose(0, 1)  # [queries, chunks, C]
    overlap = grid.shape[2] - len(plan.chunks[-1]) if plan.chunks else 0  # a widened last chunk's first tokens
    flat = grid[:, :-1].reshape(grid.shape[0], -1)
    return torch.cat([flat, grid[:, -1, overlap:]], dim=1)


def question_marks(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> tuple[frozenset[int], frozenset[int]]:
    """Of ``ids``, those of tokens that end a line (their text holds a newline); and the special tokens'
    ids (:func:`question_rows`). Each id is decoded once per tokenizer."""
    return frozenset(i for i in set(ids) if _ends_line(tokenizer, i)), frozenset(tokenizer.all_special_ids)


@functools.lru_cache(maxsize=1 << 16)
def _ends_line(tokenizer: PreTrainedTokenizerBase, token: int) -> bool:
    return "\n" in tokenizer.decode([token])


def question_rows(prompt: Sequence[int], line_ends: Set[int], special: Set[int]) -> tuple[int, int]:
    """``[start, end)`` of the question's tokens in ``prompt`` (the dynamic prompt): its last line that
    holds at least :data:`MIN_QUESTION_TOKENS` ordinary tokens, without the special and line-ending
    tokens that close it; the whole prompt when no line does. Lines shorter than that after the question
    (an answer cue such as ``Answer:``, a chat template's ``<|im_start|>assistant``) are passed over, and
    the document text before the question's line is not read.

    line_ends: the ids of tokens that end a line (their text holds a newline); special: special tokens."""
    end = len(prompt)
    while end > 0:
        start = end - 1
        while start > 0 and prompt[start - 1] not in line_ends:
            start -= 1
        words = [i for i in range(start, end) if prompt[i] not in special and prompt[i] not in line_ends]
        if len(words) >= MIN_QUESTION_TOKENS:
            return start, words[-1] + 1
        end = start
    return 0, len(prompt)


def sentence_ends(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> frozenset[int]:
    """Of ``ids``, those of tokens that end a sentence: their text, closing quotes and brackets aside, ends
    in ``.``, ``!`` or ``?``, or holds a newline. Each id is decoded once per tokenizer."""
    return frozenset(i for i in set(ids) if _ends_sentence(tokenizer, i))


@functools.lru_cache(maxsize=1 << 16)
def _ends_sentence(tokenizer: PreTrainedTokenizerBase, token: int) -> bool:
    text = tokenizer.decode([token])
    return "\n" in text or text.rstrip().rstrip("\"')]}”’").endswith((".", "!", "?"))


@dataclass(frozen=True)
class Sentences:
    """Where the memory's sentences start, and how far (``reach`` tokens) a chosen window may move to
    hold whole the sentences that draw the most."""

    bounds: torch.Tensor  # [sentences + 1] int64: each sentence's first token, then the memory's length
    reach: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, memory: Sequence[int], reach: int) -> Sentences:
        """The sentences of ``memory`` (token ids), one ending at each token :func:`sentence_ends` names."""
        ends = sentence_ends(tokenizer, memory)
        starts = [0] + [i + 1 for i, token in enumerate(memory[:-1]) if token in ends]
        return cls(torch.tensor([*starts, len(memory)], dtype=torch.long), reach)

    def align(self, mass: torch.Tensor, free: torch.Tensor, start: int, passage: int) -> int:
        """The start within ``reach`` of ``start`` whose window of ``passage`` free tokens holds the most
        ``mass`` in sentences lying whole inside it; the nearest of equals (``start`` itself where no
        window holds a whole sentence). mass, free: ``[tokens]``."""
        n = mass.shape[0]
        steps = torch.arange(-self.reach, self.reach + 1)
        steps = steps[steps.abs().argsort(stable=True)]  # nearest first: 0, -1, 1, -2, 2, ...
        places = (start + steps).clamp(0, n - passage)
        bounds = self.bounds.to(mass.device)
        places = places.to(mass.device)
        first = bounds[torch.searchsorted(bounds, places)]  # the first sentence starting inside
        last = bounds[torch.searchsorted(bounds, places + passage, right=True) - 1]  # where the last whole one ends
        total = torch.cat([mass.new_zeros(1, dtype=torch.float32), mass.float().cumsum(0)])  # [tokens + 1]
        whole = torch.where(last > first, total[last] - total[first], 0.0)
        whole = whole.masked_fill(~_fits(free, places, passage), -1.0)
        best = int(whole.argmax())
        return int(places[best]) if float(whole[best]) > 0 else start


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of the memory and their pooled attention mass (``score``)."""

    start: int
    end: int
    score: float

    def __len__(self) -> int:
        return self.end - self.start


def pooled(mass: torch.Tensor, window: int) -> torch.Tensor:
    """``out[..., i]`` = the mass of the ``window`` tokens centred on token ``i`` (clipped at the ends).

    mass: ``[tokens]`` or ``[queries, tokens]``; returns the same shape, fp32. Each window's sum is a
    difference of running sums in fp64 (exact to fp32 rounding, and O(tokens), where a convolution over
    32K tokens and 64 queries is O(tokens x window))."""
    left = (window - 1) // 2
    running = F.pad(mass.double(), (left + 1, window - 1 - left)).cumsum(dim=-1)  # [..., tokens + window]
    return (running[..., window:] - running[..., :-window]).float()


def choose_spans(
    mass: torch.Tensor,
    *,
    passage: int,
    budget: int,
    skip: int = 0,
    drop: float | None = None,
    min_queries: int = MIN_PART_QUERIES,
    sentences: Sentences | None = None,
    words: torch.Tensor | None = None,
) -> list[Span]:
    """The passages the question's attention chooses, document order: what the whole question draws to
    (:func:`select_spans` over the mass summed over queries), and, with ``drop``, the passages parts of
    the question point at on their own, in place of the whole question's weakest choices where the
    ``budget`` runs out: first by the ``words`` of the question found in the memory
    (:func:`word_peaks`; one joins unless the reading holds it whole: a window of the attention's may
    hold a key and cut the value beside it), then by its attention (:func:`part_peaks`; one joins unless
    it overlaps the reading). A question naming several keys spreads its summed attention over their
    needles, and a cliff over the sum cuts the weaker keys; each key's own queries find its needle. A
    key the attention passes over (a small model's attention may peak on the prose before a needle) is
    still spelled in its needle. With ``sentences``, every window moves to hold whole sentences
    (:meth:`Sentences.align`).

    mass: ``[queries, tokens]`` attention mass each query of the question pays each memory token;
    words: ``[queries, tokens]`` the weight of each query's terms found at each memory token
    (:func:`focus_core.cascade.word_mass`)."""
    whole = select_spans(mass.sum(dim=0), passage=passage, budget=budget, skip=skip, drop=drop, sentences=sentences)
    if drop is None or not whole:
        return whole
    parts = {"passage": len(whole[0]), "skip": skip, "drop": drop, "min_queries": min_queries, "sentences": sentences}
    missing: list[Span] = []
    for peak in [] if words is None else word_peaks(words, mass, **parts):
        if not _holds(whole + missing, peak):
            missing.append(peak)
    for peak in part_peaks(mass, **parts):
        if not _overlaps(peak, whole + missing):
            missing.append(peak)
    room = max(0, budget // parts["passage"] - len(whole))
    cut = max(0, min(len(missing), len(whole) - 1) - room)  # the whole question's weakest give way
    kept = sorted(whole, key=lambda s: -s.score)[: len(whole) - cut]
    return sorted(kept + missing[: room + cut], key=lambda s: s.start)


def word_peaks(
    words: torch.Tensor,
    mass: torch.Tensor,
    *,
    passage: int,
    skip: int,
    drop: float,
    min_queries: int = MIN_PART_QUERIES,
    sentences: Sentences | None = None,
) -> list[Span]:
    """The passages parts of the question's words point at (:func:`part_peaks` over ``words``: a key
    spelled in one place), strongest first, those holding at least ``1 / drop`` of the weight the best
    window of all the question's words holds (the cliff within words: a needle holds its key and the
    question's other rare words, a phrase of the question met once by chance only some of them, and
    where the key is spelled in several places, each of those outweighs the phrase); each scored by
    the attention ``mass`` it holds, as every span is.

    words, mass: ``[queries, tokens]``."""
    peaks = part_peaks(words, passage=passage, skip=skip, drop=drop, min_queries=min_queries, sentences=sentences)
    if not peaks:
        return []
    best = float(pooled(words.sum(dim=0), passage)[skip:].max())
    strong = [p for p in peaks if p.score * drop >= best]
    return [Span(p.start, p.end, float(mass[:, p.start : p.end].sum())) for p in strong]


def part_peaks(
    mass: torch.Tensor,
    *,
    passage: int,
    skip: int,
    drop: float,
    min_queries: int = MIN_PART_QUERIES,
    sentences: Sentences | None = None,
) -> list[Span]:
    """The passages parts of the question point at, strongest first. A query points at a passage when
    the window of ``passage`` tokens it draws most to draws at least ``drop`` times what any window apart
    from it draws; queries pointing at overlapping windows are one part (the tokens of one key), and a
    part of at least ``min_queries`` queries keeps the window its queries together draw most to. Queries
    whose attention is spread (words every needle shares, such as the question's template) point at
    nothing, and a lone query's peak is as often a chance one.

    mass: ``[queries, tokens]``."""
    n = mass.shape[1]
    if n - skip < 2 * passage:
        return []
    score = pooled(mass, passage)[:, skip:]  # [queries, tokens - skip]
    best, centre = score.max(dim=1)
    places = torch.arange(score.shape[1], device=mass.device)
    apart = (places[None, :] - centre[:, None]).abs() >= passage
    second = score.masked_fill(~apart, 0).amax(dim=1)
    pointing = torch.nonzero(best > drop * second.clamp_min(1e-12)).flatten().tolist()
    parts: list[list[int]] = []  # queries pointing at overlapping windows, by where they point
    for q in sorted(pointing, key=lambda q: int(centre[q])):
        if parts and int(centre[q]) - int(centre[parts[-1][-1]]) < passage:
            parts[-1].append(q)
        else:
            parts.append([q])
    peaks = []
    for queries in (p for p in parts if len(p) >= min_queries):
        together = score[queries].sum(dim=0)
        near = (places - int(centre[queries[0]])).abs() < 2 * passage
        at = int(together.masked_fill(~near, float("-inf")).argmax()) + skip
        start = min(max(at - (passage - 1) // 2, skip), n - passage)
        part_mass = mass[queries].sum(dim=0)
        free = torch.ones(n, dtype=torch.bool, device=mass.device)
        free[:skip] = False
        start = _placed(part_mass, free, start, passage, sentences)
        peaks.append(Span(start, start + passage, float(mass[:, start : start + passage].sum())))
    return sorted(peaks, key=lambda s: -s.score)


def _overlaps(span: Span, others: Sequence[Span]) -> bool:
    return any(span.start < o.end and o.start < span.end for o in others)


def _holds(spans: Sequence[Span], span: Span) -> bool:
    """Whether ``spans`` together hold every token of ``span``."""
    return any(a <= span.start and span.end <= b for a, b in merge(sorted(spans, key=lambda s: s.start)))


def select_spans(
    mass: torch.Tensor,
    *,
    passage: int,
    budget: int,
    skip: int = 0,
    drop: float | None = None,
    sentences: Sentences | None = None,
) -> list[Span]:
    """Non-overlapping windows of ``passage`` tokens with the most pooled mass, ``budget`` tokens in all,
    in document order. The first ``skip`` tokens (the opening, read anyway) are not chosen again. With
    ``drop``, the choosing stops before a window whose mass is under ``1 / drop`` of the previous one's.
    With ``sentences``, each window moves to hold whole sentences (:meth:`Sentences.align`).

    mass: ``[tokens]`` attention mass of each memory token."""
    n = mass.shape[0]
    passage = min(passage, n - skip) if n > skip else 0
    if passage <= 0 or budget <= 0:
        return []
    score = pooled(mass, passage)
    starts = (torch.arange(n, device=mass.device) - (passage - 1) // 2).clamp(skip, n - passage)
    free = torch.ones(n, dtype=torch.bool, device=mass.device)
    free[:skip] = False
    chosen: list[Span] = []
    for _ in range(max(1, budget // passage)):
        fits = _fits(free, starts, passage)
        if not bool(fits.any()):
            break
        best = int(starts[int(score.masked_fill(~fits, float("-inf")).argmax())])
        start = _placed(mass, free, best, passage, sentences)
        span = Span(start, start + passage, float(mass[start : start + passage].float().sum()))
        if drop is not None and chosen and span.score * drop < chosen[-1].score:
            break
        chosen.append(span)
        free[start : start + passage] = False
    return sorted(chosen, key=lambda s: s.start)


def _placed(mass: torch.Tensor, free: torch.Tensor, start: int, passage: int, sentences: Sentences | None) -> int:
    """Where the window found at ``start`` is read: recentred on its mass, then moved to hold whole
    sentences where ``sentences`` are given."""
    start = _recentred(mass, free, start, passage)
    return start if sentences is None or sentences.reach <= 0 else sentences.align(mass, free, start, passage)


def _recentred(mass: torch.Tensor, free: torch.Tensor, start: int, passage: int) -> int:
    """The window's start moved so that its centre of mass sits in its middle, if the tokens there are free
    (the best window is one of many that hold a short peak; the centred one keeps context on both sides)."""
    window = mass[start : start + passage].float()
    if float(window.sum()) <= 0:
        return start
    centre = start + float((window * torch.arange(passage, device=mass.device)).sum() / window.sum())
    moved = min(max(round(centre) - (passage - 1) // 2, 0), mass.shape[0] - passage)
    return moved if bool(free[moved : moved + passage].all()) else start


def _fits(free: torch.Tensor, starts: torch.Tensor, passage: int) -> torch.Tensor:
    """Per centre: whether its window lies on free tokens only. free: [tokens] bool."""
    taken = torch.cat([torch.zeros(1, device=free.device), (~free).float().cumsum(0)])  # [tokens + 1]
    return (taken[starts + passage] - taken[starts]) == 0


def merge(spans: list[Span]) -> list[tuple[int, int]]:
    """Token ranges to read: ``spans`` (document order) with touching ones joined."""
    ranges: list[tuple[int, int]] = []
    for s in spans:
        if ranges and ranges[-1][1] >= s.start:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], s.end))
        else:
            ranges.append((s.start, s.end))
    return ranges
