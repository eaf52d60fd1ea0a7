"""Training text: files, folders and JSONL given by path, tokenised into one stream, sampled in windows;
and synthetic recall facts spliced into that text (docs/design.md, "Training").

Nothing is downloaded. Folders are read recursively (every non-hidden UTF-8 text file); JSONL files give one document
per line in a ``"text"`` field. The stream's last ``eval_fraction`` is held out for evaluation.

The recall patterns are this package's own and are kept apart from the evaluations' shapes (no pass
keys, no RULER templates, no haystack needles): a key-value registry written as code and queried by an
``assert`` far later, and glossary definitions of invented terms recalled far later.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from ..documents import read_files
from ..errors import FocusInputError
from .objective import Example


def read_documents(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Every document under ``paths``, read as :func:`~focus_core.documents.read_files` reads them (files,
    folders recursively, in a stable order); a ``.jsonl`` file gives one document per line."""
    paths, documents = list(paths), []
    for file, text in read_files(paths):
        documents.extend(_records(file, text) if file.suffix == ".jsonl" else [text])
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise FocusInputError(f"no text found in {list(map(str, paths))}")
    return documents


def _records(file: Path, text: str) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise FocusInputError(f"{file}:{number} is not valid JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise FocusInputError(f'{file}:{number} has no "text" string')
        docs.append(record["text"])
    return docs


class TokenStream:
    """All documents as one token stream (EOS between documents), split into train and held-out parts."""

    def __init__(self, tokenizer, documents: list[str], eval_fraction: float = 0.05):
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids: list[int] = []
        for document in documents:
            ids.extend(tokenizer(document, add_special_tokens=False).input_ids)
            ids.extend(separator)
        split = int(len(ids) * (1 - eval_fraction))
        self.train, self.eval = ids[:split], ids[split:]
        self.tokenizer = tokenizer

    def window(self, length: int, rng: random.Random, held_out: bool = False) -> list[int]:
        """``length`` consecutive tokens from a random place of the train (or held-out) part."""
        ids = self.eval if held_out else self.train
        if len(ids) < length:
            part = "held-out" if held_out else "training"
            raise FocusInputError(f"the {part} text has {len(ids)} tokens; a training window needs {length}")
        start = rng.randrange(len(ids) - length + 1)
        return ids[start : start + length]


SYLLABLES = ("ka", "lo", "mi", "ru", "ve", "do", "sa", "ti", "ne", "po", "zu", "fe", "ga", "hi", "bo", "ur")
WORDS = (
    "copper lantern harbour ledger orchard quarry saddle thimble walnut beacon cellar falcon granite hinge"
    " meadow pepper ribbon shovel tavern violet willow anchor barley candle ferry garnet kettle marble"
    " nutmeg parcel"
).split()


def invented_word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables))


def recall_fact(rng: random.Random) -> tuple[str, str, str]:
    """One fact: the line written into the memory, the query that ends the local context, the answer."""
    if rng.random() < 0.5:
        key = f"{invented_word(rng)}-{invented_word(rng, 2)}"
        value = f"{invented_word(rng, 2)}-{rng.randrange(100, 10000)}"
        return f'REGISTRY["{key}"] = "{value}"', f'assert REGISTRY["{key}"] == "', f'{value}"'
    term, meaning = invented_word(rng), " ".join(rng.sample(WORDS, 4))
    return f"Glossary: a {term} is a {meaning}.", f"As defined in the glossary, a {term} is a", f" {meaning}."


def splice(filler: list[int], inserts: list[list[int]], rng: random.Random) -> list[int]:
    """``filler`` with each insert placed at a random token position, in order, same total length cut
    back to ``len(filler)`` (every insert survives: they go into the part that is kept)."""
    room = len(filler) - sum(len(i) for i in inserts)
    cuts = sorted(rng.randrange(room + 1) for _ in inserts)
    out, at = [], 0
    for cut, insert in zip(cuts, inserts):
        out += filler[at:cut] + insert
        at = cut
    return (out + filler[at:])[: len(filler)]


def window_examples(stream: TokenStream, cfg, rng: random.Random, held_out: bool = False) -> list[Example]:
    """``cfg.examples_per_window`` examples over one memory (``cfg.memory_tokens`` cut to whole chunks of a
    size drawn from ``cfg.chunk_sizes``); they share its chunk prefixes and the teacher's KV.

    With probability ``cfg.synthetic_fraction`` the memory is text with recall facts spliced in and every
    example's local context ends with a query of one of them (the answer starts the targets); otherwise it
    is plain text, and each example's local context and targets follow the memory (continuation) or are
    copied from inside it (repetition). ``distill`` takes either layout.
    """
    chunk = rng.choice(cfg.chunk_sizes)
    size, span = cfg.memory_tokens // chunk * chunk, cfg.local_tokens + cfg.target_tokens
    kinds = [rng.choice(cfg.losses) for _ in range(cfg.examples_per_window)]
    if rng.random() < cfg.synthetic_fraction:
        memory, tails = recall_window(stream, size, cfg.local_tokens, cfg.target_tokens, len(kinds), rng, held_out)
    else:
        text = stream.window(size + cfg.local_tokens + span, rng, held_out)
        memory, tails = text[:size], []
        for kind in kinds:
            layout = rng.choice(("continuation", "repetition")) if kind == "distill" else kind
            at = (
                size + rng.randrange(cfg.local_tokens + 1)
                if layout == "continuation"
                else rng.randrange(size - span + 1)
            )
            tails.append(text[at : at + span])
    chunks = torch.tensor(memory).view(-1, chunk)  # [n, C]
    return [
        Example(chunks, torch.tensor(t[: cfg.local_tokens]), torch.tensor(t[cfg.local_tokens :]), kind)
        for t, kind in zip(tails, kinds)
    ]


def recall_window(
    stream: TokenStream,
    size: int,
    local_tokens: int,
    target_tokens: int,
    count: int,
    rng: random.Random,
    held_out: bool,
) -> tuple[list[int], list[list[int]]]:
    """A memory of ``size`` tokens of text with at least 8 recall facts spliced in, and ``count`` tails
    (``local + targets``), each querying a different fact: text, then the query; the answer, then text."""
    if stream.tokenizer is None:
        raise FocusInputError("recall examples need the stream's tokenizer")

    def encode(text: str) -> list[int]:
        return stream.tokenizer(text, add_special_tokens=False).input_ids

    facts = [recall_fact(rng) for _ in range(max(8, count))]
    memory = splice(stream.window(size, rng, held_out), [encode(f"\n{line}\n") for line, _, _ in facts], rng)
    tails = []
    for _, query, answer in rng.sample(facts, count):
        text = stream.window(local_tokens + target_tokens, rng, held_out)
        local = (text[:local_tokens] + encode(f"\n{query}"))[-local_tokens:]
        tails.append(local + (encode(answer) + text[local_tokens:])[:target_tokens])
    return memory, tails
