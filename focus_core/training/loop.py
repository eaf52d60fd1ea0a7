"""The training loop: accelerate-driven (CPU here; one or many GPUs elsewhere, bf16 there), gradient
accumulation, periodic held-out evaluation, resumable checkpoints, and the adapter at the end.

The data of step ``s`` depends only on the seed, the process and ``s`` (examples are numbered; example
``e`` is the ``e % examples_per_window``-th of window ``e // examples_per_window``), so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..adapters import save_adapter
from ..candidates import CandidateProjections
from .config import TrainingConfig
from .data import TokenStream, window_examples
from .objective import CandidateObjective, Example

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"


class ExampleSource:
    """Example ``e`` of one process: the ``e % examples_per_window``-th of window ``e // examples_per_window``."""

    def __init__(self, stream: TokenStream, cfg: TrainingConfig, process: int):
        self.stream, self.cfg, self.process = stream, cfg, process
        self._window: tuple[int, list[Example]] | None = None

    def __getitem__(self, e: int) -> Example:
        w, i = divmod(e, self.cfg.examples_per_window)
        if self._window is None or self._window[0] != w:
            rng = random.Random(f"{self.cfg.seed}-{self.process}-{w}")
            self._window = w, window_examples(self.stream, self.cfg, rng)
        return self._window[1][i]


def eval_examples(stream: TokenStream, cfg: TrainingConfig) -> list[Example]:
    """The fixed held-out examples: whole windows of them, from the held-out text."""
    windows = -(-cfg.eval_examples // cfg.examples_per_window)
    examples = [
        e for w in range(windows) for e in window_examples(stream, cfg, random.Random(f"eval-{cfg.seed}-{w}"), True)
    ]
    return examples[: cfg.eval_examples]


def train(
    model,
    tokenizer,
    stream: TokenStream,
    output_dir: str | Path,
    cfg: TrainingConfig | None = None,
    resume: bool = False,
    progress: bool | None = None,
    until: int | None = None,
) -> dict:
    """Train candidate projections for the frozen ``model``; write the adapter to ``output_dir``.

    ``until``: stop after this step (a checkpoint is written; ``resume`` continues the same run).
    Returns the history (loss per step, held-out loss per evaluation, tokens, seconds). ``cfg``: the
    defaults of :class:`TrainingConfig` when not given.
    """
    cfg, output_dir = cfg or TrainingConfig(), Path(output_dir)
    on_cpu = next(model.parameters()).device.type == "cpu"  # then processes launched together join gloo
    accelerator = Accelerator(
        cpu=on_cpu and not torch.cuda.is_available(),
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    model.requires_grad_(False).eval().to(accelerator.device)
    projections = CandidateProjections(model, rank=cfg.rank or None, dtype=torch.float32)
    projections.attach()
    objective = CandidateObjective(model, projections, tokenizer.bos_token_id, cfg.dynamic_prompt_len)
    optimizer = torch.optim.AdamW([p for p in projections.parameters()], lr=cfg.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)

    state = {"step": 0, "history": [], "evaluations": [], "tokens": 0, "seconds": 0.0}
    if resume and (output_dir / CHECKPOINT / STATE).is_file():
        state = _restore(output_dir / CHECKPOINT, projections, optimizer, scheduler)
    eval_set = eval_examples(stream, cfg)
    source = ExampleSource(stream, cfg, accelerator.process_index)
    stop = cfg.steps if until is None else min(until, cfg.steps)
    if not state["evaluations"]:
        state["evaluations"].append({"step": 0, **evaluate(objective, eval_set, accelerator)})

    show = accelerator.is_main_process and (progress if progress is not None else sys.stderr.isatty())
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="training candidates", unit="step", disable=not show)
    while state["step"] < stop:
        began, step = time.perf_counter(), state["step"]
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            example = source[step * cfg.grad_accum + micro]
            sync = accelerator.no_sync(objective) if micro + 1 < cfg.grad_accum else contextlib.nullcontext()
            with sync:
                loss = objective(example) / cfg.grad_accum
                accelerator.backward(loss)
            loss_sum += float(loss.detach())
            state["tokens"] += example.chunks.numel() + example.local.numel() + example.targets.numel()
        accelerator.clip_grad_norm_(projections.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        state["seconds"] += time.perf_counter() - began
        state["history"].append({"step": step + 1, "loss": loss_sum})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            state["evaluations"].append({"step": state["step"], **evaluate(objective, eval_set, accelerator)})
            if accelerator.is_main_process:
                bar.write(f"step {state['step']}: held-out loss {state['evaluations'][-1]['loss']:.4f}")
        if state["step"] % cfg.save_every == 0 or state["step"] == stop < cfg.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _checkpoint(output_dir / CHECKPOINT, projections, optimizer, scheduler, state)
        if cfg.snapshot_every and state["step"] % cfg.snapshot_every == 0 and accelerator.is_main_process:
            save_adapter(projections, model, output_dir / "snapshots" / f"step-{state['step']:05d}", {"step": step + 1})
    bar.close()
    if accelerator.is_main_process and state["step"] == cfg.steps:
        training = {
            "config": dataclasses.asdict(cfg),
            "steps": state["step"],
            "tokens": state["tokens"],
            "seconds": state["seconds"],
            "evaluations": state["evaluations"],
            "processes": accelerator.num_processes,
        }
        save_adapter(projections, model, output_dir, training)
        (output_dir / "history.json").write_text(json.dumps(state, indent=1) + "\n")
    projections.detach()
    accelerator.wait_for_everyone()
    return state


@torch.no_grad()
def evaluate(objective, examples: list[Example], accelerator: Accelerator) -> dict[str, float]:
    """Mean loss over the fixed held-out examples (``loss``), and per loss (cross-entropy or KL)."""
    losses = torch.stack([objective(e).detach() for e in examples])
    kinds = sorted({e.kind for e in examples})
    means = [losses.mean()] + [losses[[i for i, e in enumerate(examples) if e.kind == k]].mean() for k in kinds]
    reduced = accelerator.reduce(torch.stack(means), reduction="mean").tolist()
    return dict(zip(["loss", *kinds], reduced))


def _lr_factor(step: int, cfg: TrainingConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _checkpoint(folder: Path, projections: CandidateProjections, optimizer, scheduler, state: dict) -> None:
    """Candidate weights, optimizer and schedule, and the step: all a resumed run needs (not the base)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()},
        str(folder / "candidates.safetensors"),
    )
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / "optimizer.pt")
    (folder / STATE).write_text(json.dumps(state) + "\n")


def _restore(folder: Path, projections: CandidateProjections, optimizer, scheduler) -> dict:
    projections.load_state_dict(load_file(str(folder / "candidates.safetensors")))
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return json.loads((folder / STATE).read_text())
