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


# entropy's rows of different lengths (left padding, a mask at every step), select's one sequence
LONG_PROMPT_MODES = pytest.mark.parametrize(
    "settings",
    [{"aggregation": "entropy"}, {"aggregation": "select", "select_tokens": 48, "passage_tokens": 16}],
    ids=["entropy", "select"],
)


def half_engine(arch: str, tokenizer, **overrides) -> FocusEngine:
    return FocusEngine(tiny_model(arch).to(torch.bfloat16), tokenizer, TINY_CONFIG.replace(**overrides))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_bf16_decoding_equals_transformers_generate(tokenizer, arch):
    """A short prompt decoded by the engine (the kernel at every step) gives the tokens transformers'
    generate gives in bf16 (sdpa at every step); Gemma 3's sliding layers mask their window."""
    engine = half_engine(arch, tokenizer, max_new_tokens=12)
    ids = random_ids(60, seed=3)
    assert engine.generate_ids(ids) == plain_greedy(engine.model, ids, 12)


@LONG_PROMPT_MODES
def test_bf16_long_prompt_decodes_the_same_without_the_kernel(tokenizer, monkeypatch, settings):
    """A long prompt decodes the same tokens with the kernel as with sdpa: entropy's rows of different
    lengths (left padding, a mask at every step), select's one sequence over its selection."""
    engine = half_engine("llama", tokenizer, max_new_tokens=10, **settings)
    ids = random_ids(LONG, seed=5)
    fast = engine.generate_ids(ids)
    monkeypatch.setattr(kernels, "serves", lambda *args: False)
    assert engine.generate_ids(ids) == fast


def packed_dtypes() -> list:
    return [
        pytest.param(d, marks=pytest.mark.skipif(d not in kernels.packable_dtypes(), reason="no oneDNN bf16"))
        for d in (torch.float32, torch.bfloat16)
    ]


@pytest.mark.parametrize("dtype", packed_dtypes())
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 3, 48), (2, 1, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_linear_equals_f_linear(dtype, shape, bias):
    """In an engine forward a PackedLinear runs oneDNN over its packed weight; elsewhere it is nn.Linear."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias).to(dtype)
    kernels.pack_linears(linear, memory_available=2**40)
    assert type(linear) is kernels.PackedLinear
    x = torch.randn(*shape).to(dtype)
    expected = F.linear(x, linear.weight, linear.bias)
    with torch.inference_mode(), kernels.engine_forward():
        out = linear(x)
    assert out.shape == expected.shape and out.dtype == dtype
    torch.testing.assert_close(out, expected)


def test_a_packed_linear_follows_its_weight_and_leaves_autograd_to_f_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    kernels.pack_linears(linear, memory_available=2**40)
    x = torch.randn(3, 16)
    with torch.no_grad(), kernels.engine_forward():
        before = linear(x)
        linear.weight.mul_(2)  # changed in place: packed again
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))
        linear.weight = torch.nn.Parameter(torch.ones(8, 16))  # replaced
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))
    assert not torch.allclose(before, linear(x).detach())
    with kernels.engine_forward():  # gradients enabled: nn.Linear's own path, differentiable
        linear(x.requires_grad_()).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.sum(0).expand(3, -1))


def test_a_packed_linear_whose_model_moved_to_a_dtype_onednn_does_not_take_is_nn_linear_again():
    linear = torch.nn.Linear(16, 8)
    kernels.pack_linears(linear, memory_available=2**40)
    linear.half()  # fp16: no oneDNN linear on most CPUs
    x = torch.randn(3, 16).half()
    with torch.inference_mode(), kernels.engine_forward():
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))


def test_a_linear_made_under_inference_mode_is_packed_too():
    with torch.inference_mode():
        linear = torch.nn.Linear(16, 8)
        x = torch.randn(3, 16)
    kernels.pack_linears(linear, memory_available=2**40)
    with torch.inference_mode(), kernels.engine_forward():
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))


def test_linears_are_packed_only_where_the_copies_fit_a_quarter_of_the_memory():
    model = tiny_model("llama")
    weights = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert kernels.pack_linears(model, memory_available=4 * weights - 1) == 0
    assert not any(type(m) is kernels.PackedLinear for m in model.modules())
    packed = kernels.pack_linears(model, memory_available=4 * weights)
    assert packed == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 0
    assert kernels.pack_linears(model, memory_available=4 * weights) == packed  # idempotent


@pytest.mark.parametrize("dtype", packed_dtypes())
@LONG_PROMPT_MODES
def test_a_long_prompt_decodes_the_same_with_packed_and_plain_linears(tokenizer, dtype, settings):
    """The engine's forwards (select's early exit and read, entropy's rows, every decoding step) give
    the same tokens over packed weights as over nn.Linear's."""
    engine = FocusEngine(tiny_model("llama").to(dtype), tokenizer, TINY_CONFIG.replace(max_new_tokens=10, **settings))
    assert any(type(m) is kernels.PackedLinear for m in engine.model.modules())
    ids = random_ids(LONG, seed=5)
    fast = engine.generate_ids(ids)
    with kernels.unpacked(engine.model):
        assert not any(type(m) is kernels.PackedLinear for m in engine.model.modules())
        assert engine.generate_ids(ids) == fast
    assert any(type(m) is kernels.PackedLinear for m in engine.model.modules())
