"""The engine's CPU kernels: linear layers over pre-packed weights, and the attention of one query.

**Packed linear weights.** PyTorch's ``F.linear`` on CPU streams a bf16 weight at about half the copy
bandwidth in a decoding step's matrix-vector products (~15 GB/s on a 2-core AVX-512 EPYC); oneDNN over
the same weight reordered once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``)
streams it at ~30 GB/s, gives the same bf16 result bit for bit, and is ~15% faster on an encoding
micro-batch too (docs/benchmarks.md, "Machine limit"). :func:`pack_linears` turns a model's plain
``nn.Linear`` modules into :class:`PackedLinear`, which keeps such a copy (made at its first engine
forward, made again if the weight changes) and uses it in the engine's forwards without autograd.
:class:`FusedLinears` does the same for layers that read one input, their weights stacked into one
product (the engine's decoding step, :mod:`focus_core.decode_step`).

**One query's attention.** PyTorch's CPU flash kernel (what ``sdpa`` runs) splits its work by blocks
of queries; a decoding step has one query per head, so the kernel runs nearly serial and, in bf16,
takes ~0.5 ms a layer over 1K keys where two small matmuls take ~0.09 ms (2-core AVX-512 EPYC;
docs/benchmarks.md, "Machine limit").
:func:`single_query_attention` is those two matmuls: scores in fp32, the weighted sum of the values in
the cache's dtype, the same result as ``sdpa`` to bf16 rounding.

Both serve only the engine's own forwards (:func:`engine_forward`, entered by the model runner): a model
the engine wraps still runs ``F.linear`` and ``sdpa`` unchanged when the caller uses it directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_in_engine: contextvars.ContextVar[bool] = contextvars.ContextVar("focus_engine_forward", default=False)

HALF = (torch.bfloat16, torch.float16)

# the packed copy of each PackedLinear's weight, and the (storage, version) of the weight it was made from
_packed: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def engine_forward() -> Iterator[None]:
    """Within this block, the attention of one query per sequence runs :func:`single_query_attention`."""
    token = _in_engine.set(True)
    try:
        yield
    finally:
        _in_engine.reset(token)


def serves(implementation: str, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether this call of ``implementation`` (the model's attention) is one :func:`single_query_attention`
    computes as transformers' ``sdpa`` would: an engine forward on CPU in half precision, one query per
    sequence, and none of the arguments ``sdpa`` reads besides the mask and the scaling (dropout, a
    position bias, softcapping, which it refuses)."""
    return (
        _in_engine.get()
        and implementation == "sdpa"
        and query.shape[2] == 1
        and query.device.type == "cpu"
        and query.dtype in HALF
        and not kwargs.get("dropout")
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )


def single_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """``softmax(q k^T * scaling + mask) v`` for one query per head.

    query: ``[b, heads, 1, d]``; key, value: ``[b, kv_heads, keys, d]`` (grouped-query: head ``h`` reads
    kv head ``h // (heads / kv_heads)``); mask: ``None``, or ``[b, 1 | heads, 1, keys]`` boolean (``True``
    attends) or additive; ``scaling``: ``None`` for ``d ** -0.5``. Returns ``[b, 1, heads, d]``, the layout
    transformers' attention functions give.
    """
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(b, kv_heads, groups, d).float()  # the heads that share a kv head, side by side
    scale = d**-0.5 if scaling is None else scaling
    scores = (q @ key.float().transpose(-1, -2)) * scale  # [b, kv_heads, groups, keys]
    if mask is not None:  # to [b | 1, kv_heads | 1, groups | 1, keys]
        rows, keys = mask.shape[0], mask.shape[-1]
        mask = mask.reshape(rows, 1, 1, keys) if mask.shape[1] == 1 else mask.reshape(rows, kv_heads, groups, keys)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    out = weights @ value  # [b, kv_heads, groups, d]
    return out.reshape(b, 1, heads, d)


