"""The engine's own decoding step: one new token per row through every layer, as straight tensor code.

A decoding step of a small model is short of work and long on dispatch: transformers' forward builds
masks, calls the rotary module, and goes through ~15 module calls, hooks and keyword plumbing per layer
before its seven matrix-vector products. On a 2-core CPU that is as long again as the products
themselves (SmolLM2-135M in bf16: ~19 ms a token, ~7 ms of it in the weights' products;
docs/benchmarks.md, "Machine limit"). A step here runs the same layers with none of it: the model's own
weights through the modules' own ``forward`` (so the engine's packed linears serve them), each layer's
query/key/value and gate/up products fused (:class:`~focus_core.kernels.FusedLinears`), the model's own
rotary module once per step, the buffer's cache layers, and
:func:`~focus_core.kernels.single_query_attention`. It computes what the model's forward computes,
operation for operation in the same dtypes (the attention as the engine's forward does it in half
precision on CPU), and so gives the same tokens.

Two layer shapes are served: :class:`LlamaStep` (Llama, Mistral with its sliding window, Qwen2: pre-norm
RMSNorm layers, gated MLP, RoPE, grouped-query attention) and :class:`Gemma3Step` (Gemma 3: sandwich
norms, query and key norms, a sliding window and its own RoPE base on most layers). :func:`decode_step`
returns ``None`` for any other model, which then decodes through its own forward. The model runner
takes the step for one-token forwards on a CPU, where dispatch is what a step costs; on an accelerator
the model's forward keeps its own attention kernels.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from .kernels import FusedLinears, PackedLinear, single_query_attention, weight_bytes
from .rotary import rotate_half

LLAMA_SHAPED = ("llama", "mistral", "qwen2")
WINDOW_TYPES = {"full_attention": False, "sliding_attention": True}  # layer type: has a sliding window


def decode_step(model: nn.Module, memory_available: int) -> LlamaStep | None:
    """The engine's decoding step for ``model``, where it has one (see the module docstring). Its fused
    products are used where the model's linears run packed and the engine's packed copies, these
    included, take at most a quarter of ``memory_available`` bytes."""
    config, layers = model.config.get_text_config(), getattr(model.base_model, "layers", None)
    kind = {"gemma3_text": Gemma3Step, **dict.fromkeys(LLAMA_SHAPED, LlamaStep)}.get(config.model_type)
    if kind is None or layers is None or not kind.serves(config, layers):
        return None
    fused = [m for layer in layers for group in fused_groups(layer) for m in group]
    packed = [m for m in model.modules() if type(m) is PackedLinear]
    fuse = all(type(m) is PackedLinear for m in fused) and 4 * weight_bytes(fused + packed) <= memory_available
    return kind(model, fuse=fuse)


def fused_groups(layer: nn.Module) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
    """The linear layers a decoding step runs as one product each: query, key and value; gate and up."""
    attention, mlp = layer.self_attn, layer.mlp
    return (attention.q_proj, attention.k_proj, attention.v_proj), (mlp.gate_proj, mlp.up_proj)


def _has(module: nn.Module, *names: str) -> bool:
    return all(hasattr(module, name) for name in names)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of ``x`` ``[rows, heads, 1, head_dim]`` with ``cos``/``sin`` ``[rows, 1, 1, head_dim]``."""
    return x * cos + rotate_half(x) * sin


def attended(
    attention_mask: torch.Tensor | None, end: int, keys: torch.Tensor, window: int | None
) -> torch.Tensor | None:
    """``[rows | 1, 1, 1, keys]`` boolean over the ``keys`` ``[rows, kv_heads, n, d]`` a cache layer returned
    for the token at slot ``end - 1`` (slots ``end - n .. end``), or ``None`` for all: the real tokens
    among them (``attention_mask`` ``[rows, end]``; ``None``: all) within the last ``window`` slots, where
    the layer has a window."""
    first = end - keys.shape[2]
    mask = None if attention_mask is None else attention_mask[:, first:end]
    if window is not None and end - window > first:
        recent = torch.arange(first, end, device=keys.device) >= end - window
        mask = recent[None] if mask is None else mask & recent
    return None if mask is None else mask[:, None, None, :]


