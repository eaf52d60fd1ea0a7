"""The tests use the package's public names: none imports or reaches a name starting with ``_`` from
focus_core or focusllm_integrations (what they pin is behaviour, not internals)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PRIVATE_IMPORT = re.compile(r"from (focus_core|focusllm_integrations)[\w.]* import [^\n]*\b_[a-z]\w*")
PRIVATE_MODULE = re.compile(r"\b(focus_core|focusllm_integrations)(\.\w+)*\._[a-z]\w*")
PRIVATE_ATTRIBUTE = re.compile(r"\b(loading|engine|runner|prefix_cache|encoder|planner|generation)\._[a-z]\w*")


def test_no_test_reaches_a_private_name_of_the_package():
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(TESTS.glob("test_*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(line) for p in (PRIVATE_IMPORT, PRIVATE_MODULE, PRIVATE_ATTRIBUTE))
    ]
    assert offenders == []
