"""The FocusLLM engine facade: text in, text out (docs/design.md, "Data path").

``FocusEngine`` ties the pieces together along the data's path: tokenise → plan chunks → check the
memory budget → read the chunks (prefix cache, batched, scored by relevance) → decode the chosen ones in
the configured aggregation → sample → detokenise.
Every call builds its own decoding state, so concurrent calls from threads are independent; what they
share (the prefix cache, counters, candidate projections) is locked.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import adapters
from .aggregation import EntropyAggregation, KVAggregation, PlainDecoding, focus_decoding
from .candidates import CandidateProjections
from .chunking import ChunkPlan, plan_chunks
from .config import ENGINE_SETTINGS, FocusConfig
from .distributed import ChunkGroup
from .encoding import ChunkEncoder, EncodingStats
from .errors import FocusConfigError, FocusInputError, FocusInputTypeError
from .kv_cache import PrefixCache, PrefixKV
from .loading import load_model
from .memory import (
    KVBlock,
    Layout,
    MemoryEstimate,
    available_bytes,
    check_fits,
    chunked_layout,
    estimate,
    format_bytes,
    plain_layout,
)
from .relevance import ChunkScore, select
from .request import Prompt, Request
from .rotary import KeyRotation
from .runner import ModelRunner, SequenceBatch
from .sampling import Sampler, TextStream
from .selection import (
    Span,
    choose_spans,
    default_exit_layer,
    memory_mass,
    merge,
    probed,
    question_marks,
    question_rows,
)

DecodingState = PlainDecoding | EntropyAggregation | KVAggregation
logger = logging.getLogger(__name__)


@dataclass
class Reading:
    """What the parallel pass found in a long prompt: the relevance of every unit of its memory (the
    chunks; in ``select``, passages of ``passage_tokens``) and what decoding reads: the chosen chunks
    (document order) with their prefix KV, or, in ``select``, the chosen spans of the memory."""

    units: list[tuple[int, int]]  # [start, end) memory token ranges that were scored
    relevance: torch.Tensor  # [units]: nats of query likelihood, or attention mass (select)
    chosen: list[int] = field(default_factory=list)  # chunks decoding reads, document order
    prefixes: list[PrefixKV] = field(default_factory=list)  # their [BOS] + chunk KV
    spans: list[Span] = field(default_factory=list)  # select: the memory spans decoding reads, document order

    def scored_units(self) -> list[tuple[int, tuple[int, int], float]]:
        """``(index, memory range, score)`` of every unit, document order."""
        return [(i, unit, float(score)) for i, (unit, score) in enumerate(zip(self.units, self.relevance))]

    def sources(self) -> list[tuple[int, tuple[int, int], float]]:
        """``(index, memory range, score)`` of what decoding read: chunks (by chunk index) or spans."""
        if self.spans:
            return [(i, (s.start, s.end), s.score) for i, s in enumerate(self.spans)]
        return [self.scored_units()[i] for i in self.chosen]


class Generation(Iterator[str]):
    """Text pieces as they are decoded. Once the first piece has been asked for, ``relevance`` holds
    every chunk's :class:`ChunkScore` (document order; passages in ``select``) and ``sources`` the
    chunks or passages decoding read, most relevant first (both empty when the prompt fits the native
    window). ``prompt_tokens`` counts the prompt's tokens, ``completion_ids`` grows with every token
    decoded (a stop string's tokens included) and, once the text is exhausted, ``finish_reason`` says why
    it ended: ``"stop"`` (end-of-sequence token or a stop string), ``"length"`` (``max_new_tokens``) or
    ``"empty"`` (the model's very first token ended the answer: nothing was generated, which a small model
    does when the prompt's ending does not invite an answer; a warning says so too)."""

    def __init__(self, engine: FocusEngine, request: Request):
        self._engine, self._request = engine, request
        self._reading: Reading | None = None
        self._scores: list[ChunkScore] | None = None
        self.prompt_tokens = len(request.ids)
        self.completion_ids: list[int] = []
        self.finish_reason: str | None = None
        self._pieces = engine._stream_text(request, self)

    def __next__(self) -> str:
        return next(self._pieces)

    def _on_read(self, reading: Reading) -> None:
        self._reading = reading

    @property
    def relevance(self) -> list[ChunkScore]:
        if self._reading is None:
            return []
        if self._scores is None:  # spans need the prompt's offsets: worked out only when asked for
            self._scores = self._engine._scored(self._request, self._reading.scored_units())
        return self._scores

    @property
    def sources(self) -> list[ChunkScore]:
        if self._reading is None:
            return []
        sources = self._engine._scored(self._request, self._reading.sources())
        return sorted(sources, key=lambda c: -c.score)


@dataclass(frozen=True)
class Completion:
    """A finished generation: the text, the chunks it came from, the token counts and why it ended (see
    :class:`Generation`)."""

    text: str
    sources: list[ChunkScore]
    relevance: list[ChunkScore]
    prompt_tokens: int = 0
    completion_ids: tuple[int, ...] = ()
    finish_reason: str | None = None


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
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config if config is not None else FocusConfig()
        if not isinstance(self.config, FocusConfig):
            raise FocusConfigError(f"config must be a FocusConfig, got {type(self.config).__name__}")
        self.native_window: int = self.config.native_window or _model_window(model)
        self.runner = ModelRunner(model)
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache(self.config.prefix_cache_bytes)
        self.encoder = ChunkEncoder(self.runner, self.prefix_cache, tokenizer.bos_token_id)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._candidates: CandidateProjections | None = None
        self._candidates_trained = False
        self._lock = threading.Lock()
        self.group = ChunkGroup.of(group)
        self._check_window(self.config)

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
        from (none ships with the package: see the README's training section). ``group``: see ``__init__``.
        """
        model, tokenizer = load_model(name_or_path, **load_kwargs)
        engine = cls(model, tokenizer, config, group=group)
        if adapter:
            engine.load_adapter(adapter)
        return engine

    # ----------------------------------------------------------------- public API

    @property
    def stats(self) -> EncodingStats:
        return self.encoder.stats

    @property
    def model_name(self) -> str:
        return str(getattr(self.model.config, "name_or_path", "") or type(self.model).__name__)

    @property
    def max_context_tokens(self) -> int:
        """The longest prompt whose KV cache, with a prefix-cache copy of it, fits the memory budget."""
        return max(self.native_window, self._budget(self.config) // (2 * self.runner.kv_bytes_per_token()))

    def generate(self, prompt: Prompt, **overrides: Any) -> str:
        """The completion of ``prompt``; ``overrides`` replace :class:`FocusConfig` generation settings."""
        return "".join(self.stream(prompt, **overrides))

    def stream(self, prompt: Prompt, **overrides: Any) -> Generation:
        """Like :meth:`generate`, yielding text pieces as tokens are decoded; the returned
        :class:`Generation` also tells which chunks the answer was read from.

        Input, settings and memory are checked here, before the first piece is asked for.
        """
        return Generation(self, self.request(prompt, **overrides))

    def request(self, prompt: Prompt, **overrides: Any) -> Request:
        """``prompt`` resolved for one call with ``overrides`` (:class:`FocusConfig` settings): its tokens,
        the aggregation used, the chunk plan, the buffers it allocates and the memory they take. Refused
        here (:class:`MemoryBudgetError`, with what would fit) when it cannot fit the memory budget.

        ``generate``, ``stream``, ``complete``, ``relevance`` and the id methods also take a request made
        here (without overrides), which is then not resolved again."""
        if isinstance(prompt, Request):
            if overrides:
                raise FocusConfigError("a Request carries its settings: make another with engine.request(...)")
            return prompt
        cfg = self._settings(overrides)
        ids = self.tokenize(prompt)
        if self.aggregation_for(cfg) == "kv":
            self.candidate_projections()  # refuses unsupported models now, not mid-stream
        return self._fit_to_budget(self._resolve(prompt, ids, cfg))

    def start(self, request: Request) -> DecodingState:
        """Read ``request``'s prompt and return its decoding state (``next_logits()``, ``append(token)``),
        for decoding loops of one's own (constrained decoding, ...). Call it, and the state's methods,
        under ``torch.inference_mode()``."""
        return self._start(request)

    def complete(self, prompt: Prompt, **overrides: Any) -> Completion:
        """The completion of ``prompt`` with the chunks it was read from (most relevant first)."""
        generation = self.stream(prompt, **overrides)
        text = "".join(generation)
        return Completion(
            text,
            generation.sources,
            generation.relevance,
            generation.prompt_tokens,
            tuple(generation.completion_ids),
            generation.finish_reason,
        )

    @torch.inference_mode()
    def relevance(self, prompt: Prompt, **overrides: Any) -> list[ChunkScore]:
        """Every memory chunk of ``prompt`` (document order) with its relevance to the prompt's question:
        how many nats better the chunk makes the model predict the dynamic prompt than no chunk does; in
        ``select``, every passage of ``passage_tokens`` with the attention the question pays it in the
        exit layer. Empty when the prompt fits the native window (it is then read whole)."""
        request = self.request(prompt, **overrides)
        if request.plain:
            return []
        reading = self._select(request) if request.mode == "select" else self._read(request, keep=0)
        return self._scored(request, reading.scored_units())

    def generate_ids(self, prompt: Prompt, **overrides: Any) -> list[int]:
        """The generated token ids (EOS excluded, stop strings not applied)."""
        return list(self.stream_ids(prompt, **overrides))

    def stream_ids(self, prompt: Prompt, **overrides: Any) -> Iterator[int]:
        """Like :meth:`generate_ids`, yielding each token id as soon as it is decoded."""
        return self._decode(self.request(prompt, **overrides))

    @torch.inference_mode()
    def score(self, prompt: Prompt, continuation: Prompt, **overrides: Any) -> torch.Tensor:
        """Log-probabilities ``[len(continuation)]`` (fp32) of each continuation token given the prompt and
        the continuation before it, under the same chunking and aggregation as generation (teacher forcing).

        A ``str`` continuation is tokenised without special tokens. Its length takes the place of
        ``max_new_tokens`` in the window and memory checks.
        """
        if isinstance(continuation, str):
            if not continuation:
                raise FocusInputError("the continuation is empty")
            continuation = self.tokenizer(continuation, add_special_tokens=False).input_ids
        targets = self.tokenize(continuation)
        state = self._start(self.request(prompt, **{**overrides, "max_new_tokens": len(targets)}))
        logprobs = []
        for step, token in enumerate(targets):
            logprobs.append(torch.log_softmax(state.next_logits().float(), dim=-1)[token])
            if step + 1 < len(targets):
                state.append(token)
        return torch.stack(logprobs)

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt given as text, a list of ids or a 1-D tensor, validated."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise FocusInputError("the prompt is empty")
            return list(self.tokenizer(prompt).input_ids)
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.dtype.is_floating_point:
                raise FocusInputTypeError("a tensor prompt must be 1-D integer token ids")
            prompt = prompt.tolist()
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise FocusInputError("the prompt is empty")
            vocab = self.runner.vocab_size
            for t in prompt:
                if isinstance(t, bool) or not isinstance(t, int):
                    raise FocusInputTypeError(f"token ids must be ints, got {type(t).__name__}")
                if not 0 <= t < vocab:
                    raise FocusInputError(f"token id {t} is outside the vocabulary [0, {vocab})")
            return list(prompt)
        raise FocusInputTypeError(f"prompt must be a str, a list of token ids or a tensor, got {type(prompt).__name__}")

    def plan(self, prompt: Prompt, **overrides: Any) -> ChunkPlan:
        """How ``prompt`` is laid out: its memory chunks, local context and dynamic prompt."""
        return self._plan(self.tokenize(prompt), self._settings(overrides))

    def count_tokens(self, text: str) -> int:
        if not isinstance(text, str):
            raise FocusInputTypeError(f"count_tokens takes a str, got {type(text).__name__}")
        return len(self.tokenizer(text).input_ids)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text for chat ``messages`` ([{"role", "content"}, ...]), ready for the assistant's turn."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise FocusInputError("messages must be a non-empty list of {'role', 'content'} dicts")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise FocusInputTypeError(f"each message must be a dict with str 'role' and 'content', got {m!r}")
        if not getattr(self.tokenizer, "chat_template", None):
            raise FocusConfigError(
                f"the tokenizer of {self.model_name} has no chat template (a base model): give it a "
                "completion-style prompt (generate(text); FocusLLM rather than ChatFocusLLM)"
            )
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Use the trained candidate projections saved at ``path``; ``auto`` aggregation becomes ``kv``.

        The adapter is checked against the model first; if it does not fit, nothing changes.
        """
        projections = adapters.load_adapter(self.model, path)
        self.set_candidates(projections, trained=True)

    def set_candidates(self, projections: CandidateProjections, trained: bool) -> None:
        """Replace the candidate projections (e.g. with ones being trained)."""
        with self._lock:
            self._install_candidates(projections, trained)

    def candidate_projections(self) -> CandidateProjections:
        """The candidate projections ``kv`` reads the chunks through: the trained ones once set or loaded,
        else copies of the model's own (made on first use; a model ``kv`` cannot serve is refused)."""
        with self._lock:
            if self._candidates is None:
                self._install_candidates(CandidateProjections(self.model), trained=False)
            return self._candidates

    def _install_candidates(self, projections: CandidateProjections, trained: bool) -> None:
        """Hook ``projections`` in place of the current ones (caller holds the lock)."""
        if self._candidates is not None:
            self._candidates.detach()
        projections.attach()
        self._candidates, self._candidates_trained = projections, trained
        self.runner.candidates = projections

    def save_adapter(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
        """Save the trained candidate projections as an adapter directory (safetensors + JSON)."""
        if self._candidates is None or not self._candidates_trained:
            raise FocusConfigError("this engine has no trained candidate projections to save")
        return adapters.save_adapter(self._candidates, self.model, path, training)

    def aggregation_for(self, config: FocusConfig | None = None) -> str:
        """The aggregation actually used. ``auto`` is ``kv`` with trained candidate weights; else ``select``
        where its reading fits the native window (on RULER at 32K it matched ``entropy`` at a third of the
        time and kept the pass-key grid to 128K: README, "Benchmarks"); else ``entropy``."""
        cfg = config or self.config
        if cfg.aggregation != "auto":
            return cfg.aggregation
        if self._candidates_trained:
            return "kv"
        return "select" if cfg.select_window() <= self.native_window else "entropy"

    def describe(self) -> str:
        """What this engine runs: the model, its precision and attention kernel and why they were chosen
        (models loaded by :func:`load_model`), the device, the native window and the aggregation used."""
        runner = self.runner
        loaded = getattr(self.model, "focus_precision_reason", None)
        kernel = getattr(self.model.config.get_text_config(), "_attn_implementation", None)
        precision = loaded or f"dtype {str(runner.dtype).removeprefix('torch.')}; attention {kernel} (given)"
        mode = self.aggregation_for(self.config)
        if mode == "select":
            mode += f" (exit layer {self._exit_layer(self.config)} of {runner.num_layers})"
        aggregation = f"aggregation {self.config.aggregation} -> {mode}"
        return f"{self.model_name}: {precision}; {runner.device}; native window {self.native_window}; {aggregation}"

    def estimate_memory(self, prompt: Prompt, **overrides: Any) -> MemoryEstimate:
        """Bytes the prompt will need (what the budget check compares)."""
        return self._resolve(prompt, self.tokenize(prompt), self._settings(overrides)).estimate

    # ----------------------------------------------------------------- internals

    def _settings(self, overrides: dict[str, Any]) -> FocusConfig:
        fixed = sorted(set(overrides) & set(ENGINE_SETTINGS))
        if fixed:
            raise FocusConfigError(
                f"{', '.join(fixed)} belong(s) to the engine and cannot change per call; build an engine with "
                f"FocusConfig({fixed[0]}=...)"
            )
        cfg = self.config.replace(**overrides) if overrides else self.config
        self._check_window(cfg)
        return cfg

    def _check_window(self, cfg: FocusConfig) -> None:
        cfg.check_window(self.native_window)
        if cfg.local_window + cfg.max_new_tokens > self.native_window:
            raise FocusConfigError(
                f"local_window + max_new_tokens = {cfg.local_window + cfg.max_new_tokens} exceeds the native "
                f"window {self.native_window}"
            )
        if self.aggregation_for(cfg) == "select":
            self._exit_layer(cfg)
            if cfg.select_window() > self.native_window:
                raise FocusConfigError(
                    f"1 + passage_tokens + select_tokens + local_window + max_new_tokens = {cfg.select_window()} "
                    f"exceeds the native window {self.native_window}; lower select_tokens (now {cfg.select_tokens})"
                )

    def _exit_layer(self, cfg: FocusConfig) -> int:
        """The layer whose attention chooses the passages in ``select`` (the early exit)."""
        layers = self.runner.num_layers
        if cfg.exit_layer is None:
            return default_exit_layer(self.model.config.get_text_config())
        if cfg.exit_layer >= layers:
            raise FocusConfigError(
                f"exit_layer must be in [0, {layers - 1}] for {self.model_name} ({layers} layers), got {cfg.exit_layer}"
            )
        return cfg.exit_layer

    def _resolve(self, prompt: Prompt, ids: list[int], cfg: FocusConfig, plan: ChunkPlan | None = None) -> Request:
        """The request for ``ids`` under ``cfg``, not yet checked against the budget (``plan``: the chunk
        plan, when already known)."""
        if self._fits(ids, cfg):
            layout = plain_layout(len(ids), cfg.max_new_tokens, self.runner.windows(cfg.encode_batch_tokens))
            return Request(prompt, ids, cfg, "plain", None, layout, self._estimate(layout, cfg))
        plan, mode = plan or self._plan(ids, cfg), self.aggregation_for(cfg)
        exit_layer = self._exit_layer(cfg) if mode == "select" else None
        layout = self._layout(plan, cfg, mode, exit_layer)
        return Request(prompt, ids, cfg, mode, plan, layout, self._estimate(layout, cfg), exit_layer)

    def _budget(self, cfg: FocusConfig) -> int:
        """Bytes one call may use: ``memory_budget_bytes``, by default 80% of what the device has free."""
        return cfg.memory_budget_bytes or int(0.8 * available_bytes(self.runner.device))

    def _fit_to_budget(self, request: Request) -> Request:
        """Shrink the encoding micro-batch until the estimate fits the budget, or refuse the prompt."""
        budget = self._budget(request.config)
        while request.estimate.total > budget and request.config.encode_batch_tokens > request.config.chunk_size:
            cfg = request.config
            cfg = cfg.replace(encode_batch_tokens=max(cfg.chunk_size, cfg.encode_batch_tokens // 2))
            request = self._resolve(request.prompt, request.ids, cfg, request.plan)
        if request.estimate.total > budget:
            what = f"this prompt of {len(request.ids)} tokens"
            check_fits(request.estimate, budget, what=what, hint=self._fit_hint(request, budget))
        return request

    def _fit_hint(self, request: Request, budget: int) -> str:
        """Settings that would make an over-budget prompt fit, each with what it would need."""
        options, ids, cfg = [], request.ids, request.config
        if cfg.prefix_cache_bytes > 0:
            need = self._resolve(request.prompt, ids, cfg.replace(prefix_cache_bytes=0), request.plan).estimate
            options.append(f"an engine with FocusConfig(prefix_cache_bytes=0) ({format_bytes(need.total)})")
        low, high = 0, len(ids)  # the longest prefix of this prompt that fits: low fits, high does not
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self._resolve(ids[:mid], ids[:mid], cfg).estimate.total <= budget else (low, mid)
        if low:
            options.append(f"a prompt of at most ~{low} tokens")
        if self.runner.dtype.itemsize > 2:
            options.append("loading the model in bfloat16 (half the KV bytes)")
        world = self.group.world if self.group else 1
        options.append(f"more processes (torchrun --nproc_per_node {2 * world}: each holds its share of the chunks)")
        options.append("a larger memory_budget_bytes if the machine has the memory")
        return "Would fit: " + "; or ".join(options) + "."

    def _fits(self, ids: list[int], cfg: FocusConfig) -> bool:
        return len(ids) + cfg.max_new_tokens <= self.native_window

    def _plan(self, ids: list[int], cfg: FocusConfig) -> ChunkPlan:
        return plan_chunks(
            ids,
            chunk_size=cfg.chunk_size,
            local_window=cfg.local_window,
            dynamic_prompt_len=cfg.dynamic_prompt_len,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    def _focus_room(self, plan: ChunkPlan, cfg: FocusConfig) -> int:
        """Chunk tokens ``focus`` can read beside [BOS], the local context and the answer."""
        return self.native_window - len(self.encoder.bos) - len(plan.local) - cfg.max_new_tokens

    def _layout(
        self, plan: ChunkPlan, cfg: FocusConfig, mode: str, exit_layer: int | None, keep: int | None = None
    ) -> Layout:
        """The KV buffers a call reading ``plan`` in aggregation ``mode`` allocates; ``keep``: chunks kept
        for decoding (default: what the aggregation reads)."""
        bos, mine = len(self.encoder.bos), self._my_chunks(plan).chunks
        longest = max(len(c) for c in plan.chunks)
        common = dict(
            chunks=len(mine),
            prefix_slots=bos + longest,
            dynamic_prompt=len(plan.dynamic_prompt),
            local=len(plan.local),
            bos=bos,
            max_new_tokens=cfg.max_new_tokens,
            batch_tokens=cfg.encode_batch_tokens,
            cached=self._stored_prefixes([bos + len(c) for c in mine], exit_layer),
            windows=self.runner.windows(cfg.encode_batch_tokens),
        )
        if mode == "select":
            read_tokens = min(cfg.passage_tokens + cfg.select_tokens, plan.memory_tokens)
            return chunked_layout(mode, read=0, read_tokens=read_tokens, exit_layers=exit_layer + 1, **common)
        read = min(cfg.chunks_read(self.native_window, mode) if keep is None else keep, len(plan.chunks))
        read_tokens = min(read * longest, self._focus_room(plan, cfg))
        reencode = mode == "focus" and self._rotation(cfg) is None
        return chunked_layout(mode, read=read, read_tokens=read_tokens, reencode=reencode, **common)

    def _rotation(self, cfg: FocusConfig) -> KeyRotation | None:
        """How ``focus`` moves the chosen chunks' stored keys into place; None: it reads the chunks again."""
        return KeyRotation.of(self.model) if cfg.focus_kv == "reuse" else None

    def _stored_prefixes(self, lengths: list[int], exit_layer: int | None) -> tuple[KVBlock, ...]:
        """What prefixes of ``lengths`` tokens take in the prefix cache (:class:`PrefixKV`): every layer
        they hold (all, or up to ``exit_layer``), the sliding-window ones with their window only."""
        r = self.runner
        held = r.num_layers if exit_layer is None else exit_layer + 1
        windowed = sum(1 for i in r.windowed_layers if i < held)
        blocks = (KVBlock(1, sum(lengths), held - windowed),)
        if windowed:
            blocks += (KVBlock(1, sum(min(n, r.sliding_window) for n in lengths), windowed),)
        return blocks

    def _estimate(self, layout: Layout, cfg: FocusConfig) -> MemoryEstimate:
        # prefixes are cached in host memory: they count against the budget only when that is host memory too
        host = self.runner.device.type == "cpu"
        return estimate(layout, self.runner, prefix_cache_bytes=cfg.prefix_cache_bytes, host_cache=host)

    def _progress(self, cfg: FocusConfig) -> bool:
        return cfg.progress if cfg.progress is not None else sys.stderr.isatty()

    def _start(self, request: Request, on_read: Callable[[Reading], None] | None = None) -> DecodingState:
        """Read the prompt and build the decoding state of the request's aggregation."""
        device, layout, cfg, mode = self.runner.device, request.layout, request.config, request.mode
        if request.plain:
            sequence = self._sequence(layout, cfg)
            return PlainDecoding(sequence, sequence.append(torch.tensor(request.ids, device=device)))
        reading = self._select(request) if mode == "select" else self._read(request)
        if on_read is not None:
            on_read(reading)
        plan, bos = request.plan, self.encoder.bos
        if mode == "select":  # ordinary attention over the opening, the selection and the local context
            memory = list(itertools.chain.from_iterable(plan.chunks))
            read = [t for start, end in merge(reading.spans) for t in memory[start:end]]
            sequence = self._sequence(layout, cfg)
            return PlainDecoding(sequence, sequence.append(torch.tensor(bos + tuple(read) + plan.local, device=device)))
        if mode == "focus":
            rotation = self._rotation(cfg)
            chunks = [plan.chunks[i] for i in reading.chosen]
            return focus_decoding(
                self.runner,
                rotation,
                chunks,
                reading.prefixes,
                bos,
                list(plan.local),
                layout.state[0].slots,
                cfg.encode_batch_tokens,
            )
        chunks, chunk_logits = self.encoder.with_prompt(
            reading.prefixes,
            plan.dynamic_prompt,
            slots=layout.state[0].slots,
            candidate=mode == "kv",
            batch_tokens=cfg.encode_batch_tokens,
        )
        if mode == "kv":
            return KVAggregation(self.runner, KeyRotation.of(self.model), chunks, list(plan.local))
        local = SequenceBatch(self.runner, rows=1, capacity=layout.state[1].slots)
        local_logits = local.append(torch.tensor(bos + plan.local, device=device))
        return EntropyAggregation(PlainDecoding(local, local_logits), chunks, chunk_logits)

    def _sequence(self, layout: Layout, cfg: FocusConfig) -> SequenceBatch:
        """The one sequence of ``plain`` and ``select`` decoding, read ``encode_batch_tokens`` at a time."""
        return SequenceBatch(
            self.runner, rows=1, capacity=layout.state[0].slots, forward_tokens=cfg.encode_batch_tokens
        )

    def _read(self, request: Request, keep: int | None = None) -> Reading:
        """The parallel pass: score every chunk, choose the most relevant (``keep``, by default what the
        request's layout keeps, within the window in ``focus``) and gather their prefix KV (from the
        processes holding them, in a process group)."""
        plan, cfg, layout = request.plan, request.config, request.layout
        if keep is not None:
            layout = self._layout(plan, cfg, request.mode, request.exit_layer, keep=keep)
        keep = layout.kept.rows
        mine, offset = self._my_chunks(plan), self.group.share(len(plan.chunks)).start if self.group else 0
        focus = request.mode == "focus"
        pinned = (0,) if focus and keep else ()  # focus always reads the prompt's opening (instructions)
        scored = self.encoder.score(
            mine,
            keep=keep,
            layout=layout,
            progress=self._progress(cfg),
            pinned=pinned if offset == 0 else (),
        )
        loglik = scored.loglik if self.group is None else self.group.gather_rows(scored.loglik, len(plan.chunks))
        relevance = loglik - self.encoder.baseline(plan.dynamic_prompt)
        lengths = [len(c) for c in plan.chunks]
        room = self._focus_room(plan, cfg) if focus else sum(lengths)
        chosen = select(relevance, lengths, max_chunks=keep, max_tokens=room, pinned=pinned)
        if self.group is None:
            prefixes = [scored.kept[i] for i in chosen]
        else:
            r, bos = self.runner, len(self.encoder.bos)

            def shape(i: int) -> tuple[int, ...]:
                return (r.num_layers, r.kv_heads, bos + lengths[i], r.head_dim)

            prefixes = self.group.exchange_prefixes(scored.kept, chosen, len(plan.chunks), shape, r.dtype)
        return Reading(_chunk_ranges(plan), relevance, chosen, prefixes)

    def _select(self, request: Request) -> Reading:
        """The early-exit pass of ``select``: the attention the question pays to every memory token in the
        exit layer (gathered from every process in a group), the passages it chooses, and the opening."""
        plan, cfg, layout, layer = request.plan, request.config, request.layout, request.exit_layer
        probe = probed(plan)  # every chunk at one length
        mine = self._my_chunks(probe)
        rows = question_rows(plan.dynamic_prompt, *question_marks(self.tokenizer, plan.dynamic_prompt))
        grid = self.encoder.attend(mine, layers=(layer,), rows=rows, layout=layout, progress=self._progress(cfg))
        width = len(probe.chunks[0]) if probe.chunks else 0
        grid = grid[layer].reshape(len(mine.chunks), rows[1] - rows[0], width)  # [this process's chunks, queries, C]
        if self.group is not None:
            grid = self.group.gather_rows(grid, len(probe.chunks))
        mass = memory_mass(grid, plan)  # [queries, memory tokens]
        opening = min(cfg.passage_tokens, plan.memory_tokens)
        spans = choose_spans(
            mass, passage=cfg.passage_tokens, budget=cfg.select_tokens, skip=opening, drop=cfg.select_drop
        )
        mass = mass.sum(dim=0)  # [memory tokens]: what the whole question draws
        spans = [Span(0, opening, float(mass[:opening].sum())), *spans]
        n, size = plan.memory_tokens, cfg.passage_tokens
        units = [(a, min(a + size, n)) for a in range(0, n, size)]
        relevance = torch.stack([mass[a:b].sum() for a, b in units])
        return Reading(units, relevance, spans=spans)

    def _scored(self, request: Request, items: Sequence[tuple[int, tuple[int, int], float]]) -> list[ChunkScore]:
        """``(index, memory range, score)`` items as :class:`ChunkScore`: with token spans in the prompt,
        character spans (text prompts) and text."""
        prompt, plan, offsets = request.prompt, request.plan, request.offsets(self.tokenizer)
        memory = list(itertools.chain.from_iterable(plan.chunks))
        out = []
        for i, (a, b), score in items:
            start, end = plan.memory_start + a, plan.memory_start + b
            chars = (offsets[start][0], offsets[end - 1][1]) if offsets is not None else None
            text = prompt[chars[0] : chars[1]] if chars is not None else self.tokenizer.decode(memory[a:b])
            out.append(ChunkScore(i, float(score), (start, end), chars, text))
        return out

    def _my_chunks(self, plan: ChunkPlan) -> ChunkPlan:
        """The chunks this process holds: all of them, or its share when running in a process group."""
        if self.group is None:
            return plan
        return dataclasses.replace(plan, chunks=plan.chunks[self.group.share(len(plan.chunks))])

    @torch.inference_mode()
    def _decode(self, request: Request, on_read: Callable[[Reading], None] | None = None) -> Iterator[int]:
        """The new tokens, up to ``max_new_tokens``; the end-of-sequence token ends them unyielded."""
        cfg, state = request.config, self._start(request, on_read)
        sampler = Sampler(cfg, self.runner.device)
        for step in range(cfg.max_new_tokens):
            token = sampler(state.next_logits())
            if self.group is not None:
                token = self.group.broadcast_token(token)  # every process continues with rank 0's choice
            if token in self.eos_token_ids:
                return
            yield token
            if step + 1 < cfg.max_new_tokens:
                state.append(token)

    def _stream_text(self, request: Request, generation: Generation) -> Iterator[str]:
        """Text pieces of the new tokens, cut at a stop string; ``generation`` records the reading, the
        tokens and why decoding ended."""
        cfg, text = request.config, TextStream(self.tokenizer, request.config.stop)
        for token in self._decode(request, generation._on_read):
            generation.completion_ids.append(token)
            piece = text.push(token)
            if piece:
                yield piece
            if text.stopped:
                generation.finish_reason = "stop"
                return
        reached = len(generation.completion_ids) == cfg.max_new_tokens
        generation.finish_reason = "length" if reached else "stop" if generation.completion_ids else "empty"
        if generation.finish_reason == "empty":
            logger.warning(
                "%s ended its answer at its first token (end-of-sequence): the reply is empty. Ask the "
                "question so that it invites an answer (a chat template, or an answer prefix after 'Answer:')",
                self.model_name,
            )
        tail = text.flush()
        if tail:
            yield tail


def _chunk_ranges(plan: ChunkPlan) -> list[tuple[int, int]]:
    """``[start, end)`` of every chunk in the memory's tokens."""
    ends = list(itertools.accumulate(len(c) for c in plan.chunks))
    return [(end - len(c), end) for c, end in zip(plan.chunks, ends)]


def _model_window(model: PreTrainedModel) -> int:
    config = model.config.get_text_config()
    window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not window:
        raise FocusConfigError("the model config names no context length; set FocusConfig(native_window=...)")
    return int(window)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return frozenset(ids)
