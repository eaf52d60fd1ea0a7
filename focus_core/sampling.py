"""Token sampling (greedy, temperature, top-k, top-p, seed) and incremental detokenisation with stop
strings (docs/design.md)."""

from __future__ import annotations

import torch

from .config import FocusConfig


class Sampler:
    """Picks the next token from fp32 logits ``[vocab]`` according to the generation settings."""

    def __init__(self, config: FocusConfig, device: torch.device):
        self.config = config
        self.generator = torch.Generator(device=device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        cfg = self.config
        if cfg.greedy:
            return int(logits.argmax())
        logits = logits.float() / cfg.temperature
        if cfg.top_k > 0:
            kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= cfg.top_p  # keep the first token always
            logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class TextStream:
    """Turns generated token ids into text pieces, cutting at the first stop string.

    Text that might be the start of a stop string, or an incomplete UTF-8 character, is held back until
    the next token decides it. After a stop string is seen ``stopped`` is true and nothing more comes out.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return self._emit(text, cut)
        if text.endswith("\ufffd"):
            return ""
        return self._emit(text, len(text) - self._partial_stop_len(text))

    def flush(self) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._emit(text, len(text))

    def _emit(self, text: str, end: int) -> str:
        piece = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece

    def _first_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
