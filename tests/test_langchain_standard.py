"""LangChain's own standard test suites (``langchain-tests``) on ``ChatFocusLLM``.

The unit suite runs on a tiny random model (construction, standard parameters, tracing params); the
integration suite talks to the embedded SmolLM2-135M-Instruct with short replies. What the wrapper
does not do (tool calling, structured output, JSON mode, images, audio, PDFs, per-call model override)
is declared below, so the suite skips those tests.

langchain-tests has no standard suite for plain (non-chat) LLMs; the same standard parameters and
response metadata are checked for ``FocusLLM`` at the end of this file.
"""

from __future__ import annotations

from functools import cache

import pytest
from conftest import TINY_CONFIG, tiny_model, tiny_tokenizer
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from focus_core import FocusConfig, FocusEngine, load_model
from focusllm_integrations.langchain import ChatFocusLLM, FocusLLM


@cache
def tiny_llm() -> FocusLLM:
    return FocusLLM(engine=FocusEngine(tiny_model("llama"), tiny_tokenizer(), TINY_CONFIG))


@cache
def embedded_llm() -> FocusLLM:
    model, tokenizer = load_model()
    return FocusLLM(engine=FocusEngine(model, tokenizer, FocusConfig(progress=False)), max_new_tokens=8)


class _Capabilities:
    """What ChatFocusLLM is: a local text-in, text-out chat model of one fixed model."""

    @property
    def chat_model_class(self) -> type[ChatFocusLLM]:
        return ChatFocusLLM

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one local model per instance

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatFocusLLMUnit(_Capabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"llm": tiny_llm()}

    @property
    def standard_chat_model_params(self) -> dict:
        return {**super().standard_chat_model_params, "max_tokens": 8}


@pytest.mark.slow
class TestChatFocusLLMIntegration(_Capabilities, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {"llm": embedded_llm()}


# ------------------------------------------------------ the same standards for the plain LLM (FocusLLM)


def test_llm_standard_tracing_params():
    llm = tiny_llm()
    assert llm._get_ls_params() == {
        "ls_provider": "focusllm",
        "ls_model_name": "LlamaForCausalLM",
        "ls_model_type": "llm",
        "ls_temperature": 0.0,
        "ls_max_tokens": 6,
    }
    params = llm._get_ls_params(stop=["\n"], max_new_tokens=3, temperature=0.5, model="other")
    assert params == {
        "ls_provider": "focusllm",
        "ls_model_name": "other",
        "ls_model_type": "llm",
        "ls_temperature": 0.5,
        "ls_max_tokens": 3,
        "ls_stop": ["\n"],
    }
    assert FocusLLM(engine=llm.engine, max_new_tokens=4)._get_ls_params()["ls_max_tokens"] == 4


def test_chat_standard_params_override_the_llm():
    chat = ChatFocusLLM(llm=tiny_llm(), temperature=0.7, max_tokens=3, stop=["x"])
    assert chat._get_ls_params() == {
        "ls_provider": "focusllm",
        "ls_model_name": "LlamaForCausalLM",
        "ls_model_type": "chat",
        "ls_temperature": 0.7,
        "ls_max_tokens": 3,
        "ls_stop": ["x"],
    }
    assert chat._get_ls_params(max_tokens=5)["ls_max_tokens"] == 5


def test_model_name_in_response_metadata_plain_and_streamed():
    llm = tiny_llm()
    chat = ChatFocusLLM(llm=llm, max_tokens=4)
    reply = chat.invoke("Hello there")
    assert reply.response_metadata["model_name"] == "LlamaForCausalLM"
    chunks = list(chat.stream("Hello there"))
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["model_name"] == "LlamaForCausalLM"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == reply.content and merged.usage_metadata == reply.usage_metadata
    result = llm.generate(["Hello there"])
    assert result.llm_output["model_name"] == "LlamaForCausalLM"
    # max_tokens reaches the engine: 4 new tokens at most
    assert reply.usage_metadata["output_tokens"] <= 4


@pytest.mark.slow
def test_embedded_model_is_named_in_metadata():
    reply = ChatFocusLLM(llm=embedded_llm()).invoke("Hello")
    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    assert ChatFocusLLM(llm=embedded_llm())._get_ls_params()["ls_model_name"] == "SmolLM2-135M-Instruct"
