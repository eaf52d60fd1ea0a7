"""The RULER runner: every method on every task, length and sample; records, summary and heatmap."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from focus_core import FocusEngine

from ..common import result_header, write_json
from ..methods import FocusMethod, FullAttention, Method, Truncation, VectorRAG, reads_whole
from ..plots import plt, save_figure
from .protocol import DEV, Part
from .tasks import TASKS, Sample, chat_sample, family, make_sample

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- the benchmark runner

# RULER's tokens_to_generate, niah's 128 halved for CPU
NEW_TOKENS = {"niah": 64, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}


def make_methods(names: Sequence[str], rag_top_k: int, rag_chunk_size: int) -> list[Method]:
    """``full``, ``truncation`` and ``rag`` are those methods; any other name is a FocusLLM aggregation."""
    fixed: dict[str, Callable[[], Method]] = {
        "full": lambda: FullAttention("full attention"),
        "truncation": lambda: Truncation("truncation"),
        "rag": lambda: VectorRAG(f"RAG top-{rag_top_k} x {rag_chunk_size}", chunk_size=rag_chunk_size, top_k=rag_top_k),
    }
    return [fixed[name]() if name in fixed else FocusMethod(f"FocusLLM ({name})", name) for name in names]


def run_suite(
    engine: FocusEngine,
    tasks: Sequence[str],
    lengths: Sequence[int],
    samples: int,
    methods: Sequence[Method],
    results: Path,
    figure: Path,
    *,
    resume: bool = False,
    stop: Sequence[str] = (),
    part: Part = DEV,
    chat: bool = False,
) -> dict:
    """Every method on the first ``samples`` samples of ``part`` (benchmarks.ruler.protocol) of every task
    and length; with ``chat``, the qa tasks asked through the model's chat template (:func:`chat_sample`).
    ``results`` (JSON) is rewritten after each record and ``figure`` (heatmap) after each sample;
    ``resume`` keeps the records already in ``results`` and runs only the others. Each task family's
    generation length (:data:`NEW_TOKENS`) is set in the engine's config, which the methods read."""
    header = results_header(
        engine,
        {
            "tasks": list(tasks),
            "lengths": list(lengths),
            "samples": samples,
            "part": part.name,
            "chat": chat,
            "seeds": [part.seed(0), part.seed(samples - 1)] if samples else [],
            "methods": [m.name for m in methods],
            "new_tokens": NEW_TOKENS,
            "stop": list(stop),
            "method_settings": [_settings(m) for m in methods],
        },
        "ruler",
    )
    records = load_records(results, resume)
    done = {(r["task"], r["length"], r["seed"], r["method"]) for r in records}
    payload = save_results(results, header, records, summarize(records))
    for length in lengths:
        for task in tasks:
            for index in range(samples):
                todo = [m for m in methods if (task, length, part.seed(index), m.name) not in done]
                if not todo:
                    continue
                case = make_sample(task, engine.tokenizer, length, index, part)
                if chat:
                    case = chat_sample(case, engine.tokenizer)
                engine.config = engine.config.replace(max_new_tokens=NEW_TOKENS[family(task)], stop=tuple(stop))
                for record in answer_case(engine, case, todo):
                    records.append(record)
                    payload = save_results(results, header, records, summarize(records))
                plot_heatmaps(payload["summary"], figure, f"RULER tasks ({engine.model_name})")
    plot_heatmaps(payload["summary"], figure, f"RULER tasks ({engine.model_name})")
    return payload


def answer_case(engine: FocusEngine, case: Sample, methods: Sequence[Method]) -> Iterator[dict]:
    """A record per method. A prompt read whole (``plain``) is decoded the same way whatever the method, so
    it is decoded once for all the methods that read it whole."""
    plain: dict[tuple[str, int], tuple[str, dict]] = {}
    for method in methods:
        prompt = method.prompt(engine, case)[0]
        whole = reads_whole(method, engine, prompt)
        key = (prompt, id(getattr(method, "engine", None) or engine))  # a method may bring its own engine
        if whole and key in plain:
            first, out = plain[key]
            out = {**out, "same_run_as": first}
        else:
            out = method.answer(engine, case)
            if whole:
                plain[key] = (method.name, out)
        record = _record(case, method.name, out)
        if out is not None:
            print(
                f"{case.task} {case.length} seed {case.seed} {method.name}: {out['reply']!r} "
                f"score {record['score']:.2f} {out['seconds']:.1f}s",
                flush=True,
            )
        yield record


def _record(case: Sample, method: str, out: dict | None) -> dict:
    base = {
        "task": case.task,
        "length": case.length,
        "seed": case.seed,
        "part": case.part,
        "method": method,
        "tokens": case.tokens,
        "outputs": list(case.outputs),
    }
    if out is None:  # the method does not apply (full attention past the window)
        return {**base, "reply": None, "score": None}
    if not case.needles and "retrieved_needle" in out:
        out = {**out, "retrieved_needle": None}  # no needle to retrieve (cwe, fwe)
    if case.needles and "read" in out:
        out = {**out, **needle_coverage(case, out)}
    return {**base, **out, "score": case.score(out["reply"])}


