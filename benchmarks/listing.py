"""``python -m benchmarks.listing``: "list every ..." requests over long real text (docs/benchmarks.md,
"Whole-document requests").

A case plants K facts of one kind (K = 4, 8, 12, 16 in turn), each a sentence naming one value, between the
paragraphs of a prose haystack of the given length, and asks for every value through the model's chat
template (a completion prompt for a model without one). Its score is the recall of the K values in the
reply. Each method answers the same cases; ``alone`` is the model asked the same request over the K fact
sentences alone, the most it can list when shown everything, and the targets are set against it.

The held-out protocol (benchmarks/ruler/protocol.py) holds here too: the development part plants its own
kinds of fact in its own haystack with seeds 0-999; the held-out part other kinds, worded otherwise, in
Paul Graham's essays and Wikipedia paragraphs, seeds 1000-1999.

    python -m benchmarks.listing --part heldout --lengths 32768 131072 --samples 8 --methods whole auto alone
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focus_core import FocusConfig, FocusEngine, load_model

from .common import result_header, write_json
from .plots import save_figure
from .ruler.protocol import PARTS, Part, prose_words

ROOT = Path(__file__).resolve().parents[1]
SIZES = (4, 8, 12, 16)  # facts per case, in turn
WORDS_PER_PARAGRAPH = 120


@dataclass(frozen=True)
class Kind:
    """One kind of fact: the sentence that states it (``{value}``), the request for all of them, the values."""

    fact: str
    request: str
    values: tuple[str, ...]


CITIES = (
    "Lisbon", "Osaka", "Nairobi", "Quito", "Tallinn", "Perth", "Bergen", "Cusco", "Dakar", "Hanoi", "Krakow",
    "Medellin", "Tbilisi", "Adelaide", "Porto", "Kyoto", "Valparaiso", "Zanzibar", "Seville", "Bruges", "Windhoek",
    "Salzburg", "Montevideo", "Ljubljana",
)  # fmt: skip
INSTRUMENTS = (
    "harpsichord", "cello", "bassoon", "sitar", "oboe", "mandolin", "accordion", "marimba", "banjo", "clarinet",
    "ukulele", "trombone", "harp", "bagpipe", "tuba", "zither", "xylophone", "piccolo", "didgeridoo", "viola",
    "saxophone", "lute", "balalaika", "glockenspiel",
)  # fmt: skip
ANIMALS = (
    "otter", "heron", "badger", "kingfisher", "salamander", "lynx", "osprey", "beaver", "woodpecker", "marten",
    "newt", "stork", "hedgehog", "falcon", "tortoise", "crane", "weasel", "owl", "ibis", "mink", "pelican",
    "chameleon", "armadillo", "porcupine",
)  # fmt: skip
COUNTRIES = (
    "Norway", "Peru", "Vietnam", "Ghana", "Portugal", "Mongolia", "Chile", "Finland", "Morocco", "Uruguay",
    "Jordan", "Iceland", "Kenya", "Nepal", "Estonia", "Bolivia", "Senegal", "Croatia", "Laos", "Ireland",
    "Tunisia", "Paraguay", "Latvia", "Bhutan",
)  # fmt: skip

KINDS = {
    "dev": (
        Kind(
            "The glassblowers' guild held its yearly fair in {value}.",
            "List every city where the glassblowers' guild held its yearly fair.",
            CITIES,
        ),
        Kind(
            "Among the gifts the music school received that winter was a {value}.",
            "List every musical instrument the music school received as a gift.",
            INSTRUMENTS,
        ),
    ),
    "heldout": (
        Kind(
            "Walking the riverbank at dawn, the survey team recorded a {value} they had not expected to see.",
            "Which animals did the survey team record along the riverbank? Name all of them.",
            ANIMALS,
        ),
        Kind(
            "That year the trade delegation flew to {value} to sign a shipping agreement.",
            "Name every country the trade delegation flew to in order to sign a shipping agreement.",
            COUNTRIES,
        ),
    ),
}


@dataclass(frozen=True)
class ListingCase:
    part: str
    index: int
    length: int
    request: str
    values: tuple[str, ...]
    facts: tuple[str, ...]
    document: str

    def recall(self, reply: str) -> float:
        return named(self.values, reply)


def named(values: Sequence[str], text: str) -> float:
    """The share of ``values`` that ``text`` names, each as a whole word (any case)."""
    found = [v for v in values if re.search(rf"\b{re.escape(v)}\b", text, re.IGNORECASE)]
    return len(found) / len(values)


def make_case(tokenizer, part: Part, index: int, length: int) -> ListingCase:
    """Case ``index`` of ``part``: its seed picks the kind, the values, the haystack's start and the places."""
    rng = random.Random(f"listing/{length}/{part.seed(index)}")
    kinds = KINDS[part.name]
    kind = kinds[index % len(kinds)]
    size = SIZES[(index // len(kinds)) % len(SIZES)]
    values = tuple(rng.sample(kind.values, size))
    facts = tuple(kind.fact.format(value=v) for v in values)
    document = planted(tokenizer, part, index, length, facts, rng)
    return ListingCase(part.name, index, length, kind.request, values, facts, document)


def planted(tokenizer, part: Part, index: int, length: int, sentences: Sequence[str], rng: random.Random) -> str:
    """``sentences``, in order, between the paragraphs of ``part``'s haystack for case ``index`` (from a
    place ``rng`` picks), in a document of at most ``length - 256`` tokens (room for the request, the
    template and the answer)."""
    words = prose_words(part.haystack(index))
    start, budget = rng.randrange(len(words)), length - 256
    count = budget  # words; shrunk by the measured tokens per word until the document fits
    while True:
        taken = [words[(start + i) % len(words)] for i in range(count)]
        paragraphs = [" ".join(taken[i : i + WORDS_PER_PARAGRAPH]) for i in range(0, count, WORDS_PER_PARAGRAPH)]
        places = sorted(rng.sample(range(len(paragraphs) + 1), len(sentences)))
        for place, sentence in zip(reversed(places), reversed(sentences)):
            paragraphs.insert(place, sentence)
        document = "\n\n".join(paragraphs)
        tokens = len(tokenizer(document, add_special_tokens=False).input_ids)
        if tokens <= budget:
            return document
        count = int(count * budget / tokens * 0.99)


def prompt(engine: FocusEngine, document: str, request: str) -> str:
    """The request after the document: the model's chat template, or a completion prompt without one."""
    if getattr(engine.tokenizer, "chat_template", None):
        return engine.apply_chat_template([{"role": "user", "content": f"{document}\n\n{request}"}])
    return f"{document}\n\nRequest: {request}\nAnswer:"


def answer(engine: FocusEngine, case: ListingCase, method: str, max_new_tokens: int) -> dict:
    """One method's answer: ``alone`` reads the facts alone; any other name is an aggregation setting."""
    document = "\n".join(case.facts) if method == "alone" else case.document
    overrides = {} if method == "alone" else {"aggregation": method}
    start = time.perf_counter()
    generation = engine.stream(prompt(engine, document, case.request), max_new_tokens=max_new_tokens, **overrides)
    reply = "".join(generation)
    seconds = time.perf_counter() - start
    request = generation.request
    record = {
        "method": method,
        "recall": case.recall(reply),
        "seconds": seconds,
        "reply": reply,
        "mode": request.mode.name,
        "finish_reason": generation.finish_reason,
        "sources": [s.index for s in generation.sources],
    }
    if request.reading is not None and hasattr(request.reading, "found"):  # whole: what the map step found
        chosen = set(request.reading.chosen)
        read = [e for e in request.reading.found if e.chunks[0] in chosen]
        record["extractions_read"] = len(read)
        record["facts_in_extractions"] = case.recall(" ".join(engine.tokenizer.decode(list(e.ids)) for e in read))
        found = " ".join(engine.tokenizer.decode(list(e.ids)) for e in request.reading.found)
        record["facts_extracted"] = case.recall(found)
    return record


def summarise(records: list[dict]) -> dict:
    """Mean recall and seconds per method and length."""
    out: dict = {}
    for r in records:
        cell = out.setdefault(r["method"], {}).setdefault(str(r["length"]), {"recall": [], "seconds": []})
        cell["recall"].append(r["recall"])
        cell["seconds"].append(r["seconds"])
    return {
        m: {n: {k: sum(v) / len(v) for k, v in c.items()} | {"cases": len(c["recall"])} for n, c in by.items()}
        for m, by in out.items()
    }


def run(
    benchmark: str,
    engine: FocusEngine,
    results: Path,
    make: Callable[[int, int], Any],
    answer_case: Callable[[FocusEngine, Any, str], dict],
    lengths: Sequence[int],
    samples: int,
    methods: Sequence[str],
    resume: bool,
) -> list[dict]:
    """Every method on the first ``samples`` cases (``make(index, length)``) of every length, each record
    (``answer_case(engine, case, method)``, with its ``recall`` and ``seconds``) written to ``results`` as it
    comes; ``resume`` keeps the records already there and runs the rest."""
    records = json.loads(results.read_text())["records"] if resume and results.exists() else []
    done = {(r["length"], r["index"], r["method"]) for r in records}
    for length in lengths:
        for index in range(samples):
            case = make(index, length)
            for method in methods:
                if (length, index, method) in done:
                    continue
                record = {"length": length, "index": index, "facts": len(case.values)}
                records.append(record | answer_case(engine, case, method))
                print(json.dumps({k: v for k, v in records[-1].items() if k != "reply"}), flush=True)
                header = result_header(benchmark, engine)
                write_json(results, {**header, "records": records, "summary": summarise(records)})
    return records


def plot(summary: dict, path: Path, title: str, ylabel: str = "recall of the listed values (%)") -> None:
    """Mean score per method (bars) and length (groups)."""
    import matplotlib.pyplot as plt

    methods = list(summary)
    lengths = sorted({int(n) for by in summary.values() for n in by})
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(lengths))]
        ys = [100 * summary[m].get(str(n), {}).get("recall", 0) for n in lengths]
        ax.bar(xs, ys, width, label=m, color=f"C{j}")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS), default="dev")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--samples", type=int, default=8, help="cases per length (the part's first n)")
    parser.add_argument("--methods", nargs="+", default=["whole", "auto", "alone"])
    parser.add_argument("--model", default=None, help="default: the embedded model; or gemma-3-270m")
    parser.add_argument("--native-window", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep the records in the results file, run the rest")
    args = parser.parse_args(argv)
    part = PARTS[args.part]
    name = "smollm2" if args.model is None else args.model
    results = args.results or ROOT / "benchmarks" / "results" / "listing" / f"{args.part}_{name}.json"
    model, tokenizer = load_model(args.model)
    config = FocusConfig(progress=False, native_window=args.native_window, prefix_cache_bytes=8 * 2**30)
    engine = FocusEngine(model, tokenizer, config)
    answer_case = functools.partial(answer, max_new_tokens=args.max_new_tokens)
    cases = functools.partial(make_case, tokenizer, part)
    records = run("listing", engine, results, cases, answer_case, args.lengths, args.samples, args.methods, args.resume)
    title = f"'list every ...' recall, {args.part} part, {engine.model_name}"
    plot(summarise(records), results.with_suffix(".png"), title)


if __name__ == "__main__":
    main()
