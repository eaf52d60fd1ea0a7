"""Gemma 3 270M, the packaged benchmark model (a base model, sliding-window and global layers with two
RoPE bases): loaded from its package, equal to ``transformers`` when the prompt fits, and reading a prompt
past a forced window. Slow: the first load joins and dequantizes the package (~70 s)."""

from __future__ import annotations

import pytest

from focus_core import FocusConfig, FocusConfigError, FocusEngine, load_model
from focus_core.loading import GEMMA3_270M, GEMMA3_NOTICES, gemma3_checkpoint
from focus_core.passkey import make_case

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return load_model(GEMMA3_270M, dtype="float32")


def test_the_checkpoint_keeps_the_gemma_terms_beside_the_weights(gemma):
    folder = gemma3_checkpoint()
    assert all((folder / name).is_file() for name in (*GEMMA3_NOTICES, "model.safetensors", "tokenizer.json"))
    model, _ = gemma
    assert model.config.model_type == "gemma3_text" and model.config.max_position_embeddings == 32768


def test_a_prompt_that_fits_equals_transformers_generate(gemma):
    model, tokenizer = gemma
    engine = FocusEngine(model, tokenizer, FocusConfig(max_new_tokens=12, progress=False))
    prompt = "The capital of France is Paris. The capital of Italy is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()
    got = engine.generate_ids(prompt)
    assert got and got == expected[: len(got)] and len(expected) - len(got) <= 1  # transformers keeps the EOS
    with pytest.raises(FocusConfigError) as err:
        engine.apply_chat_template([{"role": "user", "content": "hi"}])
    assert err.value.setting == "chat_template"


@pytest.mark.parametrize(("aggregation", "depth", "seed"), [("focus", 0.3, 1), ("select", 0.8, 2)])
def test_a_pass_key_past_a_forced_window_is_found(gemma, aggregation, depth, seed):
    model, tokenizer = gemma
    config = FocusConfig(
        native_window=1024,
        chunk_size=256,
        local_window=128,
        select_tokens=256,
        passage_tokens=64,
        max_new_tokens=8,
        progress=False,
    )
    engine = FocusEngine(model, tokenizer, config)
    case = make_case(tokenizer, 4096, depth, seed)
    assert case.is_correct(engine.generate(case.prompt, aggregation=aggregation))
