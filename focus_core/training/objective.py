"""The paper's training objective for the candidate projections (docs/design.md), teacher-forced.

One example is ``memory | local | targets`` laid out exactly as the engine lays out a prompt (memory
cut into chunks of ``C`` tokens, dynamic prompt = last ``P`` tokens of ``local``):

- **continuation**: memory, local span and targets are consecutive text; the targets follow the local span;
- **repetition**: the local span is copied from inside the memory; the targets are what follows it there.

Forward, for ``k`` targets at once:

1. ``[BOS] + chunk_i + d[:-1]`` for every chunk, frozen and without gradients;
2. ``[d[-1], y_0 … y_{k-2}]`` appended to every chunk with the candidate projections (with gradients):
   the ``j``-th of these tokens is the candidate of decoding step ``j``, exactly as in generation;
3. ``k`` local passes: pass ``j`` sees the ``n`` candidate entries of step ``j`` re-positioned to
   ``0 … n-1``, then ``local + y_0 … y_{k-2}``, and predicts ``y_j`` at position ``|local| - 1 + j``
   (later tokens in the row cannot influence it: attention is causal).

The loss is the mean cross-entropy of the ``k`` targets; only candidate weights receive gradients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..candidates import CandidateProjections, candidate_positions, reposition_keys
from ..runner import cache_argument

LOSSES = ("continuation", "repetition")


@dataclass(frozen=True)
class Example:
    chunks: torch.Tensor  # [n, C] memory chunks
    local: torch.Tensor  # [L] local context; the dynamic prompt is its tail
    targets: torch.Tensor  # [k]
    kind: str  # "continuation" or "repetition"


def make_example(
    window: list[int], kind: str, chunk_size: int, local_tokens: int, target_tokens: int, rng: random.Random
) -> Example:
    """Lay out a token window (``example_length`` tokens) as an example of the given loss."""
    if kind == "continuation":
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
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    n = len(memory) // chunk_size
    return Example(
        chunks=torch.tensor(memory[: n * chunk_size]).view(n, chunk_size),
        local=torch.tensor(local),
        targets=torch.tensor(targets),
        kind=kind,
    )


def example_length(kind: str, memory_tokens: int, local_tokens: int, target_tokens: int) -> int:
    return memory_tokens + local_tokens + target_tokens if kind == "continuation" else memory_tokens


class CandidateObjective(nn.Module):
    """Frozen causal LM + trainable :class:`CandidateProjections`; ``forward(example)`` is the loss."""

    def __init__(
        self, model: nn.Module, projections: CandidateProjections, bos_token_id: int | None, dynamic_prompt_len: int
    ):
        super().__init__()
        self.model, self.projections = model, projections
        self.bos = [] if bos_token_id is None else [bos_token_id]
        self.dynamic_prompt_len = dynamic_prompt_len
        self._cache = cache_argument(model)

    def forward(self, example: Example) -> torch.Tensor:
        return -self.logprobs(example).mean()

    def logprobs(self, example: Example) -> torch.Tensor:
        """Log-probabilities ``[k]`` of the targets, as the engine's ``kv`` aggregation would give them."""
        device = next(self.model.parameters()).device
        chunks, local, targets = (t.to(device) for t in (example.chunks, example.local, example.targets))
        n, k = chunks.shape[0], targets.numel()
        d = local[-self.dynamic_prompt_len :]
        base = self.model.base_model
        with torch.no_grad():  # 1. chunk prefixes and the ordinary dynamic-prompt tokens
            prefix = torch.cat(
                [torch.tensor(self.bos, device=device).expand(n, -1), chunks, d[:-1].expand(n, -1)], dim=1
            )
            cache = DynamicCache(config=self.model.config)
            base(input_ids=prefix, use_cache=True, **{self._cache: cache})
        # 2. the candidate tokens of the k decoding steps, in every chunk, with gradients
        first = prefix.shape[1]  # the position of d[-1]
        steps = torch.cat([d[-1:], targets[:-1]]).expand(n, -1)  # [n, k]
        positions = torch.arange(first, first + k, device=device).expand(n, -1)
        with candidate_positions(torch.ones(n, k, dtype=torch.bool, device=device), self.projections):
            base(input_ids=steps, position_ids=positions, use_cache=True, **{self._cache: cache})
        # 3. one local pass per step, behind that step's n candidate entries
        rotary = self.model.get_decoder().rotary_emb
        shift = (torch.arange(n, device=device)[None, :] - positions[0][:, None]).reshape(-1)  # [k * n]
        memory = DynamicCache(config=self.model.config)
        for idx, layer in enumerate(cache.layers):
            keys, values = layer.keys[:, :, -k:], layer.values[:, :, -k:]  # [n, kv_heads, k, head_dim]
            kv_heads, head_dim = keys.shape[1], keys.shape[3]
            keys = keys.permute(2, 0, 1, 3).reshape(k * n, kv_heads, head_dim)  # row j * n + i: step j, chunk i
            keys = reposition_keys(keys, shift, rotary).view(k, n, kv_heads, head_dim).transpose(1, 2)
            memory.update(keys, values.permute(2, 1, 0, 3), idx)  # [k, kv_heads, n, head_dim]
        rows = torch.cat([local, targets[:-1]]).expand(k, -1)  # [k, L + k - 1]
        row_positions = torch.arange(n, n + rows.shape[1], device=device).expand(k, -1)
        hidden = base(input_ids=rows, position_ids=row_positions, **{self._cache: memory}).last_hidden_state
        last = hidden[torch.arange(k, device=device), local.numel() - 1 + torch.arange(k, device=device)]  # [k, H]
        logits = self.model.get_output_embeddings()(last).float()
        return torch.log_softmax(logits, dim=-1)[torch.arange(k, device=device), targets]
