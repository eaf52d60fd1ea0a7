"""Training the candidate projections for `kv` (docs/design.md): data, the losses (the paper's two and
distillation from full attention), the accelerate loop.

Experimental, and an extra: ``pip install 'focusllm-integrations[train]'`` brings accelerate, which only
:func:`train` needs; it is imported when ``train`` is first used.
"""

import importlib
from typing import Any

from ..errors import MissingExtraError
from .config import LOSSES, TrainingConfig

TRAIN_INSTALL = "pip install 'focusllm-integrations[train]'"

__all__ = [
    "LOSSES",
    "TRAIN_INSTALL",
    "CandidateObjective",
    "Example",
    "TokenStream",
    "TrainingConfig",
    "kl_divergence",
    "make_example",
    "read_documents",
    "train",
    "window_examples",
]


# imported on first use, so that the CLI's option declarations (TrainingConfig) load nothing else
_LAZY = {
    "TokenStream": "data",
    "read_documents": "data",
    "window_examples": "data",
    "CandidateObjective": "objective",
    "Example": "objective",
    "kl_divergence": "objective",
    "make_example": "objective",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name != "train":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from .loop import train
    except ImportError as err:
        if err.name != "accelerate":
            raise
        raise MissingExtraError(f"training needs accelerate, which is not installed: {TRAIN_INSTALL}") from err
    return train
