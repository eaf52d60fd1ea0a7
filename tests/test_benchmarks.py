"""The benchmark suite end to end at tiny sizes: every part runs, every file is written, numbers are sane."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from benchmarks import machine_limit, speed
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
    # a ratio of two timings on a shared CPU: its size is the benchmark's to report, not a test's to bound
    fraction = speed["focusllm"][0]["fraction_of_matmul_rate"]
    assert math.isfinite(fraction) and fraction > 0
    assert speed["second_question"]["chunks_encoded_second"] <= 1
    ppl = json.loads((tmp_path / "results" / "perplexity.json").read_text())["perplexity"]
    assert all(1 < p["2048"] < 1e4 for p in ppl.values())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random llama with a 4K window (the engine's default chunking fits it), saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", window=4096).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_speed_command_line_as_the_gpu_check_runs_it(tiny_dir, tmp_path, capsys):
    """scripts/gpu_check.sh's speed run (lengths, full attention, device, results folder), on CPU, tiny."""
    argv = ["--model", str(tiny_dir), "--lengths", "2500", "--full-lengths", "600", "--reuse-tokens", "2500"]
    speed.main([*argv, "--new-tokens", "3", "--device", "cpu", "--dtype", "float32", "--results", str(tmp_path)])
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["device"] == "cpu" and result["machine"]["cpu"]["name"]
    assert result["precision"].startswith("dtype ") and "attention sdpa" in result["precision"]
    (focus,), (full,) = result["focusllm"], result["full_attention"]
    assert focus["tokens"] > 2000 and focus["ttft_s"] > 0 and focus["peak_gpu_bytes"] is None
    assert full["out_of_memory"] is False and full["new_tokens"] == 3
    assert set(result["focusllm_variants"]) == {"auto", *speed.VARIANTS}
    out = capsys.readouterr().out
    assert re.search(r"FocusLLM at \d+ tokens: TTFT \d+\.\d\d s, decode [\d.]+ tokens/s\n", out), out


def test_an_out_of_memory_full_attention_run_is_recorded_not_raised(make_engine, monkeypatch):
    engine = make_engine(native_window=None)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine.model, "generate", out_of_memory)
    point = speed.full_attention_point(engine, 300, 4)
    assert point["out_of_memory"] and point["ttft_s"] is None and point["tokens"] > 250
    assert speed.summary(point) == "out of GPU memory"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::scaled_dot_product_attention", "attention"),
        ("mkldnn::_linear_pointwise", "linear"),
        ("aten::addmm", "linear"),
        ("aten::mm", "linear"),
        ("aten::silu", "other"),
        ("aten::mul", "other"),
        ("aten::cat", "other"),
    ],
)
def test_machine_limit_sorts_the_encoding_operators_by_kind(name, kind):
    assert machine_limit.op_kind(name) == kind


def test_machine_limit_reports_encode_against_the_matmul_limit_of_the_same_run(tiny_dir, tmp_path):
    result = machine_limit.main(
        ["--model", str(tiny_dir), "--tokens", "2500", "--device", "cpu", "--results", str(tmp_path)]
        + ["--decode-prompt-tokens", "64", "--decode-tokens", "8"]
    )
    assert json.loads((tmp_path / "machine_limit.json").read_text()) == json.loads(json.dumps(result, default=str))
    assert set(result["machine"]["cpu"]) == {"name", "flags"} and result["dtype"].startswith("torch.")
    limit = result["matmul_limited_tokens_per_s"]
    share = result["encode_layers"] / result["layers"]  # the layers the encoding pass runs
    assert limit == pytest.approx(
        max(result["matmul_flops_per_s"].values()) / (2 * result["non_embedding_params"] * share)
    )
    assert result["encode_fraction_of_matmul_limit"] == pytest.approx(result["encode_tokens_per_s"] / limit)
    # where the encoding's time went: shares of one profiled pass's wall time, attention taken out last
    by_kind = result["encode_time_by_kind"]
    assert set(by_kind) == {"attention", "linear", "other", "outside"} and sum(by_kind.values()) == pytest.approx(1)
    assert by_kind["attention"] > 0 and by_kind["linear"] > 0
    without = result["encode_tokens_per_s"] / (1 - by_kind["attention"]) / limit
    assert result["encode_fraction_without_attention"] == pytest.approx(without)
    # decoding against the memory-bandwidth limit, and transformers' own generate on the same prompt
    per_token = result["decode_bytes_per_token"]
    model = tiny_model("llama")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    kv = (64 + 8 // 2) * 2 * 2 * 2 * 16 * 4  # context x (k, v) x layers x kv heads x head dim x fp32 bytes
    assert weights - embedding.numel() * 4 + kv <= per_token <= weights + kv
    memory_limited = result["memory_bandwidth_bytes_per_s"] / per_token
    assert result["memory_limited_decode_tokens_per_s"] == pytest.approx(memory_limited)
    decode = result["engine_decode_tokens_per_s"]
    assert result["decode_fraction_of_memory_limit"] == pytest.approx(decode / memory_limited)
    assert result["prompt_tokens"] == 64 and result["transformers_decode_tokens_per_s"] > 0
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())  # the tiny model on the CPU, fp32
    assert result["engine_packed_linears"] == linears and result["engine_unpacked_decode_tokens_per_s"] > 0