class LlamaStep:
    """One decoding step of a Llama-shaped model (callable), without autograd. With ``fuse`` each layer's
    query, key and value projections run as one product, and so do its MLP's gate and up projections."""

    @staticmethod
    def serves(config, layers: nn.ModuleList) -> bool:
        """Whether ``layers`` are Llama's: no query/key norms, no layer types with their own window."""
        return all(
            _has(layer, "self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
            and _has(layer.self_attn, "q_proj", "k_proj", "v_proj", "o_proj")
            and _has(layer.mlp, "gate_proj", "up_proj", "down_proj", "act_fn")
            and not hasattr(layer.self_attn, "q_norm")
            for layer in layers
        ) and all(t == "full_attention" for t in getattr(config, "layer_types", None) or ())

    def __init__(self, model: nn.Module, *, fuse: bool):
        config = model.config.get_text_config()
        self.base = model.base_model
        self.layers = self.base.layers[: config.num_hidden_layers]
        self.heads: int = config.num_attention_heads
        self.kv_heads: int = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling: float = self.layers[0].self_attn.scaling
        groups = [fused_groups(layer) for layer in self.layers]
        self.qkv = [FusedLinears(*qkv, fuse=fuse) for qkv, _ in groups]
        self.gate_up = [FusedLinears(*gate_up, fuse=fuse) for _, gate_up in groups]
        # Mistral attends to its last ``sliding_window`` slots in every layer (its mask does it); Qwen2
        # declares a window but uses it only where its layer types say so (refused in ``serves``)
        window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        self.windows: list[int | None] = [window] * len(self.layers)

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Cache, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Last-layer hidden states ``[rows, 1, hidden]`` of one new token per row (``input_ids`` and
        ``position_ids`` ``[rows, 1]``); ``cache``'s layers take its keys and values, ``attention_mask``
        ``[rows, slots]`` (``True`` attends; ``None``: all) covers the cached slots and the new one."""
        x = self.base.embed_tokens(input_ids)  # [rows, 1, hidden]
        rope = self.rope(x, position_ids)
        for i, layer in enumerate(self.layers):
            x = self.layer(i, layer, x, rope[i], cache.layers[i], attention_mask)
        return self.norm(x, self.base.norm)

    def rope(self, x: torch.Tensor, position_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, ``cos`` and ``sin`` ``[rows, 1, 1, head_dim]`` from the model's rotary module."""
        cos, sin = self.base.rotary_emb(x, position_ids)  # [rows, 1, head_dim]
        return [(cos[:, None], sin[:, None])] * len(self.layers)

    @staticmethod
    def norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """Llama's RMSNorm (``LlamaRMSNorm.forward``'s operations): normalised in fp32, scaled in ``x``'s dtype."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * h.to(x.dtype)

    def layer(self, i: int, layer: nn.Module, x: torch.Tensor, rope, cache: CacheLayerMixin, mask) -> torch.Tensor:
        x = x + self.attention(i, layer.self_attn, self.norm(x, layer.input_layernorm), rope, cache, mask)
        return x + self.mlp(i, layer.mlp, self.norm(x, layer.post_attention_layernorm))

    def attention(
        self,
        i: int,
        attention: nn.Module,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: CacheLayerMixin,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Layer ``i``'s attention block over the normalised ``h`` ``[rows, 1, hidden]``."""
        rows, d = h.shape[0], self.head_dim
        qkv = self.qkv[i](h).view(rows, -1, 1, d)  # [rows, heads + 2 kv_heads, 1, d]
        q, k = self.queries_keys(attention, qkv, *rope)
        end = cache.get_seq_length() + 1  # the new token's slot, + 1
        keys, values = cache.update(k, qkv[:, self.heads + self.kv_heads :])
        mask = attended(attention_mask, end, keys, self.windows[i])
        out = single_query_attention(q, keys, values, mask, self.scaling)  # [rows, 1, heads, d]
        return attention.o_proj.forward(out.reshape(rows, 1, self.heads * d))

    def queries_keys(
        self, attention: nn.Module, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotated queries ``[rows, heads, 1, d]`` and keys ``[rows, kv_heads, 1, d]``: one RoPE for both."""
        qk = rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
        return qk[:, : self.heads], qk[:, self.heads :]

    def mlp(self, i: int, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up[i](h).chunk(2, dim=-1)
        return mlp.down_proj.forward(mlp.act_fn(gate) * up)


class Gemma3Step(LlamaStep):
    """One decoding step of Gemma 3: its sandwich norms (before and after attention and MLP), RMSNorm
    scaled by ``1 + weight`` in fp32, query and key norms before RoPE, and per layer type a window and a
    RoPE base."""

    @staticmethod
    def serves(config, layers: nn.ModuleList) -> bool:
        """Gemma 3's text layers, causal, without attention softcapping (the attention kernel has none)."""
        return (
            all(
                _has(layer, "self_attn", "mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm")
                and _has(layer.self_attn, "q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
                and _has(layer.mlp, "gate_proj", "up_proj", "down_proj", "act_fn")
                for layer in layers
            )
            and getattr(config, "attn_logit_softcapping", None) is None
            and not getattr(config, "use_bidirectional_attention", False)
            and set(config.layer_types) <= set(WINDOW_TYPES)
        )

    def __init__(self, model: nn.Module, *, fuse: bool):
        super().__init__(model, fuse=fuse)
        config = model.config.get_text_config()
        self.layer_types: list[str] = list(config.layer_types[: len(self.layers)])
        self.windows = [config.sliding_window if WINDOW_TYPES[t] else None for t in self.layer_types]

    def rope(self, x: torch.Tensor, position_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        by_type = {t: self.base.rotary_emb(x, position_ids, t) for t in set(self.layer_types)}
        by_type = {t: (cos[:, None], sin[:, None]) for t, (cos, sin) in by_type.items()}
        return [by_type[t] for t in self.layer_types]

    @staticmethod
    def norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """Gemma 3's RMSNorm (``Gemma3RMSNorm.forward``'s operations): normalised and scaled in fp32."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps)
        return (h * (1.0 + norm.weight.float())).type_as(x)

    def layer(self, i: int, layer: nn.Module, x: torch.Tensor, rope, cache: CacheLayerMixin, mask) -> torch.Tensor:
        out = self.attention(i, layer.self_attn, self.norm(x, layer.input_layernorm), rope, cache, mask)
        x = x + self.norm(out, layer.post_attention_layernorm)
        mlp = self.mlp(i, layer.mlp, self.norm(x, layer.pre_feedforward_layernorm))
        return x + self.norm(mlp, layer.post_feedforward_layernorm)

    def queries_keys(
        self, attention: nn.Module, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm(qkv[:, : self.heads], attention.q_norm)
        k = self.norm(qkv[:, self.heads : self.heads + self.kv_heads], attention.k_norm)
        return rotate(q, cos, sin), rotate(k, cos, sin)
