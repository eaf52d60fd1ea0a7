"""Seconds per RULER case: FocusLLM ``select`` against the LlamaIndex vector-RAG pipeline a user builds
(SentenceSplitter 256/32, VectorStoreIndex, all-MiniLM-L6-v2, top 4) on the same cases, a second question
over the same documents, and this machine's limits in the same run.

    python -m benchmarks.ruler.speed --lengths 32768 131072 --part heldout --limit-tokens 8192

For every task and length, one case: RAG first (its index of the context built, and timed, anew: a
first question; model loading excluded); then ``select`` with an empty prefix cache (a first question);
then ``select`` asked the same thing in other words over the same documents (a second question: the
question's own rows, its selection's read and its answer run; what does not depend on the question is
cached). With ``--limit-tokens``, :mod:`benchmarks.machine_limit` runs after the cases, in the same
process. Run it on an otherwise idle machine: the seconds are the point. Writes
``benchmarks/results/select/speed.json`` (or ``--results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from focus_core import FocusConfig, FocusEngine

from ..common import add_one_stage, one_stage_settings, result_header, write_json
from ..machine_limit import run_machine_limit
from ..methods import FocusMethod, VectorRAG
from .protocol import PARTS, Part
from .runner import NEW_TOKENS, ROOT
from .tasks import TASKS, Sample, family, make_sample

RESULTS = ROOT / "benchmarks" / "results" / "select" / "speed.json"


def reworded(case: Sample) -> Sample:
    """``case`` asked again in other words: its question behind a request to answer it."""
    if case.question not in case.query:
        raise ValueError(f"{case.task}: the question is not in the query")
    return dataclasses.replace(case, query=case.query.replace(case.question, f"Tell me, please: {case.question}", 1))


def capped(tokens: int, cap: int | None) -> int:
    """``tokens``, or ``cap`` where one is given and is less."""
    return tokens if cap is None else min(tokens, cap)


def time_case(
    engine: FocusEngine, task: str, length: int, index: int, part: Part, rag: VectorRAG, new_tokens: int | None = None
) -> dict:
    """Seconds of RAG, of a first ``select`` and of a second question over the same documents, each
    answer at most the task's RULER length or ``new_tokens``, whichever is less."""
    case = make_sample(task, engine.tokenizer, length, index, part)
    engine.config = engine.config.replace(max_new_tokens=capped(NEW_TOKENS[family(task)], new_tokens))
    select = FocusMethod("FocusLLM (select)", "select")
    engine.prefix_cache.clear()
    answers = {"rag": rag.answer(engine, case), "select": select.answer(engine, case)}
    answers["select, second question"] = select.answer(engine, reworded(case))
    record = {"task": task, "length": length, "seed": case.seed, "part": part.name, "tokens": case.tokens}
    for name, out in answers.items():
        record[name] = {
            "seconds": out["seconds"],
            "first_token_seconds": out["first_token_seconds"],
            "score": case.score(out["reply"]),
            "reply": out["reply"],
            "chunks_encoded": out["chunks_encoded"],
            "reads_reused": out["reads_reused"],
            "read_tokens_reused": out["read_tokens_reused"],
            "route": out["route"],  # where select handed the request over, if it did
            "phases": phases(out),
        }
    return record


def phases(out: dict) -> dict[str, float]:
    """Where an answer's seconds went: encoding chunks, the question's rows over them (select's early
    exit), the read of the selection, the rest before the first token (the first stage, choosing, RAG's
    retrieval), and decoding after it."""
    spent = {name: out[f"{name}_seconds"] for name in ("encode", "attend", "read")}
    return {
        **spent,
        "other": out["first_token_seconds"] - sum(spent.values()),
        "decode": out["seconds"] - out["first_token_seconds"],
    }


def summarize(records: list[dict]) -> dict:
    """Per length: the mean seconds of each method and the ratios the targets name."""
    out = {}
    for length in sorted({r["length"] for r in records}):
        rs = [r for r in records if r["length"] == length]
        rag, first, second = (_mean(rs, name) for name in ("rag", "select", "select, second question"))
        out[str(length)] = {
            "cases": len(rs),
            "rag_seconds": rag,
            "select_seconds": first,
            "select_second_question_seconds": second,
            "select_over_rag": first / rag,
            "second_over_first": second / first,
            "rag_score": _mean(rs, "rag", "score"),
            "select_score": _mean(rs, "select", "score"),
            "second_question_score": _mean(rs, "select, second question", "score"),
            "second_question_reads_reused": sum(r["select, second question"]["reads_reused"] for r in rs),
            "second_question_read_tokens_reused": sum(r["select, second question"]["read_tokens_reused"] for r in rs),
            "second_question_phases": {
                phase: statistics.mean(r["select, second question"]["phases"][phase] for r in rs)
                for phase in rs[0]["select, second question"]["phases"]
            },
        }
    return out


def _mean(records: list[dict], method: str, key: str = "seconds") -> float:
    return statistics.mean(r[method][key] for r in records)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--part", choices=sorted(PARTS), default="dev")
    parser.add_argument("--index", type=int, default=0, help="the sample of the part (its seed follows)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--rag-top-k", type=int, default=4)
    parser.add_argument("--rag-chunk-size", type=int, default=256)
    parser.add_argument("--limit-tokens", type=int, default=None, help="also run machine_limit over N tokens")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap every answer (default: RULER's)")
    add_one_stage(parser)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    engine = FocusEngine.from_pretrained(None, FocusConfig(progress=False, **one_stage_settings(args)))
    name = f"RAG top-{args.rag_top_k} x {args.rag_chunk_size}"
    rag = VectorRAG(name, chunk_size=args.rag_chunk_size, top_k=args.rag_top_k)
    caps = {k: capped(v, args.max_new_tokens) for k, v in NEW_TOKENS.items()}
    result = {**result_header("ruler select speed", engine), "rag": rag.name, "new_tokens": caps}
    records = []
    for length in args.lengths:
        for task in args.tasks:
            records.append(time_case(engine, task, length, args.index, PARTS[args.part], rag, args.max_new_tokens))
            line = {k: round(v["seconds"], 1) for k, v in records[-1].items() if isinstance(v, dict)}
            print(length, task, line, flush=True)
            write_json(args.results, {**result, "summary": summarize(records), "records": records})
    if args.limit_tokens:
        result["machine_limit"] = run_machine_limit(engine, args.limit_tokens, 1024, 64)
    result |= {"summary": summarize(records), "records": records}
    write_json(args.results, result)
    print(result["summary"])
    return result


if __name__ == "__main__":
    main()
