"""The README's commands and code blocks are true: CI runs its test command, and every Python block
runs as written (on the embedded model)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# What each block must print: the facts it asks about, read from past the model's window.
EXPECTED = [["Lighthouse"], ["Okonkwo", "Paris"], ["Okonkwo", "Lighthouse"]]


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(bash scripts/setup.sh && [^\n]+)\n```", README)
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("block, expected", list(zip(BLOCKS, EXPECTED, strict=True)),
                         ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(block, expected):
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for fact in expected:
        assert fact in out.stdout, out.stdout
