"""``python -m benchmarks.ruler.cascade_study``: what ``select``'s cascade keeps, without decoding, against
one deep stage (docs/benchmarks.md, "Cascade").

For every needle case the early-exit pass runs once over every chunk; each share of the cascade's first
stage (the chunks the question's words keep: :func:`focus_core.cascade.word_scores`) is then applied to
the same masses, exactly as :meth:`focus_core.modes.select.Select.read` applies it (the exit layer's
attention of a chunk does not depend on which other chunks run). Per case and share: the first stage's
recall (the share of the needles the chunks it keeps hold, whole or in part), the rank of each needle's
chunk, the share of the needles the final selection reads, the same for one stage over every chunk, and
the chunks that run to the exit layer as a share of all. On the development part each share is scored
twice: by the question's tokens alone and by its tokens and pairs of adjacent tokens (the engine's).
``--first-stage-only`` runs no forward: the first stage's recall and ranks alone, seconds a case.

The protocol decides what may be tuned: on the development part every share of the grid is measured; on
the held-out part only the engine's own (its default)::

    python -m benchmarks.ruler.cascade_study --part dev --lengths 32768 --samples 2
    python -m benchmarks.ruler.cascade_study --first-stage-only --part dev --lengths 131072 --samples 2
    python -m benchmarks.ruler.cascade_study --part dev --model gemma-3-270m --native-window 4096 --lengths 16384
    python -m benchmarks.ruler.cascade_study --part heldout --lengths 32768 --samples 2
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

from focus_core import FocusEngine
from focus_core.cascade import survivors, survivors_kept, word_scores
from focus_core.modes.select import chosen_spans
from focus_core.selection import memory_mass, merge, probed, question_marks, question_rows

from .protocol import DEV, Part
from .runner import mean_of
from .selection_study import Study, inside, needle_tokens, study_main
from .tasks import Sample

SHARES = (0.125, 0.25, 0.5)


@torch.inference_mode()
def study_case(
    engine: FocusEngine, case: Sample, shares: Sequence[float], terms: Sequence[bool], exit: bool
) -> list[dict]:
    """One exit-layer pass over every chunk of ``case`` (none without ``exit``: the first stage alone),
    then each share's cascade on it, its first stage scoring the question's tokens and, where ``terms``
    says so, its pairs of adjacent tokens."""
    request = engine.request(case.prompt, aggregation="select", select_cascade=None)
    plan, cfg = request.plan, request.config
    exit_layer = request.mode.exit_layer(cfg)
    needles = needle_tokens(case, request.offsets, plan.memory_start, case.needles)
    rows = question_rows(plan.dynamic_prompt, *question_marks(engine.tokenizer, plan.dynamic_prompt))
    question = plan.dynamic_prompt[rows[0] : rows[1]]
    began = time.perf_counter()
    grid = None
    if exit:
        layers = (exit_layer,)
        grid = engine.encoder.attend(probed(plan), layers=layers, rows=rows, layout=request.layout, progress=False)
        grid = grid[exit_layer]
    seconds = time.perf_counter() - began
    chunks, passages = len(plan.chunks), cfg.select_tokens // cfg.passage_tokens

    def needles_read(kept: list[int] | None) -> float | None:
        if grid is None:
            return None
        mass = memory_mass(grid if kept is None else grid[kept], plan, kept)
        return inside(needles, merge(chosen_spans(mass, plan, question, cfg, engine.tokenizer)), plan.memory_tokens)

    one_stage, records = needles_read(None), []
    for pairs in terms:
        began = time.perf_counter()
        scores = word_scores(plan, question, cfg.passage_tokens, pairs=pairs)
        word_seconds = time.perf_counter() - began
        ranks = scores.argsort(descending=True, stable=True).tolist()
        for share in shares:
            kept = survivors(scores, survivors_kept(chunks, share, passages))
            records.append(
                {
                    "share": share,
                    "pairs": pairs,
                    "exit_layer": exit_layer,
                    "chunks": chunks,
                    "kept": len(kept),
                    "needles": len(needles),
                    "probe_seconds": seconds,
                    "word_seconds": word_seconds,
                    "kept_chunks": kept,
                    "needle_chunk_ranks": [ranks.index(min(a // cfg.chunk_size, chunks - 1)) for a, _ in needles],
                    "first_stage_recall": touched(needles, [plan.ranges[i] for i in kept], plan.memory_tokens),
                    "needles_read": needles_read(kept if len(kept) < chunks else None),
                    "one_stage_needles_read": one_stage,
                    "layer_share": len(kept) / chunks,
                }
            )
    return records


def touched(spans: list[tuple[int, int]], kept: list[tuple[int, int]], memory_end: int) -> float:
    """The share of ``spans`` (needles) that a ``kept`` range holds part of, or that lie in the local
    context: the exit layer sees them there (and a selected passage reaches past its chunk's end)."""
    return mean_of([float(a >= memory_end or any(x < b and a < y for x, y in kept)) for a, b in spans]) or 0.0


def summarize(records: list[dict]) -> dict:
    """Per cascade, over every case and per task: the means of each record's figures, and the cases where
    the cascade read fewer needles than one stage did (where the exit layer ran)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        name = f"keeps {r['share']}, tokens{' and pairs' if r.get('pairs', False) else ''}"
        cells[name, r["task"]].append(r)
        cells[name, "all"].append(r)
    out: dict = {}
    for (name, task), rs in sorted(cells.items()):
        read = [r for r in rs if r["needles_read"] is not None]
        out.setdefault(name, {})[task] = {
            key: mean_of([r[key] for r in rs if r[key] is not None])
            for key in ("first_stage_recall", "needles_read", "one_stage_needles_read", "layer_share")
        } | {"cases": len(rs), "lost": sum(r["needles_read"] < r["one_stage_needles_read"] for r in read)}
    return out


def study(engine: FocusEngine, part: Part, exit: bool = True) -> Study:
    """Every share of the grid, with and without pairs, on the development part; the engine's own on the
    held-out part. Without ``exit``, the first stage alone (no forward: recall and the needles' ranks)."""
    shares, terms = (SHARES, (False, True)) if part is DEV else ((engine.config.select_cascade,), (True,))
    measure = functools.partial(study_case, engine, shares=shares, terms=terms, exit=exit)
    return Study("cascade_study", engine, part, measure, summarize, _line)


def _line(record: dict) -> str:
    return (
        f"probe {record['probe_seconds']:.1f} s, first stage kept {record['kept']} of {record['chunks']} chunks, "
        f"needles' chunks ranked {record['needle_chunk_ranks']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--first-stage-only", action="store_true", help="no exit-layer pass: the first stage alone")
    known, rest = parser.parse_known_args(argv)
    study_main(rest, __doc__, 2, "cascade", lambda engine, part: study(engine, part, exit=not known.first_stage_only))


if __name__ == "__main__":
    main()
