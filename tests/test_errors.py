"""Every error a caller can provoke through the public API is a FocusError, and still the built-in type a
Python user would catch (ValueError, TypeError, MemoryError, OSError). Settings of the LangChain and
LlamaIndex models are checked by pydantic, which reports them as its ValidationError (a ValueError), as
for every model of those ecosystems; what they are called with goes through the engine."""

from __future__ import annotations

import pytest
from conftest import random_ids
from langchain_core.documents import Document as LangChainDocument
from langchain_core.messages import FunctionMessage
from llama_index.core import Document
from pydantic import ValidationError

import focus_core
from focus_core import (
    AdapterError,
    FocusConfig,
    FocusConfigError,
    FocusError,
    FocusInputError,
    FocusInputTypeError,
    MemoryBudgetError,
    ModelLoadError,
    load_model,
)
from focus_core.passkey import make_case
from focusllm_integrations import langchain as lc
from focusllm_integrations import llamaindex as li

LONG = 300


def test_every_error_type_is_exported_and_a_builtin_type_too():
    errors = [getattr(focus_core, name) for name in focus_core.__all__ if name.endswith("Error")]
    assert ModelLoadError in errors and AdapterError in errors and len(errors) == 9
    builtin = (ValueError, TypeError, MemoryError, OSError, ImportError)
    assert all(issubclass(e, FocusError) and (e is FocusError or issubclass(e, builtin)) for e in errors)


@pytest.fixture
def engine(make_engine):
    return make_engine()


def _engine_calls(engine, tmp_path):
    long = random_ids(LONG)
    return [
        (FocusInputError, lambda: engine.generate("")),
        (FocusInputError, lambda: engine.generate([])),
        (FocusInputTypeError, lambda: engine.generate(3.5)),
        (FocusInputTypeError, lambda: engine.count_tokens(b"bytes")),
        (FocusConfigError, lambda: engine.generate("text", chunk_size=0)),
        (FocusConfigError, lambda: engine.generate("text", aggregation="nope")),
        (FocusConfigError, lambda: engine.generate("text", native_window=64)),
        (FocusConfigError, lambda: engine.generate("text", unknown_setting=1)),
        (FocusConfigError, lambda: engine.generate(long, aggregation="select", exit_layer=99)),
        (MemoryBudgetError, lambda: engine.generate(long, memory_budget_bytes=1)),
        (FocusInputError, lambda: engine.apply_chat_template([])),
        (FocusInputTypeError, lambda: engine.apply_chat_template([{"role": 1, "content": "x"}])),
        (AdapterError, lambda: engine.load_adapter(tmp_path / "no-adapter")),
        (FocusConfigError, lambda: FocusConfig(local_window=-1)),
        (ModelLoadError, lambda: load_model(tmp_path / "no-model")),
        (FocusConfigError, lambda: load_model(device="cuda:7")),
        (FocusInputError, lambda: make_case(engine.tokenizer, 1000, 2.0, 0)),
    ]


def test_the_engine_and_loading_raise_focus_errors(engine, tmp_path):
    for expected, call in _engine_calls(engine, tmp_path):
        with pytest.raises(expected) as caught:
            call()
        assert isinstance(caught.value, FocusError) and str(caught.value)


def test_the_integrations_raise_focus_errors_for_bad_calls(engine):
    llm, chat = lc.FocusLLM(engine=engine), lc.ChatFocusLLM(llm=lc.FocusLLM(engine=engine))
    chain = lc.create_focus_qa_chain(llm)
    index_llm = li.FocusLlamaIndexLLM(engine=engine, max_new_tokens=8)
    documents = [Document(text="some text")]
    query_engine = li.FocusQueryEngine.from_documents(documents, llm=index_llm)
    calls = [
        (FocusInputError, lambda: llm.invoke("")),
        (FocusInputTypeError, lambda: chat.invoke([FunctionMessage(content="x", name="f")])),
        (FocusInputTypeError, lambda: chain.invoke({"documents": 3, "question": "q"})),
        (FocusInputError, lambda: chain.invoke({"documents": [LangChainDocument(page_content=" ")], "question": "q"})),
        (FocusConfigError, lambda: lc.create_focus_qa_chain(llm, prompt_template="{question} only")),
        (FocusInputError, lambda: index_llm.complete("")),
        (FocusInputError, lambda: query_engine.query(" ")),
        (FocusInputTypeError, lambda: li.FocusQueryEngine.from_documents([], llm=index_llm)),
        (FocusConfigError, lambda: li.FocusQueryEngine.from_documents(documents, llm=index_llm, prompt_template="{x}")),
    ]
    for expected, call in calls:
        with pytest.raises(expected) as caught:
            call()
        assert isinstance(caught.value, FocusError)


def test_wrapper_settings_are_refused_by_pydantic_with_our_message(engine):
    with pytest.raises(ValidationError, match="chunk_size"):
        lc.FocusLLM(chunk_size=0)
    with pytest.raises(ValidationError, match="engine"):
        lc.FocusLLM(engine=engine, chunk_size=64)
