"""The attention probe: where the question's queries look in one layer, and an early exit after it
(docs/design.md, "Selection").

Every attention call of a `transformers` model goes through its attention interface
(``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``), which receives the layer's queries and all
its keys after normalisation and RoPE, and the layer's own scaling. :func:`install` wraps that entry
once. The wrapper passes through (to :mod:`focus_core.kernels` where that serves the call) unless a
forward runs under :func:`probing`; then, at each probed
layer, it records how much attention each of the question's queries pays to every key (softmax
probabilities summed over heads, one row per query), and after the last probed layer it stops the forward by
raising :class:`EarlyExit`: the layers above it never run. The cache has already received that layer's
keys and values when the interface is called, so the prefix KV up to the probed layer is complete.

The probe lives in a context variable, so concurrent threads and tasks never see each other's.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import kernels


class EarlyExit(Exception):
    """Raised inside a forward after the last probed layer (caught by the runner)."""


@dataclass
class Probe:
    """What to record in one forward: the attention of the new tokens ``rows`` = ``[start, end)`` (counted
    among the forward's new tokens) at ``layers`` (an empty range: nothing, the forward only stops after
    the last of ``layers``).

    ``key_valid`` ``[batch, keys]`` marks the key slots that hold real tokens (left padding does not).
    After the forward, ``mass[layer]`` is ``[batch, rows, keys]`` fp32: each key's attention probability
    summed over heads, per recorded query.
    """

    layers: tuple[int, ...]
    rows: tuple[int, int]
    key_valid: torch.Tensor
    mass: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def exit_layer(self) -> int:
        return max(self.layers)

    def record(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float,
        softcap: float | None = None,
        window: int | None = None,
    ):
        """query: ``[b, heads, t, head_dim]``; key: ``[b, kv_heads, keys, head_dim]`` (after RoPE);
        ``window``: a sliding-window layer's span (a query sees the ``window`` slots ending at its own)."""
        b, heads, t, _ = query.shape
        keys = key.shape[2]
        start, end = self.rows
        q = query[:, :, start:end].float()  # [b, heads, rows, head_dim]
        k = key.float().repeat_interleave(heads // key.shape[1], dim=1)  # [b, heads, keys, head_dim]
        logits = (q @ k.transpose(-1, -2)) * scaling  # [b, heads, rows, keys]
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        slot = torch.arange(keys, device=q.device)
        query_slot = (keys - t + torch.arange(start, end, device=q.device))[:, None]
        causal = slot[None, :] <= query_slot  # [rows, keys]
        if window:
            causal &= slot[None, :] > query_slot - window
        allowed = causal[None, None] & self.key_valid[:, None, None, -keys:].to(q.device)
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        self.mass[layer] = probs.sum(dim=1)  # [b, rows, keys]


_active: contextvars.ContextVar[Probe | None] = contextvars.ContextVar("attention_probe", default=None)
_installed: dict[str, Callable | None] = {}  # wrapped attention implementation -> the original (None: eager)
_install_lock = threading.Lock()


@contextlib.contextmanager
def probing(probe: Probe) -> Iterator[Probe]:
    """Within this block, forwards record into ``probe`` and stop after its last layer."""
    token = _active.set(probe)
    try:
        yield probe
    finally:
        _active.reset(token)


def install(model: nn.Module) -> None:
    """Wrap the attention implementation ``model`` uses (idempotent; inert outside :func:`probing`)."""
    name = model.config.get_text_config()._attn_implementation or "eager"
    with _install_lock:
        if name in _installed:
            return
        original = ALL_ATTENTION_FUNCTIONS[name] if name in ALL_ATTENTION_FUNCTIONS else None
        _installed[name] = original
        ALL_ATTENTION_FUNCTIONS[name] = _probed(name, original)


def _probed(name: str, original: Callable | None) -> Callable:
    def attention(module: nn.Module, query, key, value, attention_mask, *args, **kwargs):
        probe, layer = _active.get(), getattr(module, "layer_idx", None)
        if probe is not None and layer in probe.layers:
            if probe.rows[1] > probe.rows[0]:
                scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
                probe.record(layer, query, key, scaling, kwargs.get("softcap"), kwargs.get("sliding_window"))
            if layer == probe.exit_layer:
                raise EarlyExit
        if kernels.serves(name, query, kwargs):
            return kernels.single_query_attention(query, key, value, attention_mask, kwargs.get("scaling")), None
        inner = original or _eager_of(module)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


def _eager_of(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file (what ``eager`` falls back to)."""
    return sys.modules[type(module).__module__].eager_attention_forward
