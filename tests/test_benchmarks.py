"""The benchmark suite end to end at tiny sizes: every part runs, every file is written, numbers are sane."""

from __future__ import annotations

import json

import pytest

from benchmarks.haystack import NEEDLES, needle_case
from benchmarks.run import Suite, run_suite
from focus_core import FocusConfig, FocusEngine


def test_needle_cases_hide_the_fact_at_the_depth_with_a_differently_worded_question(tokenizer):
    for seed in range(len(NEEDLES)):
        case = needle_case(tokenizer, 3000, 0.5, seed)
        needle = next(n for n in NEEDLES if n.sentence == case.needle)
        assert case.context.count(needle.sentence) == 1
        at = case.context.index(needle.sentence) / len(case.context)
        assert 0.35 < at < 0.65
        assert abs(len(tokenizer(case.prompt).input_ids) - 3000) < 200
        assert needle.question not in case.context and case.is_correct(f" {needle.answers[0]}.")
        assert not case.is_correct(" the committee.")
    assert len({needle_case(tokenizer, 3000, 0.5, s).needle for s in range(len(NEEDLES))}) == len(NEEDLES)
    assert needle_case(tokenizer, 3000, 0.5, 0).needle != needle_case(tokenizer, 6000, 0.5, 0).needle


@pytest.mark.slow
def test_quick_suite_runs_end_to_end_at_tiny_sizes(embedded, tmp_path):
    model, tokenizer = embedded
    config = FocusConfig(
        chunk_size=256,
        local_window=128,
        dynamic_prompt_len=32,
        max_new_tokens=8,
        native_window=1024,
        stop=("\n",),
        progress=False,
    )
    suite = Suite(
        "tiny",
        passkey_lengths=[2048],
        needle_lengths=[2048],
        depths=[0.5],
        needle_depths=[0.5],
        speed_lengths=[2048],
        full_attention_speed_lengths=[512],
        reuse_tokens=2048,
        perplexity_lengths=[2048],
        perplexity_samples=1,
        continuation_tokens=16,
        rag_top_k=(2,),
        config=config,
        speed_new_tokens=4,
    )
    engine = FocusEngine(model, tokenizer, config)
    run_suite(suite, engine, tmp_path / "results", tmp_path / "docs")

    for part in ("passkey", "needle", "speed", "perplexity"):
        result = json.loads((tmp_path / "results" / f"{part}.json").read_text())
        assert result["machine"]["torch"] and result["suite"]["name"] == "tiny"
    for figure in ("passkey", "needle", "peers", "speed", "perplexity"):
        assert (tmp_path / "docs" / f"{figure}.png").stat().st_size > 10_000
    passkey = json.loads((tmp_path / "results" / "passkey.json").read_text())
    assert set(passkey["summary"]) == {
        "FocusLLM (focus)",
        "FocusLLM (entropy)",
        "full attention",
        "truncation",
        "RAG top-2 x 256",
    }
    assert passkey["results"]["full attention"]["2048"] == [None]  # 2K tokens do not fit a 1K window
    assert passkey["summary"]["FocusLLM (entropy)"]["accuracy"] == 1.0  # the engine retrieves a pass key at 2K
    speed = json.loads((tmp_path / "results" / "speed.json").read_text())
    assert 0 < speed["focusllm"][0]["fraction_of_matmul_rate"] < 1.5
    assert speed["second_question"]["chunks_encoded_second"] <= 1
    ppl = json.loads((tmp_path / "results" / "perplexity.json").read_text())["perplexity"]
    assert all(1 < p["2048"] < 1e4 for p in ppl.values())
