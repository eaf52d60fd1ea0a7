"""Candidate projections and RoPE re-positioning for ``kv`` aggregation (docs/design.md).

The candidate token of each chunk is processed, in every layer, with its own ``Wq', Wk', Wv', Wo'``
(full copies, or the frozen weights plus a low-rank delta) while every other token uses the frozen ones.
The candidate weights live outside the model, in :class:`CandidateProjections`, and are applied through
forward hooks on the frozen projections: the model's modules and state dict stay exactly as loaded, and
the hooks are inert unless a forward pass is run under :func:`candidate_positions`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from .errors import FocusConfigError, UnsupportedModelError

PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
# Architectures whose attention is RoPE (rotate-half convention, per layer type where layers differ) with
# separate q/k/v/o projections.
KV_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
        "gemma3_text",
    }
)

_active: contextvars.ContextVar[tuple[torch.Tensor, CandidateProjections] | None] = contextvars.ContextVar(
    "candidate_positions", default=None
)


@contextlib.contextmanager
def candidate_positions(mask: torch.Tensor | None, projections: CandidateProjections | None) -> Iterator[None]:
    """Within this block, positions where ``mask`` ([batch, seq], bool) is true use the candidate weights
    of ``projections`` (other projections hooked into the same model stay inert).

    The mask is held in a context variable, so concurrent threads and tasks never see each other's.
    """
    token = _active.set(None if mask is None or projections is None else (mask, projections))
    try:
        yield
    finally:
        _active.reset(token)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer, or a clear error if the model cannot serve ``kv``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in KV_MODEL_TYPES:
        raise UnsupportedModelError(
            f"aggregation='kv' needs RoPE attention with q_proj/k_proj/v_proj/o_proj (supported model types: "
            f"{', '.join(sorted(KV_MODEL_TYPES))}); {model_type!r} is not one of them. Use aggregation='entropy'."
        )
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None or getattr(decoder, "rotary_emb", None) is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no decoder layers with a rotary embedding")
    attns = [layer.self_attn for layer in layers]
    for attn in attns:
        missing = [p for p in PROJECTIONS if not isinstance(getattr(attn, p, None), nn.Linear)]
        if missing:
            raise UnsupportedModelError(f"{type(attn).__name__} lacks linear projections {missing} needed by kv")
    return attns


class FullCandidate(nn.Module):
    """A trainable copy of a frozen projection, used in its place at candidate positions."""

    def __init__(self, base: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.linear = nn.Linear(
            base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device, dtype=dtype
        )
        with torch.no_grad():
            self.linear.weight.copy_(base.weight)
            if base.bias is not None:
                self.linear.bias.copy_(base.bias)

    def forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype)).to(base_out.dtype)


class LowRankCandidate(nn.Module):
    """The frozen projection plus a trainable rank-``r`` delta ``B A`` (``B`` starts at zero)."""

    def __init__(self, base: nn.Linear, rank: int, dtype: torch.dtype):
        super().__init__()
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=5**0.5)

    def forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        delta = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return base_out + delta.to(base_out.dtype)


class CandidateProjections(nn.Module):
    """Per layer, the candidate versions of the frozen q/k/v/o projections.

    ``rank=None`` keeps full copies (in ``dtype``, default the model's); ``rank=r`` keeps only low-rank
    deltas (default fp32). Both start out equal to the frozen weights.
    """

    def __init__(self, model: nn.Module, rank: int | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self._attentions = attention_modules(model)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise FocusConfigError(f"candidate rank must be a positive int or None, got {rank!r}")
        self.rank = rank
        if dtype is None:
            dtype = torch.float32 if rank else next(model.parameters()).dtype

        def make(base: nn.Linear) -> nn.Module:
            return LowRankCandidate(base, rank, dtype) if rank else FullCandidate(base, dtype)

        self.layers = nn.ModuleList(
            nn.ModuleDict({name: make(getattr(attn, name)) for name in PROJECTIONS}) for attn in self._attentions
        )
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        """Hook the candidate weights into the frozen projections (idempotent)."""
        if self._hooks:
            return
        for attn, candidates in zip(self._attentions, self.layers):
            for name in PROJECTIONS:
                hook = _candidate_hook(self, candidates[name])
                self._hooks.append(getattr(attn, name).register_forward_hook(hook))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _candidate_hook(owner: CandidateProjections, candidate: nn.Module):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        active = _active.get()
        if active is None or active[1] is not owner:
            return None
        mask = active[0]
        x = args[0]  # [batch, seq, in_features]
        return output.index_put((mask,), candidate(x[mask], output[mask]))

    return hook
