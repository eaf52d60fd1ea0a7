"""RULER's tasks: templates word for word, samples built to a token length (see the package docstring)."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import pairwise
from typing import Any

from .. import haystack
from .protocol import DEV, Part, Phrasing, Question, hotpotqa, prose_words, squad

# ----------------------------------------------------------------- RULER's templates, word for word

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

TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}  # RULER's, per task family
QA_DOCUMENT = "Document {i}:\n{document}"
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
QA = {"qa_1": squad, "qa_2": hotpotqa}  # RULER's single-hop (SQuAD) and multi-hop (HotpotQA) questions
TASKS = (*NIAH, "vt", "cwe", "fwe", *QA)


def family(task: str) -> str:
    """RULER's task family: ``niah``, ``vt``, ``cwe``, ``fwe`` or ``qa``."""
    return "niah" if task in NIAH else "qa" if task in QA else task


def string_match_all(reply: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_all`` for one reply: the fraction of references in it, ignoring case."""
    reply = reply.lower()
    return sum(r.lower() in reply for r in references) / len(references)


def string_match_part(reply: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_part`` (qa) for one reply: 1 when any reference is in it, ignoring case."""
    reply = reply.lower()
    return float(any(r.lower() in reply for r in references))


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
    part: str = "dev"  # the protocol's part (benchmarks.ruler.protocol)
    opening: str = ""  # what comes before the context (a chat template's opening: chat_sample)

    @property
    def prompt(self) -> str:
        return self.opening + self.context + self.query

    @property
    def needle(self) -> str:
        return self.needles[0] if self.needles else ""

    def score(self, reply: str) -> float:
        match = string_match_part if family(self.task) == "qa" else string_match_all
        return match(reply, self.outputs)

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


def make_sample(task: str, tokenizer, length: int, index: int, part: Part = DEV) -> Sample:
    """Sample ``index`` of ``part`` of ``task`` at RULER length ``length`` (tokens of ``tokenizer``): its
    seed, haystack and wording are the part's."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; choose from {TASKS}")
    seed = part.seed(index)
    key = f"{task}/{length}/{seed}"
    target = length - TOKENS_TO_GENERATE[family(task)]
    build, sizes = _builder(task, tokenizer, length, key, target, part, index)
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
        part=part.name,
    )


def chat_sample(sample: Sample, tokenizer) -> Sample:
    """A qa sample asked as a chat user asks: the documents and the question (without the completion's
    ``Answer:`` cue) as the user's message in ``tokenizer``'s chat template, ready for the assistant's
    turn. The answer is read from what the model writes in its turn."""
    if family(sample.task) != "qa":
        raise ValueError(f"only the qa tasks are asked through the chat template, not {sample.task}")
    marker = "\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
    )
    opening, closing = text.split(marker)
    chat = dataclasses.replace(sample, opening=opening, query=sample.query.removesuffix("Answer:").rstrip() + closing)
    return dataclasses.replace(chat, tokens=_count(tokenizer, chat.prompt))


def _builder(
    task: str, tokenizer, length: int, key: str, target: int, part: Part, index: int
) -> tuple[Callable[[random.Random, int], _Parts], tuple[int, int | None]]:
    """The task's builder ``(rng, size) -> parts``, growing with ``size``, and the sizes it takes."""
    if task in NIAH:
        return partial(_niah, NIAH[task], prose=part.haystack(index), phrasing=part.niah), (1, None)
    if task in QA:
        questions, docs = QA[task]()
        question = questions[part.first_question + index]
        return partial(_qa, question=question, docs=docs, template=part.qa), (1, len(docs))
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


def _niah(cfg: NiahConfig, rng: random.Random, size: int, prose: str, phrasing: Phrasing) -> _Parts:
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
        body = _prose_with(inserted, rng, size, prose)
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
    template, prefix, type_needle_v = phrasing.template, phrasing.answer_prefix, cfg.value_type
    if cfg.num_q * cfg.num_v == 1:
        template, prefix, type_needle_v = phrasing.template_one, phrasing.answer_prefix_one, cfg.value_type[:-1]
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


def _prose_with(needles: Sequence[str], rng: random.Random, size: int, prose: str) -> str:
    """The first ``size`` words of the haystack ``prose`` (repeated as needed), needles between sentences
    at RULER's depths."""
    words = prose_words(prose)
    text = " ".join((words * (size // len(words) + 1))[:size])
    sentences = re.split(r"(?<=[.!?])\s+", text)
    slots = sorted(len(sentences) * depth // 100 for depth in rng.sample(DEPTHS, len(needles)))
    return " ".join(_insert(sentences, needles, slots))


# ----------------------------------------------------------------- question answering


def _qa(rng: random.Random, size: int, question: Question, docs: Sequence[str], template: str) -> _Parts:
    """RULER's qa: ``size`` documents, the question's gold ones first, then its related ones, then others
    drawn at random (the same draw for every size), shuffled and numbered."""
    chosen = list(question.gold) + [i for i in question.related if i not in question.gold]
    if size > len(chosen):
        others = list(range(len(docs)))
        rng.shuffle(others)
        taken = set(chosen)
        chosen += [i for i in others if i not in taken][: size - len(chosen)]
    chosen = chosen[: max(size, len(question.gold))]
    rng.shuffle(chosen)
    body = "\n\n".join(QA_DOCUMENT.format(i=i + 1, document=docs[d]) for i, d in enumerate(chosen))
    needles = tuple(docs[d] for d in question.gold)
    context, query, _ = _render(template, "", body, query=question.text)
    return _Parts(context, query, question.text, outputs=question.answers, needles=needles)


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
