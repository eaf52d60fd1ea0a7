"""The FocusLLM engine facade: text in, text out (docs/design.md, "Data path").

A call goes: input checked and tokenised (:mod:`.inputs`) → resolved into a :class:`Request` (settings,
mode, chunk plan, buffers, memory budget: :mod:`.planning`) → read and decoded by its mode
(:mod:`.modes`, :mod:`.generation`) → attributed (:mod:`.attribution`). Every call builds its own
request and decoding state, so concurrent calls from threads are independent; what they share (the
prefix cache, counters, a mode's trained weights) is locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import attribution, generation, inputs
from .chunking import ChunkPlan
from .config import FocusConfig
from .distributed import ChunkGroup
from .encoding import ChunkEncoder, EncodingStats
from .errors import FocusConfigError, FocusInputError, FocusInputTypeError
from .generation import Completion, Generation
from .kv_cache import PrefixCache
from .loading import eos_token_ids, load_model, model_window
from .memory import MemoryEstimate
from .modes.base import DecodingState, EngineParts
from .planning import Planner
from .relevance import ChunkScore
from .request import Prompt, Request
from .runner import ModelRunner

if TYPE_CHECKING:
    from .candidates import CandidateProjections  # kv's stack, imported only by engines that use kv


class FocusEngine:
    """FocusLLM over a frozen Hugging Face causal LM."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: FocusConfig | None = None,
        prefix_cache: PrefixCache | None = None,
        group: ChunkGroup | dist.ProcessGroup | None = None,
    ):
        """``prefix_cache``: share another engine's cache of encoded chunks (same model and dtype only).

        ``group``: shard the chunks over these processes (a :class:`ChunkGroup` or a ``torch.distributed``
        process group; every process then makes the same calls). ``None``, the default, reads every
        chunk in this process, whether or not a process group exists.
        """
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = config if config is not None else FocusConfig()
        if not isinstance(self.config, FocusConfig):
            raise FocusConfigError(f"config must be a FocusConfig, got {type(self.config).__name__}")
        self.native_window: int = self.config.native_window or model_window(model)
        self.runner = ModelRunner(model)
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache(self.config.prefix_cache_bytes)
        self.encoder = ChunkEncoder(self.runner, self.prefix_cache, tokenizer.bos_token_id)
        self.group = ChunkGroup.of(group)
        self.parts = EngineParts(
            model, tokenizer, self.runner, self.encoder, self.group, self.native_window, eos_token_ids(model, tokenizer)
        )
        self.planner = Planner(self.parts)
        self.planner.check(self.config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        config: FocusConfig | None = None,
        *,
        adapter: str | os.PathLike | None = None,
        group: ChunkGroup | dist.ProcessGroup | None = None,
        **load_kwargs: Any,
    ) -> FocusEngine:
        """Load a model (``None``: the embedded default) with :func:`load_model` and wrap it.

        ``adapter``: a directory written by :meth:`save_adapter` to load trained candidate projections
        from (none ships with the package: see docs/reference.md, "Training"). ``group``: see ``__init__``.
        """
        model, tokenizer = load_model(name_or_path, **load_kwargs)
        engine = cls(model, tokenizer, config, group=group)
        if adapter:
            engine.load_adapter(adapter)
        return engine

    # ----------------------------------------------------------------- calls

    def generate(self, prompt: Prompt, **overrides: Any) -> str:
        """The completion of ``prompt``; ``overrides`` replace :class:`FocusConfig` generation settings."""
        return "".join(self.stream(prompt, **overrides))

    def stream(self, prompt: Prompt, **overrides: Any) -> Generation:
        """Like :meth:`generate`, yielding text pieces as tokens are decoded; the returned
        :class:`Generation` also tells which chunks the answer was read from.

        Input, settings and memory are checked here, before the first piece is asked for.
        """
        return Generation(self.planner, self.request(prompt, **overrides))

    def complete(self, prompt: Prompt, **overrides: Any) -> Completion:
        """The completion of ``prompt`` with the chunks it was read from (most relevant first)."""
        return Completion.of(self.stream(prompt, **overrides))

    def generate_ids(self, prompt: Prompt, **overrides: Any) -> list[int]:
        """The generated token ids (EOS excluded, stop strings not applied)."""
        return list(self.stream_ids(prompt, **overrides))

    def stream_ids(self, prompt: Prompt, **overrides: Any) -> Iterator[int]:
        """Like :meth:`generate_ids`, yielding each token id as soon as it is decoded."""
        return generation.token_ids(self.planner, self.request(prompt, **overrides))

    def request(self, prompt: Prompt, **overrides: Any) -> Request:
        """``prompt`` resolved for one call with ``overrides`` (:class:`FocusConfig` settings): its tokens,
        the mode used, the chunk plan, the buffers it allocates and the memory they take. Refused here
        (:class:`MemoryBudgetError`, with what would fit) when it cannot fit the memory budget.

        ``generate``, ``stream``, ``complete``, ``relevance`` and the id methods also take a request made
        here (without overrides), which is then not resolved again."""
        if isinstance(prompt, Request):
            if overrides:
                raise FocusConfigError("a Request carries its settings: make another with engine.request(...)")
            return prompt.renewed()
        cfg = self.planner.settings(self.config, overrides)
        ids, offsets = inputs.tokenize(self.tokenizer, self.runner.vocab_size, prompt)
        request = self.planner.resolve(prompt, ids, offsets, cfg)
        request.mode.prepare(cfg)
        return self.planner.fit_to_budget(request)

    def start(self, request: Request) -> DecodingState:
        """Read ``request``'s prompt and return its decoding state (``next_logits()``, ``append(token)``),
        for decoding loops of one's own (constrained decoding, ...). Call it, and the state's methods,
        under ``torch.inference_mode()``."""
        return generation.start(self.planner, request)

    @torch.inference_mode()
    def relevance(self, prompt: Prompt, **overrides: Any) -> list[ChunkScore]:
        """Every memory chunk of ``prompt`` (document order) with its relevance to the prompt's question:
        how many nats better the chunk makes the model predict the dynamic prompt than no chunk does; in
        ``select``, every passage of ``passage_tokens`` with the attention the question pays it in the
        exit layer. Empty when the prompt fits the native window (it is then read whole)."""
        request = self.request(prompt, **overrides)
        request.reading = request.mode.read(request, keep=0)
        return attribution.relevance(request, self.tokenizer)

    @torch.inference_mode()
    def score(self, prompt: Prompt, continuation: Prompt, **overrides: Any) -> torch.Tensor:
        """Log-probabilities ``[len(continuation)]`` (fp32) of each continuation token given the prompt and
        the continuation before it, under the same chunking and mode as generation (teacher forcing).

        A ``str`` continuation is tokenised without special tokens. Its length takes the place of
        ``max_new_tokens`` in the window and memory checks.
        """
        if isinstance(continuation, str):
            if not continuation:
                raise FocusInputError("the continuation is empty")
            continuation = self.tokenizer(continuation, add_special_tokens=False).input_ids
        targets = self.tokenize(continuation)
        request = self.request(prompt, **{**overrides, "max_new_tokens": len(targets)})
        return generation.teacher_forced(self.planner, request, targets)

    # ----------------------------------------------------------------- inputs and plans

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt given as text, a list of ids or a 1-D tensor, validated."""
        return inputs.tokenize(self.tokenizer, self.runner.vocab_size, prompt)[0]

    def count_tokens(self, text: str) -> int:
        if not isinstance(text, str):
            raise FocusInputTypeError(f"count_tokens takes a str, got {type(text).__name__}")
        return len(self.tokenizer(text).input_ids)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text for chat ``messages`` ([{"role", "content"}, ...]), ready for the assistant's turn."""
        return inputs.chat_prompt(self.tokenizer, messages, self.model_name)

    def plan(self, prompt: Prompt, **overrides: Any) -> ChunkPlan:
        """How ``prompt`` is laid out: its memory chunks, local context and dynamic prompt."""
        return self.planner.plan(self.tokenize(prompt), self.planner.settings(self.config, overrides))

    def estimate_memory(self, prompt: Prompt, **overrides: Any) -> MemoryEstimate:
        """Bytes the prompt will need (what the budget check compares)."""
        ids, offsets = inputs.tokenize(self.tokenizer, self.runner.vocab_size, prompt)
        return self.planner.resolve(prompt, ids, offsets, self.planner.settings(self.config, overrides)).estimate

    @property
    def max_context_tokens(self) -> int:
        """The longest prompt whose KV cache, with a prefix-cache copy of it, fits the memory budget."""
        per_token = 2 * self.runner.kv_bytes_per_token()
        return max(self.native_window, self.planner.budget(self.config) // per_token)

    # ----------------------------------------------------------------- what runs

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokens that end an answer (the model's generation config, its config and the tokenizer's)."""
        return self.parts.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids: frozenset[int]) -> None:
        self.parts.eos_token_ids = frozenset(ids)

    @property
    def stats(self) -> EncodingStats:
        return self.encoder.stats

    @property
    def model_name(self) -> str:
        return self.parts.model_name

    def aggregation_for(self, config: FocusConfig | None = None) -> str:
        """The mode a long prompt runs under ``config`` (default: the engine's). ``auto`` is ``kv`` with
        trained candidate weights; else ``select`` where its reading fits the native window; else
        ``entropy`` (the registry's ``auto`` order, :mod:`focus_core.modes`)."""
        return self.planner.route(config or self.config).name

    def describe(self) -> str:
        """What this engine runs: the model, its precision and attention kernel and why they were chosen
        (models loaded by :func:`load_model`), the device, the native window and the mode used."""
        return self.planner.describe(self.config)

    # ----------------------------------------------------------------- kv's trained candidates

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Use the trained candidate projections saved at ``path``; ``auto`` then resolves to ``kv``.
        The adapter is checked against the model first; if it does not fit, nothing changes."""
        self.planner.mode("kv").load_adapter(path)

    def save_adapter(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
        """Save the trained candidate projections as an adapter directory (safetensors + JSON)."""
        return self.planner.mode("kv").save_adapter(path, training)

    def set_candidates(self, projections: CandidateProjections, trained: bool) -> None:
        """Replace ``kv``'s candidate projections (e.g. with ones being trained)."""
        self.planner.mode("kv").set_projections(projections, trained)

    def candidate_projections(self) -> CandidateProjections:
        """The candidate projections ``kv`` reads the chunks through: the trained ones once set or loaded,
        else copies of the model's own (made on first use; a model ``kv`` cannot serve is refused)."""
        return self.planner.mode("kv").projections()
