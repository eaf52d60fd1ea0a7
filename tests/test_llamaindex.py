"""LlamaIndex wrappers with real llama-index-core objects: tiny random model for the plumbing, the
embedded model for a retrieval-free query engine over documents longer than its window."""

from __future__ import annotations

import asyncio

import pytest
from conftest import random_ids
from llama_index.core import Document, Settings
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.callbacks import EventPayload
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import TextNode

from focus_core import FocusConfig, FocusEngine, FocusInputError, FocusInputTypeError
from focus_core.passkey import FILLER
from focusllm_integrations.llamaindex import FocusLlamaIndexLLM, FocusQueryEngine


@pytest.fixture
def llm(make_engine):
    return FocusLlamaIndexLLM(engine=make_engine(max_new_tokens=8), max_new_tokens=8)


def test_complete_and_stream_complete(llm):
    prompt = llm.engine.tokenizer.decode(random_ids(300))
    expected = llm.engine.generate(prompt)
    assert llm.complete(prompt).text == expected
    responses = list(llm.stream_complete(prompt))
    assert "".join(r.delta for r in responses) == expected == responses[-1].text
    assert asyncio.run(llm.acomplete(prompt)).text == expected


def test_metadata_reports_the_extended_window(llm):
    meta = llm.metadata
    assert meta.context_window == llm.engine.max_context_tokens > llm.engine.native_window
    assert meta.num_output == 8 and meta.is_chat_model is False
    assert FocusLlamaIndexLLM(engine=llm.engine, context_window=50_000).metadata.context_window == 50_000


def test_one_max_new_tokens_default_and_one_precedence(make_engine):
    engine = make_engine(max_new_tokens=5)
    assert FocusLlamaIndexLLM(engine=engine).metadata.num_output == 5  # the engine's, as the LangChain wrapper
    both = FocusLlamaIndexLLM(engine=engine, max_new_tokens=3, generate_kwargs={"max_new_tokens": 2})
    assert both.metadata.num_output == 2  # fields, then generate_kwargs, then the call (LangChain: pipeline_kwargs)
    prompt = engine.tokenizer.decode(random_ids(300))
    assert both.complete(prompt, max_new_tokens=1).raw["usage"]["completion_tokens"] == 1


def test_chat_goes_through_the_chat_template(llm):
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi there")]
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert llm.messages_to_prompt(messages) == rendered
    reply = llm.chat(messages)
    assert reply.message.content == llm.engine.generate(rendered)
    assert "".join(r.delta for r in llm.stream_chat(messages)) == reply.message.content
    own = FocusLlamaIndexLLM(
        engine=llm.engine, max_new_tokens=8, messages_to_prompt=lambda ms: "|".join(m.content for m in ms)
    )
    assert own.messages_to_prompt(messages) == "Be brief.|Hi there"  # a caller's own formatting is kept


def test_works_as_settings_llm(llm):
    previous = Settings._llm
    try:
        Settings.llm = llm
        assert Settings.llm is llm
        assert Settings.llm.complete("Once upon a time").text == llm.engine.generate("Once upon a time")
    finally:
        Settings._llm = previous


def test_query_engine_answers_from_all_nodes(llm):
    nodes = [TextNode(text=llm.engine.tokenizer.decode(random_ids(150, seed=s))) for s in range(3)]
    engine = FocusQueryEngine(nodes, llm=llm, prompt_template="{context_str}\nQ: {query_str}\nA:")
    response = engine.query("What is it?")
    context = "\n\n".join(n.get_content() for n in nodes)
    prompt = f"{context}\nQ: What is it?\nA:"
    completion = llm.engine.complete(prompt)
    assert response.response == completion.text
    assert asyncio.run(engine.aquery("What is it?")).response == response.response
    streaming = FocusQueryEngine(nodes, llm=llm, prompt_template="{context_str}\nQ: {query_str}\nA:", streaming=True)
    streamed = streaming.query("What is it?")
    assert isinstance(streamed, StreamingResponse) and "".join(streamed.response_gen) == response.response

    # source nodes: the passages read, most relevant first, scored, each pointing into its own node
    assert len(completion.sources) > 0
    for result in (response, streamed):
        scores = [s.score for s in result.source_nodes]
        assert scores == sorted(scores, reverse=True) and set(scores) <= {c.score for c in completion.sources}
        for source in result.source_nodes:
            node = next(n for n in nodes if n.node_id == source.node.source_node.node_id)
            assert node.get_content()[source.node.start_char_idx : source.node.end_char_idx] == source.node.text
    best = completion.sources[0]
    assert response.source_nodes[0].score == best.score and response.source_nodes[0].node.text in best.text


