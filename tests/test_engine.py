"""Correctness of the engine on tiny random models: every fast path against the slow obvious one."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TINY_ARCHS, TINY_CONFIG, VOCAB, random_ids, tiny_model
from transformers import DynamicCache

from focus_core import FocusEngine, UnsupportedModelError
from focus_core.aggregation import EntropyAggregation, PlainDecoding, entropy
from focus_core.kv_cache import PrefixCache
from focus_core.rotary import KeyRotation
from focus_core.runner import cache_argument

LONG = 300  # tokens: well past the tiny engines' native window of 128


def plain_greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2)
    new = out[0, len(ids) :].tolist()
    return new[: new.index(2)] if 2 in new else new


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_short_input_equals_transformers_greedy_generate(make_engine, arch):
    engine = make_engine(arch, max_new_tokens=12)
    ids = random_ids(60, seed=3)
    assert engine.generate_ids(ids) == plain_greedy(engine.model, ids, 12)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("piece", [7, 1])
def test_a_prompt_read_in_pieces_equals_one_forward(make_engine, arch, piece):
    """A prompt that fits, read ``encode_batch_tokens`` at a time, scores every next token as one plain
    forward does and generates what transformers does; Gemma 3's sliding layer (window 16) keeps only
    ``16 - 1 + piece`` slots of the 72, as the estimate says."""
    engine = make_engine(arch, max_new_tokens=12, encode_batch_tokens=piece)
    ids, continuation = random_ids(60, seed=3), random_ids(12, seed=4)
    logits = engine.model(torch.tensor([ids + continuation])).logits[0, len(ids) - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(continuation)[:, None])[:, 0]
    torch.testing.assert_close(engine.score(ids, continuation), expected, atol=1e-4, rtol=1e-4)
    assert engine.generate_ids(ids) == plain_greedy(engine.model, ids, 12)
    request = engine.request(ids)
    with torch.inference_mode():
        kv = engine.start(request).sequence.kv
    whole = engine.runner.kv_bytes_per_token() * (60 + 12)
    assert kv.nbytes == request.estimate.kv_bytes
    assert kv.nbytes == (whole if arch != "gemma3_text" else whole // 2 + whole // 2 * (16 - 1 + piece) // 72)


def test_text_prompt_equals_transformers_generate(make_engine):
    engine = make_engine(max_new_tokens=8)
    prompt = "The quick brown fox jumps over the lazy dog."
    ids = engine.tokenize(prompt)
    expected = plain_greedy(engine.model, ids, 8)
    assert engine.generate(prompt) == engine.tokenizer.decode(expected, skip_special_tokens=True)


def _score(engine: FocusEngine, ids: list[int], batch_tokens: int):
    plan = engine.plan(ids)
    layout = engine.request(ids, encode_batch_tokens=batch_tokens, top_chunks=len(plan.chunks)).layout
    with torch.inference_mode():
        scored = engine.encoder.score(plan, keep=len(plan.chunks), layout=layout, progress=False)
    return plan, scored


def _with_prompt(engine: FocusEngine, plan, scored, candidate: bool = False):
    prefixes = [scored.kept[i] for i in range(len(plan.chunks))]
    slots = max(p.keys.shape[2] for p in prefixes) + len(plan.dynamic_prompt) + 4
    with torch.inference_mode():
        return engine.encoder.with_prompt(
            prefixes, plan.dynamic_prompt, slots=slots, candidate=candidate, batch_tokens=10_000
        )


def _loglik(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation[1:] | context + continuation[:1] ...), from one plain forward."""
    logits = model(torch.tensor([context + continuation])).logits[0, len(context) : -1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation[1:])[:, None]).sum())


def test_batched_chunk_scoring_equals_a_per_chunk_loop_and_each_chunk_alone(make_engine):
    ids = random_ids(LONG + 7, seed=1)  # the last chunk is shorter: exercises left padding
    batched_engine, looped_engine = make_engine(), make_engine()
    plan, batched = _score(batched_engine, ids, batch_tokens=10_000)
    _, looped = _score(looped_engine, ids, batch_tokens=1)
    assert len({len(c) for c in plan.chunks}) == 2
    torch.testing.assert_close(batched.loglik, looped.loglik, atol=1e-4, rtol=1e-4)
    for i in range(len(plan.chunks)):
        torch.testing.assert_close(batched.kept[i].keys, looped.kept[i].keys, atol=1e-5, rtol=1e-4)
    _, batched_logits = _with_prompt(batched_engine, plan, batched)

    # ... and equals each chunk run alone, from scratch, as [BOS] + chunk + dynamic prompt.
    model, d = batched_engine.model, list(plan.dynamic_prompt)
    for i, chunk in enumerate(plan.chunks):
        alone = model(torch.tensor([[1, *chunk, *d]])).logits[0, -1].float()
        torch.testing.assert_close(batched_logits[i], alone, atol=1e-4, rtol=1e-4)
        assert float(batched.loglik[i]) == pytest.approx(_loglik(model, [1, *chunk], d), abs=1e-3)
    with torch.inference_mode():
        baseline = batched_engine.encoder.baseline(plan.dynamic_prompt)
    assert baseline == pytest.approx(_loglik(model, [1], d), abs=1e-3)


