"""LangChain integration: ``FocusLLM`` (a ``BaseLLM``), ``ChatFocusLLM`` (a ``BaseChatModel``) and a
retrieval-free question-answering chain. Field names follow ``langchain-huggingface``'s
``HuggingFacePipeline`` / ``ChatHuggingFace`` where the meaning is the same."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableLambda
from pydantic import ConfigDict, Field, model_validator

from focus_core import FocusConfigError, FocusEngine, FocusInputError, FocusInputTypeError
from focus_core import Generation as FocusGeneration
from focus_core.prompts import qa_template

from .common import GENERATION_FIELDS, FocusFields, Passage, generation_overrides, resolve_engine, source_passages

DEFAULT_QA_TEMPLATE = qa_template("documents", "question")


class FocusLLM(BaseLLM, FocusFields):
    """A local Hugging Face model that reads prompts far longer than its window, via FocusLLM.

    ``FocusLLM()`` uses the embedded SmolLM2-135M-Instruct. ``FocusLLM(model_id=..., model_kwargs=...)``
    loads any causal LM (``model_kwargs`` go to :func:`focus_core.load_model`: ``dtype``, ``device``,
    ``gguf_file``, ...); ``FocusLLM(engine=engine)`` wraps an engine you already have.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_id: str | None = None
    model_kwargs: dict[str, Any] | None = None
    pipeline_kwargs: dict[str, Any] | None = None  # generation settings applied to every call
    engine: FocusEngine | None = Field(default=None, exclude=True)
    # Generation settings; None keeps the engine's value.
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _load(self) -> FocusLLM:
        self.engine = resolve_engine(self.engine, self.model_id, self.model_kwargs, self.focus_settings())
        return self

    @classmethod
    def from_model_id(
        cls,
        model_id: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> FocusLLM:
        """Same as the constructor; mirrors ``HuggingFacePipeline.from_model_id``."""
        return cls(model_id=model_id, model_kwargs=model_kwargs, pipeline_kwargs=pipeline_kwargs, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "focusllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.params()

    def params(self) -> dict[str, Any]:
        """The model, the engine's settings and this LLM's generation settings (what identifies its output)."""
        cfg = self.engine.config
        return {
            "model": self.engine.model_name,
            **{k: getattr(cfg, k) for k in FocusFields.model_fields if k != "progress"},
            **self.call_settings(),
        }

    def call_settings(self, stop: list[str] | None = None, **call_kwargs: Any) -> dict[str, Any]:
        """One call's engine overrides: generation fields, then pipeline_kwargs, then the call's, then stop."""
        fields = {k: getattr(self, k) for k in GENERATION_FIELDS}
        return generation_overrides({**fields, **(self.pipeline_kwargs or {})}, call_kwargs, stop)

    def start(self, prompt: str, stop: list[str] | None = None, **call_kwargs: Any) -> FocusGeneration:
        """The engine's generation of ``prompt`` under this LLM's settings and the call's."""
        return self.engine.stream(prompt, **self.call_settings(stop, **call_kwargs))

    @property
    def model_name(self) -> str:
        """The loaded model's name or path (``SmolLM2-135M-Instruct`` for the embedded default)."""
        return self.engine.model_name

    def get_num_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return _ls_params(self, "llm", self.call_settings(**_standard_names(kwargs)), stop, kwargs)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # one prompt after another (an engine call already uses every core; LangChain's max_concurrency
        # runs batches in threads, which the engine allows); every prompt is validated before any runs
        streams = [self.start(p, stop, **kwargs) for p in prompts]
        texts = ["".join(stream) for stream in streams]
        # generation_info: "sources", the chunks (focus_core.ChunkScore) each answer was read from, most
        # relevant first; "finish_reason" ("stop", "length", "repetition" or "empty"); "prompt_tokens" and
        # "completion_tokens"
        generations = [[Generation(text=t, generation_info=generation_info(g))] for t, g in zip(texts, streams)]
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        generation = self.start(prompt, stop, **kwargs)
        for piece in generation:
            yield _announced(GenerationChunk(text=piece), run_manager)
        # the last chunk carries what the whole reply knows (callbacks see it too, as every chunk)
        yield _announced(GenerationChunk(text="", generation_info=generation_info(generation)), run_manager)


def _announced(chunk: GenerationChunk, run_manager: CallbackManagerForLLMRun | None) -> GenerationChunk:
    if run_manager is not None:
        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
    return chunk


def generation_info(generation: FocusGeneration) -> dict[str, Any]:
    """What a finished engine generation tells LangChain: sources, why it ended, tokens in and out, the mode
    that read the prompt (and, under ``auto``, why it took the prompt over)."""
    return {
        "sources": generation.sources,
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": len(generation.completion_ids),
        "mode": generation.mode,
        "route": generation.route,
    }


_ROLES = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}


def messages_to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as chat-template dicts (system, user, assistant, or a ChatMessage's role)."""
    out = []
    for m in messages:
        role = m.role if isinstance(m, ChatMessage) else next((r for t, r in _ROLES.items() if isinstance(m, t)), None)
        if role is None:
            raise FocusInputTypeError(f"ChatFocusLLM cannot render a {type(m).__name__}")
        if not isinstance(m.content, str):
            raise FocusInputTypeError("ChatFocusLLM takes text message content only")
        out.append({"role": role, "content": m.content})
    return out


class ChatFocusLLM(BaseChatModel):
    """Chat model over a :class:`FocusLLM`: messages are rendered with the tokenizer's chat template.

    ``ChatFocusLLM()`` wraps ``FocusLLM()`` (the embedded default); ``ChatFocusLLM(llm=FocusLLM(...))``
    mirrors ``ChatHuggingFace(llm=...)``. LangChain's standard chat-model parameters ``temperature``,
    ``max_tokens`` and ``stop`` override the wrapped LLM's settings (``timeout`` and ``max_retries`` mean
    nothing for a local model and are ignored). Text in, text out: no tool calling, structured output
    or images.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    llm: FocusLLM = Field(default_factory=FocusLLM)
    temperature: float | None = None
    max_tokens: int | None = None  # new tokens per reply (the LLM's max_new_tokens)
    stop: list[str] | None = None
    streaming: bool = False  # invoke() streams internally (callbacks get every token)

    @property
    def _llm_type(self) -> str:
        return "focusllm-chat"

    @property
    def model_name(self) -> str:
        return self.llm.model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.llm.params()

    def _call_settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This model's standard parameters, then the call's (``max_tokens`` is ``max_new_tokens``)."""
        own = {"temperature": self.temperature, "max_new_tokens": self.max_tokens}
        return {**{k: v for k, v in own.items() if v is not None}, **_standard_names(kwargs)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return _ls_params(
            self.llm,
            "chat",
            self.llm.call_settings(**self._call_settings(kwargs)),
            stop if stop is not None else self.stop,
            kwargs,
        )

    def get_num_tokens(self, text: str) -> int:
        return self.llm.get_num_tokens(text)

    def render(self, messages: Sequence[BaseMessage]) -> str:
        """The prompt text the model sees for ``messages``."""
        return self.llm.engine.apply_chat_template(messages_to_dicts(messages))

    def _metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        """``usage_metadata`` and ``response_metadata`` of a reply, from the LLM's generation_info."""
        inputs, outputs = info["prompt_tokens"], info["completion_tokens"]
        return {
            "usage_metadata": {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs},
            "response_metadata": {"model_name": self.model_name, "finish_reason": info["finish_reason"]},
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = self.render(messages)
        stop = stop if stop is not None else self.stop
        generation = self.llm.start(prompt, stop, **self._call_settings(kwargs))
        text = "".join(generation)
        message = AIMessage(content=text, **self._metadata(generation_info(generation)))
        reply = ChatGeneration(
            message=message, generation_info={"finish_reason": message.response_metadata["finish_reason"]}
        )
        return ChatResult(generations=[reply], llm_output={"model_name": self.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt = self.render(messages)
        stop = stop if stop is not None else self.stop
        generation = self.llm.start(prompt, stop, **self._call_settings(kwargs))
        for piece in generation:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        info = generation_info(generation)
        # the last chunk carries what belongs to the whole reply: token usage, finish reason, the model's name
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", **self._metadata(info), chunk_position="last"),
            generation_info={"finish_reason": info["finish_reason"]},
        )


def _standard_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call settings with LangChain's standard ``max_tokens`` spelled as the engine's ``max_new_tokens``."""
    out = dict(kwargs)
    if "max_tokens" in out:
        out["max_new_tokens"] = out.pop("max_tokens")
    return out


def _ls_params(
    llm: FocusLLM, model_type: str, settings: dict[str, Any], stop: list[str] | None, kwargs: dict[str, Any]
) -> LangSmithParams:
    """LangSmith's standard tracing parameters: provider, model (a call's ``model=`` wins), settings."""
    config = llm.engine.config
    model = kwargs.get("model")
    params = LangSmithParams(
        ls_provider="focusllm",
        ls_model_name=model if isinstance(model, str) and model else llm.model_name,
        ls_model_type=model_type,
        ls_temperature=float(settings.get("temperature", config.temperature)),
        ls_max_tokens=int(settings.get("max_new_tokens", config.max_new_tokens)),
    )
    if stop:
        params["ls_stop"] = list(stop)
    return params


def create_focus_qa_chain(
    llm: FocusLLM | Runnable | None = None, prompt_template: str = DEFAULT_QA_TEMPLATE, return_sources: bool = False
) -> Runnable:
    """A Runnable answering ``{"documents": list[Document] | str, "question": str}`` over all the text.

    ``llm`` is a :class:`FocusLLM` (default: ``FocusLLM()``) or one with bound settings
    (``llm.bind(stop=["\\n"])``).

    No retrieval: every document goes into the prompt, in order, and FocusLLM reads all of it. The
    documents come first, so asking again about the same documents reuses their encoded chunks.
    ``prompt_template`` takes ``{documents}`` and ``{question}``.

    With ``return_sources`` the chain returns ``{"answer": str, "sources": list[Document]}``: the
    passages the answer was read from, most relevant first, each a ``Document`` with its source
    document's metadata plus ``relevance`` (the chunk's score, nats) and ``start_index`` (its offset in
    that document), as LangChain's text splitters mark chunks. Empty when the documents fit the native
    window (then they are read whole).
    """
    if "{documents}" not in prompt_template or "{question}" not in prompt_template:
        raise FocusConfigError("prompt_template must contain {documents} and {question}", setting="prompt_template")
    model = llm if llm is not None else FocusLLM()

    def build_prompt(inputs: dict[str, Any]) -> str:
        if not isinstance(inputs, dict) or "documents" not in inputs or "question" not in inputs:
            raise FocusInputTypeError('the chain takes {"documents": ..., "question": ...}')
        return prompt_template.format(
            documents="\n\n".join(t for _, t in _document_texts(inputs["documents"])),
            question=_question_text(inputs["question"]),
        )

    if not return_sources:
        return (RunnableLambda(build_prompt) | model).with_config(run_name="FocusQAChain")
    base, bound = (model.bound, model.kwargs) if isinstance(model, RunnableBinding) else (model, {})
    if not isinstance(base, FocusLLM):
        raise FocusInputTypeError(
            f"return_sources needs a FocusLLM (or one with bound settings), got {type(base).__name__}"
        )

    def answer_with_sources(inputs: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        prompt, documents = build_prompt(inputs), _document_texts(inputs["documents"])
        result = base.generate([prompt], callbacks=config.get("callbacks"), **bound).generations[0][0]
        passages = source_passages(result.generation_info["sources"], prompt, [t for _, t in documents])
        return {
            "answer": result.text,
            "sources": [_passage_document(inputs["documents"], documents, p) for p in passages],
        }

    return RunnableLambda(answer_with_sources).with_config(run_name="FocusQAChain")


def _passage_document(given: Any, documents: list[tuple[int, str]], passage: Passage) -> Document:
    index = documents[passage.document][0]
    metadata = dict(given[index].metadata) if isinstance(given, (list, tuple)) else {}
    return Document(
        page_content=passage.text, metadata={**metadata, "relevance": passage.score, "start_index": passage.start}
    )


def _document_texts(documents: Any) -> list[tuple[int, str]]:
    """(index, text) of the non-empty documents given as a str or a list of ``Document``."""
    if isinstance(documents, str):
        texts = [documents]
    elif isinstance(documents, (list, tuple)) and all(isinstance(d, Document) for d in documents):
        texts = [d.page_content for d in documents]
    else:
        raise FocusInputTypeError("documents must be a str or a list of langchain Document objects")
    kept = [(i, t) for i, t in enumerate(texts) if t.strip()]
    if not kept:
        raise FocusInputError("the documents are empty")
    return kept


def _question_text(question: Any) -> str:
    if not isinstance(question, str):
        raise FocusInputTypeError(f"question must be a str, got {type(question).__name__}")
    if not question.strip():
        raise FocusInputError("the question is empty")
    return question.strip()
