"""The precision and attention kernel chosen by the hardware: bf16 only where the device computes in it
natively (CUDA from Ampere on, CPUs with avx512_bf16 / amx_bf16 / Arm bf16), else fp16 on CUDA and fp32
on CPU; a timed matmul decides where the CPU's flags cannot be read; an explicit dtype always wins.
Capabilities are mocked: these tests run the same on any machine."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from focus_core import FocusConfig, FocusEngine, cli, load_model, loading, precision
from focus_core.errors import FocusConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
X86 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx fma avx2 {extra}\n"
)
ARM = "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd aes sha2 crc32 atomics sve svebf16 i8mm {extra}\n"
CPUINFOS = {
    "avx2 only": (X86.format(extra=""), torch.float32),
    "avx512f without bf16": (X86.format(extra="avx512f avx512bw avx512_vnni"), torch.float32),
    "avx512_bf16": (X86.format(extra="avx512f avx512_bf16"), torch.bfloat16),
    "amx_bf16": (X86.format(extra="avx512f amx_tile amx_bf16 amx_int8"), torch.bfloat16),
    "arm with bf16": (ARM.format(extra="bf16"), torch.bfloat16),
    "arm without bf16": (ARM.format(extra=""), torch.float32),  # svebf16 alone is not the bf16 feature
}


@pytest.fixture(autouse=True)
def fresh_choice():
    """The CPU's choice is cached per process: each test decides afresh."""
    precision.cpu_precision.cache_clear()
    yield
    precision.cpu_precision.cache_clear()


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the detection at a cpuinfo file with the given text (``None``: no such file)."""

    def use(text: str | None):
        path = tmp_path / ("cpuinfo" if text is not None else "missing")
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)

    return use


@pytest.mark.parametrize("name", CPUINFOS)
def test_cpu_gets_bf16_only_with_bf16_instructions(cpuinfo, name):
    text, expected = CPUINFOS[name]
    cpuinfo(text)
    choice = precision.choose_precision("auto", CPU)
    assert choice.dtype == expected
    assert choice.reason.startswith("auto: the CPU has ")
    if expected == torch.bfloat16:
        assert "bf16" in choice.reason and "no bf16" not in choice.reason
    assert precision.choose_precision(None, CPU) == choice  # None is auto


@pytest.mark.parametrize(("bf16", "seconds", "expected"), [(1e-3, 4e-3, torch.bfloat16), (40e-3, 1e-3, torch.float32)])
def test_unreadable_cpuinfo_is_decided_by_a_timed_matmul_once_per_process(
    cpuinfo, monkeypatch, bf16, seconds, expected
):
    cpuinfo(None)
    timed = []

    def fake_seconds(dtype):
        timed.append(dtype)
        return bf16 if dtype == torch.bfloat16 else seconds

    monkeypatch.setattr(precision, "matmul_seconds", fake_seconds)
    choice = precision.choose_precision("auto", CPU)
    assert choice.dtype == expected and "CPU flags unreadable" in choice.reason and "ms in bf16" in choice.reason
    assert precision.choose_precision("auto", CPU) == choice
    assert sorted(map(str, timed)) == ["torch.bfloat16", "torch.float32"]  # timed once, cached after


def test_the_timed_matmul_takes_milliseconds():
    assert 0 < precision.matmul_seconds(torch.float32) < 0.1


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_gets_bf16_where_it_computes_in_it_else_fp16(monkeypatch, native, expected):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA T4")
    choice = precision.choose_precision("auto", CUDA)
    assert choice.dtype == expected and "NVIDIA T4" in choice.reason
    assert asked == {"emulation": False}  # emulated bf16 (before Ampere) is slow: not counted as native


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", torch.float32), ("bf16", torch.bfloat16), ("torch.float16", torch.float16), (torch.float32, None)],
)
def test_an_explicit_dtype_is_always_honoured(cpuinfo, dtype, expected):
    cpuinfo(CPUINFOS["avx512_bf16"][0])
    for device in (CPU, CUDA):
        assert precision.choose_precision(dtype, device) == precision.PrecisionChoice(expected or dtype, "asked for")


def test_an_unknown_dtype_names_the_choices():
    with pytest.raises(FocusConfigError) as err:
        precision.choose_precision("int8", CPU)
    assert err.value.setting == "dtype" and "'int8'" in str(err.value)  # the value at fault


def test_cpu_summary_names_the_model_and_the_flags_that_matter(cpuinfo):
    cpuinfo(CPUINFOS["avx512_bf16"][0])
    assert precision.cpu_summary() == {"name": "AMD EPYC", "flags": ["avx2", "avx512f", "avx512_bf16"]}
    cpuinfo(None)
    assert precision.cpu_summary()["flags"] is None


# ------------------------------------------------------------------------------------- attention


@pytest.fixture
def flash_attn(monkeypatch):
    """Pretend flash-attn is installed (``True``) or not."""

    def installed(present: bool):
        real = importlib.util.find_spec
        fake = lambda name, *args: (object() if present else None) if name == "flash_attn" else real(name, *args)
        monkeypatch.setattr(loading.importlib.util, "find_spec", fake)

    return installed


@pytest.mark.parametrize(
    ("device", "dtype", "installed", "expected", "why"),
    [
        (CPU, torch.bfloat16, True, "sdpa", "on cpu"),
        (CUDA, torch.bfloat16, True, "flash_attention_2", "flash-attn installed"),
        (CUDA, torch.float16, True, "flash_attention_2", "flash-attn installed"),
        (CUDA, torch.float32, True, "sdpa", "does not run in float32"),
        (CUDA, torch.bfloat16, False, "sdpa", "flash-attn is not installed"),
    ],
)
def test_attention_is_flash_attention_2_only_on_cuda_in_half_precision_when_installed(
    flash_attn, device, dtype, installed, expected, why
):
    flash_attn(installed)
    kernel, reason = loading.default_attention(device, dtype)
    assert kernel == expected and why in reason


# ------------------------------------------------------------------------------- loaded models


def test_load_model_follows_the_cpu_and_says_why(cpuinfo, tiny_dir):
    cpuinfo(CPUINFOS["avx2 only"][0])
    model, _ = load_model(tiny_dir, progress=False)
    assert model.dtype == torch.float32
    assert model.focus_precision_reason == (
        "dtype float32 (auto: the CPU has no bf16 instructions (avx512_bf16, amx_bf16, bf16)); "
        "attention sdpa (auto: on cpu)"
    )
    model, _ = load_model(tiny_dir, dtype="bfloat16", attn_implementation="eager", progress=False)
    assert model.dtype == torch.bfloat16
    assert model.focus_precision_reason == "dtype bfloat16 (asked for); attention eager (asked for)"


def test_the_memory_estimate_follows_the_chosen_dtype(cpuinfo, tiny_dir, tokenizer):
    """fp32 on a CPU without bf16 instructions, bf16 on one with them: half the KV bytes per token."""
    config = FocusConfig(chunk_size=32, local_window=24, dynamic_prompt_len=8, max_new_tokens=6, native_window=128)
    prompt = " ".join(["The keeper of the lighthouse kept a log."] * 40)
    engines = {}
    for name in ("avx2 only", "amx_bf16"):
        cpuinfo(CPUINFOS[name][0])
        precision.cpu_precision.cache_clear()
        engines[name] = FocusEngine.from_pretrained(str(tiny_dir), config, progress=False)
    fp32, bf16 = engines["avx2 only"], engines["amx_bf16"]
    assert (fp32.runner.dtype, bf16.runner.dtype) == (torch.float32, torch.bfloat16)
    assert fp32.runner.kv_bytes_per_token() == 2 * bf16.runner.kv_bytes_per_token()
    assert fp32.estimate_memory(prompt).kv_bytes == 2 * bf16.estimate_memory(prompt).kv_bytes


def test_the_cli_loads_in_auto_precision_by_default():
    args = cli.build_parser().parse_args(["ask", "notes.txt", "-q", "Why?"])
    assert args.dtype == "auto"
