"""Long-context test cases: the synthetic pass key and a needle in real prose.

A :class:`Case` is a long ``context`` plus a ``query`` appended after it (completion style: the query
ends with the first words of the answer). ``question`` is the bare question, the text a retriever
embeds. The real-text haystack is the Python reference documentation that ships with CPython
(``pydoc_data.topics``, ~465K characters of English prose and grammar); the needles are invented facts
whose questions are worded differently from the needle sentence, so that the answer is not a copy of
the words around the question.
"""

from __future__ import annotations

import pydoc_data.topics
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from focus_core.passkey import QUESTION, answers_passkey, make_case


@dataclass(frozen=True)
class Case:
    context: str
    query: str  # appended to the context; ends where the answer starts
    question: str  # what a retriever would search with
    answers: tuple[str, ...]  # the pass key, or words any one of which must appear in the reply
    needle: str  # the sentence holding the answer
    depth: float
    kind: str  # "passkey" or "needle"

    @property
    def prompt(self) -> str:
        return self.context + self.query

    def is_correct(self, reply: str) -> bool:
        if self.kind == "passkey":
            return answers_passkey(reply, self.answers[0])
        return any(a.lower() in reply.lower() for a in self.answers)


def passkey_case(tokenizer, n_tokens: int, depth: float, seed: int) -> Case:
    case = make_case(tokenizer, n_tokens, depth, seed)
    cut = case.prompt.rindex(QUESTION)
    return Case(
        context=case.prompt[:cut],
        query=case.prompt[cut:],
        question="What is the pass key?",
        answers=(case.passkey,),
        needle=f"The pass key is {case.passkey}.",
        depth=depth,
        kind="passkey",
    )


@dataclass(frozen=True)
class Needle:
    sentence: str  # hidden in the haystack
    question: str  # asks for the fact in other words
    answer_prefix: str  # starts the answer, echoing the question rather than the needle
    answers: tuple[str, ...]  # any of these in the reply counts as correct


NEEDLES = (
    Needle(
        "The lighthouse on Skerry Point was painted bright orange so that fishermen could see it in fog.",
        "What colour is the lighthouse at Skerry Point?",
        "The lighthouse at Skerry Point is painted",
        ("orange",),
    ),
    Needle(
        "The mayor of Kellwick keeps a pet tortoise named Bartholomew in the town hall garden.",
        "What is the name of the Kellwick mayor's animal?",
        "The Kellwick mayor's animal is called",
        ("Bartholomew",),
    ),
    Needle(
        "The secret ingredient in Grandma Odile's famous winter stew is smoked paprika.",
        "What does Grandma Odile add to her stew that nobody knows about?",
        "The hidden ingredient of Grandma Odile's stew is",
        ("paprika",),
    ),
    Needle(
        "The river ferry at Dunmore is operated by a retired airline pilot called Rosalind Achebe.",
        "Who runs the Dunmore ferry?",
        "The Dunmore ferry is run by",
        ("Achebe", "Rosalind"),
    ),
    Needle(
        "The winner of the village chess tournament received a trophy carved from polished walnut.",
        "What material was the chess prize made of?",
        "The chess prize was made of",
        ("walnut",),
    ),
    Needle(
        "Every spring the orchard cooperative ships its entire crop of quinces to a jam maker in Lyon.",
        "Which city receives the cooperative's quince harvest?",
        "The cooperative's quinces are shipped to",
        ("Lyon",),
    ),
    Needle(
        "When the old observatory reopened, its new telescope was named after the astronomer Yusuf Demirel.",
        "Whose name was given to the observatory's new telescope?",
        "The observatory's new telescope was named after",
        ("Demirel", "Yusuf"),
    ),
)


@lru_cache(maxsize=1)
def reference_prose() -> str:
    """The CPython reference topics in a fixed order, as one text."""
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def prose_paragraphs() -> list[str]:
    return [p for p in re.split(r"\n\s*\n", reference_prose()) if p.strip()]


def haystack(tokenizer, n_tokens: int, offset: int = 0) -> list[str]:
    """Consecutive paragraphs of reference prose, starting at paragraph ``offset``, totalling about
    ``n_tokens`` tokens (the text repeats from the start if it runs out)."""
    paragraphs = prose_paragraphs()
    chosen, total, i = [], 0, offset
    while total < n_tokens:
        p = paragraphs[i % len(paragraphs)]
        chosen.append(p)
        total += len(tokenizer(p + "\n\n", add_special_tokens=False).input_ids)
        i += 1
    return chosen


def needle_case(tokenizer, n_tokens: int, depth: float, seed: int) -> Case:
    """A needle placed between paragraphs at ``depth`` of the prose haystack of ``n_tokens``.

    Which needle turns with both ``seed`` and the length, so that in a grid (seed = depth index) no depth
    is tied to one needle's difficulty.
    """
    needle = NEEDLES[(seed + n_tokens.bit_length()) % len(NEEDLES)]
    query = f"\n\nQuestion: {needle.question}\nAnswer: {needle.answer_prefix}"
    fixed = len(tokenizer(needle.sentence + query).input_ids)
    offset = random.Random(n_tokens).randrange(len(prose_paragraphs()))  # one haystack per length
    paragraphs = haystack(tokenizer, n_tokens - fixed, offset)
    at = round(depth * len(paragraphs))
    context = "\n\n".join(paragraphs[:at] + [needle.sentence] + paragraphs[at:])
    return Case(
        context=context,
        query=query,
        question=needle.question,
        answers=needle.answers,
        needle=needle.sentence,
        depth=depth,
        kind="needle",
    )


def make(kind: str, tokenizer, n_tokens: int, depth: float, seed: int) -> Case:
    return {"passkey": passkey_case, "needle": needle_case}[kind](tokenizer, n_tokens, depth, seed)
