"""The RULER-format suite: lengths, RULER's wording, references in the haystack, the metric, the runner
(with fake methods, no model run) and the answer-chunk recall (with a fake engine)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from benchmarks import ruler
from benchmarks.haystack import NEEDLES, needle_case
from benchmarks.methods import FocusMethod, FullAttention, Method, Truncation, VectorRAG
from benchmarks.ruler import TASKS, Sample, answer_chunk_recall, make_sample, needle_coverage
from benchmarks.ruler import tasks as ruler_tasks
from benchmarks.ruler.runner import answer_case
from focus_core import FocusConfig, FocusEngine

NEEDLE_LINE = re.compile(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.")


@pytest.fixture(scope="module")
def samples(tokenizer):
    """Seed 0 of every task at 2K and 4K."""
    return {(task, n): make_sample(task, tokenizer, n, 0) for task in TASKS for n in (2048, 4096)}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [2048, 4096])
def test_prompt_and_answer_budget_fill_the_length_within_3_percent(samples, tokenizer, task, length):
    sample = samples[task, length]
    assert sample.tokens == len(tokenizer(sample.prompt).input_ids)
    budget = sample.tokens + ruler.TOKENS_TO_GENERATE[ruler.family(task)]
    # within 3%, or within one haystack line where lines are long (key-value lines of uuids)
    line = max((len(tokenizer(n).input_ids) for n in sample.needles), default=0)
    assert length - max(0.03 * length, line) <= budget <= length
    assert sample.prompt == sample.context + sample.query
    assert (sample.task, sample.length, sample.seed) == (task, length, 0)


def test_templates_and_answer_prefixes_are_rulers_word_for_word(samples):
    single = samples["niah_single_1", 2048]
    key = NEEDLE_LINE.search(single.needle).group(1)
    assert single.context.startswith(
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
        "about the number afterwards.\nThe grass is green. The sky is blue. The sun is yellow. Here we go. There "
        "and back again.\n"
    )
    assert single.query == (
        f"\nWhat is the special magic number for {key} mentioned in the provided text? "
        f"The special magic number for {key} mentioned in the provided text is"
    )
    assert samples["niah_single_3", 2048].context.startswith("A special magic uuid is hidden")
    multi = samples["niah_multivalue", 2048]
    key = NEEDLE_LINE.search(multi.needle).group(1)
    assert multi.context.startswith(
        "Some special magic numbers are hidden within the following text. Make sure to "
        "memorize it. I will quiz you about the numbers afterwards.\n"
    )
    assert multi.query == (
        f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
        f"The special magic numbers for {key} mentioned in the provided text are"
    )
    vt = samples["vt", 2048]
    value = vt.needles[0].split(" = ")[1]
    assert vt.query == (
        f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
        "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
        f"assigned the value {value}, they are: "
    )
    assert "\n\nMemorize and track the chain(s) of variable assignment hidden in the following text.\n\n" in vt.context
    assert samples["cwe", 2048].query == (
        "\nQuestion: What are the 10 most common words in the above list? Answer: "
        "The top 10 words that appear most often in the list are:"
    )
    assert samples["fwe", 2048].context.startswith(
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. "
    )
    assert samples["fwe", 2048].query == (
        "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
        "frequently appeared words in the above coded text? Answer: According to the coded text above, the three "
        "most frequently appeared words are:"
    )


@pytest.mark.parametrize("task", [t for t in TASKS if t.startswith("niah")])
def test_niah_needles_hold_the_references_once_and_the_question_asks_their_keys(samples, task):
    sample = samples[task, 4096]
    cfg = ruler.NIAH[task]
    assert len(sample.needles) == len(sample.outputs) == cfg.num_v * cfg.num_q
    keys = []
    for needle, value in zip(sample.needles, sample.outputs):
        key, found = NEEDLE_LINE.fullmatch(needle).groups()
        assert found == value and sample.context.count(needle) == 1 and sample.context.count(value) == 1
        assert key in sample.question
        keys.append(key)
    assert len(set(keys)) == cfg.num_q  # multivalue: one key for four values; multiquery: four keys
    if cfg.value_type == "uuids":
        assert all(
            re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v)
            for v in sample.outputs
        )
    else:
        assert all(re.fullmatch(r"[1-9]\d{6}", v) for v in sample.outputs)
    other_keys = [k for k, _ in NEEDLE_LINE.findall(sample.context) if k not in keys]
    if task == "niah_multikey_1":
        assert len(sample.distractors) == 3 == len(set(other_keys))
        assert all(sample.context.count(d) == 1 for d in sample.distractors)
    elif cfg.haystack == "needle":  # the haystack is made of needle lines with other keys
        lines = sample.context.split("\n")[1:]
        assert len(lines) > 30 and all(NEEDLE_LINE.fullmatch(line) for line in lines)
        assert len(other_keys) == len(lines) - 1
    else:
        assert other_keys == [] and sample.distractors == ()
    if cfg.haystack == "noise":
        assert set(sample.context.split("\n")[1:]) == {ruler.NOISE, sample.needle}


def test_variable_tracking_answer_is_exactly_the_chain(samples):
    for length in (2048, 4096):
        sample = samples["vt", length]
        value = re.search(r"assigned the value (\d+)", sample.query).group(1)
        links = [line.strip() for line in sample.context.split("\n") if line.startswith("VAR ")]
        assigned = dict(re.fullmatch(r"VAR (\w+) = (?:VAR )?(\w+)", link).groups() for link in links)
        holders = {name for name, v in assigned.items() if v == value}
        while True:  # follow the chain from the value
            more = {name for name, v in assigned.items() if v in holders} - holders
            if not more:
                break
            holders |= more
        assert holders == set(sample.outputs) and len(sample.outputs) == 5
        assert all(sample.context.count(link) == 1 for link in sample.needles)
        positions = [sample.context.index(link) for link in sample.needles]
        assert positions == sorted(positions)  # the chain is in document order
        assert sample.needles[0] == f"VAR {sample.outputs[0]} = {value}"
        assert all(sample.needles[i + 1] == f"VAR {sample.outputs[i + 1]} = VAR {sample.outputs[i]} " for i in range(4))
        example_answer = re.search(r"they are:  ((?:[A-Z]{3} ?){5})\n\n", sample.context)
        assert example_answer and not set(example_answer.group(1).split()) & holders  # the worked example


def _cwe_counts(sample: Sample) -> Counter:
    listing = sample.context.rsplit("Memorize the ones that appear most often.\n", 1)[1]
    return Counter(re.findall(r"\d+\. (\w+)", listing))


@pytest.mark.parametrize("length, common, uncommon", [(2048, 6, 1), (4096, 30, 3)])
def test_cwe_answers_are_the_ten_most_common_words(samples, length, common, uncommon):
    sample = samples["cwe", length]
    counts = _cwe_counts(sample)
    assert {w for w, _ in counts.most_common(10)} == set(sample.outputs) and len(sample.outputs) == 10
    assert {counts[w] for w in sample.outputs} == {common}
    assert set(counts.values()) == {common, uncommon}


def test_cwe_scales_both_frequencies_when_the_word_list_runs_out(tokenizer, monkeypatch):
    few = ruler.word_list()[:100]
    monkeypatch.setattr(ruler_tasks, "word_list", lambda: few)
    sample = make_sample("cwe", tokenizer, 8192, 0)
    counts = _cwe_counts(sample)
    common = {counts[w] for w in sample.outputs}
    uncommon = {c for w, c in counts.items() if w not in sample.outputs}
    assert len(common) == len(uncommon) == 1 and common.pop() == 10 * uncommon.pop() > 30
    assert 0.97 * 8192 <= sample.tokens + 120 <= 8192


def test_fwe_answers_are_the_three_most_frequent_coded_words(samples):
    for length in (2048, 4096):
        sample = samples["fwe", length]
        text = sample.context.split("Find the three most frequently appeared coded words. ", 1)[1]
        counts = Counter(text.split())
        assert counts.most_common(1)[0][0] == "..."
        del counts["..."]
        top = counts.most_common(4)
        assert tuple(w for w, _ in top[:3]) == sample.outputs
        assert top[0][1] > top[1][1] > top[2][1] > top[3][1]
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in counts)


def test_string_match_all_scores_the_fraction_of_references_found_ignoring_case():
    sample = Sample(
        task="niah_multivalue",
        context="",
        query="",
        question="",
        outputs=("1234567", "ab12-CD"),
        needles=(),
        length=0,
        tokens=0,
        seed=0,
    )
    assert sample.score("They are 1234567 and AB12-cd.") == 1.0 and sample.is_correct("1234567 ab12-cd")
    assert sample.score("1234567, and nothing else") == 0.5 and not sample.is_correct("1234567")
    assert sample.score("123456 ab12") == 0.0
    assert sample.needle == ""


def test_a_seed_gives_one_sample_and_seeds_differ(samples, tokenizer):
    for task in TASKS:
        again = make_sample(task, tokenizer, 2048, 0)
        other = make_sample(task, tokenizer, 2048, 1)
        assert again == samples[task, 2048]
        assert other.prompt != again.prompt and other.outputs != again.outputs
        longer = make_sample(task, tokenizer, 4096, 0)
        if ruler.family(task) == "qa":  # the part's question of that index at every length, as RULER asks
            assert longer.question == again.question and longer.prompt != again.prompt
        else:
            assert longer.outputs != again.outputs  # the length seeds it too


def test_the_question_follows_the_context_never_inside_it(samples):
    for (task, _), sample in samples.items():
        assert sample.question in sample.query and sample.query.startswith("\n")
        assert all(n in sample.context for n in sample.needles)
        if task == "cwe":  # RULER's worked example before the list asks the same question
            assert sample.context.count(sample.question) == 1
            assert sample.context.index(sample.question) < sample.context.rindex("Below is a numbered list")
        else:
            assert sample.question not in sample.context


def test_make_methods_maps_names_to_the_benchmark_methods():
    methods = ruler.make_methods(["entropy", "focus", "full", "truncation", "rag"], rag_top_k=4, rag_chunk_size=256)
    assert [type(m) for m in methods] == [FocusMethod, FocusMethod, FullAttention, Truncation, VectorRAG]
    assert [m.aggregation for m in methods[:2]] == ["entropy", "focus"]
    assert (methods[4].top_k, methods[4].chunk_size, methods[4].name) == (4, 256, "RAG top-4 x 256")


@dataclass
class Fixed(Method):
    """Replies with the first ``answers`` references of the case (all when None), or ``reply``."""

    answers: int | None = None
    reply: str | None = None
    calls: list = field(default_factory=list)

    def answer(self, engine, case):
        self.calls.append((case.task, case.length, case.seed))
        reply = self.reply if self.reply is not None else " ".join(case.outputs[: self.answers])
        return {"reply": reply, "correct": case.is_correct(reply), "seconds": 0.5, "prompt_tokens": case.tokens}


def test_runner_writes_records_summary_and_heatmap_and_resume_skips_done_cases(make_engine, tmp_path):
    engine = make_engine()  # tiny random model: nothing is generated, the fake methods answer
    methods = [
        Fixed("oracle"),
        Fixed("half", answers=2),
        Fixed("wrong", reply="no idea"),
        FullAttention("full attention"),
    ]
    results, figure = tmp_path / "ruler.json", tmp_path / "ruler.png"
    ruler.run_suite(engine, ["niah_multivalue"], [1024], 1, methods, results, figure)
    out = json.loads(results.read_text())
    assert [(r["method"], r["score"]) for r in out["records"]] == [
        ("oracle", 1.0),
        ("half", 0.5),
        ("wrong", 0.0),
        ("full attention", None),
    ]  # 1K does not fit 128 tokens
    assert out["records"][0]["reply"] == " ".join(out["records"][0]["outputs"])
    summary = out["summary"]
    assert summary["half"]["by_task"] == {"niah_multivalue": {"1024": 50.0}} and summary["half"]["ruler_mean"] == {
        "1024": 50.0
    }
    assert summary["oracle"]["ruler_mean"] == {"1024": 100.0} and summary["wrong"]["ruler_mean"] == {"1024": 0.0}
    assert summary["full attention"]["by_task"] == {} and summary["oracle"]["mean_seconds"] == 0.5
    assert out["settings"]["methods"] == ["oracle", "half", "wrong", "full attention"] and out["machine"]["torch"]
    assert engine.config.max_new_tokens == ruler.NEW_TOKENS["niah"]
    assert figure.stat().st_size > 5_000

    ruler.run_suite(engine, ["niah_multivalue"], [1024], 2, methods, results, figure, resume=True)
    assert methods[0].calls == [("niah_multivalue", 1024, 0), ("niah_multivalue", 1024, 1)]  # seed 0 not rerun
    out = json.loads(results.read_text())
    assert len(out["records"]) == 8 and out["summary"]["oracle"]["samples"] == {"niah_multivalue": {"1024": 2}}

    ruler.run_suite(engine, ["niah_multivalue"], [1024], 1, methods[:1], results, figure)  # no resume: anew
    assert len(json.loads(results.read_text())["records"]) == 1 and len(methods[0].calls) == 3


@dataclass
class Selecting(Fixed):
    """A fixed reply from a method that asks the engine for ``select``, as FocusMethod does."""

    def overrides(self, engine):
        return {"aggregation": "select"}


def test_methods_reading_the_same_prompt_whole_share_one_run(samples, make_engine):
    """Baselines that read a prompt whole on one engine decode it once; a method that reads it through the
    selection inside the window, or in chunks on its own engine whose window it does not fit, runs alone."""
    engine = make_engine(native_window=8192)
    first, second = Fixed("first"), Fixed("second", reply="other")
    selecting, chunked = Selecting("selecting"), Fixed("chunked")
    chunked.engine = make_engine(native_window=512)
    records = list(answer_case(engine, samples["niah_single_1", 2048], [first, second, selecting, chunked]))
    assert second.calls == [] and records[1]["same_run_as"] == "first" and records[1]["score"] == 1.0
    assert len(selecting.calls) == len(chunked.calls) == 1
    assert all("same_run_as" not in r for r in records[2:])
    assert [r["method"] for r in records] == ["first", "second", "selecting", "chunked"]


# ----------------------------------------------------------------- relevance recall


@dataclass
class FakeConfig:
    relevance: str = "likelihood"


@dataclass
class FakeRelevance:
    """Chunks of ``chunk_chars`` characters up to ``local_chars`` before the end of the prompt, scored by
    ``score(signal, char_span, prompt)``."""

    tokenizer: object
    score: object
    chunk_chars: int = 400
    local_chars: int = 300
    calls: list = field(default_factory=list)
    model_name: str = "fake"
    native_window: int = 128
    config: object = field(default_factory=FakeConfig)
    runner: object = field(default_factory=lambda: SimpleNamespace(dtype="float32", device="cpu"))
    model: object = None  # result headers read the precision chosen at loading from it: none here

    def relevance(self, prompt, **overrides):
        self.calls.append(overrides)
        starts = range(0, len(prompt) - self.local_chars, self.chunk_chars)
        spans = [(s, min(s + self.chunk_chars, len(prompt) - self.local_chars)) for s in starts]
        signal = overrides.get("relevance", getattr(self.config, "relevance", "likelihood"))
        return [
            SimpleNamespace(index=i, score=self.score(signal, span, prompt), token_span=(0, 0), char_span=span)
            for i, span in enumerate(spans)
        ]


def _needle_overlap(case):
    needles = case.needles if isinstance(case, Sample) else (case.needle,)
    spans = [(case.prompt.index(n), case.prompt.index(n) + len(n)) for n in needles]
    return lambda span: sum(a < span[1] and span[0] < b for a, b in spans)


SIGN = {"good": 1, "bad": -1}


def test_recall_is_one_when_the_needle_chunk_scores_best_and_zero_when_worst(tokenizer):
    for case in (make_sample("niah_single_2", tokenizer, 2048, 0), needle_case(tokenizer, 2048, 0.5, 0)):
        holds = _needle_overlap(case)
        engine = FakeRelevance(tokenizer, lambda signal, span, prompt, holds=holds: holds(span) * SIGN[signal])
        recall = answer_chunk_recall(engine, case, signals=("good", "bad"), chunk_size=512)
        assert recall["good"] == {"recall@1": 1.0, "recall@3": 1.0, "needles": 1, "outside": 0}
        assert recall["bad"]["recall@1"] == recall["bad"]["recall@3"] == 0.0
        assert engine.calls == [{"relevance": "good", "chunk_size": 512}, {"relevance": "bad", "chunk_size": 512}]


def test_recall_counts_each_needle_and_either_half_of_a_split_needle(tokenizer):
    case = make_sample("niah_multiquery", tokenizer, 4096, 0)
    holds = _needle_overlap(case)
    engine = FakeRelevance(tokenizer, lambda signal, span, prompt: holds(span))
    recall = answer_chunk_recall(engine, case, ks=(1, 4), signals=("s",))["s"]
    most = max(holds(c.char_span) for c in engine.relevance(case.prompt, relevance="s"))
    assert recall["outside"] == 0 and recall["recall@1"] == most / 4 < 1.0 and recall["recall@4"] == 1.0

    case = make_sample("niah_single_1", tokenizer, 2048, 0)
    start = case.prompt.index(case.needle)
    middle = start + len(case.needle) // 2
    engine = FakeRelevance(
        tokenizer,
        lambda signal, span, prompt: float(span[0] == middle),
        chunk_chars=middle,
        local_chars=len(case.prompt) - middle - 100,
    )  # two chunks, split in the needle
    first, second = engine.relevance(case.prompt, relevance="s")
    assert first.char_span[1] == second.char_span[0] == middle and second.char_span[1] > start + len(case.needle)
    assert answer_chunk_recall(engine, case, ks=(1,), signals=("s",))["s"]["recall@1"] == 1.0


def test_a_needle_in_the_local_context_is_left_out_of_recall(tokenizer):
    case = make_sample("niah_single_1", tokenizer, 2048, 0)
    engine = FakeRelevance(tokenizer, lambda *_: 0.0, local_chars=len(case.prompt) - case.prompt.index(case.needle))
    assert answer_chunk_recall(engine, case, signals=("s",))["s"] == {
        "recall@1": None,
        "recall@3": None,
        "needles": 1,
        "outside": 1,
    }


def test_recall_report_covers_ruler_needle_tasks_needle_and_passkey_cases_and_resumes(tokenizer, tmp_path):
    needle = re.compile(
        "|".join(
            [
                r"One of the special magic",
                r"pass key is \d",
                r"VAR [A-Z]{5} =",
                *(re.escape(n.sentence[:24]) for n in NEEDLES),
            ]
        )
    )

    def score(signal, span, prompt):
        return float(bool(needle.search(prompt[span[0] : span[1]])))

    engine = FakeRelevance(tokenizer, score, chunk_chars=600)
    path = tmp_path / "relevance_recall.json"
    ruler.run_recall(engine, ["niah_single_1", "vt", "cwe"], [1024], 1, ["s"], path)
    out = json.loads(path.read_text())
    assert {r["task"] for r in out["records"]} == {"niah_single_1", "vt", "needle", "passkey"}
    assert out["summary"]["s"]["niah_single_1"]["1024"] == {"recall@1": 1.0, "recall@3": 1.0, "cases": 1}
    assert out["summary"]["s"]["passkey"]["1024"]["recall@1"] == 1.0
    calls = len(engine.calls)
    ruler.run_recall(engine, ["niah_single_1", "vt", "cwe"], [1024], 1, ["s"], path, resume=True)
    assert len(engine.calls) == calls and len(json.loads(path.read_text())["records"]) == 4


def test_an_engine_without_a_relevance_setting_is_asked_for_its_one_signal(tokenizer):
    case = make_sample("niah_single_2", tokenizer, 2048, 0)
    holds = _needle_overlap(case)
    engine = FakeRelevance(tokenizer, lambda signal, span, prompt: holds(span), config=FocusConfig())
    assert answer_chunk_recall(engine, case, signals=("likelihood",))["likelihood"]["recall@1"] == 1.0
    assert engine.calls == [{}]
    with pytest.raises(ValueError, match="one relevance signal"):
        answer_chunk_recall(engine, case, signals=("likelihood", "attention"))


@pytest.mark.skipif(not hasattr(FocusEngine, "relevance"), reason="the engine has no relevance() yet")
def test_recall_runs_on_the_engine_relevance(make_engine, tokenizer):
    engine = make_engine()
    recall = answer_chunk_recall(engine, make_sample("niah_single_1", tokenizer, 1024, 0))
    assert recall["likelihood"]["needles"] == 1
    assert recall["likelihood"]["recall@1"] in (0.0, 1.0) and recall["likelihood"]["recall@3"] in (0.0, 1.0)


def test_needle_coverage_counts_needles_read_whole_and_ranked_first():
    needles = ("One of the special magic numbers for a-b is: 1.", "One of the special magic numbers for a-b is: 2.")
    context = "x" * 100 + needles[0] + "y" * 100 + needles[1] + "z" * 50
    sample = Sample("niah_multivalue", context, "Q?", "Q?", ("1", "2"), needles, 0, 0, 0)
    first, second = context.index(needles[0]), context.index(needles[1])
    out = {
        "read": [[first - 10, first + 20], [first + 20, first + 60]],  # touching spans hold the first needle
        "ranked": [[second, second + 5], [0, 50], [first, first + 5]],
        "memory_end": len(context) + 2,
    }
    assert needle_coverage(sample, out) == {"in_read": 0.5, "recall@1": 0.5, "recall@3": 1.0}
    in_local = {**out, "memory_end": second}  # the second needle lies in the local context, read as is
    assert needle_coverage(sample, in_local)["in_read"] == 1.0
    across = {**out, "memory_end": second + 5}  # its head at the memory's end, its tail in the local context
    assert needle_coverage(sample, across)["in_read"] == 0.5
    assert needle_coverage(sample, {**across, "read": [*out["read"], [second - 20, second + 5]]})["in_read"] == 1.0


def test_speed_times_rag_a_first_and_a_second_select_question_on_one_case(make_engine):
    from benchmarks.ruler import speed
    from benchmarks.ruler.protocol import DEV

    engine = make_engine(select_tokens=16, passage_tokens=8)  # room for niah's 64 new tokens in 128
    rag = VectorRAG("RAG top-2 x 64", chunk_size=64, top_k=2)
    record = speed.time_case(engine, "niah_single_1", 1024, 0, DEV, rag)
    first, second = record["select"], record["select, second question"]
    # the second question runs to the exit layer only the chunks its words keep that the first did not
    assert first["chunks_encoded"] > 0 and second["chunks_encoded"] < first["chunks_encoded"]
    summary = speed.summarize([record])["1024"]
    assert summary["second_over_first"] == second["seconds"] / first["seconds"]
    assert summary["select_over_rag"] == first["seconds"] / record["rag"]["seconds"]
    assert first["reads_reused"] == first["read_tokens_reused"] == 0
    assert summary["second_question_reads_reused"] == second["reads_reused"] in (0, 1)
    assert summary["second_question_read_tokens_reused"] == second["read_tokens_reused"]
    # where each answer's seconds went: the phases add up to its seconds, and select spent some in each
    for out in (first, second, record["rag"]):
        assert sum(out["phases"].values()) == pytest.approx(out["seconds"])
    assert first["phases"]["encode"] > 0 and first["phases"]["attend"] > 0 and first["phases"]["read"] > 0
    assert summary["second_question_phases"] == second["phases"]
    case = make_sample("niah_single_1", engine.tokenizer, 1024, 0)
    again = speed.reworded(case)
    assert again.context == case.context and again.query != case.query and case.question in again.query


def test_the_development_and_held_out_parts_share_no_seed_haystack_wording_or_question(tokenizer):
    """The split lives in the code: a sample is asked for by part and index, and the parts differ in
    everything that makes one."""
    from benchmarks.ruler.protocol import DEV, HELDOUT, prose_words

    assert not set(map(DEV.seed, range(DEV.size))) & set(map(HELDOUT.seed, range(HELDOUT.size)))
    assert not set(DEV.haystacks) & set(HELDOUT.haystacks) and DEV.niah != HELDOUT.niah and DEV.qa != HELDOUT.qa
    with pytest.raises(ValueError):
        DEV.seed(DEV.size)  # past the development part: never a held-out seed
    for task in ("niah_single_2", "niah_multiquery", "qa_1", "qa_2"):
        dev, held = (make_sample(task, tokenizer, 2048, i, part) for i, part in ((0, DEV), (0, HELDOUT)))
        assert (dev.part, held.part) == ("dev", "heldout") and held.seed == HELDOUT.seed(0)
        assert dev.question != held.question and dev.query != held.query
    essays = make_sample("niah_single_2", tokenizer, 2048, 0, HELDOUT)
    assert " ".join(prose_words("paul_graham")[:20]) in essays.context
    wiki = make_sample("niah_single_2", tokenizer, 2048, 1, HELDOUT)
    assert " ".join(prose_words("wikipedia")[:20]) in wiki.context


def test_a_qa_sample_asked_through_the_chat_template_is_the_users_message(tokenizer):
    """The documents and the question become the user's turn (no completion cue), the assistant's turn
    follows; methods that rebuild the prompt (RAG, truncation) keep the template's opening."""
    import copy

    from benchmarks.ruler.protocol import HELDOUT
    from benchmarks.ruler.tasks import chat_sample

    chatty = copy.deepcopy(tokenizer)
    chatty.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"
    sample = make_sample("qa_1", tokenizer, 2048, 0, HELDOUT)
    chat = chat_sample(sample, chatty)
    assert (
        chat.prompt
        == "<|user|>" + sample.context + sample.query.removesuffix("Answer:").rstrip() + "<|end|><|assistant|>"
    )
    assert chat.tokens == len(chatty(chat.prompt).input_ids) and chat.outputs == sample.outputs
    with pytest.raises(ValueError):
        chat_sample(make_sample("niah_single_1", tokenizer, 2048, 0), chatty)


