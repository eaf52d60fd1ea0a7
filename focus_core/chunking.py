"""Splitting a long prompt into memory chunks, local context and dynamic prompt (docs/design.md)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    """How one prompt is laid out for FocusLLM.

    ``chunks[i]`` holds the token ids of memory chunk ``m_i`` (no BOS); ``local`` is the prompt's tail of
    ``local_window`` tokens and ``dynamic_prompt`` its last ``dynamic_prompt_len`` tokens.
    """

    chunks: tuple[tuple[int, ...], ...]
    local: tuple[int, ...]
    dynamic_prompt: tuple[int, ...]
    memory_start: int = 0  # index of the first chunk's first token in the prompt (1 after a dropped BOS)

    @property
    def memory(self) -> tuple[int, ...]:
        """The memory's token ids, every chunk in order."""
        return tuple(itertools.chain.from_iterable(self.chunks))

    @property
    def memory_tokens(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """``[start, end)`` of every chunk in the memory's tokens."""
        ends = list(itertools.accumulate(len(c) for c in self.chunks))
        return [(end - len(c), end) for c, end in zip(self.chunks, ends)]


def plan_chunks(
    ids: list[int], *, chunk_size: int, local_window: int, dynamic_prompt_len: int, bos_token_id: int | None
) -> ChunkPlan:
    """Lay out ``ids`` as ``memory | local``, memory cut into chunks counted from its start.

    Counting from the start means two prompts that share a leading document share its leading chunks,
    so their cached prefixes can be reused. A BOS the tokenizer put in front of the prompt is dropped
    from the memory: every chunk gets its own.
    """
    local = tuple(ids[-local_window:])
    memory = ids[: max(len(ids) - local_window, 0)]
    start = int(bool(memory) and bos_token_id is not None and memory[0] == bos_token_id)
    memory = memory[start:]
    chunks = tuple(tuple(memory[i : i + chunk_size]) for i in range(0, len(memory), chunk_size))
    return ChunkPlan(chunks=chunks, local=local, dynamic_prompt=local[-dynamic_prompt_len:], memory_start=start)
