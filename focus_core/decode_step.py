"""The engine's own decoding step for Llama-shaped models: one new token per row through every layer.

A decoding step of a small model is short of work and long on dispatch: transformers' forward builds a
mask, calls the rotary module, and goes through ~15 module calls, hooks and keyword plumbing per layer
before its seven matrix-vector products. On a 2-core CPU that is as long again as the products
themselves (SmolLM2-135M in bf16: ~19 ms a token, ~7 ms of it in the weights' products;
docs/benchmarks.md, "Machine limit"). :class:`LlamaStep` runs the same layers as straight tensor code:
the model's own weights through the modules' own ``forward`` (so the engine's packed linears serve
them), its own rotary module once per step, the buffer's cache layers, and
:func:`~focus_core.kernels.single_query_attention`. It computes what the model's forward computes,
operation for operation in the same dtypes (the attention as the engine's forward does it in half
precision on CPU), and so gives the same tokens.

It serves Llama, Mistral and Qwen2 (pre-norm RMSNorm layers, gated MLP, RoPE, grouped-query attention, no
query/key norms): :func:`decode_step` returns ``None`` for any other model, which then decodes through
its own forward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from .kernels import FusedLinears, PackedLinear, single_query_attention, weight_bytes

LLAMA_SHAPED = ("llama", "mistral", "qwen2")


def decode_step(model: nn.Module, memory_available: int) -> LlamaStep | None:
    """The engine's decoding step for ``model``, where it has one (see the module docstring). Its fused
    products (:class:`~focus_core.kernels.FusedLinears`) are used where the model's linears run packed and
    the engine's packed copies, these included, take at most a quarter of ``memory_available`` bytes."""
    config = model.config.get_text_config()
    if config.model_type not in LLAMA_SHAPED or not all(map(_llama_layer, model.base_model.layers)):
        return None
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return None  # per-layer windows: the model's own forward knows which layer keeps which
    fused = [m for layer in model.base_model.layers for m in _fused_linears(layer)]
    packed = [m for m in model.modules() if type(m) is PackedLinear]
    fuse = all(type(m) is PackedLinear for m in fused) and 4 * weight_bytes(fused + packed) <= memory_available
    return LlamaStep(model, fuse=fuse)


def _fused_linears(layer: nn.Module) -> list[nn.Module]:
    attention, mlp = layer.self_attn, layer.mlp
    return [attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj]


def _llama_layer(layer: nn.Module) -> bool:
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (
        attention is not None
        and mlp is not None
        and all(hasattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        and not hasattr(attention, "q_norm")
        and hasattr(layer, "input_layernorm")
        and hasattr(layer, "post_attention_layernorm")
    )


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Llama's RMSNorm (``LlamaRMSNorm.forward``'s operations): normalised in fp32, scaled in ``x``'s dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of ``x`` ``[rows, heads, 1, head_dim]`` with ``cos``/``sin`` ``[rows, 1, 1, head_dim]``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LlamaStep:
    """One decoding step of a Llama-shaped model (callable), without autograd. With ``fuse`` each layer's
    query, key and value projections run as one product, and so do its MLP's gate and up projections."""

    def __init__(self, model: nn.Module, *, fuse: bool):
        config = model.config.get_text_config()
        self.base = model.base_model
        self.heads: int = config.num_attention_heads
        self.kv_heads: int = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling: float = self.base.layers[0].self_attn.scaling
        # Mistral attends to its last ``sliding_window`` slots in every layer (its mask does it); Qwen2
        # declares a window but uses it only where ``use_sliding_window`` (its layer types say so)
        self.window: int | None = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        layers = self.base.layers
        self.qkv = [FusedLinears(a.q_proj, a.k_proj, a.v_proj, fuse=fuse) for a in (la.self_attn for la in layers)]
        self.gate_up = [FusedLinears(la.mlp.gate_proj, la.mlp.up_proj, fuse=fuse) for la in layers]

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Cache, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Last-layer hidden states ``[rows, 1, hidden]`` of one new token per row (``input_ids`` and
        ``position_ids`` ``[rows, 1]``); ``cache``'s layers take its keys and values, ``attention_mask``
        ``[rows, slots]`` (``True`` attends; ``None``: all) covers the cached slots and the new one."""
        rows = input_ids.shape[0]
        x = self.base.embed_tokens(input_ids)  # [rows, 1, hidden]
        cos, sin = self.base.rotary_emb(x, position_ids)  # [rows, 1, head_dim]
        cos, sin = cos[:, None], sin[:, None]
        mask = self._mask(attention_mask, rows, cache.layers[0].get_seq_length() + 1, x.device)
        for i, layer in enumerate(self.base.layers):
            h = rms_norm(x, layer.input_layernorm)
            x = x + self._attention(layer.self_attn, self.qkv[i](h), cos, sin, cache.layers[i], mask)
            gate, up = self.gate_up[i](rms_norm(x, layer.post_attention_layernorm)).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj.forward(layer.mlp.act_fn(gate) * up)
        return rms_norm(x, self.base.norm)

    def _mask(
        self, attention_mask: torch.Tensor | None, rows: int, keys: int, device: torch.device
    ) -> torch.Tensor | None:
        """``[rows, 1, 1, keys]`` boolean over the slots the new token attends to, or ``None`` for all."""
        if self.window is not None and keys > self.window:
            window = torch.arange(keys, device=device) >= keys - self.window
            attention_mask = window[None] if attention_mask is None else attention_mask & window
        if attention_mask is None:
            return None
        return attention_mask.expand(rows, keys)[:, None, None, :]

    def _attention(
        self,
        attention: nn.Module,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: CacheLayerMixin,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The attention block's output ``[rows, 1, hidden]`` from the query, key and value projections side
        by side, ``qkv`` ``[rows, 1, (heads + 2 kv_heads) x d]``."""
        rows, d = qkv.shape[0], self.head_dim
        qk, v = qkv.view(rows, -1, 1, d).split([self.heads + self.kv_heads, self.kv_heads], dim=1)
        q, k = rotate(qk, cos, sin).split([self.heads, self.kv_heads], dim=1)  # one RoPE for both
        keys, values = cache.update(k, v)
        out = single_query_attention(q, keys, values, mask, self.scaling)  # [rows, 1, heads, d]
        return attention.o_proj.forward(out.reshape(rows, 1, self.heads * d))
