"""``whole``: the batched map step equals each chunk decoded alone, the reduce read equals full attention over
the same extractions, further map levels fit the window, and the settings and budget are checked."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids

from focus_core import FocusConfigError, MemoryBudgetError
from focus_core.modes import whole
from focus_core.modes.base import Handover

WHOLE = {"aggregation": "whole", "extract_tokens": 3}  # two extractions and their labels fit a tiny chunk


def read(engine, ids, **overrides):
    """The request of ``ids`` under ``whole``, read (its extractions on ``request.reading``)."""
    request = engine.request(ids, **WHOLE, **overrides)
    with torch.inference_mode():
        engine.start(request)
    return request


def greedy(model, ids: list[int], new: int, eos: frozenset[int]) -> list[int]:
    """``transformers``' own greedy continuation of ``ids``, cut before an end-of-sequence token."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, pad_token_id=0)[0, len(ids) :]
    tokens = out.tolist()
    ends = [i for i, t in enumerate(tokens) if t in eos]
    return tokens[: ends[0]] if ends else tokens


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_the_batched_map_step_equals_each_chunk_decoded_alone(make_engine, arch):
    """Every chunk's extraction, decoded in one batch beside the others, is what ``transformers.generate``
    writes after [BOS] + that chunk + the dynamic prompt (its first paragraph, as the map step keeps)."""
    engine = make_engine(arch)
    request = read(engine, random_ids(300, seed=4))
    plan, found = request.plan, request.reading.found
    assert len(found) == len(plan.chunks) == 9 and [e.chunks for e in found] == [(i,) for i in range(9)]
    for chunk, extraction in zip(plan.chunks, found):
        alone = greedy(engine.model, [1, *chunk, *plan.dynamic_prompt], 3, engine.eos_token_ids)
        text = engine.tokenizer.decode(alone, skip_special_tokens=True).lstrip()
        text = text.split(whole.SEPARATOR)[0].strip()
        assert extraction.ids == tuple(engine.tokenizer(text, add_special_tokens=False).input_ids)[:3]


def test_the_reduce_read_equals_full_attention_over_the_same_extractions(make_engine, monkeypatch):
    """With every extraction read, the answer is ``transformers.generate`` over [BOS] + the labelled
    extractions + the request, and that prompt holds each extraction under its chunk's label."""
    monkeypatch.setattr(whole, "MIN_GAIN", float("-inf"))
    engine = make_engine()
    generation = engine.stream(random_ids(300, seed=5), **WHOLE)
    "".join(generation)
    reading = generation.request.reading
    said = [e for e in reading.found if e.ids]
    assert said and reading.extractions == said and generation.mode == "whole"
    prompt = engine.tokenizer.decode(list(reading.read_ids))
    for e in said:
        assert f"{e.label}{engine.tokenizer.decode(list(e.ids))}\n" in prompt
    expected = greedy(engine.model, list(reading.read_ids), 6, engine.eos_token_ids)
    assert generation.completion_ids == expected


def test_extractions_that_exceed_the_window_are_mapped_again_until_they_fit(make_engine, monkeypatch):
    """40 chunks of 3-token extractions do not fit a 128-token window: they are packed and mapped again,
    each later extraction covering a run of chunks, and the reduce read fits."""
    monkeypatch.setattr(whole, "MIN_GAIN", float("-inf"))
    engine = make_engine()
    request = read(engine, random_ids(1300, seed=6))
    reading = request.reading
    assert len(reading.found) == 40
    assert len(reading.read_ids) + request.config.max_new_tokens <= engine.native_window
    assert reading.extractions and len(reading.extractions) < len(reading.found)
    assert max(len(e.chunks) for e in reading.extractions) >= 2
    covered = [c for e in reading.extractions for c in e.chunks]
    assert covered == sorted(covered) and len(set(covered)) == len(covered)


def test_an_extraction_is_read_only_when_both_gains_reach_log_2():
    e = whole.Extraction((0,), (5, 6), relevance=1.0, support=1.0)
    assert e.read
    for gain in ("relevance", "support"):
        assert not whole.Extraction(**{**e.__dict__, gain: 0.5}).read
    assert not whole.Extraction((0,), (), relevance=9.0, support=9.0).read  # nothing said


