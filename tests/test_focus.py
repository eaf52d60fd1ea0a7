"""``focus`` aggregation and relevance: each fast path against its slow reference."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, random_ids

from focus_core import FocusConfig, FocusEngine
from focus_core.aggregation import focus_decoding
from focus_core.passkey import make_case
from focus_core.relevance import choose_chunks
from focus_core.rotary import KeyRotation

LONG = 300  # tokens: well past the tiny engines' native window of 128


def _prefixes(engine: FocusEngine, chunks: list[tuple[int, ...]]):
    with torch.inference_mode():
        return engine.encoder.prefixes([engine.encoder.bos + c for c in chunks])


def _focus_logits(engine: FocusEngine, chunks, local, rotation, forward_tokens: int | None) -> torch.Tensor:
    """``focus`` decoding's first logits; with ``forward_tokens`` the sequence is read that many tokens per
    forward and a sliding-window layer (tiny Gemma 3: window 16) keeps ``16 - 1 + forward_tokens`` slots."""
    with torch.inference_mode():
        bos = engine.encoder.bos
        capacity = len(bos) + sum(len(c) for c in chunks) + len(local) + 1
        prefixes = _prefixes(engine, chunks)
        state = focus_decoding(engine.runner, rotation, chunks, prefixes, bos, local, capacity, forward_tokens)
    kv, windowed = state.sequence.kv, engine.runner.windowed_layers
    kept = 16 - 1 + forward_tokens if windowed and forward_tokens else capacity
    per_layer = engine.runner.kv_bytes_per_token() // engine.runner.num_layers
    assert kv.nbytes == per_layer * (len(kv.keys) * capacity - len(windowed) * (capacity - kept))
    return state.next_logits()


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("forward_tokens", [None, 5])
def test_focus_over_every_chunk_reencoded_is_full_attention(make_engine, arch, forward_tokens):
    engine = make_engine(arch)
    ids = [1, *random_ids(200, seed=3)]
    plan = engine.plan(ids)
    got = _focus_logits(engine, list(plan.chunks), list(plan.local), None, forward_tokens)
    expected = engine.model(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("forward_tokens", [None, 5])
def test_reused_chunk_kv_equals_its_block_masked_reencoding(make_engine, arch, forward_tokens):
    """Reusing cached chunk KV, re-positioned, equals one forward over ``[BOS] c0 [BOS] c1 [BOS] c2 local``
    in which each chunk (with its own BOS, placed just before it) sees only itself, and the local context
    sees the leading BOS, every chunk and itself: what the chunks' independent encoding computed."""
    engine = make_engine(arch)
    rng = random_ids(90, seed=4)
    chunks, local = [tuple(rng[0:30]), tuple(rng[30:55]), tuple(rng[55:80])], rng[80:90]
    got = _focus_logits(engine, chunks, local, KeyRotation.of(engine.model), forward_tokens)

    tokens, positions, block = [], [], []  # block: which chunk a slot belongs to (-1: local)
    at = 1
    for j, chunk in enumerate(chunks):
        tokens += [1, *chunk]
        positions += [at - 1] + list(range(at, at + len(chunk)))
        block += [j] * (len(chunk) + 1)
        at += len(chunk)
    tokens += local
    positions += list(range(at, at + len(local)))
    block += [-1] * len(local)
    n = len(tokens)
    b = torch.tensor(block)
    causal = torch.ones(n, n).tril().bool()
    same_chunk = (b[:, None] == b[None, :]) & (b[:, None] >= 0)
    first_bos_of_later_chunks = torch.tensor(
        [b[k] > 0 and tokens[k] == 1 and (k == 0 or b[k - 1] != b[k]) for k in range(n)]
    )
    local_sees = (b[:, None] == -1) & ~first_bos_of_later_chunks[None, :]
    mask = causal & (same_chunk | local_sees)
    pos = torch.tensor(positions)
    window = getattr(engine.model.config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(engine.model.config, "layer_types", None) or ()):
        # sliding-window layers (Gemma 3) also see only the last ``window`` positions
        near = (pos[:, None] - pos[None, :]) < window
        mask = {"full_attention": mask[None, None], "sliding_attention": (mask & near)[None, None]}
    else:
        mask = mask[None, None]
    out = engine.model(torch.tensor([tokens]), position_ids=pos[None], attention_mask=mask)
    torch.testing.assert_close(got, out.logits[0, -1].float(), atol=1e-4, rtol=1e-4)


