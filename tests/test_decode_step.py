"""The engine's own decoding step (focus_core.decode_step) against the model's own forward, and the fused
products it runs (focus_core.kernels.FusedLinears) against the layers apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG, random_ids, tiny_model
from test_engine import LONG, plain_greedy
from test_kernels import LONG_PROMPT_MODES, packed_dtypes

from focus_core import FocusEngine, kernels
from focus_core.decode_step import decode_step
from focus_core.runner import ModelRunner, SequenceBatch

SERVED = ["llama", "mistral", "qwen2", "gemma3_text"]


def decode_both_ways(model: torch.nn.Module, prompts: list[list[int]], steps: int, forward_tokens: int | None = None):
    """Per step, the logits ``[rows, vocab]`` of a batch of left-padded ``prompts`` decoded greedily through
    the engine's step and through the model's own forward, and both batches' keys at the end. With
    ``forward_tokens`` (prompts of one length) sliding-window layers keep only their window."""
    fast, slow = ModelRunner(model), ModelRunner(model)
    slow.step = None
    assert fast.step is not None
    outputs = []
    for runner in (fast, slow):
        capacity = max(map(len, prompts)) + steps
        batch = SequenceBatch(runner, rows=len(prompts), capacity=capacity, forward_tokens=forward_tokens)
        if forward_tokens is None:
            batch.start_padded(prompts)
        else:  # prompts of one length, run forward_tokens at a time
            batch.append(torch.tensor(prompts))
        logits, tokens = [], torch.tensor([p[-1] for p in prompts])
        with torch.inference_mode():
            for _ in range(steps):
                logits.append(batch.append(tokens[:, None]))
                tokens = logits[-1].argmax(-1)
        outputs.append((logits, batch.kv))
    return outputs


@pytest.mark.parametrize("arch", SERVED)
@pytest.mark.parametrize("forward_tokens", [None, 8], ids=["whole", "windows kept"])
def test_the_step_equals_the_model_s_forward_in_fp32(arch, forward_tokens):
    """Rows of different lengths (left padding, a mask at every step) give the logits and the cache the
    model's forward gives; Gemma 3's sliding layers (window 16, shorter than the prompts) mask their
    window, over a buffer that keeps every slot or only the window."""
    model = tiny_model(arch)
    lengths = (30, 17, 24) if forward_tokens is None else (30, 30, 30)
    prompts = [random_ids(n, seed=i) for i, n in enumerate(lengths)]
    (fast, fast_kv), (slow, slow_kv) = decode_both_ways(model, prompts, steps=8, forward_tokens=forward_tokens)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    for a, b in zip(fast_kv.keys + fast_kv.values, slow_kv.keys + slow_kv.values):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert fast_kv.first_slot == slow_kv.first_slot


@pytest.mark.skipif(torch.bfloat16 not in kernels.packable_dtypes(), reason="no oneDNN bf16")
@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_the_step_computes_what_the_model_s_forward_computes_in_bf16(arch):
    """Operation for operation: in bf16 the logits are the forward's bit for bit (fused products, the same
    norms and RoPE, the same attention kernel)."""
    model = tiny_model(arch).to(torch.bfloat16)
    prompts = [random_ids(30, seed=1), random_ids(17, seed=2)]
    (fast, _), (slow, _) = decode_both_ways(model, prompts, steps=8)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def test_mistral_s_sliding_window_is_kept():
    """Mistral attends to its last ``sliding_window`` slots: with a window shorter than the prompt the step
    still gives the forward's logits (and differs from attending to everything)."""
    model = tiny_model("mistral")
    model.config.sliding_window = 12
    (fast, _), (slow, _) = decode_both_ways(model, [random_ids(30, seed=1), random_ids(20, seed=2)], steps=6)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    model.config.sliding_window = None
    (whole, _), _ = decode_both_ways(model, [random_ids(30, seed=1), random_ids(20, seed=2)], steps=1)
    assert not torch.allclose(whole[0], fast[0])


@pytest.mark.parametrize("arch", SERVED)
def test_engine_decoding_through_the_step_equals_transformers_generate(tokenizer, arch):
    engine = FocusEngine(tiny_model(arch), tokenizer, TINY_CONFIG.replace(max_new_tokens=12))
    assert engine.runner.step is not None
    ids = random_ids(60, seed=3)
    assert engine.generate_ids(ids) == plain_greedy(engine.model, ids, 12)


