"""RULER-format long-context tasks (Hsieh et al., arXiv 2404.06654) over our own haystacks, and their runner.

The tasks keep RULER's names and configurations (``scripts/synthetic.yaml`` of NVIDIA/RULER). A needle is
"One of the special magic {numbers|uuids} for <key> is: <value>."; keys are words, values 7-digit numbers
or UUIDs.

- ``niah_single_1``: one needle in the noise haystack ("The grass is green. ..." once per line).
- ``niah_single_2`` / ``niah_single_3``: one needle in real prose; the value a number / a UUID.
- ``niah_multikey_1``: four needles with different keys in prose; one key is asked.
- ``niah_multikey_2`` / ``niah_multikey_3``: the haystack is made of needles, one per line, with other keys
  (word keys and number values / UUID keys and values); one is asked.
- ``niah_multivalue``: four needles share one key; all four values are asked.
- ``niah_multiquery``: four needles with different keys; all four keys are asked at once.
- ``vt`` (variable tracking): a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of 4 hops among noise
  lines, after one worked ~500-token example; the answer is the 5 variables holding the value.
- ``cwe`` (common words extraction): a numbered list of words where 10 words appear 30 times and the
  others 3 times (6 and 1 below 4K tokens), after one worked example; the answer is the 10 common words.
- ``fwe`` (frequent words extraction): "coded words" (6 random letters) drawn with Zipf counts (alpha 2),
  the most frequent one replaced by RULER's "..." dots; the answer is the next three.

Templates and answer prefixes are RULER's (``scripts/data/synthetic/constants.py``), word for word,
including its singular rewording of the niah template when one value is asked. The metric is RULER's
``string_match_all`` (``scripts/eval/synthetic/constants.py``): the fraction of the references that
appear in the reply, ignoring case. Length is RULER's: the prompt plus the task's ``tokens_to_generate``
fit in the length (the prompt is within 1% of filling it), counted with the tokenizer passed in.

Where this differs from RULER: the real-prose haystack is CPython's reference documentation
(:func:`benchmarks.haystack.reference_prose`), not Paul Graham's essays, cut into sentences by a regular
expression rather than NLTK; word keys join two words of :func:`word_list` (built from the same
documentation) with a hyphen, as RULER joins an adjective and a noun; ``cwe`` draws its words from that
list and, where a length needs more distinct words than the list holds, multiplies both frequencies by
the same factor (RULER switches to a larger dictionary); randomness comes from Python's ``random``
seeded by (task, length, seed).

    python -m benchmarks.ruler --lengths 4096 8192 16384 32768 65536 131072 --samples 10 --tasks all \\
        --methods entropy focus auto full truncation rag --rag-top-k 4 --rag-chunk-size 256 --resume
    python -m benchmarks.ruler --recall --lengths 16384 32768 131072 --samples 10 --signals likelihood

The first writes ``benchmarks/results/ruler.json`` after every case (``--resume`` skips the cases it
already holds) and the heatmap ``docs/ruler.png``; the second writes the recall of the answer chunks by
the engine's own relevance to ``benchmarks/results/relevance_recall.json`` (prompts that fit the native
window have no chunks, hence no recall).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import string
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from focus_core import FocusConfig, FocusEngine

from . import haystack
from .common import result_header, write_json
from .methods import FocusMethod, FullAttention, Method, Truncation, VectorRAG
from .plots import plt, save_figure

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------- RULER's templates, word for word

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
    "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
    "for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
    "are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
    "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}  # RULER's, per task family
DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # RULER's needle depths in prose (percent)
VT_HOPS = 4
VT_EXAMPLE_TOKENS = 500  # RULER's worked variable-tracking example
CWE_COMMON = 10
CWE_FREQUENCIES = {  # (example words, common, uncommon repeats), (common, uncommon repeats) as in RULER
    "short": ((20, 3, 1), (6, 1)),  # lengths below 4096
    "long": ((40, 10, 3), (30, 3)),
}
FWE_WORD_LETTERS = 6
FWE_ZETA_2 = math.pi**2 / 6  # RULER draws Zipf counts with alpha 2: count_k = n k^-2 / zeta(2)
TOLERANCE = 0.01  # a prompt fills its length to within this fraction


@dataclass(frozen=True)
class NiahConfig:
    haystack: str  # "noise", "essay" (real prose) or "needle"
    key_type: str  # "words" or "uuids"
    value_type: str  # "numbers" or "uuids"
    num_k: int = 1  # keys with needles
    num_v: int = 1  # values per key
    num_q: int = 1  # keys asked


NIAH = {
    "niah_single_1": NiahConfig("noise", "words", "numbers"),
    "niah_single_2": NiahConfig("essay", "words", "numbers"),
    "niah_single_3": NiahConfig("essay", "words", "uuids"),
    "niah_multikey_1": NiahConfig("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": NiahConfig("needle", "words", "numbers"),
    "niah_multikey_3": NiahConfig("needle", "uuids", "uuids"),
    "niah_multivalue": NiahConfig("essay", "words", "numbers", num_v=4),
    "niah_multiquery": NiahConfig("essay", "words", "numbers", num_q=4),
}
TASKS = (*NIAH, "vt", "cwe", "fwe")


def family(task: str) -> str:
    """RULER's task family: ``niah``, ``vt``, ``cwe`` or ``fwe``."""
    return "niah" if task in NIAH else task


