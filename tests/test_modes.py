"""Modes as strategies: the registry is the only place a mode is known, a new mode is one class plus its
registration, and the engine, the settings and the memory plan pick it up."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import random_ids

from focus_core import FocusConfig, FocusConfigError, modes
from focus_core.aggregation import PlainDecoding
from focus_core.chunking import ChunkPlan
from focus_core.memory import Layout, one_sequence
from focus_core.modes.base import Mode, Reading

PACKAGE = Path(__file__).resolve().parent.parent / "focus_core"


class Opening(Mode):
    """A toy mode: read the first chunk and the local context, nothing else (truncation)."""

    name = "opening"

    def layout(self, ids: Sequence[int], plan: ChunkPlan, cfg: FocusConfig) -> Layout:
        slots = 1 + len(plan.chunks[0]) + len(plan.local) + cfg.max_new_tokens
        return one_sequence(slots, slots - cfg.max_new_tokens, self.parts.windows(cfg))

    def read(self, request, keep=None) -> Reading:
        return Reading([(0, len(request.plan.chunks[0]))], torch.tensor([1.0]), chosen=[0])

    def start(self, request, reading: Reading) -> PlainDecoding:
        plan = request.plan
        sequence = self.parts.sequence(request.layout, request.config)
        ids = self.parts.encoder.bos + plan.chunks[0] + plan.local
        return PlainDecoding(sequence, sequence.append(torch.tensor(ids)))


@pytest.fixture
def opening():
    modes.register("opening", Opening)
    yield
    modes.unregister("opening")


def test_a_registered_mode_runs_end_to_end(make_engine, opening):
    engine = make_engine()
    ids = random_ids(300)
    plan = engine.plan(ids)
    completion = engine.complete(ids, aggregation="opening")
    assert engine.aggregation_for(engine.config.replace(aggregation="opening")) == "opening"
    assert engine.request(ids, aggregation="opening").estimate.total > 0
    # the same tokens as the short prompt it reads, decoded as transformers would (plain)
    short = engine.encoder.bos + plan.chunks[0] + plan.local
    assert list(completion.completion_ids) == engine.generate_ids(list(short))
    assert [s.index for s in completion.sources] == [0] and completion.sources[0].token_span == (
        0,
        32,
    )  # random ids: no BOS to drop


def test_an_unregistered_mode_is_refused_by_name():
    with pytest.raises(FocusConfigError) as error:
        FocusConfig(aggregation="opening")
    assert "opening" in str(error.value) and "select" in str(error.value)


def test_auto_follows_the_registry_order(make_engine):
    assert modes.auto_order()[:3] == ["kv", "select", "entropy"]
    assert make_engine().aggregation_for() == "entropy"  # select's reading does not fit a 128 window
    assert make_engine(select_tokens=48, passage_tokens=16).aggregation_for() == "select"


def test_no_mode_name_is_branched_on_outside_its_own_module():
    names = "|".join(["plain", *modes.names()])
    branch = re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if "modes" not in path.relative_to(PACKAGE).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert offenders == []


def test_kv_is_imported_only_by_engines_that_use_it(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, torch; from conftest import tiny_model, random_ids, TINY_CONFIG, tiny_tokenizer;"
        "from focus_core import FocusEngine;"
        "e = FocusEngine(tiny_model('llama'), tiny_tokenizer(), TINY_CONFIG);"
        "e.generate_ids(random_ids(300)); e.generate_ids(random_ids(300), aggregation='select', select_tokens=48,"
        " passage_tokens=16);"
        "print(sorted(m for m in sys.modules if m.startswith('focus_core.') and m.split('.')[-1] in"
        " ('kv', 'adapters', 'candidates')))"
    )
    tests = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", code], cwd=tests, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # no focus_core.modes.kv, adapters or candidates
