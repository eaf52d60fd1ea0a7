"""Training objectives for the candidate projections (docs/design.md, "Training"), teacher-forced.

An :class:`Example` is laid out exactly as the engine lays out a prompt: memory cut into chunks of ``C``
tokens, a local context whose last ``P`` tokens are the dynamic prompt ``d``, then ``k`` target tokens.
Three losses:

- **continuation** (the paper's): the targets follow the local context; cross-entropy of the targets;
- **repetition** (the paper's): the local context is copied from inside the memory, the targets are what
  follows it there; cross-entropy;
- **distill**: KL(teacher ‖ student) of the next-token distributions at all ``k`` target positions. The
  teacher is the same frozen model reading ``[BOS] + memory + local + targets`` with ordinary attention;
  the student is the engine's ``kv`` path over the same text.

The student, for ``k`` targets at once (gradients reach only the candidate projections):

1. ``[BOS] + chunk_i`` for every chunk: frozen, no gradients, cached while examples share their memory;
2. ``d[:-1]`` after every prefix: frozen, no gradients;
3. ``[d[-1], y_0 … y_{k-2}]`` appended to every chunk with the candidate projections: the ``j``-th of these
   tokens is the candidate of decoding step ``j``, exactly as in generation;
4. ``k`` local passes (:func:`~focus_core.aggregation.kv_local_pass`, the engine's own): pass ``j`` sees the
   ``n`` candidates of step ``j``, then ``local + y_0 … y_{j-1}``, and predicts ``y_j``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..aggregation import kv_local_pass
from ..candidates import CandidateProjections
from ..errors import FocusConfigError
from ..rotary import KeyRotation
from ..runner import ModelRunner
from .config import LOSSES

KV = tuple[list[torch.Tensor], list[torch.Tensor]]  # per layer keys and values [batch, kv_heads, T, head_dim]


@dataclass(frozen=True)
class Example:
    chunks: torch.Tensor  # [n, C] memory chunks
    local: torch.Tensor  # [L] local context; the dynamic prompt is its tail
    targets: torch.Tensor  # [k]
    kind: str  # the loss: one of LOSSES


def make_example(
    window: list[int], kind: str, chunk_size: int, local_tokens: int, target_tokens: int, rng: random.Random
) -> Example:
    """Lay out a token window as an example: ``memory | local | targets`` (continuation, distill) or a
    local span copied from inside the memory and what follows it there (repetition)."""
    if kind in ("continuation", "distill"):
        memory_len = len(window) - local_tokens - target_tokens
        memory = window[:memory_len]
        local = window[memory_len : memory_len + local_tokens]
        targets = window[memory_len + local_tokens :]
    elif kind == "repetition":
        memory = window
        start = rng.randrange(len(memory) - local_tokens - target_tokens + 1)
        local = memory[start : start + local_tokens]
        targets = memory[start + local_tokens : start + local_tokens + target_tokens]
    else:
        raise FocusConfigError(f"unknown loss {kind!r}; expected one of {LOSSES}", setting="losses")
    n = len(memory) // chunk_size
    return Example(
        chunks=torch.tensor(memory[: n * chunk_size]).view(n, chunk_size),
        local=torch.tensor(local),
        targets=torch.tensor(targets),
        kind=kind,
    )


def kl_divergence(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student); both are log-probabilities ``[k, vocab]``."""
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


