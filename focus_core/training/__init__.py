"""Training the candidate projections for `kv` (docs/design.md): data, the losses (the paper's two and
distillation from full attention), the accelerate loop."""

from .data import TokenStream, read_documents, window_examples
from .loop import TrainingConfig, train
from .objective import LOSSES, CandidateObjective, Example, kl_divergence, make_example

__all__ = [
    "LOSSES",
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
