"""Chunk-parallel decoding across processes (torch.distributed, gloo on this CPU) equals one process."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_CONFIG, random_ids, tiny_model, tiny_tokenizer

from focus_core import FocusEngine
from focus_core.distributed import ChunkGroup

# (prompt tokens, settings): 9 chunks (uneven shares), 2 chunks (a process with none when 3 run),
# seeded sampling (the token sampled on rank 0 is the one every process continues with)
RUNS = [(300, {}), (130, {"chunk_size": 96}), (300, {"temperature": 1.5, "seed": 3})]
SELECT = {"select_tokens": 48, "passage_tokens": 16}  # select's reading fits the tiny window
ONE_STAGE = {**SELECT, "select_cascade": None}  # and, with the cascade (the default) off, one stage
WHOLE = {"extract_tokens": 3}  # two extractions and their labels fit a tiny chunk


def _generate_all(engine: FocusEngine) -> tuple[list[list[int]], list[list[float]]]:
    """The tokens of every run in every mode, and each run's chunk relevance scores."""
    tokens = []
    modes = [("focus", {}), ("entropy", {}), ("kv", {}), ("select", ONE_STAGE), ("select", SELECT), ("whole", WHOLE)]
    for aggregation, sizes in modes:
        for n, settings in RUNS:
            tokens.append(engine.generate_ids(random_ids(n, seed=n), aggregation=aggregation, **settings, **sizes))
    relevance = [
        [s.score for s in engine.relevance(random_ids(n, seed=n), **settings, **sizes)]
        for sizes in ({}, SELECT)
        for n, settings in RUNS
    ]
    return tokens, relevance


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tokenizer = tiny_tokenizer()
        assert FocusEngine(tiny_model("llama"), tokenizer, TINY_CONFIG).group is None  # sharding is never implicit
        engine = FocusEngine(tiny_model("llama"), tokenizer, TINY_CONFIG, group=dist.group.WORLD)
        assert engine.group is not None and engine.group.world == world
        tokens, relevance = _generate_all(engine)
        gathered = [None] * world
        dist.all_gather_object(gathered, tokens)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(
                    {
                        "tokens": tokens,
                        "relevance": relevance,
                        "all_ranks_agree": all(g == tokens for g in gathered),
                        "chunks_encoded": engine.stats.chunks_encoded,
                    },
                    f,
                )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_multi_process_tokens_equal_single_process_tokens(tokenizer, tmp_path, world):
    engine = FocusEngine(tiny_model("llama"), tokenizer, TINY_CONFIG)
    single, relevance = _generate_all(engine)
    out = tmp_path / "out.json"
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(out)), nprocs=world, join=True)
    result = json.loads(out.read_text())
    assert result["all_ranks_agree"]
    assert result["tokens"] == single
    for gathered, alone in zip(result["relevance"], relevance):  # scores gathered across ranks
        assert gathered == pytest.approx(alone, abs=1e-3)
    assert all(len(t) == TINY_CONFIG.max_new_tokens for t in single)
    # the single process encoded the 9 and 2 chunks as full prefixes and as early-exit (select) prefixes; rank 0
    # its share (the first ceil(n / world) chunks) of each and, for the cascade, its share of the chunks the
    # question's words kept, which may lie outside its own share
    assert engine.stats.chunks_encoded == 2 * (9 + 2)
    share = 2 * (-(-9 // world) + -(-2 // world))
    assert share <= result["chunks_encoded"] < engine.stats.chunks_encoded


def test_chunk_shares_are_contiguous_and_cover_every_chunk():
    group = ChunkGroup.__new__(ChunkGroup)
    for world in (1, 2, 3, 5):
        group.world = world
        for n in (0, 1, 2, 7, 10):
            shares = []
            for rank in range(world):
                group.rank = rank
                shares.extend(range(n)[group.share(n)])
            assert shares == list(range(n)) and max(group.sizes(n)) - min(group.sizes(n)) <= 1