def test_focus_reads_the_first_chunk_and_the_most_relevant_within_the_window(make_engine):
    engine = make_engine(aggregation="focus")
    ids = random_ids(LONG * 3, seed=12)
    generation = engine.stream(ids)
    assert generation.relevance == []  # nothing is read before the first piece is asked for
    list(generation)
    relevance = generation.relevance
    room = engine.native_window - 1 - engine.config.local_window - engine.config.max_new_tokens
    chosen = sorted(s.index for s in generation.sources)
    assert 0 in chosen and sum(len(range(*relevance[i].token_span)) for i in chosen) <= room
    scores = torch.tensor([s.score for s in relevance])
    assert chosen == choose_chunks(
        scores,
        [s.token_span[1] - s.token_span[0] for s in relevance],
        max_chunks=room // engine.config.chunk_size,
        max_tokens=room,
        pinned=(0,),
    )
    assert [s.score for s in generation.sources] == sorted((s.score for s in generation.sources), reverse=True)


def test_relevance_spans_tile_the_memory_and_point_into_the_text(make_engine):
    engine = make_engine()
    text = " ".join(f"Sentence number {i} says the value is {i * 7}." for i in range(60))
    prompt = text + " Question: what does sentence 3 say?"
    scores = engine.relevance(prompt)
    ids = engine.tokenize(prompt)
    assert scores[0].token_span[0] == int(ids[0] == engine.tokenizer.bos_token_id)  # after a BOS, if any
    for a, b in zip(scores, scores[1:]):
        assert a.token_span[1] == b.token_span[0] and a.char_span[1] <= b.char_span[0] + 1
    assert scores[-1].token_span[1] == len(ids) - engine.config.local_window
    for s in scores:
        assert s.text == prompt[s.char_span[0] : s.char_span[1]]
        assert engine.tokenizer.decode(ids[slice(*s.token_span)]).strip() == s.text.strip()
    assert engine.relevance(random_ids(50)) == []  # a prompt that fits is read whole


def test_relevance_is_the_gain_over_no_chunk(make_engine):
    engine = make_engine()
    ids = random_ids(LONG, seed=13)
    plan = engine.plan(ids)
    d = list(plan.dynamic_prompt)

    def loglik(context):
        logits = engine.model(torch.tensor([context + d])).logits[0, len(context) : -1].float()
        return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(d[1:])[:, None]).sum())

    scores = engine.relevance(ids)
    for s, chunk in zip(scores, plan.chunks):
        assert s.score == pytest.approx(loglik([1, *chunk]) - loglik([1]), abs=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["focus", "entropy"])
def test_relevance_finds_the_pass_key_chunk_and_the_answer_follows(embedded, aggregation):
    model, tokenizer = embedded
    config = FocusConfig(
        chunk_size=256, local_window=128, dynamic_prompt_len=32, max_new_tokens=8, native_window=1024, progress=False
    )
    engine = FocusEngine(model, tokenizer, config.replace(aggregation=aggregation))
    for depth, seed in ((0.3, 1), (0.7, 2)):
        case = make_case(tokenizer, 3000, depth, seed)
        completion = engine.complete(case.prompt)
        best = max(completion.relevance, key=lambda s: s.score)
        assert case.passkey in best.text and completion.sources[0] == best
        assert case.is_correct(completion.text)
