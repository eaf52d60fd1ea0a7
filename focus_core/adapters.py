"""Candidate-projection adapters on disk: ``candidates.safetensors`` (the candidate weights only) and
``adapter_config.json`` (the base model's identity and shapes, the rank, how it was trained).

Loading checks everything against the model before any weight is used: a missing, corrupt or
mismatched adapter raises :class:`AdapterError` and leaves the engine as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .candidates import CandidateProjections, attention_modules
from .errors import AdapterError

WEIGHTS = "candidates.safetensors"
CONFIG = "adapter_config.json"
FORMAT = "focusllm-candidate-projections"
VERSION = 1


def model_identity(model: nn.Module) -> dict[str, Any]:
    """What an adapter must match: architecture, attention shapes and a sample of the weights."""
    config = model.config.get_text_config()
    q = attention_modules(model)[0].q_proj.weight
    return {
        "base_model": str(getattr(model.config, "name_or_path", "") or ""),
        "model_type": model.config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "weight_sample": weight_sample(q),
    }


def weight_sample(weight: torch.Tensor, count: int = 32) -> list[float]:
    """``count`` evenly strided values of a weight: enough to tell checkpoints apart, whatever the dtype."""
    flat = weight.detach().flatten()
    return flat[:: max(1, flat.numel() // count)][:count].float().cpu().tolist()


def _same_sample(a: Any, b: list[float]) -> bool:
    return (
        isinstance(a, list)
        and len(a) == len(b)
        and torch.allclose(torch.tensor(a, dtype=torch.float32), torch.tensor(b), rtol=2e-2, atol=1e-3)
    )


def save_adapter(
    projections: CandidateProjections, model: nn.Module, path: str | Path, training: dict[str, Any] | None = None
) -> Path:
    """Write ``projections`` as an adapter directory at ``path``; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in projections.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "version": VERSION,
        **model_identity(model),
        "rank": projections.rank,
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "training": training or {},
    }
    (path / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return path


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise AdapterError(f"{path} is not a FocusLLM adapter: it needs {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path / CONFIG} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AdapterError(f"{path / CONFIG} is not a {FORMAT} config")
    if config.get("version") != VERSION:
        raise AdapterError(f"adapter format version {config.get('version')!r} is not supported (expected {VERSION})")
    return config


def load_adapter(model: nn.Module, path: str | Path) -> CandidateProjections:
    """The candidate projections stored at ``path``, checked against ``model`` (not yet attached)."""
    path = Path(path)
    config = read_adapter_config(path)
    identity = model_identity(model)
    for key, expected in identity.items():
        same = _same_sample(config.get(key), expected) if key == "weight_sample" else config.get(key) == expected
        if key != "base_model" and not same:
            raise AdapterError(
                f"adapter {path} was trained for a different model: {key} differs (adapter base model: "
                f"{config.get('base_model')!r}, this model: {identity['base_model']!r})"
            )
    rank = config.get("rank")
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"{path / WEIGHTS} cannot be read (corrupt or truncated?): {err}") from err
    dtype = next(iter(tensors.values())).dtype if tensors else None
    projections = CandidateProjections(model, rank=rank, dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in projections.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise AdapterError(
            f"adapter {path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shapes {[(k, found[k], expected[k]) for k in wrong[:3]]}"
        )
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise AdapterError(f"adapter {path} holds non-finite weights")
    projections.load_state_dict(tensors)
    return projections
