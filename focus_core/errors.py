"""Exception types raised by focus_core.

Every error a caller can provoke derives from :class:`FocusError`, and also from the built-in type a
Python user would expect (``ValueError`` for bad values, ``TypeError`` for wrong types, ``MemoryError``
for inputs that cannot fit), so ``except ValueError`` keeps working for code that does not know us.
"""


class FocusError(Exception):
    """Base class of all focus_core errors."""


class FocusConfigError(FocusError, ValueError):
    """A setting is out of range or inconsistent with another setting or with the model; ``setting`` names
    the one to change (``None`` where no single setting is at fault)."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class FocusInputError(FocusError, ValueError):
    """The prompt is empty or otherwise unusable."""


class FocusInputTypeError(FocusError, TypeError):
    """An argument has the wrong type: a prompt that is neither text nor token ids, messages that are not
    role/content dicts, an engine that is not a FocusEngine."""


class UnsupportedModelError(FocusError, ValueError):
    """The model cannot serve the chosen aggregation mode."""


class MemoryBudgetError(FocusError, MemoryError):
    """The KV cache an input needs does not fit in the memory budget; raised before allocating."""

    def __init__(self, message: str, needed_bytes: int, budget_bytes: int):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes


class ModelLoadError(FocusError, OSError):
    """A model name, path or GGUF file that cannot be loaded (missing, not a model, not reachable), or a
    packaged model that is not installed or fails its checksum."""


class AdapterError(FocusError, ValueError):
    """A candidate-projection adapter is missing, corrupt, or made for another model."""


class MissingExtraError(FocusError, ImportError):
    """A feature was asked for whose optional dependencies (a package extra) are not installed."""
