"""The pass-key retrieval task: a random number hidden at a chosen depth in filler text.

Prompts are completion style ("... The pass key is "), which small instruct models answer reliably;
the 135M default model fails the chat-template phrasing of the same question even with full attention.
The prompt ends with a space: SmolLM2's (and Llama's) tokenizer writes " 60494" as a lone space token
followed by digits, so after "is " the next token is the first digit, on which the chunk holding the
needle is confident and the others are not (after "is" every chunk hesitates between " ", " a", " the").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .errors import FocusInputError

HEADER = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\n\nWhat is the pass key? The pass key is "


@dataclass(frozen=True)
class PasskeyCase:
    prompt: str
    passkey: str
    depth: float  # where the needle sits, as a fraction of the filler

    def is_correct(self, answer: str) -> bool:
        return answers_passkey(answer, self.passkey)


def answers_passkey(answer: str, passkey: str) -> bool:
    """Whether the first number in ``answer`` is ``passkey``."""
    found = re.search(r"\d+", answer)
    return found is not None and found.group() == passkey


def make_case(tokenizer, n_tokens: int, depth: float, seed: int) -> PasskeyCase:
    """A prompt of about ``n_tokens`` tokens with a 5-digit pass key at ``depth`` (0 = start, 1 = end)."""
    if not 0.0 <= depth <= 1.0:
        raise FocusInputError(f"depth must be in [0, 1], got {depth}")
    key = str(random.Random(seed).randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer(HEADER + needle + QUESTION).input_ids)
    unit = len(tokenizer(FILLER * 8).input_ids) / 8
    repeats = max(1, round((n_tokens - fixed) / unit))
    before = round(repeats * depth)
    prompt = HEADER + FILLER * before + needle + FILLER * (repeats - before) + QUESTION
    return PasskeyCase(prompt=prompt, passkey=key, depth=depth)


def spread_depths(count: int) -> list[float]:
    """``count`` needle depths spread evenly over the document (centres of equal slices)."""
    return [(i + 0.5) / count for i in range(count)]
