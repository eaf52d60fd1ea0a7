"""The embedded default model (SmolLM2-135M-Instruct, in the automatic precision) for real: plain generation,
long-context retrieval and the command line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from focus_core import FocusConfig, FocusEngine, precision
from focus_core.passkey import make_case

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(embedded):
    model, tokenizer = embedded
    return FocusEngine(model, tokenizer, FocusConfig(max_new_tokens=8, progress=False))


def test_embedded_model_is_the_default(engine):
    assert engine.native_window == engine.model.config.max_position_embeddings  # the model's own window
    assert engine.model.dtype == precision.cpu_precision().dtype  # bf16 with bf16 instructions, else fp32
    assert engine.model.config.model_type == "llama"


def test_short_prompt_equals_transformers_generate(engine):
    prompt = "The three primary colours are"
    ids = engine.tokenize(prompt)
    expected = engine.model.generate(
        torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=engine.tokenizer.eos_token_id
    )[0, len(ids) :].tolist()
    expected = expected[: expected.index(2)] if 2 in expected else expected
    assert engine.generate_ids(prompt, max_new_tokens=16) == expected


def test_passkey_beyond_the_native_window(engine):
    case = make_case(engine.tokenizer, 10_000, depth=0.35, seed=11)
    assert engine.count_tokens(case.prompt) > engine.native_window
    answer = engine.generate(case.prompt)
    assert case.is_correct(answer), (answer, case.passkey)
    assert engine.stats.chunks_encoded >= 4


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "focus_core", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_passkey_prints_the_summary_line():
    out = _cli(
        "passkey",
        "--tokens",
        "2500",
        "--seeds",
        "2",
        "--native-window",
        "1024",
        "--chunk-size",
        "512",
        "--local-window",
        "128",
        "--dynamic-prompt-len",
        "64",
        "--quiet",
    )
    assert out.strip().splitlines()[-1] == "passkey@2500: 2/2 correct"


def test_cli_ask_answers_from_a_file(tmp_path):
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 60
    fact = "The lighthouse keeper on the island of Skellig was called Brendan Hale. "
    doc = tmp_path / "doc.txt"
    doc.write_text(filler + fact + filler)
    out = _cli(
        "ask",
        str(doc),
        "--question",
        "What was the name of the lighthouse keeper?",
        "--answer-prefix",
        "The name of the lighthouse keeper was",
        "--native-window",
        "1024",
        "--chunk-size",
        "512",
        "--local-window",
        "128",
        "--dynamic-prompt-len",
        "64",
        "--max-new-tokens",
        "6",
        "--quiet",
    )
    assert "Brendan Hale" in out


def test_cli_reports_errors_cleanly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "focus_core", "ask", str(tmp_path / "missing.txt"), "-q", "x"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2 and "focusllm: error" in out.stderr


def test_cli_train_writes_an_adapter_that_passkey_and_ask_load(tmp_path):
    (tmp_path / "text.txt").write_text(" ".join(f"Item {i} is stored on shelf {i % 17}." for i in range(600)))
    out = _cli(
        "train",
        "--data",
        str(tmp_path / "text.txt"),
        "--output",
        str(tmp_path / "adapter"),
        "--steps",
        "2",
        "--chunk-sizes",
        "64",
        "--memory-tokens",
        "128",
        "--local-tokens",
        "32",
        "--dynamic-prompt-len",
        "8",
        "--target-tokens",
        "2",
        "--rank",
        "2",
        "--grad-accum",
        "1",
        "--eval-examples",
        "2",
        "--quiet",
    )
    assert re.search(r"adapter written to .*: 2 steps, \d+ tokens", out)
    assert (tmp_path / "adapter" / "candidates.safetensors").stat().st_size < 2_000_000  # rank-2 deltas only
    out = _cli(
        "passkey",
        "--tokens",
        "1500",
        "--seeds",
        "1",
        "--native-window",
        "1024",
        "--chunk-size",
        "512",
        "--local-window",
        "128",
        "--dynamic-prompt-len",
        "64",
        "--adapter",
        str(tmp_path / "adapter"),
        "--quiet",
    )
    assert out.strip().splitlines()[-1].startswith("passkey@1500: ")
    assert out.strip().splitlines()[-2].startswith("kv aggregation: ")  # the adapter's candidates decoded
    bad = subprocess.run(
        [sys.executable, "-m", "focus_core", "passkey", "--tokens", "1500", "--adapter", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "not a FocusLLM adapter" in bad.stderr


def test_torchrun_two_processes_print_the_single_process_final_line():
    args = [
        "passkey",
        "--tokens",
        "2500",
        "--seeds",
        "1",
        "--native-window",
        "1024",
        "--chunk-size",
        "512",
        "--local-window",
        "128",
        "--quiet",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "focus_core"]
    out = subprocess.run(torchrun + args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2].endswith("on 2 processes")
    assert out.stdout.strip().splitlines()[-1] == _cli(*args).strip().splitlines()[-1] == "passkey@2500: 1/1 correct"
