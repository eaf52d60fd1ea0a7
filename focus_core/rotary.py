"""Moving cached keys to new positions with the model's own rotary embedding (RoPE).

A key cached at position ``p`` holds ``R(p) k``; rotating it by ``R(s)`` gives ``R(p + s) k``, the key
the model would have written at ``p + s``. ``focus`` reuses chunk prefixes this way (each chunk moved to
the positions it takes in the joint sequence) and ``kv`` moves candidate entries next to the local
context. Models whose layers differ in RoPE (Gemma 3: base 10K on sliding-window layers, 1M on global
ones) are rotated layer by layer with each layer's own frequencies.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves along the last dimension: RoPE's rotation by 90
    degrees, so that ``x * cos + rotate_half(x) * sin`` rotates ``x``."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class KeyRotation:
    """The model's rotary embedding as a rotation of keys already embedded, per layer."""

    def __init__(self, module: nn.Module, layer_types: list[str] | None = None):
        self.module = module
        self.layer_types = layer_types  # per layer, where the module computes RoPE per layer type

    @classmethod
    def of(cls, model: PreTrainedModel) -> KeyRotation | None:
        """The model's rotation, or None for a model without a rotary embedding (absolute positions)."""
        module = getattr(model.get_decoder(), "rotary_emb", None)
        if module is None:
            return None
        per_type = "layer_type" in inspect.signature(inspect.unwrap(type(module).forward)).parameters
        return cls(module, list(model.config.layer_types) if per_type else None)

    def move(self, keys: torch.Tensor, shift: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """Layer ``layer``'s post-RoPE keys moved by ``shift`` positions: ``R(p + shift) k = R(shift) R(p) k``.

        keys: ``[n, kv_heads, head_dim]`` with shift ``[n]``, or any ``[..., head_dim]`` with one shift
        ``[1]`` (integer positions, may be negative). Scaled RoPE variants are honoured (the module supplies
        cos/sin); its attention scaling (YaRN, longrope) is divided out, as the keys carry it once."""
        kind = {} if self.layer_types is None else {"layer_type": self.layer_types[layer]}
        probe = torch.zeros(1, dtype=torch.float32, device=keys.device)
        cos, sin = self.module(probe, shift[None, :].to(keys.device), **kind)  # [1, n, rot_dim]
        scaling = getattr(self.module, f"{kind['layer_type']}_attention_scaling" if kind else "attention_scaling", 1.0)
        scaling = scaling or 1.0
        cos, sin = (cos[0] / scaling)[:, None, :], (sin[0] / scaling)[:, None, :]  # [n, 1, rot_dim]
        rot_dim = cos.shape[-1]
        k = keys.float()
        k_rot, k_pass = k[..., :rot_dim], k[..., rot_dim:]
        return torch.cat([k_rot * cos + rotate_half(k_rot) * sin, k_pass], dim=-1).to(keys.dtype)

    def move_layers(self, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Every layer's keys moved by one ``shift`` [1]. keys: ``[layers, kv_heads, T, head_dim]``."""
        if self.layer_types is None:  # one RoPE for all layers: one rotation
            return self.move(keys, shift)
        return torch.stack([self.move(k, shift, layer) for layer, k in enumerate(keys)])
