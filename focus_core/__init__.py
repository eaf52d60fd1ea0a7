"""focus_core: the FocusLLM engine (arXiv 2408.11745) over Hugging Face causal LMs.

Long prompts are cut into chunks that are read in parallel, each with the question appended; the
chunks' candidates are aggregated into the next token. See docs/design.md for the design.
"""

from .config import FocusConfig
from .engine import FocusEngine
from .errors import (
    AdapterError,
    FocusConfigError,
    FocusError,
    FocusInputError,
    FocusInputTypeError,
    MemoryBudgetError,
    MissingExtraError,
    ModelLoadError,
    UnsupportedModelError,
)
from .generation import Completion, Generation
from .loading import DEFAULT_MODEL_NAME, load_model
from .relevance import ChunkScore
from .request import Request

__all__ = [
    "AdapterError",
    "ChunkScore",
    "Completion",
    "DEFAULT_MODEL_NAME",
    "FocusConfig",
    "FocusConfigError",
    "FocusEngine",
    "FocusError",
    "FocusInputError",
    "FocusInputTypeError",
    "Generation",
    "MemoryBudgetError",
    "MissingExtraError",
    "ModelLoadError",
    "Request",
    "UnsupportedModelError",
    "load_model",
]
__version__ = "0.1.0"
