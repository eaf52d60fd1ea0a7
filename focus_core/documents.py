"""Reading documents from files and folders: the one reader behind ``focusllm ask`` and training."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import FocusInputError


def read_files(paths: Iterable[str | os.PathLike], note: Callable[[str], None] | None = None) -> list[tuple[Path, str]]:
    """``(file, text)`` for every readable text file under ``paths``, in order: files as given, folders
    walked recursively in sorted order, skipping hidden entries as LlamaIndex's ``SimpleDirectoryReader``
    does; a file reached twice is read once. Inside a folder, files that are binary, not UTF-8 or
    unreadable are skipped with a ``note`` (default: a line on stderr); named explicitly, they are a
    :class:`FocusInputError`, and so is a missing path or a folder with nothing readable in it. Empty
    files are kept (the caller decides whether the whole input is empty)."""
    note = note or (lambda line: print(f"focusllm: {line}", file=sys.stderr, flush=True))
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = 0
            for file in _walk(path):
                if file.resolve() in seen:
                    continue
                text, problem = _read_text(file)
                if problem:
                    note(f"skipped {file}: {problem}")
                    continue
                seen.add(file.resolve())
                out.append((file, text))
                found += 1
            if not found:
                raise FocusInputError(f"folder {path} holds no readable text file")
        elif path.exists():
            if not path.is_file():
                raise FocusInputError(f"{path} is not a regular file or a folder")
            if path.resolve() in seen:
                continue
            text, problem = _read_text(path)
            if problem:
                raise FocusInputError(f"{path}: {problem}")
            seen.add(path.resolve())
            out.append((path, text))
        else:
            raise FocusInputError(f"{path}: no such file or folder")
    return out


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                file = Path(root, name)
                if file.is_file():
                    yield file


def _read_text(file: Path) -> tuple[str, str | None]:
    """The file's text and ``None``, or ``""`` and why it cannot be read as text."""
    try:
        data = file.read_bytes()
    except OSError as err:
        return "", f"cannot be read ({err.strerror or err})"
    if b"\0" in data:
        return "", "binary file, not text"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        return "", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
