"""Resolving a call into a :class:`Request` (docs/design.md, "Data path" and "Memory plan"): the call's
settings checked, the mode chosen (``auto`` routed through the registry), the chunk plan, the buffers
the mode allocates and what they take, the encoding micro-batch shrunk until that fits the memory
budget, or the prompt refused (:class:`MemoryBudgetError`, naming what would fit)."""

from __future__ import annotations

import threading
from typing import Any

from . import modes
from .chunking import ChunkPlan, plan_chunks
from .config import ENGINE_SETTINGS, FocusConfig
from .errors import FocusConfigError
from .memory import MemoryEstimate, available_bytes, check_fits, estimate, format_bytes
from .modes.base import EngineParts, Mode, Reading
from .request import Prompt, Request


class Planner:
    """Resolves one engine's calls; holds its modes, each built on first use."""

    def __init__(self, parts: EngineParts):
        self.parts = parts
        self._modes: dict[str, Mode] = {}
        self._lock = threading.Lock()

    def mode(self, name: str) -> Mode:
        """This engine's mode ``name`` (a registered one), built on first use."""
        with self._lock:
            if name not in self._modes:
                self._modes[name] = modes.entry(name).load()(self.parts)
            return self._modes[name]

    def route(self, cfg: FocusConfig) -> Mode:
        """The mode a chunked call runs: the one named, or for ``auto`` the first of the registry's ``auto``
        order that serves it (a stateful mode only once it was built)."""
        if cfg.aggregation != "auto":
            return self.mode(cfg.aggregation)
        for name in modes.auto_order():
            if modes.entry(name).stateful and name not in self._modes:
                continue
            mode = self.mode(name)
            if mode.serves_auto(cfg):
                return mode
        raise FocusConfigError(
            f"no mode serves aggregation='auto' here; name one of {modes.names()}", setting="aggregation"
        )

    def choose(self, tokens: int, cfg: FocusConfig) -> Mode:
        """The mode a prompt of ``tokens`` runs: ``plain`` where it fits the native window with its answer,
        unless the mode the call routes to reads such a prompt itself; otherwise that mode."""
        routed = self.route(cfg)
        whole = self.parts.fits(tokens, cfg) and not routed.reads_inside_window(tokens, cfg)
        return self.mode("plain") if whole else routed

    def describe(self, cfg: FocusConfig) -> str:
        """The model, its precision and why, the device, the native window and the mode ``cfg`` runs."""
        parts = self.parts
        loaded = getattr(parts.model, "focus_precision_reason", None)
        kernel = getattr(parts.model.config.get_text_config(), "_attn_implementation", None)
        dtype = str(parts.runner.dtype).removeprefix("torch.")
        precision = loaded or f"dtype {dtype}; attention {kernel} (given)"
        mode = self.route(cfg).describe(cfg)
        where = f"{parts.runner.device}; native window {parts.native_window}"
        return f"{parts.model_name}: {precision}; {where}; aggregation {cfg.aggregation} -> {mode}"

    def settings(self, base: FocusConfig, overrides: dict[str, Any]) -> FocusConfig:
        """``base`` with a call's ``overrides``, checked against the model's window and the mode."""
        fixed = sorted(set(overrides) & set(ENGINE_SETTINGS))
        if fixed:
            raise FocusConfigError(
                f"{', '.join(fixed)} belong(s) to the engine and cannot change per call; build an engine with "
                f"FocusConfig({fixed[0]}=...)",
                setting=fixed[0],
            )
        cfg = base.replace(**overrides) if overrides else base
        self.check(cfg)
        return cfg

    def check(self, cfg: FocusConfig) -> None:
        window = self.parts.native_window
        cfg.check_window(window)
        if cfg.local_window + cfg.max_new_tokens > window:
            raise FocusConfigError(
                f"local_window + max_new_tokens = {cfg.local_window + cfg.max_new_tokens} exceeds the native "
                f"window {window}",
                setting="local_window",
            )
        self.route(cfg).check(cfg)

    def plan(self, ids: list[int], cfg: FocusConfig) -> ChunkPlan:
        return plan_chunks(
            ids,
            chunk_size=cfg.chunk_size,
            local_window=cfg.local_window,
            dynamic_prompt_len=cfg.dynamic_prompt_len,
            bos_token_id=self.parts.tokenizer.bos_token_id,
        )

    def resolve(
        self,
        prompt: Prompt,
        ids: list[int],
        offsets: list[tuple[int, int]] | None,
        cfg: FocusConfig,
        plan: ChunkPlan | None = None,
        mode: Mode | None = None,
    ) -> Request:
        """The request for ``ids`` under ``cfg``, not yet checked against the budget (``plan``: the chunk
        plan, when already known; ``mode``: the mode of a long prompt, when already decided)."""
        mode = mode or self.choose(len(ids), cfg)
        plan = (plan or self.plan(ids, cfg)) if mode.chunked else None
        layout = mode.layout(ids, plan, cfg)
        return Request(prompt, ids, offsets, cfg, mode, plan, layout, self.estimate(layout, cfg))

    def read(self, request: Request) -> Reading | None:
        """What the request's mode reads (kept on the request). Under ``auto`` the mode may then hand the
        request over (``select``: a request about the whole document, to ``whole``): it is resolved again
        for the mode taking it, checked against the budget before that mode allocates anything, and read
        by it; ``route`` says why."""
        request.reading = request.mode.read(request)
        handover = request.mode.hand_over(request, request.reading) if request.config.aggregation == "auto" else None
        if handover is not None:
            taker = self.mode(handover.mode)
            try:
                taker.check(request.config)
            except FocusConfigError as refused:  # the reading stands: auto never fails for a mode it picked
                request.route = f"{handover.reason}; kept by {request.mode}, as {taker} refuses the settings: {refused}"
                return request.reading
            taken = self.resolve(request.prompt, request.ids, request.offsets, request.config, request.plan, taker)
            taken = self.fit_to_budget(taken)
            request.mode, request.plan, request.layout = taken.mode, taken.plan, taken.layout
            request.estimate = taken.estimate
            request.config, request.route = taken.config, handover.reason
            request.reading = request.mode.read(request)
        return request.reading

    def estimate(self, layout, cfg: FocusConfig) -> MemoryEstimate:
        # prefixes are cached in host memory: they count against the budget only when that is host memory too
        host = self.parts.runner.device.type == "cpu"
        return estimate(layout, self.parts.runner, prefix_cache_bytes=cfg.prefix_cache_bytes, host_cache=host)

    def budget(self, cfg: FocusConfig) -> int:
        """Bytes one call may use: ``memory_budget_bytes``, by default 80% of what the device has free."""
        return cfg.memory_budget_bytes or int(0.8 * available_bytes(self.parts.runner.device))

    def fit_to_budget(self, request: Request) -> Request:
        """Shrink the encoding micro-batch until the estimate fits the budget, or refuse the prompt."""
        budget = self.budget(request.config)
        while request.estimate.total > budget and request.config.encode_batch_tokens > request.config.chunk_size:
            cfg = request.config
            cfg = cfg.replace(encode_batch_tokens=max(cfg.chunk_size, cfg.encode_batch_tokens // 2))
            request = self.resolve(request.prompt, request.ids, request.offsets, cfg, request.plan, request.mode)
        if request.estimate.total > budget:
            what = f"this prompt of {len(request.ids)} tokens"
            check_fits(request.estimate, budget, what=what, hint=self._fit_hint(request, budget))
        return request

    def _fit_hint(self, request: Request, budget: int) -> str:
        """Settings that would make an over-budget prompt fit, each with what it would need."""
        options, ids, cfg = [], request.ids, request.config
        if cfg.prefix_cache_bytes > 0:
            need = self.resolve(ids, ids, None, cfg.replace(prefix_cache_bytes=0), request.plan).estimate
            options.append(f"an engine with FocusConfig(prefix_cache_bytes=0) ({format_bytes(need.total)})")
        low, high = 0, len(ids)  # the longest prefix of this prompt that fits: low fits, high does not
        while high - low > 1:
            mid = (low + high) // 2
            fits = self.resolve(ids[:mid], ids[:mid], None, cfg).estimate.total <= budget
            low, high = (mid, high) if fits else (low, mid)
        if low:
            options.append(f"a prompt of at most ~{low} tokens")
        if self.parts.runner.dtype.itemsize > 2:
            options.append("loading the model in bfloat16 (half the KV bytes)")
        group = self.parts.group
        world = group.world if group else 1
        options.append(f"more processes (torchrun --nproc_per_node {2 * world}: each holds its share of the chunks)")
        options.append("a larger memory_budget_bytes if the machine has the memory")
        return "Would fit: " + "; or ".join(options) + "."