# ------------------------------------------------------------------------------- scripts/gpu_check.sh

GPU_CHECK = Path(__file__).parent.parent / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    out = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("module", [speed, machine_limit])
def test_gpu_check_passes_the_benchmarks_options_they_take(module):
    """The script's command line for each benchmark, parsed by that benchmark's own parser."""
    script = GPU_CHECK.read_text().replace("\\\n", " ")
    (line,) = re.findall(rf"-m {module.__name__} (.*?) 2>&1", script)
    args = module.build_parser().parse_args(shlex.split(line.replace('"$out"', "out")))
    assert args.device == "cuda" and str(args.results) == "out"
    if module is speed:
        assert args.lengths == args.full_lengths == [32768, 131072]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_stops_at_once_without_a_cuda_device(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SECONDS": "60"}
    out = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "gpu_check: no CUDA device visible to torch" in out.stderr, out.stderr
    assert "pytest" not in out.stdout


def test_fair_fight_methods_share_the_model_and_its_costs_plot(make_engine, tmp_path):
    from benchmarks.fair_fight import fair_fight_methods, plot_costs

    engine = make_engine()
    methods = fair_fight_methods(engine.model, engine.tokenizer, [2048, 3000], ["select", "entropy"], 4, 256)
    assert [m.name for m in methods] == [
        "full attention",
        "FocusLLM (select, 2K window)",
        "FocusLLM (entropy, 2K window)",
        "FocusLLM (select, 3000 window)",
        "FocusLLM (entropy, 3000 window)",
        "RAG top-4 x 256",
    ]
    chunked = [m for m in methods if getattr(m, "engine", None) is not None]
    assert [m.engine.native_window for m in chunked] == [2048, 2048, 3000, 3000]
    assert all(m.engine.model is engine.model and m.engine.config.prefix_cache_bytes == 0 for m in chunked)
    without_full = fair_fight_methods(engine.model, engine.tokenizer, [2048], ["select"], 4, 256, full=False)
    assert [m.name for m in without_full] == ["FocusLLM (select, 2K window)", "RAG top-4 x 256"]
    (one_stage,) = fair_fight_methods(
        engine.model, engine.tokenizer, [2048], ["select"], 4, 256, False, False, select_cascade=None
    )
    assert one_stage.engine.config.select_cascade is None
    cost = {"seconds": 2.0, "first_token_seconds": 1.0, "peak_bytes": 2**20}
    summary = {m: {"ruler_mean": {"8192": 50.0}, "by_length": {"8192": cost}} for m in ("full attention", "RAG")}
    plot_costs(summary, tmp_path / "new" / "costs.png", "costs")
    assert (tmp_path / "new" / "costs.png").stat().st_size > 5_000


def test_examples_and_benchmarks_do_not_import_each_other():
    """Both depend on the package only: what one needs of the other belongs in the package."""
    import ast

    root = Path(__file__).parent.parent
    for folder, other in (("examples", "benchmarks"), ("benchmarks", "examples")):
        for file in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                assert not [n for n in names if n.split(".")[0] == other], (file, names)


def test_listing_and_summary_cases_plant_every_fact_within_the_length(tokenizer):
    """The whole-document suites: every fact sentence planted once, the document within its length, the
    score the share of values a reply names (a word match: "Perth" is not found in "Perthshire")."""
    from benchmarks import listing, summaries
    from benchmarks.ruler.protocol import DEV

    for index in range(4):
        case = listing.make_case(tokenizer, DEV, index, 4096)
        assert len(case.values) == listing.SIZES[index // 2] and all(case.document.count(f) == 1 for f in case.facts)
        assert len(tokenizer(case.document).input_ids) <= 4096 - 256
        assert case.recall(" and ".join(case.values)) == 1.0 and case.recall("") == 0.0
        assert case.recall(case.values[0] + "shire") == 0.0
    summary = summaries.make_case(tokenizer, DEV, 1, 4096)
    assert len(summary.values) == 8 and summary.coverage(summary.document) == 1.0
