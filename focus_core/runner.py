"""The model runner: batches of sequences that grow in lockstep through a frozen causal LM.

A :class:`SequenceBatch` owns a :class:`KVBuffer` and the next position of each row; ``append`` runs
new tokens for all rows in one batched forward (micro-batched over rows to bound activation memory)
and returns each row's next-token logits. Rows may start with different lengths (left padding), so
positions are explicit per row.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .candidates import CandidateProjections, candidate_positions
from .kv_cache import KVBuffer


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
        self.candidates: CandidateProjections | None = None  # applied where a forward's candidate mask is set

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

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

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None,
        candidate_mask: torch.Tensor | None = None,
        logits: bool = True,
    ) -> torch.Tensor | None:
        """Logits ``[batch, vocab]`` (fp32) of the last position of every row, or None if not wanted.

        The LM head runs on the last hidden state only, as a 2-D matmul: slicing a 3-D hidden state
        first (``logits_to_keep``) makes CPU matmul copy the head weight once per row.
        """
        with candidate_positions(candidate_mask, self.candidates):
            hidden = self.model.base_model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        if not logits:
            return None
        out = self.model.get_output_embeddings()(hidden[:, -1].contiguous()).float()
        softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return out if softcap is None else torch.tanh(out / softcap) * softcap


class SequenceBatch:
    """``rows`` sequences in one KV buffer, appended to together.

    ``next_positions[r]`` is the position the next token of row ``r`` takes.
    """

    def __init__(self, runner: ModelRunner, rows: int, capacity: int):
        self.runner = runner
        self.kv = KVBuffer(runner.num_layers, rows, capacity, runner.device, runner.dtype)
        self.next_positions = torch.zeros(rows, dtype=torch.long, device=runner.device)

    @property
    def rows(self) -> int:
        return self.kv.rows

    def start_padded(self, sequences: Sequence[Sequence[int]], pad_token_id: int = 0) -> None:
        """Run the first tokens of every row, left-padded to a common length (no logits: a prefix)."""
        width = max(len(s) for s in sequences)
        pad = torch.tensor([width - len(s) for s in sequences], device=self.runner.device)
        ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in sequences], device=self.runner.device)
        slots = torch.arange(width, device=self.runner.device)[None, :]
        valid = slots >= pad[:, None]  # [rows, width]
        positions = (slots - pad[:, None]).clamp(min=0)
        mask = None if bool(valid.all()) else valid
        self.runner.forward(ids, positions, self.kv.cache(), mask, logits=False)
        self.kv.advance(width, valid)
        self.next_positions = width - pad

    def append(
        self, tokens: torch.Tensor, *, candidate_last: bool = False, max_batch_tokens: int | None = None
    ) -> torch.Tensor:
        """Append ``tokens`` ([rows, t], or [t] for the same tokens in every row) to every row.

        With ``candidate_last`` the last new token of each row is a candidate token (kv aggregation).
        Rows are processed in groups of at most ``max_batch_tokens`` new tokens. Returns the logits
        ``[rows, vocab]`` of each row's last new token.
        """
        if tokens.dim() == 1:
            tokens = tokens[None, :].expand(self.rows, -1)
        t = tokens.shape[1]
        group = self.rows if max_batch_tokens is None else max(1, max_batch_tokens // t)
        positions = self.next_positions[:, None] + torch.arange(t, device=tokens.device)[None, :]
        candidate = torch.zeros_like(tokens, dtype=torch.bool)
        candidate[:, -1] = candidate_last
        logits = []
        for start in range(0, self.rows, group):
            rows = slice(start, min(start + group, self.rows))
            mask = self.kv.attention_mask(rows, t)
            logits.append(
                self.runner.forward(
                    tokens[rows],
                    positions[rows],
                    self.kv.cache(rows),
                    None if bool(mask.all()) else mask,
                    candidate[rows] if candidate_last else None,
                )
            )
        self.kv.advance(t)
        self.next_positions = self.next_positions + t
        return torch.cat(logits)
