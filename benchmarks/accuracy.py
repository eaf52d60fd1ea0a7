"""Accuracy grids: every method on the same cases, over prompt length x needle depth.

The case of depth index ``j`` uses seed ``j`` (its pass key, or which needle). The engine's prefix
cache is kept for the whole grid, as a user asking many questions would keep it: cases of one length
share the haystack before the needle, so later depths re-encode fewer chunks (each record says how
many it encoded). Cold-start times are in the speed benchmark. Where two methods build the same prompt
and it is read whole (full attention, truncation and FocusLLM on a prompt it reads whole all decode it
plainly), the run is done once and shared.
"""

from __future__ import annotations

from focus_core import FocusEngine

from .haystack import make
from .methods import Method, reads_whole


def run_grid(engine: FocusEngine, kind: str, lengths: list[int], depths: list[float], methods: list[Method]) -> dict:
    """``{method: {length: [record per depth or None]}}`` plus the case list."""
    results: dict[str, dict[str, list]] = {m.name: {} for m in methods}
    cases = []
    for n in lengths:
        for seed, depth in enumerate(depths):
            case = make(kind, engine.tokenizer, n, depth, seed)
            cases.append(
                {
                    "tokens": n,
                    "depth": depth,
                    "seed": seed,
                    "answers": list(case.answers),
                    "question": case.question,
                    "needle": case.needle,
                }
            )
            done: dict[str, dict] = {}  # prompts read whole: the same answer whatever the method
            for method in methods:
                prompt = method.prompt(engine, case)[0]
                whole = reads_whole(method, engine, prompt)
                if whole and prompt in done:
                    record = {**done[prompt], "same_run_as": done[prompt]["method"]}
                else:
                    record = method.answer(engine, case)
                    if whole:
                        done[prompt] = {**record, "method": method.name}
                results[method.name].setdefault(str(n), []).append(record)
                if record is not None:
                    print(
                        f"{kind} {n} depth {depth:.2f} {method.name}: {record['reply']!r} "
                        f"{'ok' if record['correct'] else 'wrong'} {record['seconds']:.1f}s",
                        flush=True,
                    )
    return {
        "kind": kind,
        "lengths": lengths,
        "depths": depths,
        "cases": cases,
        "results": results,
        "summary": summarize(results),
    }


def summarize(results: dict[str, dict[str, list]]) -> dict:
    """Accuracy and mean seconds per method, per length and overall (cases the method ran)."""
    out = {}
    for name, by_length in results.items():
        ran = [r for records in by_length.values() for r in records if r is not None]
        out[name] = {
            "accuracy": _mean([r["correct"] for r in ran]),
            "mean_seconds": _mean([r["seconds"] for r in ran]),
            "cases": len(ran),
            "by_length": {
                n: _mean([r["correct"] for r in records if r is not None]) for n, records in by_length.items()
            },
        }
    return out


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None