def test_scoring_keeps_only_the_best_chunks_and_the_pinned_one(make_engine):
    engine = make_engine()
    ids = random_ids(LONG * 3, seed=11)
    request = engine.request(ids, encode_batch_tokens=64, top_chunks=3)
    plan = request.plan
    with torch.inference_mode():
        scored = engine.encoder.score(plan, keep=3, layout=request.layout, progress=False, pinned=(0,))
    best = sorted(range(1, len(plan.chunks)), key=lambda i: -float(scored.loglik[i]))[:2]
    assert sorted(scored.kept) == sorted([0, *best])


def test_cached_prefixes_give_the_same_tokens_and_are_not_reencoded(make_engine):
    cached = make_engine()
    uncached = make_engine(prefix_cache_bytes=0)
    ids = random_ids(LONG, seed=2)
    first = cached.generate_ids(ids)
    encoded = cached.stats.chunks_encoded
    assert encoded == len(cached.plan(ids).chunks)
    assert cached.generate_ids(ids) == first
    assert cached.stats.chunks_encoded == encoded  # nothing re-encoded
    assert cached.stats.chunks_reused == encoded
    assert uncached.generate_ids(ids) == first
    uncached.generate_ids(ids)
    assert uncached.stats.chunks_encoded == 2 * encoded