def string_match_all(reply: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_all`` for one reply: the fraction of references in it, ignoring case."""
    reply = reply.lower()
    return sum(r.lower() in reply for r in references) / len(references)


@dataclass(frozen=True)
class Sample:
    """One RULER sample: ``context`` then ``query`` (the question and RULER's answer prefix)."""

    task: str
    context: str
    query: str
    question: str  # the bare question, what a retriever searches with
    outputs: tuple[str, ...]  # the references
    needles: tuple[str, ...]  # inserted sentences holding the references (empty for cwe and fwe)
    length: int  # RULER's sequence length: prompt + tokens_to_generate <= length
    tokens: int  # the prompt's tokens
    seed: int
    distractors: tuple[str, ...] = ()  # inserted needles with keys not asked (niah_multikey_1)

    @property
    def prompt(self) -> str:
        return self.context + self.query

    @property
    def needle(self) -> str:
        return self.needles[0] if self.needles else ""

    def score(self, reply: str) -> float:
        return string_match_all(reply, self.outputs)

    def is_correct(self, reply: str) -> bool:
        return self.score(reply) == 1.0


@dataclass(frozen=True)
class _Parts:
    """A sample's text before its length is measured."""

    context: str
    query: str
    question: str
    outputs: tuple[str, ...]
    needles: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        return self.context + self.query


def make_sample(task: str, tokenizer, length: int, seed: int) -> Sample:
    """Sample ``seed`` of ``task`` at RULER length ``length`` (tokens of ``tokenizer``)."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; choose from {TASKS}")
    key = f"{task}/{length}/{seed}"
    target = length - TOKENS_TO_GENERATE[family(task)]
    build, sizes = _builder(task, tokenizer, length, key, target)
    parts, tokens = _fit(lambda size: build(random.Random(key), size), tokenizer, target, *sizes)
    return Sample(
        task=task,
        context=parts.context,
        query=parts.query,
        question=parts.question,
        outputs=parts.outputs,
        needles=parts.needles,
        length=length,
        tokens=tokens,
        seed=seed,
        distractors=parts.distractors,
    )


def _builder(
    task: str, tokenizer, length: int, key: str, target: int
) -> tuple[Callable[[random.Random, int], _Parts], tuple[int, int | None]]:
    """The task's builder ``(rng, size) -> parts``, growing with ``size``, and the sizes it takes."""
    if task in NIAH:
        return partial(_niah, NIAH[task]), (1, None)
    if task == "vt":
        example, value = _vt_example(tokenizer, key)
        return partial(_vt, example=example, avoid=value), (1, None)
    if task == "cwe":
        scale = _cwe_scale(tokenizer, key, length, target)
        return partial(_cwe, length=length, scale=scale), (CWE_COMMON + 1, len(word_list()))
    return partial(_fwe, vocab_size=target // 50), (1, None)  # RULER's vocabulary: a coded word per 50 tokens


# ----------------------------------------------------------------- fitting the length


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text).input_ids)


def _fit(
    build: Callable[[int], _Parts], tokenizer, target: int, min_size: int = 1, max_size: int | None = None
) -> tuple[_Parts, int]:
    """The parts of the largest size in ``[min_size, max_size]`` tried whose prompt has at most ``target``
    tokens, searched (secant steps inside the bracket found so far) until it is within :data:`TOLERANCE`."""
    lo: tuple[int, int, _Parts] | None = None  # (size, tokens, parts): fits
    hi: tuple[int, int] | None = None  # (size, tokens): too long
    previous: tuple[int, int] | None = None
    size = max(min(64, max_size or 64), min_size)
    while True:
        parts = build(size)
        tokens = _count(tokenizer, parts.prompt)
        if tokens <= target:
            if lo is None or size > lo[0]:
                lo = (size, tokens, parts)
        elif hi is None or size < hi[0]:
            hi = (size, tokens)
        floor = lo[0] if lo else min_size - 1
        ceiling = min(hi[0] if hi else math.inf, (max_size or math.inf) + 1)
        if (lo and lo[1] >= target * (1 - TOLERANCE)) or ceiling - floor <= 1:
            break
        guess = _next_size(target * (1 - TOLERANCE / 2), lo, hi, previous, (size, tokens))
        previous = (size, tokens)
        size = int(min(max(guess, floor + 1), ceiling - 1))
    if lo is None:
        raise ValueError(f"{target} tokens cannot hold this task's template")
    return lo[2], lo[1]


def _next_size(
    aim: float, lo: tuple | None, hi: tuple | None, previous: tuple[int, int] | None, current: tuple[int, int]
) -> int:
    """The size whose prompt should have ``aim`` tokens, on the line through two measured points."""
    if lo and hi:
        (s1, t1), (s2, t2) = lo[:2], hi
    elif previous and previous[0] != current[0]:
        (s1, t1), (s2, t2) = previous, current
    else:
        (s1, t1), (s2, t2) = (0, 0), current
    slope = (t2 - t1) / (s2 - s1)
    if slope <= 0:
        slope = t2 / s2
    return round(s2 + (aim - t2) / slope)


# ----------------------------------------------------------------- shared pieces


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """The fixed word list: distinct lowercase words of 4-10 letters in CPython's reference documentation
    (not attribute or call names), sorted."""
    return tuple(sorted(set(re.findall(r"(?<![\w.\-])[a-z]{4,10}(?![\w\-(])", haystack.reference_prose()))))


@lru_cache(maxsize=1)
def _prose_words() -> tuple[str, ...]:
    return tuple(haystack.reference_prose().split())


def _render(template: str, answer_prefix: str, body: str, **fields: Any) -> tuple[str, str, str]:
    """(context, query, bare question) of a RULER template whose ``{context}`` is ``body``."""
    head, tail = template.split("{context}")
    question = tail.format(**fields)
    return (
        head.format(**fields) + body,
        question + answer_prefix.format(**fields),
        question.strip().removeprefix("Question: "),
    )


def _insert(items: list[str], inserts: Sequence[str], slots: Sequence[int]) -> list[str]:
    """``items`` with ``inserts[i]`` placed before ``items[slots[i]]`` (``slots`` sorted; a slot of
    ``len(items)`` appends)."""
    out: list[str] = []
    start = 0
    for slot, insert in zip(slots, inserts):
        out += items[start:slot]
        out.append(insert)
        start = slot
    return out + items[start:]


def _line_slots(rng: random.Random, lines: int, count: int) -> list[int]:
    return sorted(rng.randint(0, lines) for _ in range(count))


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


# ----------------------------------------------------------------- needle in a haystack


def _random(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    words = word_list()
    return f"{rng.choice(words)}-{rng.choice(words)}"


def _fresh(kind: str, rng: random.Random, taken: set[str]) -> str:
    """A random key or value of ``kind`` not in ``taken``; added to it."""
    while (item := _random(kind, rng)) in taken:
        pass
    taken.add(item)
    return item


def _singular(text: str) -> str:
    """RULER's rewording of the niah template when one value is asked."""
    for many, one in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(many, one)
    return text


def _niah(cfg: NiahConfig, rng: random.Random, size: int) -> _Parts:
    """Needles (keys and values drawn first, so the same for every size) in a haystack of ``size`` units:
    noise lines, needle lines, or words of prose."""
    keys_taken: set[str] = set()
    values_taken: set[str] = set()
    keys = [_fresh(cfg.key_type, rng, keys_taken) for _ in range(max(cfg.num_k, cfg.num_q))]
    values = [[_fresh(cfg.value_type, rng, values_taken) for _ in range(cfg.num_v)] for _ in keys]
    needles = [[NEEDLE.format(type_needle_v=cfg.value_type, key=k, value=v) for v in vs] for k, vs in zip(keys, values)]
    asked = rng.sample(range(len(keys)), cfg.num_q)
    inserted = [n for group in needles for n in group]
    rng.shuffle(inserted)
    if cfg.haystack == "essay":
        body = _prose_with(inserted, rng, size)
    else:
        lines = (
            [NOISE] * size
            if cfg.haystack == "noise"
            else [
                NEEDLE.format(
                    type_needle_v=cfg.value_type,
                    key=_fresh(cfg.key_type, rng, keys_taken),
                    value=_fresh(cfg.value_type, rng, values_taken),
                )
                for _ in range(size)
            ]
        )
        body = "\n".join(_insert(lines, inserted, _line_slots(rng, size, len(inserted))))
    template, prefix, type_needle_v = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, cfg.value_type
    if cfg.num_q * cfg.num_v == 1:
        template, prefix, type_needle_v = _singular(template), _singular(prefix), cfg.value_type[:-1]
    asked_keys = [keys[i] for i in asked]
    query = asked_keys[0] if len(asked_keys) == 1 else ", ".join(asked_keys[:-1]) + ", and " + asked_keys[-1]
    context, query_text, question = _render(template, prefix, body, type_needle_v=type_needle_v, query=query)
    return _Parts(
        context,
        query_text,
        question,
        outputs=tuple(v for i in asked for v in values[i]),
        needles=tuple(n for i in asked for n in needles[i]),
        distractors=tuple(n for i in range(len(keys)) if i not in asked for n in needles[i]),
    )


def _prose_with(needles: Sequence[str], rng: random.Random, size: int) -> str:
    """The first ``size`` words of the prose (repeated as needed), needles between sentences at RULER's
    depths."""
    words = _prose_words()
    text = " ".join((words * (size // len(words) + 1))[:size])
    sentences = re.split(r"(?<=[.!?])\s+", text)
    slots = sorted(len(sentences) * depth // 100 for depth in rng.sample(DEPTHS, len(needles)))
    return " ".join(_insert(sentences, needles, slots))


# ----------------------------------------------------------------- variable tracking


def _vt(rng: random.Random, size: int, example: str = "", avoid: str = "", letters: int = 5) -> _Parts:
    """One chain of :data:`VT_HOPS` hops among ``size`` noise lines, after ``example``; the value is not
    ``avoid`` (the example's)."""
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    while (value := str(rng.randint(10000, 99998))) == avoid:
        pass
    links = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in pairwise(names)]
    body = "\n".join(_insert([NOISE] * size, links, _line_slots(rng, size, len(links))))
    context, query, question = _render(VT_TEMPLATE, VT_ANSWER_PREFIX, body, num_v=VT_HOPS + 1, query=value)
    return _Parts(example + context, query, question, outputs=tuple(names), needles=tuple(links))


def _vt_example(tokenizer, key: str) -> tuple[str, str]:
    """RULER's worked example (3-letter names, :data:`VT_EXAMPLE_TOKENS` tokens) with its answer, and its
    value."""
    parts, _ = _fit(lambda size: _vt(random.Random(f"{key}/example"), size, letters=3), tokenizer, VT_EXAMPLE_TOKENS)
    value = parts.needles[0].rsplit(" ", 1)[1]
    return parts.context + parts.query + " " + " ".join(parts.outputs) + "\n\n", value


# ----------------------------------------------------------------- common and frequent words


def _cwe_list(rng: random.Random, words: int, common: int, uncommon: int) -> tuple[str, list[str]]:
    """A numbered list of ``words`` distinct words, the first 10 drawn ``common`` times, the others
    ``uncommon`` times, shuffled; and the common words."""
    chosen = rng.sample(word_list(), words)
    entries = chosen[:CWE_COMMON] * common + chosen[CWE_COMMON:] * uncommon
    rng.shuffle(entries)
    return _numbered(entries), chosen[:CWE_COMMON]


def _cwe(rng: random.Random, size: int, length: int, scale: int) -> _Parts:
    """RULER's worked example, then a list of ``size`` distinct words with both frequencies x ``scale``."""
    (example_words, *example_repeats), (common, uncommon) = CWE_FREQUENCIES["short" if length < 4096 else "long"]
    example_list, example_answer = _cwe_list(rng, example_words, *example_repeats)
    body, answer = _cwe_list(rng, size, common * scale, uncommon * scale)
    example_context, example_query, _ = _render(CWE_TEMPLATE, CWE_ANSWER_PREFIX, example_list)
    example = example_context + example_query + " " + _numbered(example_answer)
    context, query, question = _render(CWE_TEMPLATE, CWE_ANSWER_PREFIX, body)
    return _Parts(example + "\n" + context, query, question, outputs=tuple(answer))


def _cwe_scale(tokenizer, key: str, length: int, target: int) -> int:
    """The smallest frequency factor at which the whole word list fills ``target`` tokens (1 where RULER's
    frequencies suffice)."""
    scale = 1
    while _count(tokenizer, _cwe(random.Random(key), len(word_list()), length, scale).prompt) < target:
        scale += 1
    return scale


def _fwe(rng: random.Random, size: int, vocab_size: int) -> _Parts:
    """About ``size`` coded words with Zipf counts over ``vocab_size`` words; the top one is "..."."""
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LETTERS)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    words = [w for k, w in enumerate(ranked, 1) for _ in range(int(size / k**2 / FWE_ZETA_2))]
    rng.shuffle(words)
    context, query, question = _render(FWE_TEMPLATE, FWE_ANSWER_PREFIX, " ".join(words))
    return _Parts(context, query, question, outputs=tuple(ranked[1:4]))


# ----------------------------------------------------------------- relevance recall


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
    header = _header(
        engine,
        {"tasks": list(tasks), "lengths": list(lengths), "samples": samples, "signals": list(signals), "ks": list(ks)},
        "relevance_recall",
    )
    records = _load_records(results, resume)
    done = {(r["task"], r["length"], r["seed"], r["signal"]) for r in records}
    payload = _save(results, header, records, summarize_recall(records))
    for length in lengths:
        for task, seed, case in recall_cases(engine.tokenizer, tasks, length, samples):
            todo = [s for s in signals if (task, length, seed, s) not in done]
            if not todo:
                continue
            for signal, recall in answer_chunk_recall(engine, case, ks, todo).items():
                records.append({"task": task, "length": length, "seed": seed, "signal": signal, **recall})
                print(f"recall {task} {length} seed {seed} {signal}: {recall}", flush=True)
            payload = _save(results, header, records, summarize_recall(records))
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
            **{k: _mean([r[k] for r in rs if r[k] is not None]) for k in names},
            "cases": sum(r[names[0]] is not None for r in rs),
        }
    return out


# ----------------------------------------------------------------- the benchmark runner

NEW_TOKENS = {"niah": 64, "vt": 30, "cwe": 120, "fwe": 50}  # RULER's tokens_to_generate, niah's 128 halved for CPU


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
) -> dict:
    """Every method on ``samples`` samples of every task and length. ``results`` (JSON) is rewritten after
    each record and ``figure`` (heatmap) after each sample; ``resume`` keeps the records already in
    ``results`` and runs only the others. Each task family's generation length (:data:`NEW_TOKENS`) is set
    in the engine's config, which the methods read."""
    header = _header(
        engine,
        {
            "tasks": list(tasks),
            "lengths": list(lengths),
            "samples": samples,
            "methods": [m.name for m in methods],
            "new_tokens": NEW_TOKENS,
            "stop": list(stop),
            "method_settings": [_settings(m) for m in methods],
        },
        "ruler",
    )
    records = _load_records(results, resume)
    done = {(r["task"], r["length"], r["seed"], r["method"]) for r in records}
    payload = _save(results, header, records, summarize(records))
    for length in lengths:
        for task in tasks:
            for seed in range(samples):
                todo = [m for m in methods if (task, length, seed, m.name) not in done]
                if not todo:
                    continue
                case = make_sample(task, engine.tokenizer, length, seed)
                engine.config = engine.config.replace(max_new_tokens=NEW_TOKENS[family(task)], stop=tuple(stop))
                for record in _answer(engine, case, todo):
                    records.append(record)
                    payload = _save(results, header, records, summarize(records))
                plot_heatmaps(payload["summary"], figure, f"RULER tasks ({engine.model_name})")
    plot_heatmaps(payload["summary"], figure, f"RULER tasks ({engine.model_name})")
    return payload


def _answer(engine: FocusEngine, case: Sample, methods: Sequence[Method]) -> Iterator[dict]:
    """A record per method. A prompt that fits the native window is decoded plainly whatever the method,
    so it is decoded once for all the methods that build it."""
    plain: dict[tuple[str, int], tuple[str, dict]] = {}
    for method in methods:
        reader = getattr(method, "engine", None) or engine  # a method may bring its own engine (window)
        key = (method.prompt(engine, case)[0], id(reader))
        if key in plain:
            first, out = plain[key]
            out = {**out, "same_run_as": first}
        else:
            out = method.answer(engine, case)
            if out is not None and out["prompt_tokens"] + engine.config.max_new_tokens <= reader.native_window:
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
    what decoding read (touching spans joined) or in the local context; ``recall@k``, the fraction
    overlapping one of the ``k`` best-scored chunks or passages."""
    needles = [(start, start + len(n)) for n in case.needles for start in (case.prompt.index(n),)]
    read: list[list[int]] = []
    for a, b in sorted(out["read"]):
        if read and a <= read[-1][1] + 1:
            read[-1][1] = max(read[-1][1], b)
        else:
            read.append([a, b])
    inside = [a >= out["memory_end"] or any(x <= a and b <= y for x, y in read) for a, b in needles]
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
        coverage[method][task][length] = {k: _mean([r[k] for r in rs]) for k in ("in_read", "recall@1", "recall@3")}
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in records):
        by_task: dict[str, dict[str, float]] = {}
        for task in TASKS:
            lengths = sorted({n for (m, t, n) in cells if m == method and t == task}, key=int)
            if lengths:
                by_task[task] = {n: 100 * _mean(cells[method, task, n]) for n in lengths}
        all_lengths = sorted({n for scores in by_task.values() for n in scores}, key=int)
        out[method] = {
            "by_task": by_task,
            "ruler_mean": {n: _mean([s[n] for s in by_task.values() if n in s]) for n in all_lengths},
            "samples": {t: {n: len(cells[method, t, n]) for n in s} for t, s in by_task.items()},
            "mean_seconds": _mean(seconds[method]),
            "by_length": {n: _costs(costs[method, n]) for n in all_lengths},
            **({"needle_coverage": coverage[method]} if method in coverage else {}),
        }
    return out


def _costs(records: list[dict]) -> dict[str, float | None]:
    """Mean seconds, seconds to the first token and peak memory added (where recorded) of some records."""
    return {
        key: _mean([r[key] for r in records if r.get(key) is not None])
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
        overall = _mean([v for v in s["ruler_mean"].values() if v is not None])
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


def _header(engine, settings: dict, benchmark: str) -> dict:
    return {**result_header(benchmark, engine), "settings": settings}


def _load_records(path: Path, resume: bool) -> list[dict]:
    return json.loads(path.read_text())["records"] if resume and path.is_file() else []


def _save(path: Path, header: dict, records: list[dict], summary: dict) -> dict:
    payload = {**header, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary, "records": records}
    write_json(path, payload)
    return payload


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--samples", type=int, default=10, help="samples per task and length (seeds 0..n-1)")
    parser.add_argument("--tasks", nargs="+", default=["all"], choices=["all", *TASKS])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["entropy", "focus", "auto", "full", "truncation", "rag"],
        help="full, truncation, rag, or a FocusLLM aggregation",
    )
    parser.add_argument("--rag-top-k", type=int, default=4)
    parser.add_argument("--rag-chunk-size", type=int, default=256, help="tokens per RAG chunk (overlap 32)")
    parser.add_argument("--stop", nargs="*", default=[], help="stop strings (RULER uses none)")
    parser.add_argument("--resume", action="store_true", help="keep the records in the results file, run the rest")
    parser.add_argument(
        "--recall",
        action="store_true",
        help="report recall@1/@3 of the answer chunks by the engine's relevance instead",
    )
    parser.add_argument("--signals", nargs="+", default=["likelihood"], help="relevance signals for --recall")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="default: benchmarks/results/ruler.json (relevance_recall.json with --recall)",
    )
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "ruler.png")
    args = parser.parse_args(argv)
    tasks = list(TASKS) if "all" in args.tasks else args.tasks
    results_dir = ROOT / "benchmarks" / "results"
    engine = FocusEngine.from_pretrained(None, FocusConfig(progress=False, prefix_cache_bytes=8 * 2**30))
    start = time.perf_counter()
    if args.recall:
        run_recall(
            engine,
            tasks,
            args.lengths,
            args.samples,
            args.signals,
            args.results or results_dir / "relevance_recall.json",
            resume=args.resume,
        )
    else:
        methods = make_methods(args.methods, args.rag_top_k, args.rag_chunk_size)
        run_suite(
            engine,
            tasks,
            args.lengths,
            args.samples,
            methods,
            args.results or results_dir / "ruler.json",
            args.figure,
            resume=args.resume,
            stop=args.stop,
        )
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