@functools.cache
def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes oneDNN's CPU linear takes on this machine: fp32, and bf16 where the CPU has it."""
    if not torch.backends.mkldnn.is_available():
        return ()
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose engine forwards on CPU run oneDNN over a packed copy of the weight.

    Elsewhere (the caller's own forwards, training with autograd, another device) it is ``nn.Linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_packed(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, packed again if the weight was replaced or changed in place."""
        made_from = weight_state(self.weight)
        held = _packed.get(self)
        if held is None or held[0] != made_from:
            held = (made_from, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1))
            _packed[self] = held
        return held[1]


def runs_packed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of ``x`` with ``weight`` runs over a packed copy: in an engine forward without
    autograd, on CPU, in a dtype oneDNN takes here."""
    return (
        _in_engine.get()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dim() > 1
        and weight.dtype in packable_dtypes()
        and not torch.is_grad_enabled()
    )


def weight_state(weight: torch.Tensor) -> tuple[int, int]:
    """What a packed copy of ``weight`` was made from: its storage and version (an inference tensor, made
    under ``torch.inference_mode``, keeps no version: its storage alone)."""
    return weight.data_ptr(), -1 if weight.is_inference() else weight._version


class FusedLinears:
    """Linear layers that read the same input (a layer's query, key and value projections; an MLP's gate
    and up projections), their outputs side by side: in the engine's forwards on CPU one product over a
    packed copy of their weights stacked (a decoding step's small products are bound by latency more than
    by bandwidth: SmolLM2's three attention projections take ~40% longer apart), elsewhere each layer's
    own ``forward`` (also while the model is :func:`unpacked`). Either way the layers' own outputs, bit for
    bit."""

    def __init__(self, *linears: nn.Linear, fuse: bool = True):
        self.linears, self.fuse = linears, fuse
        self._held: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., sum of the layers' out_features]``."""
        first = self.linears[0]
        if not (self.fuse and type(first) is PackedLinear and runs_packed(x, first.weight)):
            return torch.cat([m.forward(x) for m in self.linears], dim=-1)
        weight, bias = self._packed()
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def _packed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weights side by side in oneDNN's layout and the biases (zeros where a layer has none), made
        again if a weight was replaced or changed."""
        made_from = tuple(weight_state(t) for m in self.linears for t in (m.weight, m.bias) if t is not None)
        if self._held is None or self._held[0] != made_from:
            weight = torch.cat([m.weight.detach() for m in self.linears])
            biases = [m.bias if m.bias is not None else weight.new_zeros(m.out_features) for m in self.linears]
            bias = torch.cat(biases).detach() if any(m.bias is not None for m in self.linears) else None
            self._held = (made_from, torch.ops.mkldnn._reorder_linear_weight(weight, 1), bias)
        return self._held[1], self._held[2]


def pack_linears(model: nn.Module, memory_available: int) -> int:
    """Make ``model``'s plain ``nn.Linear`` modules whose weights are on the CPU in a dtype oneDNN takes
    :class:`PackedLinear` (idempotent), where their packed copies need at most a quarter of
    ``memory_available`` bytes; returns how many linear layers the engine's forwards run packed."""
    dtypes = packable_dtypes()
    linears = [
        m
        for m in model.modules()
        if type(m) in (nn.Linear, PackedLinear) and m.weight.device.type == "cpu" and m.weight.dtype in dtypes
    ]
    plain = [m for m in linears if type(m) is nn.Linear]  # those packed already have their memory
    if 4 * weight_bytes(plain) > memory_available:
        return len(linears) - len(plain)
    for module in plain:
        module.__class__ = PackedLinear
    return len(linears)


def weight_bytes(linears: Iterable[nn.Module]) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in linears)


@contextlib.contextmanager
def unpacked(model: nn.Module) -> Iterator[None]:
    """Within this block ``model``'s :class:`PackedLinear` modules are plain ``nn.Linear``: the reference
    the packed path is compared with (not for use while other threads run the model)."""
    packed = [m for m in model.modules() if type(m) is PackedLinear]
    for module in packed:
        module.__class__ = nn.Linear
    try:
        yield
    finally:
        for module in packed:
            module.__class__ = PackedLinear
