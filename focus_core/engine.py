"""The FocusLLM engine facade: text in, text out (DESIGN §2).

``FocusEngine`` ties the pieces together along the data's path: tokenise → plan chunks → check the
memory budget → encode chunks (prefix cache, batched) → aggregate candidates → sample → detokenise.
Every call builds its own decoding state, so concurrent calls from threads are independent; what they
share (the prefix cache, counters, candidate projections) is locked.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import adapters
from .aggregation import EntropyAggregation, KVAggregation
from .candidates import CandidateProjections
from .chunking import ChunkPlan, plan_chunks
from .config import FocusConfig
from .distributed import ChunkGroup
from .encoding import ChunkEncoder, EncodingStats
from .errors import FocusConfigError, FocusInputError, FocusInputTypeError
from .kv_cache import PrefixCache
from .loading import load_model
from .memory import MemoryEstimate, available_bytes, check_fits, format_bytes
from .runner import ModelRunner, SequenceBatch
from .sampling import Sampler, TextStream

Prompt = str | Sequence[int] | torch.Tensor


class FocusEngine:
    """FocusLLM over a frozen Hugging Face causal LM."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: FocusConfig | None = None,
                 prefix_cache: PrefixCache | None = None):
        """``prefix_cache``: share another engine's cache of encoded chunks (same model and dtype only)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config if config is not None else FocusConfig()
        if not isinstance(self.config, FocusConfig):
            raise FocusConfigError(f"config must be a FocusConfig, got {type(self.config).__name__}")
        self.native_window: int = self.config.native_window or _model_window(model)
        self._check_window(self.config)
        self.runner = ModelRunner(model)
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache(self.config.prefix_cache_bytes)
        self.encoder = ChunkEncoder(self.runner, self.prefix_cache, tokenizer.bos_token_id)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._candidates: CandidateProjections | None = None
        self._candidates_trained = False
        self._lock = threading.Lock()
        self.group = ChunkGroup.detect()  # chunk-parallel across processes when run in a process group

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | None = None, config: FocusConfig | None = None, *,
        adapter: str | os.PathLike | bool | None = None, **load_kwargs: Any,
    ) -> FocusEngine:
        """Load a model (``None``: the embedded default) with :func:`load_model` and wrap it.

        ``adapter``: a directory written by :meth:`save_adapter` to load trained candidate projections
        from; ``None`` loads the adapter shipped for the embedded default model (if any); ``False`` none.
        """
        model, tokenizer = load_model(name_or_path, **load_kwargs)
        engine = cls(model, tokenizer, config)
        if adapter is None and name_or_path is None:
            adapter = adapters.shipped_adapter()
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
        budget = self.config.memory_budget_bytes or int(0.8 * available_bytes(self.runner.device))
        return max(self.native_window, budget // (2 * self.runner.kv_bytes_per_token()))

    def generate(self, prompt: Prompt, **overrides: Any) -> str:
        """The completion of ``prompt``; ``overrides`` replace :class:`FocusConfig` generation settings."""
        return "".join(self.stream(prompt, **overrides))

    def stream(self, prompt: Prompt, **overrides: Any) -> Iterator[str]:
        """Like :meth:`generate`, yielding text pieces as tokens are decoded.

        Input, settings and memory are checked here, before the first piece is asked for.
        """
        cfg, ids = self._prepare(prompt, overrides)
        return self._stream_text(ids, cfg)

    def generate_ids(self, prompt: Prompt, **overrides: Any) -> list[int]:
        """The generated token ids (EOS excluded, stop strings not applied)."""
        return list(self.stream_ids(prompt, **overrides))

    def stream_ids(self, prompt: Prompt, **overrides: Any) -> Iterator[int]:
        """Like :meth:`generate_ids`, yielding each token id as soon as it is decoded."""
        cfg, ids = self._prepare(prompt, overrides)
        return self._decode(ids, cfg)

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
        cfg, ids = self._prepare(prompt, {**overrides, "max_new_tokens": len(targets)})
        state = self._start(ids, cfg)
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
            raise FocusConfigError(f"the tokenizer of {self.model_name} has no chat template")
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
        """The aggregation actually used: ``auto`` is ``kv`` with trained candidate weights, else ``entropy``."""
        mode = (config or self.config).aggregation
        if mode == "auto":
            return "kv" if self._candidates_trained else "entropy"
        return mode

    def estimate_memory(self, prompt: Prompt, **overrides: Any) -> MemoryEstimate:
        """Bytes the prompt will need (what the budget check compares)."""
        cfg = self._settings(overrides)
        return self._estimate(self.tokenize(prompt), cfg)

    # ----------------------------------------------------------------- internals

    def _settings(self, overrides: dict[str, Any]) -> FocusConfig:
        cfg = self.config.replace(**overrides) if overrides else self.config
        if cfg.native_window is not None and cfg.native_window != self.native_window:
            raise FocusConfigError("native_window is fixed per engine; set it in the engine's FocusConfig")
        self._check_window(cfg)
        return cfg

    def _check_window(self, cfg: FocusConfig) -> None:
        cfg.check_window(self.native_window)
        if cfg.local_window + cfg.max_new_tokens > self.native_window:
            raise FocusConfigError(
                f"local_window + max_new_tokens = {cfg.local_window + cfg.max_new_tokens} exceeds the native "
                f"window {self.native_window}"
            )

    def _prepare(self, prompt: Prompt, overrides: dict[str, Any]) -> tuple[FocusConfig, list[int]]:
        cfg = self._settings(overrides)
        ids = self.tokenize(prompt)
        if self.aggregation_for(cfg) == "kv":
            self._candidate_projections()  # refuses unsupported models now, not mid-stream
            n = len(self._plan(ids, cfg).chunks) if not self._fits(ids, cfg) else 0
            if n + cfg.local_window + cfg.max_new_tokens > self.native_window:
                raise FocusConfigError(
                    f"kv aggregation puts {n} chunk entries before the local context, which overflows the native "
                    f"window {self.native_window}; raise chunk_size or lower local_window"
                )
        cfg = self._fit_to_budget(ids, cfg)
        return cfg, ids

    def _fit_to_budget(self, ids: list[int], cfg: FocusConfig) -> FocusConfig:
        """Shrink the encoding micro-batch until the estimate fits the budget, or refuse the prompt."""
        budget = cfg.memory_budget_bytes or int(0.8 * available_bytes(self.runner.device))
        estimate = self._estimate(ids, cfg)
        while estimate.total > budget and cfg.encode_batch_tokens > cfg.chunk_size:
            cfg = cfg.replace(encode_batch_tokens=max(cfg.chunk_size, cfg.encode_batch_tokens // 2))
            estimate = self._estimate(ids, cfg)
        if estimate.total > budget:
            check_fits(estimate, budget, what=f"this prompt of {len(ids)} tokens", hint=self._fit_hint(ids, cfg, budget))
        return cfg

    def _fit_hint(self, ids: list[int], cfg: FocusConfig, budget: int) -> str:
        """Settings that would make an over-budget prompt fit, each with what it would need."""
        options = []
        if cfg.prefix_cache_bytes > 0:
            need = self._estimate(ids, cfg.replace(prefix_cache_bytes=0)).total
            options.append(f"prefix_cache_bytes=0 ({format_bytes(need)})")
        low, high = 0, len(ids)  # the longest prefix of this prompt that fits: low fits, high does not
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self._estimate(ids[:mid], cfg).total <= budget else (low, mid)
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
        return plan_chunks(ids, chunk_size=cfg.chunk_size, local_window=cfg.local_window,
                           dynamic_prompt_len=cfg.dynamic_prompt_len, bos_token_id=self.tokenizer.bos_token_id)

    def _estimate(self, ids: list[int], cfg: FocusConfig) -> MemoryEstimate:
        per_token = self.runner.kv_bytes_per_token()
        if self._fits(ids, cfg):
            n = len(ids)
            return MemoryEstimate(per_token * (n + cfg.max_new_tokens), self.runner.activation_bytes(1, n, n), 0)
        plan = self._plan(ids, cfg)
        width = self.encoder.prefix_slots(plan)
        rows = max(1, len(self._my_chunks(plan).chunks))
        decode_slots = len(plan.dynamic_prompt) + cfg.max_new_tokens
        kv = per_token * (rows * (width + decode_slots) + 1 + cfg.local_window + cfg.max_new_tokens + rows)
        group = min(rows, max(1, cfg.encode_batch_tokens // width))
        encode = 2 * per_token * group * width + self.runner.activation_bytes(group, width, width)
        prompt_rows = min(rows, max(1, cfg.encode_batch_tokens // len(plan.dynamic_prompt)))
        prompt_pass = self.runner.activation_bytes(prompt_rows, len(plan.dynamic_prompt), width + decode_slots)
        # prefixes are cached in host memory: they count against the budget only when that is host memory too
        host = self.runner.device.type == "cpu"
        new_prefixes = min(per_token * rows * width, cfg.prefix_cache_bytes) if host else 0
        return MemoryEstimate(kv, max(encode, prompt_pass), new_prefixes)

    def _candidate_projections(self) -> CandidateProjections:
        with self._lock:
            if self._candidates is None:
                self._install_candidates(CandidateProjections(self.model), trained=False)
            return self._candidates

    def _progress(self, cfg: FocusConfig) -> bool:
        return cfg.progress if cfg.progress is not None else sys.stderr.isatty()

    def _start(self, ids: list[int], cfg: FocusConfig) -> EntropyAggregation | KVAggregation:
        device = self.runner.device
        if self._fits(ids, cfg):
            local = SequenceBatch(self.runner, rows=1, capacity=len(ids) + cfg.max_new_tokens)
            return EntropyAggregation(local, local.append(torch.tensor(ids, device=device)))
        plan = self._plan(ids, cfg)
        total, mine = len(plan.chunks), self._my_chunks(plan)
        kv = self.aggregation_for(cfg) == "kv"
        chunks = chunk_logits = None
        if mine.chunks:
            chunks, chunk_logits = self.encoder.encode(
                mine, extra_slots=cfg.max_new_tokens, batch_tokens=cfg.encode_batch_tokens, candidate=kv,
                progress=self._progress(cfg),
            )
        if kv:
            rotary = self.model.get_decoder().rotary_emb
            return KVAggregation(self.runner, rotary, chunks, list(plan.local), self.group, total)
        local_ids = list(self.encoder.bos + plan.local)
        local = SequenceBatch(self.runner, rows=1, capacity=len(local_ids) + cfg.max_new_tokens)
        local_logits = local.append(torch.tensor(local_ids, device=device))
        return EntropyAggregation(local, local_logits, chunks, chunk_logits, self.group, total)

    def _my_chunks(self, plan: ChunkPlan) -> ChunkPlan:
        """The chunks this process holds: all of them, or its share when running in a process group."""
        if self.group is None:
            return plan
        return dataclasses.replace(plan, chunks=plan.chunks[self.group.share(len(plan.chunks))])

    @torch.inference_mode()
    def _decode(self, ids: list[int], cfg: FocusConfig) -> Iterator[int]:
        state = self._start(ids, cfg)
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

    def _stream_text(self, ids: list[int], cfg: FocusConfig) -> Iterator[str]:
        text = TextStream(self.tokenizer, cfg.stop)
        for token in self._decode(ids, cfg):
            piece = text.push(token)
            if piece:
                yield piece
            if text.stopped:
                return
        tail = text.flush()
        if tail:
            yield tail


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
