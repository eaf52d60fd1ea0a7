"""The half-precision decoding attention (focus_core.kernels) against PyTorch's own scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG, random_ids, tiny_model
from test_engine import LONG, plain_greedy

from focus_core import FocusEngine, kernels


def attention_inputs(dtype: torch.dtype, groups: int, mask: str, rows: int = 2, keys: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kv_heads, d = 2, 16
    query = torch.randn(rows, kv_heads * groups, 1, d, generator=g).to(dtype)
    key, value = (torch.randn(rows, kv_heads, keys, d, generator=g).to(dtype) for _ in range(2))
    valid = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    valid[0, ..., :7] = False  # row 0 is left-padded
    if mask == "none":
        return query, key, value, None
    if mask == "bool":
        return query, key, value, valid
    if mask == "per head":
        return query, key, value, valid.expand(-1, kv_heads * groups, -1, -1).clone()
    additive = torch.zeros(rows, 1, 1, keys).masked_fill(~valid, float("-inf")).to(dtype)
    return query, key, value, additive


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("mask", ["none", "bool", "per head", "additive"])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_single_query_attention_equals_sdpa(dtype, groups, mask, scaling):
    query, key, value, attn_mask = attention_inputs(dtype, groups, mask)
    expected = F.scaled_dot_product_attention(  # in fp32: the reference both half-precision paths round
        query.float(),
        key.float(),
        value.float(),
        attn_mask=None if attn_mask is None else attn_mask if attn_mask.dtype == torch.bool else attn_mask.float(),
        scale=scaling,
        enable_gqa=True,
    ).transpose(1, 2)
    out = kernels.single_query_attention(query, key, value, attn_mask, scaling)
    assert out.shape == expected.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


def test_it_serves_only_the_engine_s_half_precision_single_queries():
    one = torch.zeros(1, 3, 1, 8, dtype=torch.bfloat16)
    assert not kernels.serves("sdpa", one, {})  # outside the engine's forwards: sdpa as the caller chose
    with kernels.engine_forward():
        assert kernels.serves("sdpa", one, {"scaling": 0.1, "sliding_window": 16, "dropout": 0.0})
        assert not kernels.serves("eager", one, {})
        assert not kernels.serves("sdpa", one.float(), {})
        assert not kernels.serves("sdpa", torch.zeros(1, 3, 2, 8, dtype=torch.bfloat16), {})
        assert not kernels.serves("sdpa", one, {"dropout": 0.1})
        assert not kernels.serves("sdpa", one, {"softcap": 30.0})
        assert not kernels.serves("sdpa", one, {"position_bias": torch.zeros(1)})
    assert not kernels.serves("sdpa", one, {})


def half_engine(arch: str, tokenizer, **overrides) -> FocusEngine:
    return FocusEngine(tiny_model(arch).to(torch.bfloat16), tokenizer, TINY_CONFIG.replace(**overrides))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_bf16_decoding_equals_transformers_generate(tokenizer, arch):
    """A short prompt decoded by the engine (the kernel at every step) gives the tokens transformers'
    generate gives in bf16 (sdpa at every step); Gemma 3's sliding layers mask their window."""
    engine = half_engine(arch, tokenizer, max_new_tokens=12)
    ids = random_ids(60, seed=3)
    assert engine.generate_ids(ids) == plain_greedy(engine.model, ids, 12)


@pytest.mark.parametrize(
    "settings",
    [{"aggregation": "entropy"}, {"aggregation": "select", "select_tokens": 48, "passage_tokens": 16}],
    ids=["entropy", "select"],
)
def test_bf16_long_prompt_decodes_the_same_without_the_kernel(tokenizer, monkeypatch, settings):
    """A long prompt decodes the same tokens with the kernel as with sdpa: entropy's rows of different
    lengths (left padding, a mask at every step), select's one sequence over its selection."""
    engine = half_engine("llama", tokenizer, max_new_tokens=10, **settings)
    ids = random_ids(LONG, seed=5)
    fast = engine.generate_ids(ids)
    monkeypatch.setattr(kernels, "serves", lambda *args: False)
    assert engine.generate_ids(ids) == fast