def test_query_engine_returns_every_node_unscored_when_all_fit(llm):
    nodes = [TextNode(text="A short note."), TextNode(text="Another one.")]
    response = FocusQueryEngine(nodes, llm=llm).query("What is it?")
    assert [(s.node, s.score) for s in response.source_nodes] == [(n, None) for n in nodes]


def test_query_engine_rejects_bad_input(llm):
    with pytest.raises(FocusInputTypeError):
        FocusQueryEngine.from_documents([], llm=llm)
    with pytest.raises(FocusInputError):
        FocusQueryEngine.from_documents([Document(text="  ")], llm=llm)
    with pytest.raises(FocusInputTypeError):
        FocusQueryEngine.from_documents(["plain strings are not documents"], llm=llm)
    with pytest.raises(ValueError) as err:
        FocusQueryEngine.from_documents([Document(text="x")], llm=llm, prompt_template="{context_str} only")
    assert err.value.setting == "prompt_template"
    engine = FocusQueryEngine.from_documents([Document(text="Some text.")], llm=llm)
    with pytest.raises(FocusInputError):
        engine.query("   ")
    with pytest.raises(FocusInputTypeError):
        engine.query(42)


@pytest.fixture
def clean_settings():
    """Settings.llm and Settings.callback_manager as they were, after the test."""
    saved = Settings._llm, Settings._callback_manager
    Settings._llm = Settings._callback_manager = None
    yield Settings
    Settings._llm, Settings._callback_manager = saved


def test_from_documents_uses_settings_llm(llm, clean_settings):
    clean_settings.llm = llm
    engine = FocusQueryEngine.from_documents([Document(text="Some text.")], prompt_template="{context_str} {query_str}")
    assert engine.llm is llm
    assert engine.query("Why?").response == llm.engine.generate("Some text. Why?")


def test_from_documents_refuses_another_settings_llm(llm, clean_settings):
    from llama_index.core.llms import MockLLM

    clean_settings.llm = MockLLM()
    with pytest.raises(FocusInputTypeError, match="MockLLM"):  # the LLM at fault
        FocusQueryEngine.from_documents([Document(text="Some text.")])
    assert FocusQueryEngine.from_documents([Document(text="Some text.")], llm=llm).llm is llm  # an explicit llm wins
    with pytest.raises(FocusInputTypeError, match="MockLLM"):
        FocusQueryEngine.from_documents([Document(text="Some text.")], llm=MockLLM())


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("where", ["settings", "argument"])
def test_query_engine_fires_query_synthesize_and_llm_events(llm, clean_settings, streaming, where):
    """The events LlamaIndex's RetrieverQueryEngine fires (less retrieval, chunking and templating, which
    do not happen here), in the same nesting, with the LLM's prompt and completion."""
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    handler = LlamaDebugHandler(print_trace_on_end=False)
    manager = CallbackManager([handler])
    if where == "settings":
        clean_settings.callback_manager = manager
    engine = FocusQueryEngine.from_documents(
        [Document(text="Some text.")],
        llm=llm,
        streaming=streaming,
        prompt_template="{context_str} {query_str}",
        callback_manager=manager if where == "argument" else None,
    )
    response = engine.query("Why?")
    text = "".join(response.response_gen) if streaming else response.response
    assert text == llm.engine.generate("Some text. Why?")
    kinds = [e.event_type for e in handler.get_events()]
    assert kinds[:3] == [CBEventType.QUERY, CBEventType.SYNTHESIZE, CBEventType.LLM], kinds  # started in this order
    assert sorted(kinds, key=str) == sorted([CBEventType.QUERY, CBEventType.SYNTHESIZE, CBEventType.LLM] * 2, key=str)
    ((start, end),) = handler.get_llm_inputs_outputs()
    assert start.payload[EventPayload.PROMPT] == "Some text. Why?"
    assert end.payload[EventPayload.COMPLETION].text == text
    query_end = [e for e in handler.get_event_pairs(CBEventType.QUERY)][0][1]
    assert query_end.payload[EventPayload.RESPONSE] is response


