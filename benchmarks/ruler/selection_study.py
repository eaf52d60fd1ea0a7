"""``python -m benchmarks.ruler.selection_study``: what ``select`` reads, without decoding, under each
candidate rule (docs/benchmarks.md, "Selection study").

For every needle case (the niah tasks, ``vt``, ``qa_1``/``qa_2``) the early-exit pass runs once, recording
the question's attention at several depths of the model in one forward; every rule is then applied to
the same masses. A rule is a probe depth, a cliff (``select_drop``), whether each part of the question
keeps its own passage (with the fewest queries a part needs), whether the question's words do too
(``cascade.word_mass``) and how far a chosen window may move to hold whole sentences. Per case and rule:
the share of the needles read whole, the share cut by the reading's edges (read in part), the share of
the distractor needles read (``niah_multikey_1``), the tokens read and recall@3 of the needles' passages
in the whole question's ranking (:meth:`FocusEngine.relevance`'s).

The protocol decides what may be tuned: on the development part every rule of the grid is measured; on
the held-out part only the engine's own rule (its defaults, or the settings given), which is what the
README reports::

    python -m benchmarks.ruler.selection_study --part dev --lengths 32768 --samples 3
    python -m benchmarks.ruler.selection_study --part dev --model gemma-3-270m --native-window 4096
    python -m benchmarks.ruler.selection_study --part heldout --lengths 32768 --samples 5
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from focus_core import FocusConfig, FocusEngine
from focus_core.cascade import word_mass
from focus_core.selection import (
    EXIT_DEPTH,
    MIN_PART_QUERIES,
    SENTENCE_REACH,
    Sentences,
    Span,
    choose_spans,
    default_exit_layer,
    memory_mass,
    merge,
    probed,
    question_marks,
    question_rows,
    select_spans,
)

from .protocol import DEV, PARTS, Part
from .runner import ROOT, load_records, mean_of, results_header, save_results
from .tasks import NIAH, QA, Sample, make_sample

NEEDLE_TASKS = (*NIAH, "vt", *QA)
DEPTHS = (0.4, 0.5, EXIT_DEPTH, 0.7)
DROPS = (1.5, 2.0, 3.0, None)
MIN_QUERIES = (1, MIN_PART_QUERIES, 3)
REACHES = (None, SENTENCE_REACH, 0.25, 0.5)


@dataclass(frozen=True)
class Rule:
    """One way of choosing passages: the probe depth, the cliff, the fewest queries of a part of the
    question that keeps its own passage (``None``: parts off, the whole question's attention alone), and
    how far a window may move to hold whole sentences, as a share of its length (``None``: it stays), and
    whether the question's rare words keep the passage they point at (with parts only)."""

    depth: float
    drop: float | None
    part_queries: int | None
    reach: float | None = SENTENCE_REACH
    words: bool = True

    @property
    def name(self) -> str:
        parts = "parts off" if self.part_queries is None else f"parts of >= {self.part_queries} queries"
        words = "" if self.words or self.part_queries is None else ", words off"
        return f"depth {self.depth}, drop {self.drop}, {parts}, sentence reach {self.reach}{words}"


def grid() -> list[Rule]:
    """The development part's rules: every depth and cliff with parts on and off; the part size, the
    sentence reach and the rare words' passage varied at the default depth and cliff."""
    rules = [Rule(d, drop, q) for d in DEPTHS for drop in DROPS for q in (None, MIN_PART_QUERIES)]
    rules += [Rule(EXIT_DEPTH, drop, MIN_PART_QUERIES, words=False) for drop in DROPS if drop is not None]
    rules += [Rule(EXIT_DEPTH, 2.0, q) for q in MIN_QUERIES if q != MIN_PART_QUERIES]
    rules += [Rule(EXIT_DEPTH, 2.0, MIN_PART_QUERIES, r) for r in REACHES if r != SENTENCE_REACH]
    return rules


def engine_rule(engine: FocusEngine) -> Rule:
    """The rule the engine's own settings make (parts only come with a cliff)."""
    drop = engine.config.select_drop
    return Rule(EXIT_DEPTH, drop, None if drop is None else MIN_PART_QUERIES)


def layer_of(engine: FocusEngine, depth: float) -> int:
    return default_exit_layer(engine.model.config.get_text_config(), depth)


def needle_tokens(case: Sample, offsets: list[tuple[int, int]], memory_start: int, needles: Sequence[str]):
    """``[start, end)`` memory tokens of each of ``needles`` in ``case``'s prompt."""
    spans = []
    for needle in needles:
        a = case.prompt.index(needle)
        b = a + len(needle)
        first = next(i for i, (_, end) in enumerate(offsets) if end > a)
        last = next(i for i, (start, _) in enumerate(offsets) if start >= b) if offsets[-1][0] >= b else len(offsets)
        spans.append((first - memory_start, last - memory_start))
    return spans


@torch.inference_mode()
def study_case(engine: FocusEngine, case: Sample, rules: Sequence[Rule]) -> list[dict]:
    """One early-exit pass over ``case`` at every depth the rules use, then every rule's reading."""
    cfg = engine.config
    request = engine.request(case.prompt, aggregation="select")
    plan = request.plan
    offsets = request.offsets
    needles = needle_tokens(case, offsets, plan.memory_start, case.needles)
    distractors = needle_tokens(case, offsets, plan.memory_start, case.distractors)
    rows = question_rows(plan.dynamic_prompt, *question_marks(engine.tokenizer, plan.dynamic_prompt))
    words = word_mass(plan, plan.dynamic_prompt[rows[0] : rows[1]])
    layers = sorted({layer_of(engine, r.depth) for r in rules})
    began = time.perf_counter()
    grids = engine.encoder.attend(probed(plan), layers=tuple(layers), rows=rows, layout=request.layout, progress=False)
    seconds = time.perf_counter() - began
    passage, n = cfg.passage_tokens, plan.memory_tokens
    opening = min(passage, n)
    sentences = Sentences.of(engine.tokenizer, plan.memory, reach=0)
    records = []
    for rule in rules:
        mass = memory_mass(grids[layer_of(engine, rule.depth)], plan)  # [queries, memory tokens]
        choice = {"passage": passage, "budget": cfg.select_tokens, "skip": opening, "drop": rule.drop}
        choice["sentences"] = dataclasses.replace(sentences, reach=int((rule.reach or 0) * passage))
        if rule.part_queries is None:
            spans = select_spans(mass.sum(dim=0), **choice)
        else:
            spans = choose_spans(mass, **choice, min_queries=rule.part_queries, words=words if rule.words else None)
        read = merge([Span(0, opening, 0.0), *spans])
        units = torch.stack([mass[:, a : a + passage].sum() for a in range(0, n, passage)])
        top3 = set(units.argsort(descending=True)[:3].tolist())
        records.append(
            {
                "rule": asdict(rule),
                "rule_name": rule.name,
                "needles": len(needles),
                "needles_read": inside(needles, read, n),
                "needles_cut": cut(needles, read, n),
                "distractors_read": inside(distractors, read, n) if distractors else None,
                "tokens_read": sum(b - a for a, b in read),
                "recall@3": mean_of([float(a // passage in top3 or (b - 1) // passage in top3) for a, b in needles]),
                "probe_seconds": seconds,
            }
        )
    return records


def inside(spans: list[tuple[int, int]], read: list[tuple[int, int]], memory_end: int) -> float:
    """The share of ``spans`` lying whole in ``read`` or in the local context (past the memory)."""
    return mean_of([float(a >= memory_end or any(x <= a and b <= y for x, y in read)) for a, b in spans]) or 0.0


def cut(spans: list[tuple[int, int]], read: list[tuple[int, int]], memory_end: int) -> float:
    """The share of ``spans`` in the memory that ``read`` holds in part only (an edge of the reading cuts them)."""

    def in_part(a: int, b: int) -> bool:
        whole = any(x <= a and b <= y for x, y in read)
        return a < memory_end and not whole and any(x < b and a < y for x, y in read)

    return mean_of([float(in_part(a, b)) for a, b in spans]) or 0.0


def summarize(records: list[dict]) -> dict:
    """Per rule: the means over every case and per task (needles read and cut, distractors read, tokens,
    recall@3)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        cells[r["rule_name"], r["task"]].append(r)
        cells[r["rule_name"], "all"].append(r)
    out: dict = {}
    for (rule, task), rs in sorted(cells.items()):
        out.setdefault(rule, {})[task] = {
            "needles_read": mean_of([r["needles_read"] for r in rs]),
            "needles_cut": mean_of([r.get("needles_cut") for r in rs if r.get("needles_cut") is not None]),
            "distractors_read": mean_of([r["distractors_read"] for r in rs if r["distractors_read"] is not None]),
            "tokens_read": mean_of([r["tokens_read"] for r in rs]),
            "recall@3": mean_of([r["recall@3"] for r in rs if r["recall@3"] is not None]),
            "cases": len(rs),
        }
    return out


def study(engine: FocusEngine, part: Part) -> Study:
    """Every rule of the grid on the development part, the engine's own on the held-out part."""
    rules = grid() if part is DEV else [engine_rule(engine)]
    return Study("selection_study", engine, part, lambda case: study_case(engine, case, rules), summarize, _line)


@dataclass(frozen=True)
class Study:
    """A study of what ``select`` reads on ``part``'s cases: ``measure`` turns one case into records,
    ``summarize`` the records into the summary, ``line`` the case's last record into its progress line."""

    name: str
    engine: FocusEngine
    part: Part
    measure: Callable[[Sample], list[dict]]
    summarize: Callable[[list[dict]], dict]
    line: Callable[[dict], str]

    def run(
        self,
        tasks: Sequence[str],
        lengths: Sequence[int],
        samples: int,
        results: Path,
        *,
        resume: bool = False,
    ) -> dict:
        """Every case of the first ``samples`` samples of the part; ``results`` is rewritten after each."""
        engine, part = self.engine, self.part
        settings = {"tasks": list(tasks), "lengths": list(lengths), "samples": samples, "part": part.name}
        header = results_header(engine, settings, self.name)
        records = load_records(results, resume)
        done = {(r["task"], r["length"], r["seed"]) for r in records}
        payload = save_results(results, header, records, self.summarize(records))
        for length, task, index in itertools.product(lengths, tasks, range(samples)):
            if (task, length, part.seed(index)) in done:
                continue
            case = make_sample(task, engine.tokenizer, length, index, part)
            for record in self.measure(case):
                records.append({"task": task, "length": length, "seed": case.seed, "part": part.name, **record})
            print(f"{task} {length} seed {case.seed}: {self.line(records[-1])}", flush=True)
            payload = save_results(results, header, records, self.summarize(records))
        return payload


def _line(record: dict) -> str:
    return (
        f"{record['rule_name']}: needles read {record['needles_read']:.2f}, tokens {record['tokens_read']}, "
        f"recall@3 {record['recall@3']}, probe {record['probe_seconds']:.1f} s"
    )


def study_main(
    argv: list[str] | None, description: str, samples: int, folder: str, make: Callable[[FocusEngine, Part], Study]
) -> None:
    """A study's command line: the part, the model (its window forced or not), the cases and the results
    file, ``benchmarks/results/<folder>/<model>_<part>.json`` unless given; ``make(engine, part)`` builds
    the :class:`Study`. The engine keeps no prefixes: every case is a first reading."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS), default="dev")
    parser.add_argument("--model", default=None, help="default: the embedded model; or gemma-3-270m")
    parser.add_argument("--native-window", type=int, default=None, help="force a window (Gemma 3: 4096)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--tasks", nargs="+", default=list(NEEDLE_TASKS), choices=NEEDLE_TASKS)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    config = FocusConfig(progress=False, prefix_cache_bytes=0, native_window=args.native_window)
    engine = FocusEngine.from_pretrained(args.model, config)
    name = "smollm2" if args.model is None else args.model
    results = args.results or ROOT / "benchmarks" / "results" / folder / f"{name}_{args.part}.json"
    start = time.perf_counter()
    make(engine, PARTS[args.part]).run(args.tasks, args.lengths, args.samples, results, resume=args.resume)
    print(f"done in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    study_main(argv, __doc__, 3, "selection", study)


if __name__ == "__main__":
    main()
