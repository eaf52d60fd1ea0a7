"""``python -m benchmarks.summaries``: "summarize the document" over long real text (docs/benchmarks.md,
"Whole-document requests").

A case plants K salient facts (K = 4, 8 in turn; each a sentence naming one distinctive value, spread
through the document) in a prose haystack of the given length and asks for a summary through the chat
template. Its score is the share of the K values the summary states. The methods: ``whole`` and
``select`` (FocusLLM over the whole document in one call), and LangChain's map-reduce summarize chain on
the same model (``load_summarize_chain(FocusLLM(), chain_type="map_reduce")`` over the document split
into pieces that fit the model's window: what a LangChain user runs today).

The held-out protocol holds (benchmarks/ruler/protocol.py): the development part plants its own facts
in its own haystack with seeds 0-999, the held-out part other facts in Paul Graham's essays and
Wikipedia paragraphs with seeds 1000-1999.

    python -m benchmarks.summaries --part heldout --lengths 32768 --samples 4
"""

from __future__ import annotations

import argparse
import functools
import random
import time
from dataclasses import dataclass
from pathlib import Path

from focus_core import FocusConfig, FocusEngine, load_model

from .listing import named, planted, plot, run, summarise
from .ruler.protocol import PARTS, Part

ROOT = Path(__file__).resolve().parents[1]
SIZES = (4, 8)
REQUEST = "Summarize the document above, stating its most important facts."
ENGINEERS = (
    "Ada Lovelace", "Nikola Tesla", "Grace Hopper", "Alan Turing", "Emmy Noether", "Claude Shannon", "Hedy Lamarr",
    "John von Neumann", "Katherine Johnson", "Charles Babbage",
)  # fmt: skip
YEARS = ("1887", "1903", "1921", "1938", "1954", "1962", "1977", "1989", "1996", "2004")
SHIPS = ("Albatross", "Meridian", "Northwind", "Perseverance", "Kestrel", "Aurora", "Endeavour", "Halcyon", "Sirius")
PORTS = ("Rotterdam", "Osaka", "Calgary", "Marseille", "Lagos", "Auckland", "Gdansk", "Recife", "Hobart", "Tampere")
FACTS = {
    "dev": (
        ("The city council voted to rename the central square after the engineer {value}.", ENGINEERS),
        ("A flood in {value} destroyed the old archive and most of its records.", YEARS),
    ),
    "heldout": (
        ("The expedition's ship, the {value}, was lost in the ice the following winter.", SHIPS),
        ("After the merger, the company moved its headquarters to {value}.", PORTS),
    ),
}


@dataclass(frozen=True)
class SummaryCase:
    index: int
    length: int
    values: tuple[str, ...]
    document: str

    def coverage(self, summary: str) -> float:
        return named(self.values, summary)


def make_case(tokenizer, part: Part, index: int, length: int) -> SummaryCase:
    """Case ``index`` of ``part``: its seed picks the facts, the haystack's start and the places."""
    rng = random.Random(f"summaries/{length}/{part.seed(index)}")
    size = SIZES[index % len(SIZES)]
    kinds = FACTS[part.name]
    facts = [(template, value) for template, values in kinds for value in values]
    chosen = rng.sample(facts, size)
    values = tuple(v for _, v in chosen)
    sentences = [t.format(value=v) for t, v in chosen]
    return SummaryCase(index, length, values, planted(tokenizer, part, index, length, sentences, rng))


def focus_summary(engine: FocusEngine, case: SummaryCase, aggregation: str, max_new_tokens: int) -> tuple[str, dict]:
    prompt = engine.apply_chat_template([{"role": "user", "content": f"{case.document}\n\n{REQUEST}"}])
    generation = engine.stream(prompt, aggregation=aggregation, max_new_tokens=max_new_tokens)
    return "".join(generation), {"mode": generation.mode, "finish_reason": generation.finish_reason}


def map_reduce_summary(engine: FocusEngine, case: SummaryCase, max_new_tokens: int) -> tuple[str, dict]:
    """LangChain's map-reduce summarize chain with the same model (as ``FocusLLM``), over the document split
    into pieces that fit the model's window with the chain's prompt and the answer."""
    from langchain_classic.chains.summarize import load_summarize_chain
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from focusllm_integrations.langchain import FocusLLM

    llm = FocusLLM(engine=engine, max_new_tokens=max_new_tokens)
    piece = engine.native_window - max_new_tokens - 256  # the chain's prompt around each piece
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        engine.tokenizer, chunk_size=piece, chunk_overlap=0
    )
    documents = [Document(page_content=text) for text in splitter.split_text(case.document)]
    chain = load_summarize_chain(llm, chain_type="map_reduce", token_max=piece)
    return chain.invoke({"input_documents": documents})["output_text"], {"pieces": len(documents)}


def answer(engine: FocusEngine, case: SummaryCase, method: str, max_new_tokens: int) -> dict:
    """One method's summary: ``map_reduce`` is LangChain's chain; any other name is an aggregation setting."""
    start = time.perf_counter()
    if method == "map_reduce":
        summary, info = map_reduce_summary(engine, case, max_new_tokens)
    else:
        summary, info = focus_summary(engine, case, method, max_new_tokens)
    seconds = time.perf_counter() - start
    return {"method": method, "recall": case.coverage(summary), "seconds": seconds, **info, "reply": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS), default="dev")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["whole", "select", "map_reduce"])
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    part = PARTS[args.part]
    results = args.results or ROOT / "benchmarks" / "results" / "summaries" / f"{args.part}_smollm2.json"
    model, tokenizer = load_model()
    engine = FocusEngine(model, tokenizer, FocusConfig(progress=False, prefix_cache_bytes=8 * 2**30))
    answer_case = functools.partial(answer, max_new_tokens=args.max_new_tokens)
    cases = functools.partial(make_case, tokenizer, part)
    records = run(
        "summaries", engine, results, cases, answer_case, args.lengths, args.samples, args.methods, args.resume
    )
    title = f"summary fact coverage, {args.part} part, {engine.model_name}"
    plot(summarise(records), results.with_suffix(".png"), title, ylabel="facts the summary states (%)")


if __name__ == "__main__":
    main()