def test_second_question_over_the_same_document_reencodes_only_changed_chunks(make_engine):
    engine = make_engine()
    doc = random_ids(LONG, seed=4)
    engine.generate_ids(doc + random_ids(5, seed=5))
    before = engine.stats.chunks_encoded
    plan_a = engine.plan(doc + random_ids(5, seed=5))
    plan_b = engine.plan(doc + random_ids(11, seed=6))
    changed = len(set(plan_b.chunks) - set(plan_a.chunks))
    engine.generate_ids(doc + random_ids(11, seed=6))
    assert engine.stats.chunks_encoded - before == changed
    assert changed < len(plan_b.chunks)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_kv_candidates_equal_a_plain_forward_repositioned(make_engine, arch):
    """With candidate projections equal to the base weights, each chunk's candidate KV is the KV of the
    last dynamic-prompt token of [BOS] + chunk + prompt, computed with positions shifted so that token
    sits at position i (its slot in front of the local context)."""
    engine = make_engine(arch)
    engine.candidate_projections()
    ids = random_ids(LONG + 5, seed=7)
    plan, scored = _score(engine, ids, batch_tokens=10_000)
    batch, _ = _with_prompt(engine, plan, scored, candidate=True)
    keys, values = batch.kv.last_slot()
    shift = torch.arange(batch.rows) - (batch.next_positions - 1)
    rotation = KeyRotation.of(engine.model)
    for i, chunk in enumerate(plan.chunks):
        seq = [1, *chunk, *plan.dynamic_prompt]
        positions = torch.arange(len(seq)) - (len(seq) - 1) + i
        cache = DynamicCache(config=engine.model.config)
        engine.model(
            torch.tensor([seq]), position_ids=positions[None], use_cache=True, **{cache_argument(engine.model): cache}
        )
        for layer in range(len(keys)):
            expected_k = cache.layers[layer].keys[0, :, -1]
            expected_v = cache.layers[layer].values[0, :, -1]
            got_k = rotation.move(keys[layer][i : i + 1], shift[i : i + 1], layer)[0]
            torch.testing.assert_close(got_k, expected_k, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(values[layer][i], expected_v, atol=1e-4, rtol=1e-4)


def test_candidate_projections_are_separate_weights_used_only_at_candidates(make_engine):
    engine = make_engine()
    ids = random_ids(LONG, seed=8)
    untrained = engine.generate_ids(ids, aggregation="kv")
    candidates = engine.candidate_projections()
    base = engine.model.get_decoder().layers[0].self_attn.q_proj
    assert candidates.layers[0]["q_proj"].linear.weight.data_ptr() != base.weight.data_ptr()
    torch.testing.assert_close(candidates.layers[0]["q_proj"].linear.weight, base.weight)
    with torch.no_grad():
        for layer in candidates.layers:
            layer["v_proj"].linear.weight.mul_(3.0)
    assert engine.generate_ids(ids, aggregation="kv") != untrained  # candidate weights matter in kv
    assert engine.generate_ids(ids[:60]) == plain_greedy(engine.model, ids[:60], 6)  # and nowhere else


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("aggregation", ["focus", "entropy", "kv"])
def test_long_input_generates_in_every_mode(make_engine, arch, aggregation):
    engine = make_engine(arch, aggregation=aggregation)
    ids = random_ids(LONG, seed=9)
    out = engine.generate_ids(ids)
    assert len(out) == engine.config.max_new_tokens
    assert engine.generate_ids(ids) == out


def test_entropy_mode_serves_models_without_rope(tokenizer):

    engine = FocusEngine(tiny_model("gpt2"), tokenizer, TINY_CONFIG)
    assert len(engine.generate_ids(random_ids(LONG))) == TINY_CONFIG.max_new_tokens
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        engine.generate_ids(random_ids(LONG), aggregation="kv")


def test_auto_is_select_where_its_reading_fits_else_entropy(make_engine):
    """Without trained candidates ``auto`` is ``select`` when 1 + passage + selection + local + answer fit
    the window, else ``entropy`` (the tiny window of 128 cannot hold the default 1,024-token selection)."""
    engine = make_engine()
    ids = random_ids(LONG, seed=10)
    assert engine.aggregation_for() == "entropy"
    assert engine.generate_ids(ids) == engine.generate_ids(ids, aggregation="entropy")
    small = engine.config.replace(select_tokens=48, passage_tokens=16)
    assert engine.aggregation_for(small) == "select"
    assert engine.generate_ids(ids, select_tokens=48, passage_tokens=16) == engine.generate_ids(
        ids, aggregation="select", select_tokens=48, passage_tokens=16
    )


def test_entropy_aggregation_picks_the_most_confident_distribution():
    local = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    chunks = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 9.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    agg = EntropyAggregation(local=PlainDecoding(None, local), chunks=None, chunk_logits=chunks)
    assert torch.equal(agg.next_logits(), chunks[1])
    assert entropy(local)[0] == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_reposition_keys_equals_rotating_at_the_target_position():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    for rope in (
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    ):
        config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope)
        rotary = LlamaRotaryEmbedding(config)
        raw = torch.randn(5, 2, 16)  # [n, kv_heads, head_dim]
        src, dst = torch.tensor([40, 7, 100, 3, 64]), torch.tensor([0, 1, 2, 3, 4])

        def rope_at(pos, rotary=rotary, raw=raw):
            cos, sin = rotary(raw, pos[None])
            heads_first = raw.transpose(0, 1)[None]
            return apply_rotary_pos_emb(heads_first, heads_first, cos, sin)[1][0].transpose(0, 1)

        moved = KeyRotation(rotary).move(rope_at(src), dst - src)
        torch.testing.assert_close(moved, rope_at(dst), atol=1e-5, rtol=1e-5)


def test_concurrent_calls_equal_sequential_calls(make_engine):
    engine = make_engine()
    prompts = [random_ids(LONG + 10 * i, seed=20 + i) for i in range(4)]
    sequential = [engine.generate_ids(p) for p in prompts]
    engine.prefix_cache.clear()
    results: list = [None] * 4

    def work(i: int) -> None:
        results[i] = engine.generate_ids(prompts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential


def test_concurrent_kv_calls_equal_sequential_calls(make_engine):
    engine = make_engine(aggregation="kv")
    prompts = [random_ids(LONG, seed=30 + i) for i in range(4)]
    sequential = [engine.generate_ids(p) for p in prompts]
    results: list = [None] * 4
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, engine.generate_ids(prompts[i]))) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential


def test_prefix_cache_evicts_least_recently_used():
    from focus_core.kv_cache import PrefixKV

    entry = PrefixKV(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4))  # 320 bytes
    cache = PrefixCache(max_bytes=700)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is entry  # a is now the most recent
    cache.put("c", entry)
    assert cache.get("b") is None and cache.get("a") is entry and cache.get("c") is entry
    assert cache.nbytes == 640


def test_logits_follow_the_model_own_output_scaling(tokenizer):
    """Granite divides its logits by ``logits_scaling``: the engine's logits equal the model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "granite", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, logits_scaling=4.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    engine = FocusEngine(model, tokenizer, TINY_CONFIG)
    ids = random_ids(40)
    assert engine.generate_ids(ids, max_new_tokens=6) == plain_greedy(model, ids, 6)
    expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    torch.testing.assert_close(engine.score(ids[:-1] + ids[-1:], [5])[0], expected[5], atol=1e-4, rtol=1e-4)