class CandidateObjective(nn.Module):
    """Frozen causal LM + trainable :class:`CandidateProjections`; ``forward(example)`` is the loss.

    Consecutive examples over the same memory (the same chunks) reuse the frozen chunk prefixes and the
    teacher's KV of the memory: only what depends on the local context and the targets is recomputed.
    """

    def __init__(
        self, model: nn.Module, projections: CandidateProjections, bos_token_id: int | None, dynamic_prompt_len: int
    ):
        super().__init__()
        self.model, self.projections = model, projections
        self.runner = ModelRunner(model)
        self.runner.candidates = projections
        self.bos = [] if bos_token_id is None else [bos_token_id]
        self.dynamic_prompt_len = dynamic_prompt_len
        self._memory: torch.Tensor | None = None  # the chunks the cached prefixes and teacher KV belong to
        self._prefixes: KV | None = None
        self._teacher: KV | None = None

    def forward(self, example: Example) -> torch.Tensor:
        if example.kind == "distill":
            student = torch.log_softmax(self.student_logits(example), dim=-1)  # [k, vocab]
            return kl_divergence(self.teacher_logprobs(example), student)
        return -self.logprobs(example).mean()

    def logprobs(self, example: Example) -> torch.Tensor:
        """Log-probabilities ``[k]`` of the targets, as the engine's ``kv`` aggregation gives them."""
        logp = torch.log_softmax(self.student_logits(example), dim=-1)
        targets = example.targets.to(logp.device)
        return logp[torch.arange(targets.numel(), device=logp.device), targets]

    def student_logits(self, example: Example) -> torch.Tensor:
        """fp32 next-token logits ``[k, vocab]`` at the ``k`` target positions through the ``kv`` path."""
        device = self.runner.device
        chunks, local, targets = (t.to(device) for t in (example.chunks, example.local, example.targets))
        n, k, d = chunks.shape[0], targets.numel(), local[-self.dynamic_prompt_len :]
        cache = _cache(self.model, self._chunk_prefixes(chunks))
        first = len(self.bos) + chunks.shape[1]
        if d.numel() > 1:  # 2. the ordinary dynamic-prompt tokens
            with torch.no_grad():
                positions = torch.arange(first, first + d.numel() - 1, device=device).expand(n, -1)
                self.runner.hidden_states(d[:-1].expand(n, -1), positions, cache, None)
        first += d.numel() - 1  # the position of d[-1]
        steps = torch.cat([d[-1:], targets[:-1]]).expand(n, -1)  # [n, k]: 3. the candidates of the k steps
        positions = torch.arange(first, first + k, device=device).expand(n, -1)
        self.runner.hidden_states(steps, positions, cache, None, torch.ones_like(steps, dtype=torch.bool))
        keys = [layer.keys[:, :, -k:].permute(2, 0, 1, 3) for layer in cache.layers]  # [k, n, kv_heads, hd]
        values = [layer.values[:, :, -k:].permute(2, 0, 1, 3) for layer in cache.layers]
        rows = torch.cat([local, targets[:-1]]).expand(k, -1)  # [k, L + k - 1]: 4. one local pass per step
        hidden = kv_local_pass(self.runner, KeyRotation.of(self.model), keys, values, positions.T, rows)
        at = local.numel() - 1 + torch.arange(k, device=device)
        return self.runner.logits(hidden[torch.arange(k, device=device), at])  # [k, vocab]

    @torch.no_grad()
    def teacher_logprobs(self, example: Example) -> torch.Tensor:
        """The frozen model's log-probabilities ``[k, vocab]`` of each target position, reading
        ``[BOS] + memory + local + targets`` with ordinary attention (the memory's KV is cached)."""
        device = self.runner.device
        chunks, local, targets = (t.to(device) for t in (example.chunks, example.local, example.targets))
        self._use_memory(chunks)
        if self._teacher is None:
            ids = torch.cat([torch.tensor(self.bos, device=device, dtype=chunks.dtype), chunks.flatten()])[None]
            cache = DynamicCache(config=self.model.config)
            self.runner.hidden_states(ids, torch.arange(ids.shape[1], device=device)[None], cache, None)
            self._teacher = _layers(cache)
        tail = torch.cat([local, targets[:-1]])[None]  # [1, L + k - 1]
        start = len(self.bos) + chunks.numel()
        positions = torch.arange(start, start + tail.shape[1], device=device)[None]
        hidden = self.runner.hidden_states(tail, positions, _cache(self.model, self._teacher), None)
        return torch.log_softmax(self.runner.logits(hidden[0, local.numel() - 1 :]), dim=-1)

    @torch.no_grad()
    def _chunk_prefixes(self, chunks: torch.Tensor) -> KV:
        """KV of ``[BOS] + chunk_i`` for every chunk, ``[n, kv_heads, 1 + C, head_dim]`` per layer."""
        self._use_memory(chunks)
        if self._prefixes is None:
            n, width = chunks.shape[0], len(self.bos) + chunks.shape[1]
            bos = torch.tensor(self.bos, device=chunks.device, dtype=chunks.dtype).expand(n, -1)
            cache = DynamicCache(config=self.model.config)
            positions = torch.arange(width, device=chunks.device).expand(n, -1)
            self.runner.hidden_states(torch.cat([bos, chunks], dim=1), positions, cache, None)
            self._prefixes = _layers(cache)
        return self._prefixes

    def _use_memory(self, chunks: torch.Tensor) -> None:
        """Drop the cached prefixes and teacher KV unless they belong to these chunks."""
        if self._memory is None or self._memory.shape != chunks.shape or not torch.equal(self._memory, chunks):
            self._memory, self._prefixes, self._teacher = chunks, None, None


def _layers(cache: DynamicCache) -> KV:
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _cache(model: nn.Module, kv: KV) -> DynamicCache:
    """A fresh cache holding ``kv``; what is appended to it later leaves ``kv`` untouched."""
    cache = DynamicCache(config=model.config)
    for layer, (k, v) in enumerate(zip(*kv)):
        cache.update(k, v, layer)
    return cache