@pytest.mark.parametrize("study", ["selection_study", "cascade_study"])
def test_the_selection_studies_run_every_rule_of_the_development_part_and_the_engines_on_held_out(
    make_engine, tmp_path, study
):
    """Each study records every rule of its grid per development case, the engine's own alone per
    held-out case, and rewrites its results file after each case."""
    import importlib

    from benchmarks.ruler.protocol import DEV, HELDOUT

    module = importlib.import_module(f"benchmarks.ruler.{study}")
    engine = make_engine(select_tokens=16, passage_tokens=8)
    rules = len(module.grid()) if study == "selection_study" else 2 * len(module.SHARES)  # tokens, and pairs
    for part, per_case in ((DEV, rules), (HELDOUT, 1)):
        results = tmp_path / f"{part.name}.json"
        payload = module.study(engine, part).run(["niah_single_1", "niah_multikey_1"], [1024], 1, results)
        assert len(payload["records"]) == 2 * per_case == len(json.loads(results.read_text())["records"])
        assert all(0 <= r["needles_read"] <= 1 for r in payload["records"])
    if study == "cascade_study":  # the first stage alone: its recall, no exit layer
        payload = module.study(engine, DEV, exit=False).run(["niah_single_1"], [1024], 1, tmp_path / "first.json")
        assert all(r["needles_read"] is None and 0 <= r["first_stage_recall"] <= 1 for r in payload["records"])