@LONG_PROMPT_MODES
@pytest.mark.parametrize("dtype", packed_dtypes())
def test_a_long_prompt_decodes_the_same_without_the_step(tokenizer, monkeypatch, dtype, settings):
    engine = FocusEngine(tiny_model("llama").to(dtype), tokenizer, TINY_CONFIG.replace(max_new_tokens=10, **settings))
    ids = random_ids(LONG, seed=5)
    fast = engine.generate_ids(ids)
    monkeypatch.setattr(engine.runner, "step", None)
    assert engine.generate_ids(ids) == fast


def test_models_of_another_shape_decode_through_their_own_forward():
    gemma = tiny_model("gemma3_text")
    gemma.config.attn_logit_softcapping = 50.0  # the attention kernel has no softcapping
    assert decode_step(gemma, 2**40) is None
    assert decode_step(tiny_model("qwen3"), 2**40) is None  # query and key norms
    windowed = tiny_model("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert decode_step(windowed, 2**40) is None  # a window on some layers only


def test_the_step_serves_one_token_forwards_on_a_cpu_without_autograd():
    runner = ModelRunner(tiny_model("llama"))
    one = torch.zeros(3, 1, dtype=torch.long)
    with torch.no_grad():
        assert runner.runs_step(one)
        assert not runner.runs_step(torch.zeros(3, 2, dtype=torch.long))  # a prompt: the model's forward
        assert not runner.runs_step(one.to("meta"))  # an accelerator keeps the model's attention kernels
    assert not runner.runs_step(one)  # autograd: the model's forward


def test_autograd_runs_the_model_s_forward():
    runner = ModelRunner(tiny_model("llama"))
    batch = SequenceBatch(runner, rows=1, capacity=8)
    batch.start_padded([random_ids(4)])
    runner.step = lambda *args: pytest.fail("the step runs only without autograd")
    with torch.enable_grad():
        batch.append(torch.tensor([[5]]))


@pytest.mark.parametrize("dtype", packed_dtypes())
@pytest.mark.parametrize("biases", [(False, False, False), (True, True, True), (True, False, True)])
@pytest.mark.parametrize("shape", [(1, 1, 48), (3, 1, 48), (5, 48)])
def test_fused_linears_equal_the_layers_apart(dtype, biases, shape):
    """Bit for bit the packed layers' own outputs side by side (and F.linear's to rounding), following
    weights changed in place or replaced; outside the engine's forwards each layer's own forward."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(48, out, bias=b).to(dtype) for out, b in zip((64, 16, 16), biases)]
    for m in linears:
        kernels.pack_linears(m, memory_available=2**40)
    fused = kernels.FusedLinears(*linears)
    x = torch.randn(*shape).to(dtype)
    with torch.inference_mode(), kernels.engine_forward():
        for change in range(3):
            if change == 1:
                linears[1].weight.mul_(2)  # changed in place: packed again
            if change == 2:
                linears[2].weight = torch.nn.Parameter(torch.ones(16, 48, dtype=dtype))  # replaced
            apart = torch.cat([m(x) for m in linears], dim=-1)
            assert torch.equal(fused(x), apart)
            reference = torch.cat([F.linear(x, m.weight, m.bias) for m in linears], dim=-1)
            torch.testing.assert_close(fused(x), reference)
    with torch.no_grad():
        assert torch.equal(fused(x), torch.cat([F.linear(x, m.weight, m.bias) for m in linears], dim=-1))


def test_the_step_fuses_only_where_the_copies_fit_a_quarter_of_the_memory():
    model = tiny_model("llama")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kernels.pack_linears(model, memory_available=2**40)
    packed = sum(m.weight.numel() * 4 for m in linears)
    qkv_gate_up = sum(
        m.weight.numel() * 4
        for layer in model.model.layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
        + (layer.mlp.gate_proj, layer.mlp.up_proj)
    )
    enough = 4 * (packed + qkv_gate_up)
    assert decode_step(model, enough).qkv[0].fuse
    assert not decode_step(model, enough - 1).qkv[0].fuse