def needle_coverage(case: Sample, out: dict, ks: Sequence[int] = (1, 3)) -> dict:
    """How well a method's reading covered ``case``'s needles: ``in_read``, the fraction lying whole in
    what decoding read, the local context included (touching spans joined: a needle across the memory's
    end is read whole where a span reaches that end); ``recall@k``, the fraction overlapping one of the
    ``k`` best-scored chunks or passages."""
    needles = [(start, start + len(n)) for n in case.needles for start in (case.prompt.index(n),)]
    read: list[list[int]] = []
    for a, b in sorted([*out["read"], [out["memory_end"], len(case.prompt)]]):
        if read and a <= read[-1][1] + 1:
            read[-1][1] = max(read[-1][1], b)
        else:
            read.append([a, b])
    inside = [any(x <= a and b <= y for x, y in read) for a, b in needles]
    coverage = {"in_read": sum(inside) / len(needles)}
    for k in ks:
        hits = [any(x < b and a < y for x, y in out["ranked"][:k]) for a, b in needles]
        coverage[f"recall@{k}"] = sum(hits) / len(needles)
    return coverage


def summarize(records: list[dict]) -> dict:
    """Per method: mean score x100 per task and length, RULER's mean over tasks per length, samples per
    cell, mean seconds (records the method ran) and, per length, mean seconds, seconds to the first token
    and peak memory added."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    costs: dict[tuple, list[dict]] = defaultdict(list)
    coverage: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["score"] is not None:
            cells[r["method"], r["task"], str(r["length"])].append(r["score"])
            seconds[r["method"]].append(r["seconds"])
            costs[r["method"], str(r["length"])].append(r)
    for (method, task, length), rs in _group(r for r in records if "in_read" in r).items():
        coverage[method][task][length] = {k: mean_of([r[k] for r in rs]) for k in ("in_read", "recall@1", "recall@3")}
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in records):
        by_task: dict[str, dict[str, float]] = {}
        for task in TASKS:
            lengths = sorted({n for (m, t, n) in cells if m == method and t == task}, key=int)
            if lengths:
                by_task[task] = {n: 100 * mean_of(cells[method, task, n]) for n in lengths}
        all_lengths = sorted({n for scores in by_task.values() for n in scores}, key=int)
        out[method] = {
            "by_task": by_task,
            "ruler_mean": {n: mean_of([s[n] for s in by_task.values() if n in s]) for n in all_lengths},
            "samples": {t: {n: len(cells[method, t, n]) for n in s} for t, s in by_task.items()},
            "mean_seconds": mean_of(seconds[method]),
            "by_length": {n: _costs(costs[method, n]) for n in all_lengths},
            **({"needle_coverage": coverage[method]} if method in coverage else {}),
        }
    return out


def _costs(records: list[dict]) -> dict[str, float | None]:
    """Mean seconds, seconds to the first token and peak memory added (where recorded) of some records."""
    return {
        key: mean_of([r[key] for r in records if r.get(key) is not None])
        for key in ("seconds", "first_token_seconds", "peak_bytes")
    }


def _group(records) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["method"], r["task"], str(r["length"])].append(r)
    return groups


def plot_heatmaps(summary: dict, path: Path, title: str) -> None:
    """Score per task and length (and RULER's mean) for every method; grey where a method did not run."""
    methods = list(summary)
    if not methods:
        return
    lengths = sorted({int(n) for s in summary.values() for n in s["ruler_mean"]})
    tasks = [t for t in TASKS if any(t in s["by_task"] for s in summary.values())]
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    size = (1.4 + max(2.6, 0.6 + 0.55 * len(lengths)) * cols, 0.6 + (0.8 + 0.3 * (len(tasks) + 1)) * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    for i, ax in enumerate(axes.flat):
        if i >= len(methods):
            ax.axis("off")
            continue
        s = summary[methods[i]]
        grid = [[s["by_task"].get(t, {}).get(str(n), math.nan) for n in lengths] for t in tasks]
        grid.append([_nan(s["ruler_mean"].get(str(n))) for n in lengths])
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for y, row in enumerate(grid):
            for x, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=7)
        ax.axhline(len(tasks) - 0.5, color="black", linewidth=0.8)
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(tasks) + 1), [*tasks, "RULER mean"] if i % cols == 0 else [], fontsize=8)
        overall = mean_of([v for v in s["ruler_mean"].values() if v is not None])
        ax.set_title(f"{methods[i]}\nmean {'-' if overall is None else f'{overall:.0f}'}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _settings(method: Method) -> dict:
    """A method's class and plain settings (top-k, chunk size, aggregation, ...)."""
    fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    return {
        "method": type(method).__name__,
        **{k: v for k, v in fields.items() if isinstance(v, (str, int, float, bool, type(None)))},
    }


def results_header(engine, settings: dict, benchmark: str) -> dict:
    return {**result_header(benchmark, engine), "settings": settings}


def load_records(path: Path, resume: bool) -> list[dict]:
    return json.loads(path.read_text())["records"] if resume and path.is_file() else []


def save_results(path: Path, header: dict, records: list[dict], summary: dict) -> dict:
    payload = {**header, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary, "records": records}
    write_json(path, payload)
    return payload


def mean_of(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
