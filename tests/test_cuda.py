"""On a CUDA device (skipped without one; ``bash scripts/gpu_check.sh`` runs them): the answers CPU gives,
every aggregation path, the prefix cache offloaded to host memory, the memory estimate an upper bound of
what CUDA allocates, and the automatic precision.

Tolerances: in fp32 the greedy tokens are equal and log-probabilities agree within 1e-4 (only the kernels'
order of summation differs); in bf16 the top next token is equal and the next-token probabilities agree
within 5e-2 with an fp32 CPU run of the same bf16-rounded weights (bf16 rounding alone moves them by up
to 2.1e-2 on CPU, on these prompts of the embedded model).
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, TINY_CONFIG, random_ids, tiny_model

from focus_core import FocusConfig, FocusEngine, load_model, precision
from focus_core.memory import format_bytes
from focus_core.passkey import make_case

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

GPU = torch.device("cuda")
LONG = 300  # tokens: well past the tiny engines' native window of 128
PROMPTS = ("The three primary colours are", "Paris is the capital of")


def _pair(tokenizer, arch: str = "llama") -> tuple[FocusEngine, FocusEngine]:
    """The same tiny fp32 model (same seed) on CPU and on the GPU."""
    return (
        FocusEngine(tiny_model(arch), tokenizer, TINY_CONFIG),
        FocusEngine(tiny_model(arch).to(GPU), tokenizer, TINY_CONFIG),
    )


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_fp32_on_cuda_equals_cpu_on_short_prompts(tokenizer, arch):
    cpu, gpu = _pair(tokenizer, arch)
    ids, continuation = random_ids(40, seed=1), random_ids(6, seed=2)  # fits the native window of 128
    assert gpu.generate_ids(ids) == cpu.generate_ids(ids)
    torch.testing.assert_close(gpu.score(ids, continuation).cpu(), cpu.score(ids, continuation), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("aggregation", ["focus", "entropy", "kv"])
def test_every_aggregation_gives_the_cpu_tokens_on_cuda(tokenizer, aggregation):
    cpu, gpu = _pair(tokenizer)
    ids, continuation = random_ids(LONG, seed=3), random_ids(4, seed=4)
    assert gpu.generate_ids(ids, aggregation=aggregation) == cpu.generate_ids(ids, aggregation=aggregation)
    torch.testing.assert_close(
        gpu.score(ids, continuation, aggregation=aggregation).cpu(),
        cpu.score(ids, continuation, aggregation=aggregation),
        atol=1e-4,
        rtol=1e-4,
    )


def test_the_prefix_cache_of_a_gpu_engine_lives_in_host_memory(tokenizer):
    _, gpu = _pair(tokenizer)
    ids = random_ids(LONG, seed=5)
    first = gpu.generate_ids(ids)
    entries = gpu.prefix_cache.entries()
    assert entries and all(e.keys.device.type == e.values.device.type == "cpu" for e in entries)
    encoded, reused = gpu.stats.chunks_encoded, gpu.stats.chunks_reused
    assert gpu.generate_ids(ids) == first  # every chunk copied back from host memory
    assert gpu.stats.chunks_encoded == encoded and gpu.stats.chunks_reused > reused


@pytest.fixture(scope="module")
def embedded_bf16():
    """The embedded model in bf16 on the GPU, and an fp32 CPU copy of the same bf16-rounded weights."""
    model, tokenizer = load_model(dtype="bfloat16", device=GPU, progress=False)
    reference, _ = load_model(dtype="bfloat16", device="cpu", progress=False)
    return model, reference.float(), tokenizer


@pytest.mark.parametrize("prompt", PROMPTS)
def test_bf16_on_cuda_is_close_to_fp32_on_cpu(embedded_bf16, prompt):
    model, reference, tokenizer = embedded_bf16
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        got = model(ids.to(GPU)).logits[0, -1].float().softmax(-1).cpu()
        expected = reference(ids).logits[0, -1].softmax(-1)
    assert got.argmax() == expected.argmax()
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=0)


def test_fp32_embedded_model_greedy_answers_equal_on_cuda_and_cpu():
    config = FocusConfig(max_new_tokens=12, progress=False)
    engines = [FocusEngine.from_pretrained(None, config, dtype="float32", device=d) for d in ("cpu", GPU)]
    for prompt in PROMPTS:
        assert engines[1].generate_ids(prompt) == engines[0].generate_ids(prompt)


@pytest.mark.parametrize("tokens", [2000, 20000])  # fits the 8K window / read in chunks
def test_the_memory_estimate_bounds_what_cuda_allocates(embedded_bf16, tokens):
    model, _, tokenizer = embedded_bf16
    engine = FocusEngine(model, tokenizer, FocusConfig(max_new_tokens=8, progress=False))
    prompt = make_case(tokenizer, tokens, depth=0.5, seed=1).prompt
    estimate = engine.estimate_memory(prompt)
    engine.generate(prompt)  # warm-up: cuBLAS workspaces and the like are held from then on
    engine.prefix_cache.clear()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    engine.generate(prompt)
    used = torch.cuda.max_memory_allocated() - base
    assert used <= estimate.total, f"allocated {format_bytes(used)}, estimated {estimate}"


def test_auto_precision_on_this_gpu():
    """bf16 on Ampere and later (the H100), fp16 before; flash-attention 2 only where flash-attn is installed."""
    choice = precision.auto_precision(GPU)
    native = torch.cuda.get_device_capability(GPU) >= (8, 0)
    assert choice.dtype == (torch.bfloat16 if native else torch.float16), choice
    model, _ = load_model(device=GPU, progress=False)
    assert model.dtype == choice.dtype and model.device.type == "cuda"
    assert model.focus_precision_reason.startswith(f"dtype {choice}; attention ")