def test_a_request_that_singles_out_no_chunk_reads_every_supported_extraction(make_engine):
    """A summary request: no chunk makes it likelier, so every extraction its chunk supports is read; where
    some chunks are relevant, only theirs."""
    mode = make_engine().planner.mode("whole")
    summaries = [whole.Extraction((i,), (5 + i,), relevance=0.1, support=s) for i, s in enumerate((1.0, 0.2, 2.0))]
    assert [e.chunks for e in mode.chosen(summaries)] == [(0,), (2,)]
    relevant = whole.Extraction((3,), (9,), relevance=1.0, support=1.0)
    assert mode.chosen([*summaries, relevant]) == [relevant]


def test_sources_are_the_chunks_whose_extraction_reached_the_answer(make_engine, monkeypatch):
    monkeypatch.setattr(whole, "MIN_GAIN", float("-inf"))
    engine = make_engine()
    completion = engine.complete(random_ids(300, seed=5), **WHOLE)
    answer = set(completion.completion_ids)
    reading_sources = {s.index for s in completion.sources}
    request = read(engine, random_ids(300, seed=5))
    shared = {e.chunks[0] for e in request.reading.found if e.content & answer}
    assert reading_sources == shared
    assert all(s.text and s.score > 0 for s in completion.sources)


def test_extractions_too_long_to_pack_two_to_a_chunk_are_refused_naming_the_setting(make_engine):
    engine = make_engine()
    with pytest.raises(FocusConfigError) as err:
        engine.request(random_ids(300), aggregation="whole", extract_tokens=12)
    assert err.value.setting == "extract_tokens"
    engine.request(random_ids(300), aggregation="whole", extract_tokens=3)  # 2 x (3 + 13 label tokens) <= 32


def test_a_prompt_over_the_budget_is_refused_before_the_map_step(make_engine):
    engine = make_engine()
    with pytest.raises(MemoryBudgetError) as error:
        engine.request(random_ids(300), **WHOLE, memory_budget_bytes=10_000)
    assert error.value.needed_bytes > 10_000
    assert engine.stats.chunks_encoded == 0


SELECT = {"select_tokens": 48, "passage_tokens": 16}  # select's reading fits the tiny window: 3 passages


def passages(*mass: float):
    from focus_core.modes.base import Reading

    units = [(16 * i, 16 * i + 16) for i in range(len(mass) + 1)]
    return Reading(units, torch.tensor([0.0, *mass]))  # the opening first


@pytest.mark.parametrize(
    ("mass", "handed_over"),
    [
        ((9.0, 0.1, 0.2, 0.1, 0.3, 0.1), False),  # one needle
        ((5.0, 4.0, 3.0, 0.2, 0.1, 0.1), False),  # three: as many as the selection holds
        ((5.0, 4.0, 3.0, 2.6, 0.1, 0.1), True),  # four near the top: more than it holds
        ((1.0, 1.1, 0.9, 1.0, 1.2, 0.8), True),  # flat: the request is about all of it
    ],
)
def test_auto_hands_a_request_whose_attention_spreads_wider_than_select_reads_to_whole(make_engine, mass, handed_over):
    engine = make_engine(**SELECT)
    request = engine.request(random_ids(300), **SELECT)
    handover = request.mode.hand_over(request, passages(*mass))
    assert (handover is not None) == handed_over
    if handed_over:
        assert handover.mode == "whole" and "passages" in handover.reason


