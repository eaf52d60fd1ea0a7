"""Training the candidate projections for `kv` (docs/design.md): data, the paper's two losses, the accelerate loop."""

from .data import TokenStream, read_documents
from .loop import TrainingConfig, train
from .objective import LOSSES, CandidateObjective, Example, make_example

__all__ = [
    "LOSSES",
    "CandidateObjective",
    "Example",
    "TokenStream",
    "TrainingConfig",
    "make_example",
    "read_documents",
    "train",
]
