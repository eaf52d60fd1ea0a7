"""Seconds per RULER case: FocusLLM ``select`` against top-k vector RAG on the same cases, and a second
question over the same documents.

    python -m benchmarks.ruler.speed --length 32768 --seed 0

For every task, one case: RAG first (its index of the context built, and timed, anew: a first question);
then ``select`` with an empty prefix cache (a first question); then ``select`` again on the same case,
its early-exit prefixes now cached (a second question over the same documents: only the question's
tokens and the answer run). Run it on an otherwise idle machine: the seconds are the point. Writes
``benchmarks/results/select/speed.json``.
"""

from __future__ import annotations

import argparse
import statistics

from focus_core import FocusConfig, FocusEngine

from ..common import result_header, write_json
from ..methods import FocusMethod, VectorRAG
from .runner import NEW_TOKENS, ROOT
from .tasks import TASKS, family, make_sample

RESULTS = ROOT / "benchmarks" / "results" / "select" / "speed.json"


def time_case(engine: FocusEngine, task: str, length: int, seed: int, rag: VectorRAG) -> dict:
    """Seconds of RAG, of a first ``select`` and of a second ``select`` over the same documents."""
    case = make_sample(task, engine.tokenizer, length, seed)
    engine.config = engine.config.replace(max_new_tokens=NEW_TOKENS[family(task)])
    select = FocusMethod("FocusLLM (select)", "select")
    engine.prefix_cache.clear()
    answers = {"rag": rag.answer(engine, case), "select": select.answer(engine, case)}
    answers["select, second question"] = select.answer(engine, case)
    record = {"task": task, "length": length, "seed": seed, "tokens": case.tokens}
    for name, out in answers.items():
        record[name] = {
            "seconds": out["seconds"],
            "first_token_seconds": out["first_token_seconds"],
            "score": case.score(out["reply"]),
            "reply": out["reply"],
            "chunks_encoded": out["chunks_encoded"],
        }
    return record


def summarize(records: list[dict]) -> dict:
    def mean(name: str) -> float:
        return statistics.mean(r[name]["seconds"] for r in records)

    rag, first, second = mean("rag"), mean("select"), mean("select, second question")
    return {
        "rag_seconds": rag,
        "select_seconds": first,
        "select_second_question_seconds": second,
        "select_over_rag": first / rag,
        "second_over_first": second / first,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--rag-top-k", type=int, default=4)
    parser.add_argument("--rag-chunk-size", type=int, default=256)
    args = parser.parse_args(argv)
    engine = FocusEngine.from_pretrained(None, FocusConfig(progress=False))
    name = f"RAG top-{args.rag_top_k} x {args.rag_chunk_size}"
    rag = VectorRAG(name, chunk_size=args.rag_chunk_size, top_k=args.rag_top_k)
    records = []
    for task in args.tasks:
        records.append(time_case(engine, task, args.length, args.seed, rag))
        line = {k: round(v["seconds"], 1) for k, v in records[-1].items() if isinstance(v, dict)}
        print(task, line, flush=True)
        result = {
            **result_header("ruler select speed", engine),
            "rag": rag.name,
            "new_tokens": NEW_TOKENS,
            "summary": summarize(records),
            "records": records,
        }
        write_json(RESULTS, result)
    print(result["summary"])
    return result


if __name__ == "__main__":
    main()
