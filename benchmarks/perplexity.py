"""Language modelling on held-out long prose: perplexity of a continuation given a long context.

The text is the CPython reference prose (never used for training adapters). For each sample, the
``context_tokens`` before a random paragraph boundary are the prompt and the next ``continuation_tokens``
are scored token by token (teacher forcing). FocusLLM reads the whole context; truncation keeps its last
tokens (the native window, and the FocusLLM local window, so the gain from the chunks is visible).
"""

from __future__ import annotations

import math
import random

from focus_core import FocusEngine

from .haystack import haystack, prose_paragraphs


def sample_ids(engine: FocusEngine, context_tokens: int, continuation_tokens: int, seed: int) -> tuple[list, list]:
    offset = random.Random(1000 + seed).randrange(len(prose_paragraphs()))
    text = "\n\n".join(haystack(engine.tokenizer, context_tokens + continuation_tokens, offset))
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    return ids[:context_tokens], ids[context_tokens : context_tokens + continuation_tokens]


def run_perplexity(
    engine: FocusEngine, lengths: list[int], samples: int, continuation_tokens: int, aggregations: tuple[str, ...]
) -> dict:
    windows = {
        "truncation (native window)": engine.native_window - continuation_tokens,
        "truncation (local window)": engine.config.local_window,
    }
    nll: dict[str, dict[str, list[float]]] = {}
    for n in lengths:
        for seed in range(samples):
            context, continuation = sample_ids(engine, n, continuation_tokens, seed)
            runs = {f"FocusLLM ({a})": (context, {"aggregation": a}) for a in aggregations}
            runs |= {name: (context[-w:], {}) for name, w in windows.items()}
            for name, (prompt, overrides) in runs.items():
                logprobs = engine.score(prompt, continuation, **overrides)
                nll.setdefault(name, {}).setdefault(str(n), []).append(-float(logprobs.mean()))
                print(f"perplexity {n} seed {seed} {name}: {math.exp(nll[name][str(n)][-1]):.2f}", flush=True)
    return {
        "lengths": lengths,
        "samples": samples,
        "continuation_tokens": continuation_tokens,
        "windows": windows,
        "mean_nll": nll,
        "perplexity": {name: {n: math.exp(sum(v) / len(v)) for n, v in by_n.items()} for name, by_n in nll.items()},
    }
