"""Recall of the answer chunks by the engine's own relevance, per signal, task and length."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import haystack
from .runner import load_records, mean_of, results_header, save_results
from .tasks import Sample, family, make_sample


def answer_chunk_recall(
    engine, case, ks: Sequence[int] = (1, 3), signals: Sequence[str] = ("likelihood",), **overrides: Any
) -> dict[str, dict[str, Any]]:
    """Recall@k of the chunks holding ``case``'s needles under ``engine.relevance``, per signal.

    A chunk holds a needle if their character spans in the prompt overlap (a needle split between chunks
    is found through either). ``recall@k`` is the fraction of the needles held by a chunk among the ``k``
    best-scored ones; needles in no chunk (in the local context) are counted in ``outside`` and left out
    of it (``None`` when no needle is in a chunk). Each signal is passed as ``relevance=signal`` where the
    engine's config has that setting; an engine without it has one signal, which ``signals`` names.
    """
    prompt = case.prompt
    needles = case.needles if isinstance(case, Sample) else (case.needle,)
    spans = [(start, start + len(n)) for n in needles for start in (prompt.index(n),)]
    out = {}
    for signal, setting in zip(signals, _signal_settings(engine, signals)):
        chunks = [c for c in engine.relevance(prompt, **setting, **overrides) if c.char_span is not None]
        holders = [{c.index for c in chunks if c.char_span[0] < end and start < c.char_span[1]} for start, end in spans]
        held = [h for h in holders if h]
        ranked = [c.index for c in sorted(chunks, key=lambda c: -c.score)]  # stable: earlier chunk first on ties
        out[signal] = {
            f"recall@{k}": sum(bool(h & set(ranked[:k])) for h in held) / len(held) if held else None for k in ks
        }
        out[signal].update(needles=len(spans), outside=len(spans) - len(held))
    return out


def _signal_settings(engine, signals: Sequence[str]) -> list[dict[str, str]]:
    """The overrides that select each signal."""
    if any(f.name == "relevance" for f in dataclasses.fields(engine.config)):
        return [{"relevance": signal} for signal in signals]
    if len(signals) != 1:
        raise ValueError(f"the engine has one relevance signal and no relevance setting; got signals {list(signals)}")
    return [{}]


def recall_cases(tokenizer, tasks: Sequence[str], length: int, samples: int) -> Iterator[tuple[str, int, Any]]:
    """(task, seed, case): the needle tasks among ``tasks`` (niah and vt), then the needle-in-prose and
    pass-key cases of :mod:`benchmarks.haystack` at evenly spread depths."""
    for task in tasks:
        if family(task) in ("niah", "vt"):
            for seed in range(samples):
                yield task, seed, make_sample(task, tokenizer, length, seed)
    for kind in ("needle", "passkey"):
        for seed in range(samples):
            yield kind, seed, haystack.make(kind, tokenizer, length, (seed + 0.5) / samples, seed)


def run_recall(
    engine,
    tasks: Sequence[str],
    lengths: Sequence[int],
    samples: int,
    signals: Sequence[str],
    results: Path,
    *,
    resume: bool = False,
    ks: Sequence[int] = (1, 3),
) -> dict:
    """Recall of the answer chunks for every case and signal; ``results`` is rewritten after each case."""
    header = results_header(
        engine,
        {"tasks": list(tasks), "lengths": list(lengths), "samples": samples, "signals": list(signals), "ks": list(ks)},
        "relevance_recall",
    )
    records = load_records(results, resume)
    done = {(r["task"], r["length"], r["seed"], r["signal"]) for r in records}
    payload = save_results(results, header, records, summarize_recall(records))
    for length in lengths:
        for task, seed, case in recall_cases(engine.tokenizer, tasks, length, samples):
            todo = [s for s in signals if (task, length, seed, s) not in done]
            if not todo:
                continue
            for signal, recall in answer_chunk_recall(engine, case, ks, todo).items():
                records.append({"task": task, "length": length, "seed": seed, "signal": signal, **recall})
                print(f"recall {task} {length} seed {seed} {signal}: {recall}", flush=True)
            payload = save_results(results, header, records, summarize_recall(records))
    return payload


def summarize_recall(records: list[dict]) -> dict:
    """Mean recall@k per signal, task and length (cases with a needle in a chunk)."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[r["signal"], r["task"], str(r["length"])].append(r)
    out: dict = {}
    for (signal, task, length), rs in cells.items():
        names = [k for k in rs[0] if k.startswith("recall@")]
        out.setdefault(signal, {}).setdefault(task, {})[length] = {
            **{k: mean_of([r[k] for r in rs if r[k] is not None]) for k in names},
            "cases": sum(r[names[0]] is not None for r in rs),
        }
    return out
