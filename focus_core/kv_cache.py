"""KV storage: a preallocated batch buffer that plugs into `transformers` models, and the
content-addressed LRU cache of chunk prefixes (docs/design.md, "Shapes").

Keys are stored as the model caches them, i.e. after RoPE, in layout ``[rows, kv_heads, slots, head_dim]``.
Rows of a batch are left-padded so that all rows grow at the same slot; ``valid`` marks real tokens.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

if TYPE_CHECKING:
    from .memory import Windows


class KVBuffer:
    """Keys and values of ``rows`` sequences, preallocated for ``capacity`` slots each.

    ``length`` slots are in use in every row; ``valid[r, s]`` says whether slot ``s`` of row ``r`` holds a
    real token (left padding does not). Layer tensors are allocated on first write, shaped from the
    model's own key states, so any attention layout with a standard KV cache fits.

    Layers with sliding-window attention (``windows``) may keep only what a forward of at most
    ``windows.forward_tokens`` new tokens still attends to: the last ``window - 1`` slots and the new
    ones, ``window - 1 + forward_tokens`` slots in all (Gemma 3 at 32K: 15 of 18 layers hold 4.6K slots,
    not 32K). Their tensors hold slots ``first_slot[i]`` onwards; :meth:`span` moves them along.
    """

    def __init__(
        self,
        num_layers: int,
        rows: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        windows: Windows | None = None,
    ):
        self.rows, self.capacity, self.device, self.dtype = rows, capacity, torch.device(device), dtype
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.valid = torch.zeros(rows, capacity, dtype=torch.bool, device=self.device)
        self.length = 0
        kept = windows.kept_slots(capacity) if windows else None
        self.windowed = frozenset(windows.layers) if kept else frozenset()
        self.window = windows.window if kept else 0
        self.window_slots = kept or capacity
        self.first_slot = [0] * num_layers  # the slot each layer's tensors begin at

    def layer(self, idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``idx``'s keys and values over all ``capacity`` slots (a layer kept whole)."""
        if idx in self.windowed:
            raise RuntimeError(f"layer {idx} keeps only its sliding window; use span()")
        if self.keys[idx] is None:
            self._allocate(idx, like, self.capacity)
        return self.keys[idx], self.values[idx]

    def reach(self, idx: int, start: int) -> int:
        """The first slot that tokens written from slot ``start`` on attend to in layer ``idx``."""
        return max(0, start - self.window + 1) if idx in self.windowed else 0

    def span(
        self, idx: int, like: torch.Tensor, end: int, reader: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Layer ``idx``'s keys and values, able to take slots up to ``end`` (exclusive), and the slot
        their index 0 holds. A windowed layer first drops the slots no token from ``reader`` on (by
        default ``length``, the next one written) attends to."""
        if idx not in self.windowed:
            keys, values = self.layer(idx, like)
            return keys, values, 0
        if self.keys[idx] is None:
            self._allocate(idx, like, self.window_slots)
        first = self.reach(idx, self.length if reader is None else reader)
        offset = self.first_slot[idx]
        if end - offset > self.window_slots:  # move the slots still attended to, [first, length), to the front
            if end - first > self.window_slots:
                raise RuntimeError(f"KVBuffer window overflow: slots {first}..{end} in {self.window_slots}")
            live = slice(min(first, self.length) - offset, self.length - offset)
            for tensors in (self.keys, self.values):
                tensors[idx][:, :, : live.stop - live.start] = tensors[idx][:, :, live].clone()
            self.first_slot[idx] = offset = first
        return self.keys[idx], self.values[idx], offset

    def _allocate(self, idx: int, like: torch.Tensor, slots: int) -> None:
        shape = (self.rows, like.shape[1], slots, like.shape[3])
        self.keys[idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values[idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def cache(self, rows: slice = slice(None)) -> Cache:
        """A `transformers` Cache writing the next tokens of ``rows`` at slot ``length`` onwards."""
        return Cache(layers=[_BufferLayer(self, i, rows) for i in range(len(self.keys))])

    def attention_mask(self, rows: slice, new_tokens: int) -> torch.Tensor:
        """2D mask ``[rows, length + new_tokens]`` over the used slots plus ``new_tokens`` real ones."""
        past = self.valid[rows, : self.length]
        new = torch.ones(past.shape[0], new_tokens, dtype=torch.bool, device=self.device)
        return torch.cat([past, new], dim=1)

    def skip(self, slots: int) -> None:
        """Reserve ``slots`` slots in every row without marking them valid (they are filled by ``write_prefix``)."""
        self.length += slots

    def advance(self, new_tokens: int, valid: torch.Tensor | None = None) -> None:
        """Declare that ``new_tokens`` tokens were written to every row; ``valid`` ([rows, new_tokens])
        marks padding among them, all real by default."""
        if self.length + new_tokens > self.capacity:
            raise RuntimeError(f"KVBuffer overflow: {self.length} + {new_tokens} > {self.capacity}")
        self.valid[:, self.length : self.length + new_tokens] = True if valid is None else valid
        self.length += new_tokens

    def write_prefix(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Place a stored prefix ``[layers, kv_heads, T, head_dim]`` right-aligned at the end of used slots."""
        start = self.length - keys.shape[2]
        for i in range(keys.shape[0]):
            k, v = self.layer(i, keys[i][None])
            k[row, :, start : self.length] = keys[i]
            v[row, :, start : self.length] = values[i]
        self.valid[row, :start] = False
        self.valid[row, start : self.length] = True

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``[layers, kv_heads, T, head_dim]`` keys and values at the next ``T`` slots of every row
        (a windowed layer: those the tokens after them will attend to)."""
        end = self.length + keys.shape[2]
        for i in range(keys.shape[0]):
            k, v, offset = self.span(i, keys[i][None], end, reader=end)
            start = max(self.length, self.reach(i, end))  # the first slot written
            k[:, :, start - offset : end - offset] = keys[i][:, start - self.length :]
            v[:, :, start - offset : end - offset] = values[i][:, start - self.length :]
        self.advance(keys.shape[2])

    def read_prefix(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy of row ``row``'s real tokens as ``[layers, kv_heads, T, head_dim]`` keys and values (the
        layers written so far: all of them, or those up to an early exit)."""
        if self.windowed:
            raise RuntimeError("a buffer keeping only sliding windows holds no whole prefix")
        slots = self.valid[row, : self.length].nonzero().squeeze(1)
        keys = torch.stack([k[row].index_select(1, slots) for k in self.keys if k is not None])
        values = torch.stack([v[row].index_select(1, slots) for v in self.values if v is not None])
        return keys, values

    def last_slot(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the keys and values ``[rows, kv_heads, head_dim]`` at the last used slot."""
        slots = [self.length - 1 - first for first in self.first_slot]
        return [k[:, :, s] for k, s in zip(self.keys, slots)], [v[:, :, s] for v, s in zip(self.values, slots)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class _BufferLayer(CacheLayerMixin):
    """One layer's view of a :class:`KVBuffer` for one forward pass over some of its rows."""

    def __init__(self, buffer: KVBuffer, layer_idx: int, rows: slice):
        super().__init__()
        self.buffer, self.layer_idx, self.rows, self.start = buffer, layer_idx, rows, buffer.length
        self.is_sliding = layer_idx in buffer.windowed  # transformers builds its sliding mask from such a layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store the new tokens' keys and values; return those the new tokens attend to (slots
        ``reach .. end``, as :meth:`get_mask_sizes` told the mask)."""
        end = self.start + key_states.shape[-2]
        if end > self.buffer.capacity:
            raise RuntimeError(f"KVBuffer overflow: writing up to slot {end} of {self.buffer.capacity}")
        keys, values, offset = self.buffer.span(self.layer_idx, key_states, end)
        keys[self.rows, :, self.start - offset : end - offset] = key_states
        values[self.rows, :, self.start - offset : end - offset] = value_states
        first = self.buffer.reach(self.layer_idx, self.start) - offset
        return keys[self.rows, :, first : end - offset], values[self.rows, :, first : end - offset]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        first = self.buffer.reach(self.layer_idx, self.start)
        return self.start + query_length - first, first

    def get_seq_length(self) -> int:
        return self.start

    def get_max_length(self) -> int:
        return self.buffer.capacity


class PrefixKV:
    """The KV cache of one ``[BOS] + chunk`` prefix of ``tokens`` tokens: ``keys`` and ``values``
    ``[layers, kv_heads, tokens, head_dim]`` each.

    Layers with sliding-window attention (``windowed``, of ``window`` tokens) are stored with their last
    ``window`` tokens only: any token after the prefix attends, in those layers, to fewer than ``window``
    tokens back, so the rest is never read (Gemma 3: 5 of every 6 layers keep 512 tokens of a 1K chunk).
    ``keys`` and ``values`` give them back zero-filled in front, where the window mask hides them.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, *, windowed: Sequence[int] = (), window: int | None = None
    ):
        layers, _, self.tokens, _ = keys.shape
        trimmed = [i for i in windowed if i < layers] if window is not None and window < self.tokens else []
        self._layers, self._trimmed = layers, trimmed
        self._whole_layers = [i for i in range(layers) if i not in trimmed]
        if not trimmed:
            self._whole, self._tails = (keys, values), None
            return
        whole = self._whole_layers
        self._whole = (keys[whole], values[whole])  # [whole layers, kv_heads, tokens, head_dim]
        self._tails = (keys[trimmed, :, -window:], values[trimmed, :, -window:])  # [.., window, ..]

    @property
    def trimmed(self) -> bool:
        """Whether sliding-window layers hold only their last ``window`` tokens (so no shorter start of this
        prefix can be cut from it)."""
        return bool(self._trimmed)

    @property
    def keys(self) -> torch.Tensor:
        return self._expanded(0)

    @property
    def values(self) -> torch.Tensor:
        return self._expanded(1)

    def _expanded(self, which: int) -> torch.Tensor:
        whole = self._whole[which]
        if self._tails is None:
            return whole
        tail = self._tails[which]
        out = whole.new_zeros(self._layers, whole.shape[1], self.tokens, whole.shape[3])
        out[self._whole_layers] = whole
        out[self._trimmed, :, self.tokens - tail.shape[2] :] = tail
        return out

    @property
    def nbytes(self) -> int:
        stored = [*self._whole, *(self._tails or ())]
        return sum(t.numel() * t.element_size() for t in stored)


def prefix_key(token_ids: tuple[int, ...], dtype: torch.dtype, layers: int | None = None) -> str:
    """Content address of a chunk prefix: the token ids, the cache dtype and, for an early-exit prefix,
    the number of layers it holds."""
    h = hashlib.blake2b(digest_size=20)
    h.update(str(dtype).encode() + (b"" if layers is None else f"/{layers} layers".encode()))
    h.update(torch.tensor(token_ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Thread-safe LRU map from chunk content to its prefix KV, bounded by a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, PrefixKV] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def get(self, key: str) -> PrefixKV | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def keeps(self, entry: PrefixKV) -> bool:
        """Whether :meth:`put` would keep ``entry`` (it fits the byte budget at all)."""
        return entry.nbytes <= self.max_bytes

    def put(self, key: str, entry: PrefixKV) -> None:
        if not self.keeps(entry):
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = entry
            self.nbytes += entry.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[PrefixKV]:
        """The prefixes held, least recently used first."""
        with self._lock:
            return list(self._entries.values())
