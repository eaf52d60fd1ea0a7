"""``select``'s cascade: a shallow first stage over every chunk, the exit layer over the chunks it keeps;
each piece against its slow reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONFIG, random_ids, tiny_model

from focus_core import FocusConfigError, FocusEngine
from focus_core.cascade import first_stage_layer, pays, survivors, survivors_kept
from focus_core.chunking import ChunkPlan
from focus_core.selection import memory_mass, probed, question_marks, question_rows

SELECT = {"aggregation": "select", "select_tokens": 48, "passage_tokens": 16}
LONG = 600  # tokens: 18 chunks of 32 in the tiny engines


@pytest.fixture
def deep_engine(tokenizer):
    """A tiny llama of four layers: the exit layer is 2 (60% up), the first stage's layer 0."""

    def make(**overrides) -> FocusEngine:
        return FocusEngine(tiny_model("llama", layers=4), tokenizer, TINY_CONFIG.replace(**SELECT, **overrides))

    return make


def test_the_stages_lie_where_the_models_depth_puts_them(deep_engine):
    config = deep_engine().model.config
    assert first_stage_layer(config, exit_layer=2) == 0
    assert first_stage_layer(config, exit_layer=0) is None  # nothing below the exit layer
    assert survivors_kept(18, 0.25, passages=3) == 5 and survivors_kept(8, 0.25, passages=3) == 3
    assert survivors_kept(2, 0.25, passages=3) == 2
    assert pays(0, 2, kept=5, chunks=18) and not pays(0, 2, kept=18, chunks=18) and not pays(1, 2, kept=3, chunks=6)


def test_the_exit_layer_over_the_survivors_equals_the_full_pass_restricted_to_them(deep_engine):
    """The cascade reads what one full-depth pass over every chunk gives for the chunks the first stage
    keeps (their rows of it, the positional share taken over them): batched over a subset, the exit
    layer's attention is the same; the other chunks run the first layer only."""
    engine = deep_engine()
    ids = [1, *random_ids(LONG, seed=6)]
    scores = [c.score for c in engine.relevance(ids)]
    request = engine.request(ids)
    plan, probe, cfg = request.plan, probed(request.plan), request.config
    rows = question_rows(plan.dynamic_prompt, *question_marks(engine.tokenizer, plan.dynamic_prompt))
    keep = survivors_kept(len(plan.chunks), cfg.select_cascade, cfg.select_tokens // cfg.passage_tokens)
    with torch.inference_mode():
        grids = engine.encoder.attend(probe, layers=(0, 2), rows=rows, layout=request.layout, progress=False)
    kept = survivors(grids[0], plan, passage=16, keep=keep, drop=cfg.select_drop)
    assert keep <= len(kept) < len(plan.chunks)
    mass = memory_mass(grids[2][kept], plan, kept).sum(dim=0)  # [memory tokens]
    expected = [float(mass[a : a + 16].sum()) for a in range(0, plan.memory_tokens, 16)]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))
    assert all(expected[a // 16] == 0 for i, (a, _) in enumerate(plan.ranges) if i not in kept)


def test_the_first_stage_runs_every_chunk_and_the_exit_layer_only_the_survivors(deep_engine):
    engine = deep_engine()
    ids = random_ids(LONG, seed=3)
    chunks = len(engine.plan(ids).chunks)
    engine.generate_ids(ids)
    deep = engine.stats.chunks_encoded - chunks
    assert survivors_kept(chunks, 0.25, 3) <= deep < chunks
    engine.generate_ids(ids)
    assert engine.stats.chunks_encoded == chunks + deep  # the same question again: both stages cached
    single = deep_engine(select_cascade=None)
    single.generate_ids(ids)
    assert single.stats.chunks_encoded == chunks
    whole_share = deep_engine(select_cascade=1.0)  # keeping every chunk would not pay: one stage
    whole_share.generate_ids(ids)
    assert whole_share.stats.chunks_encoded == chunks


def test_survivors_keep_the_best_windows_and_the_chunk_each_part_of_the_question_points_at():
    """Six chunks of 64 tokens, four queries: the first two draw far to chunk 4, the last two (a weaker
    key) point at chunk 1; the whole question's ranking keeps chunk 4 alone, the weaker key's part adds
    chunk 1. Without a cliff there are no parts."""
    plan = ChunkPlan(chunks=tuple((0,) * 64 for _ in range(6)), local=(), dynamic_prompt=())
    grid = torch.full((6, 4, 64), 1e-4)
    grid[4, :2, 30:36] = 1.0
    grid[1, 2:, 10:16] = 0.2
    assert survivors(grid, plan, passage=8, keep=1, drop=2.0) == [1, 4]
    assert survivors(grid, plan, passage=8, keep=1, drop=None) == [4]
    assert survivors(grid, plan, passage=8, keep=2, drop=None) == [1, 4]


@pytest.mark.parametrize("share", [0, 1.5, -0.1, "0.5"])
def test_a_share_outside_0_1_is_refused_naming_the_setting(deep_engine, share):
    with pytest.raises(FocusConfigError) as err:
        deep_engine(select_cascade=share)
    assert err.value.setting == "select_cascade"


def test_the_kept_count_rounds_up():
    assert survivors_kept(10, 0.25, passages=1) == math.ceil(2.5)
