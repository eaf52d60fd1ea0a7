"""``select``'s cascade: the question's words keep a share of the chunks, the exit layer runs over those
only; each piece against its slow reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONFIG, random_ids, tiny_model

from focus_core import FocusConfigError, FocusEngine
from focus_core.cascade import survivors, survivors_kept, word_mass, word_scores
from focus_core.chunking import ChunkPlan
from focus_core.selection import memory_mass, probed, question_marks, question_rows

SELECT = {"aggregation": "select", "select_tokens": 48, "passage_tokens": 16}
LONG = 600  # tokens: 18 chunks of 32 in the tiny engines


@pytest.fixture
def deep_engine(tokenizer):
    """A tiny llama of four layers (exit layer 2)."""

    def make(**overrides) -> FocusEngine:
        return FocusEngine(tiny_model("llama", layers=4), tokenizer, TINY_CONFIG.replace(**SELECT, **overrides))

    return make


def test_the_share_kept_never_drops_below_the_passages_the_selection_holds():
    assert survivors_kept(18, 0.25, passages=3) == 5 and survivors_kept(8, 0.25, passages=3) == 3
    assert survivors_kept(2, 0.25, passages=3) == 2 and survivors_kept(10, 0.25, passages=1) == 3  # rounds up
    assert survivors_kept(18, 1.0, passages=3) == 18  # a share of 1: every chunk


def test_a_longer_document_keeps_a_smaller_share_the_geometric_mean_of_chunks_and_passages():
    assert survivors_kept(32, 0.5, passages=8) == 16 and survivors_kept(128, 0.5, passages=8) == 32
    assert survivors_kept(1024, 0.5, passages=8) == 91 and survivors_kept(128, 0.1, passages=8) == 13


def test_the_exit_layer_over_the_survivors_equals_the_full_pass_restricted_to_them(deep_engine):
    """The cascade reads what one exit-layer pass over every chunk gives for the chunks the first stage
    keeps (their rows of it, the positional share taken over them): batched over a subset, the exit
    layer's attention is the same; the other chunks never run."""
    engine = deep_engine()
    ids = [1, *random_ids(LONG, seed=6)]
    scores = [c.score for c in engine.relevance(ids)]
    request = engine.request(ids)
    plan, cfg = request.plan, request.config
    rows = question_rows(plan.dynamic_prompt, *question_marks(engine.tokenizer, plan.dynamic_prompt))
    keep = survivors_kept(len(plan.chunks), cfg.select_cascade, cfg.select_tokens // cfg.passage_tokens)
    with torch.inference_mode():
        grid = engine.encoder.attend(probed(plan), layers=(2,), rows=rows, layout=request.layout, progress=False)[2]
    kept = survivors(word_scores(plan, plan.dynamic_prompt[rows[0] : rows[1]], 16), keep)
    assert len(kept) == keep < len(plan.chunks)
    mass = memory_mass(grid[kept], plan, kept).sum(dim=0)  # [memory tokens]
    expected = [float(mass[a : a + 16].sum()) for a in range(0, plan.memory_tokens, 16)]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))
    assert all(expected[a // 16] == 0 for i, (a, _) in enumerate(plan.ranges) if i not in kept)


def test_only_the_chunks_the_words_keep_run_to_the_exit_layer(deep_engine):
    engine = deep_engine()
    ids = random_ids(LONG, seed=3)
    chunks = len(engine.plan(ids).chunks)
    kept = survivors_kept(chunks, engine.config.select_cascade, 3)
    engine.generate_ids(ids)
    assert engine.stats.chunks_encoded == kept < chunks
    engine.generate_ids(ids)
    assert engine.stats.chunks_encoded == kept  # the same question: all cached
    for share in (None, 1.0):  # no cascade; one keeping every chunk
        single = deep_engine(select_cascade=share)
        single.generate_ids(ids)
        assert single.stats.chunks_encoded == chunks


def test_words_score_a_chunk_by_its_best_window_of_the_questions_rare_tokens():
    """Question tokens 7 (in one chunk: rare, weighty), 8 (in two) and 9 (in every chunk: weightless).
    The chunk holding 7 and 8 within one window wins; holding them far apart scores one of them; 9 alone
    scores nothing."""
    filler = [100 + i for i in range(40)]
    chunks = [
        filler[:10] + [9] + filler[10:],
        filler[:5] + [7] + filler[5:20] + [8] + filler[20:] + [9],
        filler[:2] + [8] + filler[2:] + [9],
        [9] + filler,
    ]
    plan = ChunkPlan(chunks=tuple(tuple(c) for c in chunks), local=(), dynamic_prompt=())
    scores = word_scores(plan, [7, 8, 9, 8], window=24)
    idf = {7: math.log(4 / 1), 8: math.log(4 / 2)}  # log(chunks / chunks holding it)
    torch.testing.assert_close(scores, torch.tensor([0.0, idf[7] + idf[8], idf[8], 0.0]))
    assert float(word_scores(plan, [7, 8], window=4)[1]) == pytest.approx(idf[7])  # too far apart for one window
    assert survivors(scores, 2) == [1, 2] and survivors(scores, 3) == [0, 1, 2]  # ties: the earlier chunk


def test_a_key_spelled_in_common_pieces_is_found_by_its_pairs_of_tokens():
    """A UUID-like key: every piece (1-6) is in every chunk, so its tokens weigh nothing; as a sequence it
    is in one chunk only. The pairs find it (a slow reference: each pair's weight summed by hand), the
    tokens alone tie every chunk at 0."""
    key = [1, 2, 3, 4, 5, 6]
    pieces = [6, 5, 4, 3, 2, 1]  # every piece, in an order that holds none of the key's pairs
    chunks = [pieces + [100 + i for i in range(20)] for _ in range(8)]
    chunks[5] = pieces + key + [100 + i for i in range(14)]
    plan = ChunkPlan(chunks=tuple(tuple(c) for c in chunks), local=(), dynamic_prompt=())
    scores = word_scores(plan, [50, *key], window=8)
    pair_weight = math.log(8 / 1)  # each of the key's 5 pairs is in 1 of the 8 chunks
    torch.testing.assert_close(scores, torch.tensor([5 * pair_weight if i == 5 else 0.0 for i in range(8)]))
    assert survivors(scores, 1) == [5]
    assert float(word_scores(plan, [50, *key], window=8, pairs=False).abs().sum()) == 0


def test_word_mass_lays_each_question_token_s_rare_terms_over_the_memory():
    """Per question token and memory token: the weight of the token found there, plus that of the pair it
    makes with the next question token where the pair starts there; checked against loops over both, the
    weights from chunk counts by hand. A term in every chunk (9) weighs nothing."""
    chunks = ((7, 8, 9, 100), (9, 101, 7, 102), (9, 103, 104, 105), (8, 9, 106, 107))
    plan = ChunkPlan(chunks=chunks, local=(), dynamic_prompt=())
    question = [7, 8, 9]

    def weight(term: tuple[int, ...]) -> float:
        holding = sum(any(tuple(c[i : i + len(term)]) == term for i in range(len(c))) for c in chunks)
        return math.log(len(chunks) / holding) if holding else 0.0

    expected = [
        [
            weight((t,)) * (m == t)
            + sum(weight((t, nxt)) for nxt in question[q + 1 : q + 2] if tuple(c[i : i + 2]) == (t, nxt))
            for c in chunks
            for i, m in enumerate(c)
        ]
        for q, t in enumerate(question)
    ]
    torch.testing.assert_close(word_mass(plan, question), torch.tensor(expected))
    tokens_only = torch.tensor([weight((8,)) * (m == 8) for m in plan.memory])
    torch.testing.assert_close(word_mass(plan, question, pairs=False)[1], tokens_only)
    assert word_mass(ChunkPlan(chunks=(), local=(), dynamic_prompt=()), question).shape == (3, 0)
    assert word_mass(plan, []).shape == (0, 16)


@pytest.mark.parametrize("share", [0, 1.5, -0.1, "0.5"])
def test_a_share_outside_0_1_is_refused_naming_the_setting(deep_engine, share):
    with pytest.raises(FocusConfigError) as err:
        deep_engine(select_cascade=share)
    assert err.value.setting == "select_cascade"
