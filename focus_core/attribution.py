"""Attribution: the parts of a prompt an answer was read from, as :class:`ChunkScore` (token spans in the
prompt, character spans and text for text prompts). Worked out once per call, when first asked for,
and kept on the request."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from .modes.base import Unit
from .relevance import ChunkScore
from .request import Request


def relevance(request: Request, tokenizer: PreTrainedTokenizerBase) -> list[ChunkScore]:
    """Every scored unit of the request's memory (chunks, or passages), document order; empty before the
    reading (or when the prompt was read whole)."""
    if request.relevance is None and request.reading is not None:
        request.relevance = chunk_scores(request, request.reading.scored_units(), tokenizer)
    return request.relevance or []


def sources(request: Request, tokenizer: PreTrainedTokenizerBase) -> list[ChunkScore]:
    """What decoding read (chunks or spans), most relevant first."""
    if request.sources is None and request.reading is not None:
        read = chunk_scores(request, request.reading.sources(), tokenizer)
        request.sources = sorted(read, key=lambda c: -c.score)
    return request.sources or []


def chunk_scores(request: Request, units: Sequence[Unit], tokenizer: PreTrainedTokenizerBase) -> list[ChunkScore]:
    """``(index, memory range, score)`` units as :class:`ChunkScore`."""
    prompt, plan, offsets = request.prompt, request.plan, request.offsets
    memory = plan.memory
    out = []
    for i, (a, b), score in units:
        start, end = plan.memory_start + a, plan.memory_start + b
        chars = (offsets[start][0], offsets[end - 1][1]) if offsets is not None else None
        text = prompt[chars[0] : chars[1]] if chars is not None else tokenizer.decode(memory[a:b])
        out.append(ChunkScore(i, float(score), (start, end), chars, text))
    return out
