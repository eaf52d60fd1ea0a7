"""LlamaIndex integration: ``FocusLlamaIndexLLM`` (a ``CustomLLM``; also importable as ``FocusLLM``) and
``FocusQueryEngine``, a query engine that
answers over all the text of its documents with no retrieval. Field names follow
``llama-index-llms-huggingface``'s ``HuggingFaceLLM`` where the meaning is the same."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core import Settings
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, PrivateAttr

from focus_core import ChunkScore, FocusConfigError, FocusEngine, FocusInputError, FocusInputTypeError
from focus_core import Generation as FocusGeneration
from focus_core.prompts import qa_template

from .common import FocusFields, Passage, generation_overrides, resolve_engine, source_passages

dispatcher = get_dispatcher(__name__)

DEFAULT_QA_TEMPLATE = qa_template("context_str", "query_str")


class FocusLlamaIndexLLM(CustomLLM, FocusFields):
    """A local Hugging Face model reading prompts far past its native window, via FocusLLM.

    ``FocusLlamaIndexLLM()`` uses the embedded SmolLM2-135M-Instruct;
    ``FocusLlamaIndexLLM(model_name=..., model_kwargs=...)`` loads any causal LM (``model_kwargs`` go to
    :func:`focus_core.load_model`); ``FocusLlamaIndexLLM(engine=...)``
    wraps an existing engine. ``metadata.context_window`` is the extended window the engine can serve.
    Chat goes through the tokenizer's chat template.
    """

    model_name: str | None = Field(default=None, description="model name or path; None: the embedded default")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="kwargs for focus_core.load_model")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict, description="generation settings for every call")
    # one default for every wrapper: the engine's (FocusConfig.max_new_tokens); metadata.num_output reports it
    max_new_tokens: int | None = Field(default=None, gt=0, description="tokens generated per call; None: the engine's")
    context_window: int | None = Field(default=None, description="None: computed from the memory budget")
    is_chat_model: bool = Field(default=False, description="whether prompts are chat-formatted by default")

    _engine: FocusEngine = PrivateAttr()

    def __init__(self, engine: FocusEngine | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._engine = resolve_engine(engine, self.model_name, self.model_kwargs, self.focus_settings())
        if kwargs.get("messages_to_prompt") is None:  # not given: the tokenizer's chat template
            self.messages_to_prompt = self._chat_prompt

    @classmethod
    def class_name(cls) -> str:
        return "FocusLlamaIndexLLM"

    @property
    def engine(self) -> FocusEngine:
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window or self._engine.max_context_tokens,
            num_output=self._overrides({}).get("max_new_tokens", self._engine.config.max_new_tokens),
            model_name=self._engine.model_name,
            is_chat_model=self.is_chat_model,
        )

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        if self.system_prompt and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return self._engine.apply_chat_template(turns)

    def _overrides(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call settings, as in the LangChain wrapper: the fields, then ``generate_kwargs``, then the call's."""
        return generation_overrides({"max_new_tokens": self.max_new_tokens, **self.generate_kwargs}, kwargs, None)

    def _format(self, prompt: str, formatted: bool) -> str:
        if not isinstance(prompt, str):
            raise FocusInputTypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if formatted:
            return prompt
        if self.is_chat_model:
            return self._chat_prompt([ChatMessage(role="user", content=prompt)])
        return self.completion_to_prompt(prompt) if self.completion_to_prompt else prompt

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The completion; ``additional_kwargs["sources"]`` holds the chunks (``focus_core.ChunkScore``)
        it was read from, most relevant first; ``raw`` the finish reason and the token usage (OpenAI's
        shape, which LlamaIndex's TokenCountingHandler reads)."""
        generation = self._engine.stream(self._format(prompt, formatted), **self._overrides(kwargs))
        text = "".join(generation)
        return CompletionResponse(text=text, raw=_raw(generation), additional_kwargs={"sources": generation.sources})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """As :meth:`complete`, a piece at a time; the last response's ``raw`` holds the finish reason and
        the token usage."""
        generation = self._engine.stream(self._format(prompt, formatted), **self._overrides(kwargs))

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in generation:
                text += piece
                yield CompletionResponse(text=text, delta=piece, additional_kwargs={"sources": generation.sources})
            yield CompletionResponse(
                text=text, delta="", raw=_raw(generation), additional_kwargs={"sources": generation.sources}
            )

        return gen()

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` in a worker thread: the event loop keeps running while the model reads."""
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with every step in a worker thread (the event loop is never blocked)."""
        responses = await asyncio.to_thread(self.stream_complete, prompt, formatted, **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            while (response := await asyncio.to_thread(next, responses, None)) is not None:
                yield response

        return gen()


class FocusQueryEngine(BaseQueryEngine):
    """Answers over **all** the text of its documents or nodes: no retriever, no top-k.

    The documents are laid out first in every prompt, so FocusLLM encodes their chunks once and later
    queries reuse them (only the chunk holding the end of the documents and the question is new).
    ``llm=None`` takes ``Settings.llm`` (a FocusLlamaIndexLLM; see :meth:`from_documents`). Callback events
    (QUERY, SYNTHESIZE, and the LLM's own LLM event) go to ``callback_manager``, by default
    ``Settings.callback_manager``, which the LLM then shares, as in LlamaIndex's query engines.
    """

    def __init__(
        self,
        nodes: Sequence[BaseNode],
        llm: FocusLlamaIndexLLM | None = None,
        prompt_template: BasePromptTemplate | str | None = None,
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
    ):
        nodes = list(nodes)
        if not nodes or not all(isinstance(n, BaseNode) for n in nodes):
            raise FocusInputTypeError("FocusQueryEngine needs a non-empty list of LlamaIndex documents or nodes")
        self._nodes = nodes
        texts = [(n, n.get_content(metadata_mode=MetadataMode.LLM)) for n in nodes]
        self._texts = [(n, t) for n, t in texts if t.strip()]  # the nodes laid out in the prompt, and their text
        if not self._texts:
            raise FocusInputError("the documents are empty")
        self._context = "\n\n".join(t for _, t in self._texts)
        self._llm = llm if llm is not None else _settings_llm()
        if not isinstance(self._llm, FocusLlamaIndexLLM):
            raise FocusInputTypeError(
                "FocusQueryEngine needs a focusllm_integrations.llamaindex.FocusLlamaIndexLLM, "
                f"got {type(self._llm).__name__}"
            )
        self._prompt = _as_prompt(prompt_template or DEFAULT_QA_TEMPLATE)
        self._streaming = streaming
        # As LlamaIndex's own query engines do: Settings' callback manager by default, shared with the LLM.
        callback_manager = callback_manager or Settings.callback_manager
        self._llm.callback_manager = callback_manager
        super().__init__(callback_manager=callback_manager)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[BaseNode],
        llm: FocusLlamaIndexLLM | None = None,
        prompt_template: BasePromptTemplate | str | None = None,
        **kwargs: Any,
    ) -> FocusQueryEngine:
        """A query engine over whole ``documents`` (``Document`` or any node), in the given order.

        ``llm``: the :class:`FocusLlamaIndexLLM` to answer with; ``None`` takes ``Settings.llm`` when that is a
        FocusLlamaIndexLLM, the embedded default model when Settings has no LLM, and refuses any other LLM."""
        return cls(documents, llm=llm, prompt_template=prompt_template, **kwargs)

    @property
    def llm(self) -> FocusLlamaIndexLLM:
        return self._llm

    @property
    def context(self) -> str:
        """All the text of the documents, as it goes into every prompt."""
        return self._context

    def query(self, str_or_query_bundle: str | QueryBundle) -> Response | StreamingResponse:
        return super().query(_checked_query(str_or_query_bundle))

    async def aquery(self, str_or_query_bundle: str | QueryBundle) -> Response | StreamingResponse:
        return await super().aquery(_checked_query(str_or_query_bundle))

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _get_prompts(self) -> dict[str, Any]:
        return {"text_qa_template": self._prompt}

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        if "text_qa_template" in prompts:
            self._prompt = _as_prompt(prompts["text_qa_template"])

    def _source_nodes(self, prompt: str, sources: list[ChunkScore]) -> list[NodeWithScore]:
        """The passages the answer was read from, most relevant first, each a ``TextNode`` pointing at
        its source node and scored by relevance (nats); every node, unscored, when they all fit the
        native window and were read whole."""
        if not sources:
            return [NodeWithScore(node=n, score=None) for n in self._nodes]
        passages = source_passages(sources, prompt, [t for _, t in self._texts])
        return [NodeWithScore(node=self._passage_node(p), score=p.score) for p in passages]

    def _passage_node(self, passage: Passage) -> TextNode:
        node = self._texts[passage.document][0]
        return TextNode(
            text=passage.text,
            metadata=dict(node.metadata),
            relationships={NodeRelationship.SOURCE: node.as_related_node_info()},
            start_char_idx=passage.start,
            end_char_idx=passage.end,
        )

    def _query(self, query_bundle: QueryBundle) -> Response | StreamingResponse:
        """One LLM call over all the text, inside QUERY and SYNTHESIZE events as LlamaIndex's
        ``RetrieverQueryEngine`` and response synthesizers fire them (the LLM fires its own LLM event)."""
        question = _checked_query(query_bundle).query_str.strip()
        prompt = self._prompt.format(context_str=self._context, query_str=question)
        with self.callback_manager.event(CBEventType.QUERY, payload={EventPayload.QUERY_STR: question}) as query_event:
            dispatcher.event(SynthesizeStartEvent(query=query_bundle))
            with self.callback_manager.event(
                CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: question}
            ) as synthesize_event:
                if self._streaming:
                    pieces = self._llm.stream_complete(prompt, formatted=True)  # the LLM event ends with the stream
                    source_nodes: list[NodeWithScore] = []  # filled once the documents are read
                    response: Response | StreamingResponse = StreamingResponse(
                        response_gen=self._stream_filling(pieces, prompt, source_nodes), source_nodes=source_nodes
                    )
                else:
                    completion = self._llm.complete(prompt, formatted=True)
                    response = Response(
                        response=completion.text,
                        source_nodes=self._source_nodes(prompt, completion.additional_kwargs["sources"]),
                    )
                synthesize_event.on_end(payload={EventPayload.RESPONSE: response})
            dispatcher.event(SynthesizeEndEvent(query=query_bundle, response=response))
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _stream_filling(
        self, pieces: CompletionResponseGen, prompt: str, source_nodes: list[NodeWithScore]
    ) -> Iterator[str]:
        """The text deltas; ``source_nodes`` is filled in place when the first one arrives."""
        for i, response in enumerate(pieces):
            if i == 0:
                source_nodes.extend(self._source_nodes(prompt, response.additional_kwargs["sources"]))
            if response.delta:  # the last response only closes the stream (finish reason, usage)
                yield response.delta

    async def _aquery(self, query_bundle: QueryBundle) -> Response | StreamingResponse:
        return await asyncio.to_thread(self._query, query_bundle)


def _raw(generation: FocusGeneration) -> dict[str, Any]:
    """A finished generation's finish reason, token usage, and the mode that read the prompt (and, under
    ``auto``, why it took the prompt over)."""
    prompt, completion = generation.prompt_tokens, len(generation.completion_ids)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "finish_reason": generation.finish_reason,
        "usage": usage,
        "mode": generation.mode,
        "route": generation.route,
    }


def _settings_llm() -> FocusLlamaIndexLLM:
    """``Settings.llm`` when it is a FocusLlamaIndexLLM; a new default one when Settings has none. Any other LLM
    there is refused (FocusQueryEngine cannot read whole documents with it, and silently loading a
    second model would ignore the user's settings)."""
    current = getattr(Settings, "_llm", None)  # the public property would build LlamaIndex's default LLM
    if current is None:
        return FocusLlamaIndexLLM()
    if not isinstance(current, FocusLlamaIndexLLM):
        raise FocusInputTypeError(
            f"Settings.llm is a {type(current).__name__}, not a focusllm_integrations.llamaindex.FocusLlamaIndexLLM: "
            "FocusQueryEngine reads whole documents with FocusLlamaIndexLLM only; pass llm=FocusLlamaIndexLLM(...) "
            "or set "
            "Settings.llm = FocusLlamaIndexLLM(...)"
        )
    return current


def _checked_query(query: Any) -> QueryBundle:
    bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
    if not isinstance(bundle, QueryBundle) or not isinstance(bundle.query_str, str):
        raise FocusInputTypeError(f"the query must be a str or a QueryBundle, got {type(query).__name__}")
    if not bundle.query_str.strip():
        raise FocusInputError("the query is empty")
    return bundle


def _as_prompt(template: BasePromptTemplate | str) -> BasePromptTemplate:
    prompt = PromptTemplate(template) if isinstance(template, str) else template
    if not isinstance(prompt, BasePromptTemplate):
        raise FocusInputTypeError("prompt_template must be a str or a LlamaIndex prompt template")
    missing = {"context_str", "query_str"} - set(prompt.template_vars)
    if missing:
        raise FocusConfigError(f"prompt_template lacks {sorted(missing)}", setting="prompt_template")
    return prompt


def __getattr__(name: str) -> Any:
    """``FocusLLM``, this class's name until 0.1, for one more release (the LangChain class is also FocusLLM)."""
    if name == "FocusLLM":
        warnings.warn(
            "focusllm_integrations.llamaindex.FocusLLM is deprecated and will be removed in the next release: "
            "use FocusLlamaIndexLLM",
            DeprecationWarning,
            stacklevel=2,
        )
        return FocusLlamaIndexLLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
