"""The model runner: batches of sequences that grow in lockstep through a frozen causal LM.

A :class:`SequenceBatch` owns a :class:`KVBuffer` and the next position of each row; ``append`` runs
new tokens for all rows in one batched forward (micro-batched over rows to bound activation memory)
and returns each row's next-token logits. Rows may start with different lengths (left padding), so
positions are explicit per row.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .decode_step import decode_step
from .errors import UnsupportedModelError
from .kernels import engine_forward, pack_linears
from .kv_cache import KVBuffer, PrefixKV
from .memory import Windows, available_bytes
from .probe import EarlyExit, Probe, install, probing

if TYPE_CHECKING:
    from .candidates import CandidateProjections


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model.base_model`` takes a KV cache: transformers renamed
    ``past_key_values`` to ``cache``; use whichever this version's model takes."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


class ModelRunner:
    """Thin adapter over a `transformers` causal LM: one forward with explicit positions and cache."""

    def __init__(self, model: nn.Module):
        self.model = model
        config = model.config.get_text_config()
        self.num_layers: int = config.num_hidden_layers
        heads = config.num_attention_heads
        self.kv_heads: int = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.hidden_size: int = config.hidden_size
        self.intermediate_size: int = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
        self.vocab_size: int = config.vocab_size
        # layers with sliding-window attention, where a layer-type list names them (Gemma 2/3, Qwen2 ...)
        window = getattr(config, "sliding_window", None)
        types = list(getattr(config, "layer_types", None) or []) if window else []
        self.windowed_layers: tuple[int, ...] = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        self.sliding_window: int | None = window if self.windowed_layers else None
        self.candidates: CandidateProjections | None = None  # kv's: applied where a forward's candidate mask is set
        self._cache_argument = cache_argument(model)
        install(model)  # the attention probe of early-exit passes (inert otherwise)
        free = available_bytes(self.device)
        self.packed_linears = pack_linears(model, free)  # CPU: oneDNN's layout
        self.step = decode_step(model, free)  # one token per row without transformers' dispatch, where it serves

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def sliding_windows(self) -> dict:
        """``windowed`` and ``window`` for :class:`PrefixKV`: which layers keep only their window."""
        return {"windowed": self.windowed_layers, "window": self.sliding_window}

    def windows(self, forward_tokens: int) -> Windows:
        """The sliding-window layers as a sequence appended ``forward_tokens`` at a time keeps them."""
        return Windows(self.windowed_layers, self.sliding_window or 0, forward_tokens)

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys + values one token occupies across all layers."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype.itemsize

    def activation_bytes(self, rows: int, new_tokens: int, kv_len: int) -> int:
        """Upper estimate of the transient memory of one forward over ``rows x new_tokens`` tokens."""
        tokens = rows * new_tokens
        hidden = tokens * (4 * self.hidden_size + 3 * self.intermediate_size) * self.dtype.itemsize
        scores = rows * self.kv_heads * new_tokens * kv_len * 4  # attention scores of one layer, fp32
        logits = rows * self.vocab_size * 4
        return hidden + scores + logits

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None,
        candidate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states ``[batch, t, hidden]`` of the new tokens; ``cache`` grows by them. Where
        ``candidate_mask`` is set (kv), those positions go through the candidate projections. One token per
        row on a CPU without autograd runs the engine's own decoding step where the model has one (on an
        accelerator the model's forward keeps its own attention kernels)."""
        if self.runs_step(input_ids) and candidate_mask is None:
            with engine_forward():
                return self.step(input_ids, position_ids, cache, attention_mask)
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        inputs |= {"use_cache": True, self._cache_argument: cache}
        with engine_forward():
            if candidate_mask is None:
                return self.model.base_model(**inputs).last_hidden_state
            from .candidates import candidate_positions  # kv's stack, loaded only by kv's forwards

            with candidate_positions(candidate_mask, self.candidates):
                return self.model.base_model(**inputs).last_hidden_state

    def runs_step(self, input_ids: torch.Tensor) -> bool:
        """Whether a forward of ``input_ids`` runs the engine's decoding step."""
        one_token = input_ids.shape[1] == 1 and input_ids.device.type == "cpu"
        return self.step is not None and one_token and not torch.is_grad_enabled()

    def probe(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None,
        probe: Probe,
    ) -> Probe:
        """A forward that stops after ``probe``'s last layer (the cache then holds layers up to it) and
        records the attention ``probe`` asks for."""
        with probing(probe), engine_forward():
            try:
                self.model.base_model(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    attention_mask=attention_mask,
                    use_cache=True,
                    **{self._cache_argument: cache},
                )
            except EarlyExit:
                return probe
        raise UnsupportedModelError(
            f"{type(self.model).__name__}'s attention does not go through transformers' attention interface, "
            "which the early-exit pass of aggregation='select' needs; use another aggregation"
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 next-token logits of hidden states ``[n, hidden]``, with the model's own output transforms:
        Granite's ``logits_scaling`` (a divisor) and Gemma's ``final_logit_softcapping``.

        The head runs as a 2-D matmul: on CPU a 3-D one copies the head weight once per row.
        """
        config = self.model.config.get_text_config()
        with engine_forward():
            out = self.model.get_output_embeddings()(hidden.contiguous()).float()
        scaling = getattr(config, "logits_scaling", None)
        out = out if scaling is None else out / scaling
        softcap = getattr(config, "final_logit_softcapping", None)
        return out if softcap is None else torch.tanh(out / softcap) * softcap

    def token_loglik(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log p(targets[r, i] | hidden[r, i])`` summed over ``i``: ``[rows]`` fp32.

        hidden: [rows, t, hidden]; targets: [rows, t]. Rows are done one at a time to bound the
        ``[t, vocab]`` logits held at once.
        """
        out = []
        for h, y in zip(hidden, targets):
            logp = torch.log_softmax(self.logits(h), dim=-1)  # [t, vocab]
            out.append(logp.gather(1, y[:, None]).sum())
        return torch.stack(out)


class SequenceBatch:
    """``rows`` sequences in one KV buffer, appended to together.

    ``next_positions[r]`` is the position the next token of row ``r`` takes. With ``forward_tokens``,
    :meth:`append` runs long inputs in pieces of at most that many tokens (the same keys, values and
    logits, a bounded transient) and the model's sliding-window layers keep only their window.
    """

    def __init__(self, runner: ModelRunner, rows: int, capacity: int, *, forward_tokens: int | None = None):
        self.runner, self.forward_tokens = runner, forward_tokens
        windows = runner.windows(forward_tokens) if forward_tokens is not None else None
        self.kv = KVBuffer(runner.num_layers, rows, capacity, runner.device, runner.dtype, windows=windows)
        self.next_positions = torch.zeros(rows, dtype=torch.long, device=runner.device)

    @property
    def rows(self) -> int:
        return self.kv.rows

    def start_padded(self, sequences: Sequence[Sequence[int]], *, exit_layer: int | None = None) -> None:
        """Run the first tokens of every row, left-padded to a common length (no logits: a prefix).
        Padding slots hold token 0 and are masked out: no real token attends to them. With
        ``exit_layer`` only the layers up to it run (and hold KV)."""
        width = max(len(s) for s in sequences)
        pad = torch.tensor([width - len(s) for s in sequences], device=self.runner.device)
        ids = torch.tensor([[0] * (width - len(s)) + list(s) for s in sequences], device=self.runner.device)
        slots = torch.arange(width, device=self.runner.device)[None, :]
        valid = slots >= pad[:, None]  # [rows, width]
        positions = (slots - pad[:, None]).clamp(min=0)
        mask = None if bool(valid.all()) else valid
        if exit_layer is None:
            self.runner.hidden_states(ids, positions, self.kv.cache(), mask)
        else:
            self.runner.probe(ids, positions, self.kv.cache(), mask, Probe((exit_layer,), (0, 0), valid))
        self.kv.advance(width, valid)
        self.next_positions = width - pad

    def place(self, prefixes: Sequence[PrefixKV], *, width: int) -> None:
        """Start every row of this empty batch with its stored prefix, right-aligned (left-padded) in the
        first ``width`` slots."""
        if max(p.tokens for p in prefixes) > width:
            raise ValueError(f"a prefix is longer than the {width} slots the batch holds for them")
        device = self.runner.device
        self.kv.skip(width)
        for row, p in enumerate(prefixes):
            self.kv.write_prefix(row, p.keys.to(device), p.values.to(device))
        self.next_positions = torch.tensor([p.tokens for p in prefixes], device=device)

    def attend(
        self, tokens: torch.Tensor, *, layers: tuple[int, ...], rows: tuple[int, int]
    ) -> dict[int, torch.Tensor]:
        """Append ``tokens`` ([t], the same in every row) through the layers up to ``max(layers)`` only,
        and return, per layer of ``layers``, the attention mass ``[rows_of_batch, queries, slots]`` (fp32)
        that each of the tokens ``rows`` = ``[start, end)`` pays to every slot of its row (summed over
        heads)."""
        t = len(tokens)
        positions = self.next_positions[:, None] + torch.arange(t, device=tokens.device)[None, :]
        mask = self.kv.attention_mask(slice(None), t)  # [rows, length + t]
        probe = Probe(layers, rows, mask)
        ids = tokens[None, :].expand(self.rows, -1)
        self.runner.probe(ids, positions, self.kv.cache(), None if bool(mask.all()) else mask, probe)
        self.kv.advance(t)
        self.next_positions = self.next_positions + t
        return probe.mass

    def append(
        self,
        tokens: torch.Tensor,
        *,
        candidate_last: bool = False,
        max_batch_tokens: int | None = None,
        loglik: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Append ``tokens`` ([rows, t], or [t] for the same tokens in every row) to every row.

        With ``candidate_last`` the last new token of each row is a candidate token (kv aggregation).
        Rows are processed in groups of at most ``max_batch_tokens`` new tokens, and the tokens in
        pieces of at most ``forward_tokens``. Returns the logits ``[rows, vocab]`` of each row's last new
        token; with ``loglik`` also, per row, the summed log-probability of ``tokens[1:]`` given what
        precedes each (``[rows]``, fp32).
        """
        if tokens.dim() == 1:
            tokens = tokens[None, :].expand(self.rows, -1)
        t = tokens.shape[1]
        piece = t if self.forward_tokens is None else self.forward_tokens
        candidate = None
        if candidate_last:
            candidate = torch.zeros_like(tokens, dtype=torch.bool)
            candidate[:, -1] = True
        logliks = []
        for start in range(0, t, piece):
            end = min(start + piece, t)
            logits, piece_loglik = self._forward(
                tokens[:, start:end],
                candidate[:, start:end] if candidate is not None else None,
                max_batch_tokens,
                tokens[:, start + 1 : end + 1] if loglik else None,
            )
            logliks.append(piece_loglik)
        return (logits, torch.stack(logliks).sum(0)) if loglik else logits

    def _forward(
        self,
        tokens: torch.Tensor,
        candidate: torch.Tensor | None,
        max_batch_tokens: int | None,
        targets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward of ``tokens`` ([rows, t]) per group of rows; the last token's logits ``[rows, vocab]``
        and, with ``targets`` ([rows, <= t], the tokens that follow each new one), their summed
        log-probabilities ``[rows]``."""
        t = tokens.shape[1]
        group = self.rows if max_batch_tokens is None else max(1, max_batch_tokens // t)
        positions = self.next_positions[:, None] + torch.arange(t, device=tokens.device)[None, :]
        logits, logliks = [], []
        for start in range(0, self.rows, group):
            rows = slice(start, min(start + group, self.rows))
            mask = self.kv.attention_mask(rows, t)
            hidden = self.runner.hidden_states(
                tokens[rows],
                positions[rows],
                self.kv.cache(rows),
                None if bool(mask.all()) else mask,
                candidate[rows] if candidate is not None else None,
            )  # [group, t, hidden]
            logits.append(self.runner.logits(hidden[:, -1]))
            if targets is not None:
                logliks.append(self.runner.token_loglik(hidden[:, : targets.shape[1]], targets[rows]))
        self.kv.advance(t)
        self.next_positions = self.next_positions + t
        return torch.cat(logits), torch.cat(logliks) if targets is not None else None
