"""Training text: files, folders and JSONL given by path, tokenised into one stream, sampled in windows.

Nothing is downloaded. Folders are read recursively for text-like files; JSONL files give one document
per line in a ``"text"`` field. The stream's last ``eval_fraction`` is held out for evaluation.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from ..errors import FocusInputError

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".py", ".jsonl"})


def read_documents(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Every document under ``paths`` (files, or folders read recursively), in a stable order."""
    documents: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise FocusInputError(f"training data path {path} does not exist")
        for file in files:
            documents.extend(_read(file))
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise FocusInputError(f"no text found in {list(map(str, paths))}")
    return documents


def _read(file: Path) -> list[str]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FocusInputError(f"{file} is not UTF-8 text: {err}") from err
    if file.suffix != ".jsonl":
        return [text]
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

    def window(self, length: int, rng: random.Random, held_out: bool = False) -> list[int]:
        """``length`` consecutive tokens from a random place of the train (or held-out) part."""
        ids = self.eval if held_out else self.train
        if len(ids) < length:
            part = "held-out" if held_out else "training"
            raise FocusInputError(f"the {part} text has {len(ids)} tokens; a training window needs {length}")
        start = rng.randrange(len(ids) - length + 1)
        return ids[start : start + length]