def test_a_handed_over_request_answers_as_whole_would_and_says_why(make_engine, monkeypatch):
    """Under auto a flat attention routes the call to whole (its result names the mode and the reason);
    its tokens are whole's; an explicit aggregation is never handed over."""
    from focus_core.modes.select import Select

    monkeypatch.setattr(Select, "hand_over", lambda self, request, reading: whole_handover())
    engine = make_engine(**SELECT)
    ids = random_ids(300, seed=8)
    routed = engine.complete(ids, extract_tokens=3)
    assert routed.mode == "whole" and routed.route == "flat"
    assert routed.completion_ids == tuple(engine.generate_ids(ids, **WHOLE))
    assert engine.complete(ids, aggregation="select").mode == "select"
    assert "or whole where" in engine.describe()
    kept = engine.complete(ids)  # whole refuses extract_tokens=64 with 32-token chunks: select keeps the call
    assert kept.mode == "select" and "refuses" in kept.route and "extract_tokens" in kept.route
    assert kept.completion_ids == tuple(engine.generate_ids(ids, aggregation="select"))


def test_a_request_about_a_whole_prompt_that_fits_the_window_is_read_whole(make_engine, monkeypatch):
    """Inside the window (a prompt longer than the selection reads, so select read it first) the request
    about all of it goes to plain: its tokens are the plain model's over the whole prompt."""
    from focus_core.modes.select import Select

    engine = make_engine(**SELECT)
    ids = random_ids(100, seed=9)  # 100 + 6 new tokens fit the 128-token window; select reads 88
    request = engine.request(ids, **SELECT)
    handover = request.mode.hand_over(request, passages(1.0, 1.1, 0.9, 1.0, 1.2))
    assert handover.mode == "plain" and "fits the window" in handover.reason
    monkeypatch.setattr(Select, "hand_over", lambda self, request, reading: Handover("plain", "flat"))
    routed = engine.complete(ids)
    assert routed.mode == "plain" and routed.route == "flat"
    assert routed.completion_ids == tuple(engine.generate_ids(ids, read_whole_tokens=engine.native_window))


def whole_handover() -> Handover:
    return Handover("whole", "flat")


def long_text(engine, tokens: int = 600) -> str:
    return engine.tokenizer.decode(random_ids(tokens, seed=11))


def test_langchain_stuff_summarize_chain_reads_a_document_past_the_window_in_one_call(make_engine):
    """``load_summarize_chain(FocusLLM(), chain_type="stuff")`` over a document five windows long: one call,
    answered as the engine answers the chain's prompt under whole."""
    from langchain_classic.chains.summarize import load_summarize_chain
    from langchain_core.documents import Document

    from focusllm_integrations.langchain import FocusLLM

    engine = make_engine(aggregation="whole", extract_tokens=3)
    chain = load_summarize_chain(FocusLLM(engine=engine), chain_type="stuff")
    document = long_text(engine)
    summary = chain.invoke({"input_documents": [Document(page_content=document)]})["output_text"]
    prompt = chain.llm_chain.prompt.format(text=document)
    assert engine.count_tokens(prompt) > 4 * engine.native_window
    assert summary == engine.generate(prompt)


def test_llamaindex_summary_index_tree_summarize_reads_every_node_in_one_call(make_engine, monkeypatch):
    """``SummaryIndex`` with ``tree_summarize`` packs every node into one prompt (the LLM's window is the
    extended one): one LLM call, no "exceeds context window", whole's answer."""
    from llama_index.core import Settings, SummaryIndex
    from llama_index.core.schema import TextNode

    from focusllm_integrations.llamaindex import FocusLlamaIndexLLM

    engine = make_engine(aggregation="whole", extract_tokens=3)
    monkeypatch.setattr(Settings, "_tokenizer", engine.tokenizer.encode)  # count tokens as the model does
    calls = []
    request = engine.request
    monkeypatch.setattr(engine, "request", lambda prompt, **kw: calls.append(prompt) or request(prompt, **kw))
    nodes = [TextNode(text=engine.tokenizer.decode(random_ids(200, seed=s))) for s in range(3)]
    query = SummaryIndex(nodes).as_query_engine(llm=FocusLlamaIndexLLM(engine=engine), response_mode="tree_summarize")
    response = query.query("Summarize the text.")
    words = " ".join(calls[0].split())
    assert len(calls) == 1 and all(" ".join(n.text.split()) in words for n in nodes)
    assert engine.count_tokens(calls[0]) > 4 * engine.native_window
    assert response.response == engine.generate(calls[0])
