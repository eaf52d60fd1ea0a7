"""The README's commands and code blocks are true: every command line (the README's and
docs/reference.md's) parses, and every Python block runs as written (on the embedded model). CI runs the
README's test command (.ci/run reads it from there)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "reference.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# What each block must print: the facts it asks about, read from past the model's window.
EXPECTED = [["Lighthouse", "the answer is in a source: True"], ["Okonkwo", "Paris"], ["Okonkwo", "Lighthouse"]]


BASH_LINES = [
    line.split("  #")[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", README + REFERENCE, flags=re.S)
    for line in block.splitlines()
    if line.strip()
]


def _cli(line: str) -> list[str] | None:
    """The focusllm arguments of a README command line (``focusllm ...``, ``.venv/bin/focusllm ...``,
    ``torchrun ... -m focus_core ...``), or None for other commands."""
    words = shlex.split(line.split("&& ")[-1])
    for i, word in enumerate(words):
        if word.endswith("focusllm") or (word == "focus_core" and words[i - 1] == "-m"):
            return words[i + 1 :]
    return None


def test_every_readme_command_line_is_valid():
    """Each documented focusllm command parses (options exist, values are valid); synopsis lines with
    [optional] parts must name only real options."""
    from focus_core.cli import build_parser

    commands = [(line, _cli(line)) for line in BASH_LINES]
    commands = [(line, args) for line, args in commands if args is not None]
    assert len(commands) >= 8
    parser = build_parser()
    options = {
        command: {o for a in sub._actions for o in a.option_strings}
        for command, sub in parser._subparsers._group_actions[0].choices.items()
    }
    for line, args in commands:
        if any("[" in a or a in ("...", "FILE", "PATH") for a in args):  # a synopsis
            named = set(re.findall(r"--[a-z-]+", line))
            assert named <= options[args[0]], (line, named - options[args[0]])
        else:
            parser.parse_args(args)


@pytest.mark.slow
def test_readme_first_command_answers():
    """The README's first command, as written after setup (the same program, this interpreter)."""
    command = BASH_LINES[0].split("&& ", 1)[1].replace(".venv/bin/focusllm", f"{sys.executable} -m focus_core")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Okonkwo" in out.stdout, (out.stdout, out.stderr[-3000:])


def test_readme_cache_command_runs():
    line = next(line for line in BASH_LINES if _cli(line) == ["cache"])
    out = subprocess.run(
        [sys.executable, "-m", "focus_core", *_cli(line)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cache of dequantized weights: "), out.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "block, expected", list(zip(BLOCKS, EXPECTED, strict=True)), ids=[f"block{i}" for i in range(len(BLOCKS))]
)
def test_readme_python_block_runs(block, expected):
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for fact in expected:
        assert fact in out.stdout, out.stdout
