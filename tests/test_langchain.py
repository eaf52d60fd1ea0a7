"""LangChain wrappers with real langchain-core objects, on a tiny random model (fast)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import random_ids
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from focus_core import FocusInputError, FocusInputTypeError
from focusllm_integrations import FocusLLM as TopLevelFocusLLM
from focusllm_integrations.langchain import ChatFocusLLM, FocusLLM, create_focus_qa_chain


@pytest.fixture
def llm(make_engine):
    return FocusLLM(engine=make_engine(max_new_tokens=8))


def long_text(llm: FocusLLM, n: int = 300, seed: int = 0) -> str:
    return llm.engine.tokenizer.decode(random_ids(n, seed=seed))


class TokenRecorder(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_top_level_import_is_the_langchain_llm():
    assert TopLevelFocusLLM is FocusLLM


def test_invoke_batch_stream_astream_agree(llm):
    prompts = [long_text(llm, 300 + 20 * i, seed=i) for i in range(4)]
    expected = [llm.engine.generate(p) for p in prompts]
    assert llm.invoke(prompts[0]) == expected[0]
    assert llm.batch(prompts) == expected
    assert llm.batch(prompts, config={"max_concurrency": 4}) == expected  # threads
    assert "".join(llm.stream(prompts[1])) == expected[1]

    async def collect() -> str:
        return "".join([piece async for piece in llm.astream(prompts[2])])

    assert asyncio.run(collect()) == expected[2]
    assert asyncio.run(llm.ainvoke(prompts[3])) == expected[3]


def test_callbacks_receive_every_streamed_token(llm):
    recorder = TokenRecorder()
    pieces = list(llm.stream(long_text(llm), config={"callbacks": [recorder]}))
    assert recorder.tokens == pieces and len(pieces) > 1


def test_stop_sequences_cut_the_text(llm):
    prompt = long_text(llm)
    full = llm.invoke(prompt)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert llm.invoke(prompt, stop=[stop]) == full[: full.index(stop)]


def test_generation_settings_follow_huggingface_pipeline_names(make_engine):
    engine = make_engine(max_new_tokens=8)
    short = FocusLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 3})
    prompt = "Once upon a time"
    assert short.invoke(prompt) == engine.generate(prompt, max_new_tokens=3)
    assert short.invoke(prompt, max_new_tokens=5) == engine.generate(prompt, max_new_tokens=5)
    assert FocusLLM(engine=engine, max_new_tokens=2).invoke(prompt) == engine.generate(prompt, max_new_tokens=2)
    assert short._llm_type == "focusllm" and short._identifying_params["chunk_size"] == 32
    assert short.get_num_tokens("Hello world") == engine.count_tokens("Hello world")


def test_lcel_composition(llm):
    chain = PromptTemplate.from_template("{document}\n\nSummary:") | llm | StrOutputParser()
    document = long_text(llm)
    assert chain.invoke({"document": document}) == llm.engine.generate(f"{document}\n\nSummary:")


def test_chat_model_applies_the_chat_template(llm):
    chat = ChatFocusLLM(llm=llm)
    messages = [
        SystemMessage("You answer briefly."),
        HumanMessage("Name a colour."),
        AIMessage("Blue."),
        HumanMessage("Another one?"),
    ]
    rendered = chat.render(messages)
    assert rendered == (
        "<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother one?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    reply = chat.invoke(messages)
    assert isinstance(reply, AIMessage) and reply.content == llm.engine.generate(rendered)
    completion = llm.engine.complete(rendered)
    assert reply.usage_metadata["input_tokens"] == completion.prompt_tokens == llm.engine.count_tokens(rendered)
    assert reply.usage_metadata["output_tokens"] == len(completion.completion_ids) > 0  # the ids, not the text
    assert reply.response_metadata["finish_reason"] == completion.finish_reason
    chunks = list(chat.stream(messages))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == reply.content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.usage_metadata == reply.usage_metadata
    assert merged.response_metadata["finish_reason"] == completion.finish_reason


def test_llm_generation_info_says_why_it_ended_and_counts_tokens(llm):
    prompt = long_text(llm)
    info = llm.generate([prompt]).generations[0][0].generation_info
    completion = llm.engine.complete(prompt)
    assert info["finish_reason"] == completion.finish_reason in ("stop", "length")
    assert (info["prompt_tokens"], info["completion_tokens"]) == (
        completion.prompt_tokens,
        len(completion.completion_ids),
    )
    last = list(llm._stream(prompt))[-1]
    assert last.text == "" and last.generation_info["finish_reason"] == completion.finish_reason


@pytest.mark.parametrize("build", ["model_id", "from_model_id", "engine"])
def test_any_built_llm_can_be_handed_to_the_chat_model(tiny_dir, make_engine, build):
    """As ``ChatHuggingFace(llm=...)``: an LLM built from settings is validated again inside the chat model,
    which must keep its engine (and refuse nothing)."""
    settings = {
        "chunk_size": 32,
        "local_window": 24,
        "dynamic_prompt_len": 8,
        "native_window": 128,
        "max_new_tokens": 4,
    }
    if build == "model_id":
        llm = FocusLLM(model_id=str(tiny_dir), model_kwargs={"dtype": "float32"}, **settings)
    elif build == "from_model_id":
        llm = FocusLLM.from_model_id(str(tiny_dir), model_kwargs={"dtype": "float32"}, **settings)
    else:
        llm = FocusLLM(engine=make_engine(max_new_tokens=4))
    chat = ChatFocusLLM(llm=llm)
    assert chat.llm.engine is llm.engine and chat.llm.engine.config.chunk_size == 32
    assert isinstance(chat.invoke([HumanMessage("hi")]), AIMessage)


def test_qa_chain_reads_all_documents_and_reuses_their_chunks(llm):
    chain = create_focus_qa_chain(llm)
    documents = [Document(page_content=long_text(llm, 200, seed=s)) for s in (1, 2)]
    text = "\n\n".join(d.page_content for d in documents)
    answer = chain.invoke({"documents": documents, "question": "What happened?"})
    assert answer == llm.engine.generate(f"{text}\n\nQuestion: What happened?\nAnswer:")
    encoded = llm.engine.stats.chunks_encoded
    chain.invoke({"documents": documents, "question": "What happened?"})
    assert llm.engine.stats.chunks_encoded == encoded  # same documents and question: nothing re-encoded
    assert chain.invoke({"documents": text, "question": "What happened?"}) == answer


def test_qa_chain_returns_the_passages_read_most_relevant_first(llm):
    documents = [Document(page_content=long_text(llm, 200, seed=s), metadata={"source": f"doc{s}"}) for s in (1, 2)]
    bound = llm.bind(stop=["\n"])
    result = create_focus_qa_chain(bound, return_sources=True).invoke({"documents": documents, "question": "Why?"})
    prompt = "\n\n".join(d.page_content for d in documents) + "\n\nQuestion: Why?\nAnswer:"
    completion = llm.engine.complete(prompt, stop=("\n",))
    assert (
        result["answer"]
        == completion.text
        == create_focus_qa_chain(bound).invoke({"documents": documents, "question": "Why?"})
    )
    sources = result["sources"]
    assert sources and [d.metadata["relevance"] for d in sources] == sorted(
        (d.metadata["relevance"] for d in sources), reverse=True
    )
    assert sources[0].metadata["relevance"] == completion.sources[0].score
    for passage in sources:
        original = next(d for d in documents if d.metadata["source"] == passage.metadata["source"])
        start = passage.metadata["start_index"]
        assert original.page_content[start : start + len(passage.page_content)] == passage.page_content


@pytest.mark.parametrize(
    "inputs, error",
    [
        ({"documents": [], "question": "Why?"}, FocusInputError),
        ({"documents": "  ", "question": "Why?"}, FocusInputError),
        ({"documents": "Some text.", "question": 42}, FocusInputTypeError),
        ({"documents": "Some text.", "question": " "}, FocusInputError),
        ({"documents": [1, 2], "question": "Why?"}, FocusInputTypeError),
        ({"question": "Why?"}, FocusInputTypeError),
    ],
)
def test_qa_chain_rejects_bad_input(llm, inputs, error):
    with pytest.raises(error):
        create_focus_qa_chain(llm).invoke(inputs)


def test_bad_construction_is_refused(make_engine):
    with pytest.raises(ValueError):
        FocusLLM(engine=make_engine(), chunk_size=64)
    with pytest.raises(FocusInputError):
        FocusLLM(engine=make_engine()).invoke("")


@pytest.mark.slow
def test_focusllm_settings_reach_the_engine_it_builds():
    llm = FocusLLM.from_model_id(
        model_kwargs={"dtype": "float32"}, chunk_size=512, native_window=2048, pipeline_kwargs={"max_new_tokens": 4}
    )
    assert llm.engine.config.chunk_size == 512 and llm.engine.native_window == 2048
    assert llm.engine.model.dtype.is_floating_point and str(llm.engine.model.dtype) == "torch.float32"
    assert llm.engine.model_name == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("return_sources", [False, True])
def test_qa_chain_passes_the_callers_config_to_the_llm_run(llm, return_sources):
    """Tags, metadata and callbacks of the call reach the LLM's run; the run name names the chain's."""
    from langchain_core.tracers.base import BaseTracer

    class Recorder(BaseTracer):
        def __init__(self):
            super().__init__()
            self.runs = []

        def _persist_run(self, run):
            pass

        def _on_chain_start(self, run):
            self.runs.append(run)

        def _on_llm_start(self, run):
            self.runs.append(run)

    recorder = Recorder()
    config = {"callbacks": [recorder], "tags": ["mine"], "metadata": {"user": "u1"}, "run_name": "my qa"}
    chain = create_focus_qa_chain(llm, return_sources=return_sources)
    chain.invoke({"documents": long_text(llm, 200, seed=3), "question": "Why?"}, config=config)
    outer, llm_run = recorder.runs[0], next(r for r in recorder.runs if r.run_type == "llm")
    assert outer.name == "my qa" and llm_run.name == "FocusLLM"
    for run in (outer, llm_run):
        assert "mine" in run.tags and run.extra["metadata"]["user"] == "u1"