@pytest.mark.slow
def test_query_engine_finds_a_pass_key_past_the_native_window(embedded):
    model, tokenizer = embedded
    llm = FocusLlamaIndexLLM(engine=FocusEngine(model, tokenizer, FocusConfig(progress=False)), max_new_tokens=8)
    documents = [
        Document(text=FILLER * 120),
        Document(text=FILLER * 60 + "The pass key is 73519. Remember it. 73519 is the pass key. " + FILLER * 60),
        Document(text=FILLER * 120),
    ]
    engine = FocusQueryEngine.from_documents(
        documents, llm=llm, prompt_template="{context_str}\n\n{query_str} The pass key is "
    )
    total = sum(llm.engine.count_tokens(d.text) for d in documents)
    assert total > llm.engine.native_window
    response = engine.query("What is the pass key?")
    assert response.response.strip().startswith("73519"), response.response
    assert "73519" in response.source_nodes[0].node.text  # the most relevant passage holds the answer
    assert response.source_nodes[0].node.source_node.node_id == documents[1].doc_id
    encoded = llm.engine.stats.chunks_encoded
    again = engine.query("Tell me the pass key.")
    assert again.response.strip().startswith("73519"), again.response
    assert llm.engine.stats.chunks_encoded - encoded <= 2 < encoded  # only the tail chunk(s) are new


@pytest.mark.slow
def test_focusllm_settings_reach_the_engine_it_builds():
    llm = FocusLlamaIndexLLM(chunk_size=512, local_window=256, max_new_tokens=4)
    assert llm.engine.config.chunk_size == 512 and llm.engine.config.local_window == 256
    assert llm.metadata.model_name == "SmolLM2-135M-Instruct"


def test_completions_carry_the_finish_reason_and_usage_in_raw(llm):
    prompt = llm.engine.tokenizer.decode(random_ids(300, seed=9))
    completion = llm.engine.complete(prompt)
    raw = llm.complete(prompt).raw
    usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": len(completion.completion_ids)}
    assert raw == {
        "finish_reason": completion.finish_reason,
        "usage": {**usage, "total_tokens": sum(usage.values())},
        "mode": completion.mode,
        "route": completion.route,
    }
    responses = list(llm.stream_complete(prompt))
    assert responses[-1].raw == raw and responses[-1].text == completion.text


def test_async_completion_leaves_the_event_loop_free(llm):
    """While the model reads, other coroutines keep running (the work is in a worker thread)."""
    prompt = llm.engine.tokenizer.decode(random_ids(300, seed=10))

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        clock = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        response = await llm.acomplete(prompt)
        during = ticks - before
        streamed = [r.delta async for r in await llm.astream_complete(prompt)]
        clock.cancel()
        return response, during, streamed

    response, during, streamed = asyncio.run(main())
    assert response.text == llm.complete(prompt).text == "".join(streamed)
    assert during > 1  # the ticker ran while the completion was computed


def test_the_old_name_is_the_same_class_and_warns():
    from focusllm_integrations import llamaindex

    with pytest.warns(DeprecationWarning, match="FocusLlamaIndexLLM"):
        assert llamaindex.FocusLLM is FocusLlamaIndexLLM
    assert FocusLlamaIndexLLM.class_name() == "FocusLlamaIndexLLM"
