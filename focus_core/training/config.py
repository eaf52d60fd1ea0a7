"""The training settings (declared once: the ``focusllm train`` options come from them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import FocusConfigError
from ..settings import check_minimums, setting

LOSSES = ("continuation", "repetition", "distill")


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = setting(500, "optimizer steps", minimum=1)
    chunk_sizes: tuple[int, ...] = setting((64, 128, 256, 512), "chunk sizes, one drawn per step", minimum=1)
    memory_tokens: int = setting(2048, "tokens of memory (cut into chunks) per example", minimum=1)
    local_tokens: int = setting(128, "tokens of local context per example", minimum=1)
    dynamic_prompt_len: int = setting(64, "local tokens appended to every chunk", minimum=1)
    target_tokens: int = setting(16, "tokens predicted (and distilled) per example", minimum=1)
    losses: tuple[str, ...] = setting(
        LOSSES, "losses, one drawn per example; repeat a name to weight it", choices=LOSSES
    )
    examples_per_window: int = setting(
        4, "consecutive examples over one memory, which reuse its encoded chunks", minimum=1
    )
    synthetic_fraction: float = setting(0.5, "share of memories with recall facts spliced in, in [0, 1]", minimum=0)
    rank: int = setting(16, "low-rank deltas of this rank; 0 = full copies of q/k/v/o", minimum=0)
    learning_rate: float = setting(1e-3, "peak learning rate", minimum=0, flag="lr")
    warmup_steps: int = setting(20, "linear warm-up steps", minimum=0)
    grad_accum: int = setting(4, "examples accumulated per step", minimum=1)
    max_grad_norm: float = setting(1.0, "gradient norm clip", minimum=0)
    eval_every: int = setting(50, "steps between held-out evaluations", minimum=1)
    eval_examples: int = setting(16, "held-out examples per evaluation", minimum=1)
    save_every: int = setting(100, "steps between checkpoints", minimum=1)
    snapshot_every: int = setting(
        0, "keep an adapter every this many steps in OUTPUT/snapshots (learning curves), 0 for none", minimum=0
    )
    seed: int = setting(0, "random seed", minimum=0)

    def __post_init__(self):
        object.__setattr__(self, "chunk_sizes", tuple(self.chunk_sizes))
        object.__setattr__(self, "losses", tuple(self.losses))
        check_minimums(self)
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise FocusConfigError("synthetic_fraction must lie in [0, 1]", setting="synthetic_fraction")
        if not self.chunk_sizes or max(self.chunk_sizes) > self.memory_tokens:
            raise FocusConfigError(
                f"chunk_sizes must lie in [1, memory_tokens={self.memory_tokens}]", setting="chunk_sizes"
            )
        if self.dynamic_prompt_len > self.local_tokens:
            raise FocusConfigError("dynamic_prompt_len must lie in [1, local_tokens]", setting="dynamic_prompt_len")
        if any(self.memory_tokens // c * c < self.local_tokens + self.target_tokens for c in self.chunk_sizes):
            raise FocusConfigError(
                "local_tokens + target_tokens must fit in the memory's whole chunks (repetition copies from it)",
                setting="local_tokens",
            )
        if not self.losses or set(self.losses) - set(LOSSES):
            raise FocusConfigError(f"losses must be drawn from {LOSSES}, got {self.losses}", setting="losses")

    def replace(self, **changes) -> TrainingConfig:
        return dataclasses.replace(self, **changes)
