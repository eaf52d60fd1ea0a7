"""What a call is given, checked and tokenised once: prompts as text, token ids or a tensor, chat
messages. Bad input is refused with :class:`FocusInputError` / :class:`FocusInputTypeError` (or
:class:`FocusConfigError` for a chat request to a model without a chat template) before anything runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .errors import FocusConfigError, FocusInputError, FocusInputTypeError
from .request import Prompt

Offsets = list[tuple[int, int]]


def tokenize(tokenizer: PreTrainedTokenizerBase, vocab_size: int, prompt: Prompt) -> tuple[list[int], Offsets | None]:
    """A prompt's token ids, validated, and for text on a fast tokenizer each token's character
    ``[start, end)`` (from the same tokenizer call; attribution needs them)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FocusInputError("the prompt is empty")
        if tokenizer.is_fast:
            encoded = tokenizer(prompt, return_offsets_mapping=True)
            return list(encoded.input_ids), [tuple(o) for o in encoded.offset_mapping]
        return list(tokenizer(prompt).input_ids), None
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() != 1 or prompt.dtype.is_floating_point:
            raise FocusInputTypeError("a tensor prompt must be 1-D integer token ids")
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise FocusInputError("the prompt is empty")
        for t in prompt:
            if isinstance(t, bool) or not isinstance(t, int):
                raise FocusInputTypeError(f"token ids must be ints, got {type(t).__name__}")
            if not 0 <= t < vocab_size:
                raise FocusInputError(f"token id {t} is outside the vocabulary [0, {vocab_size})")
        return list(prompt), None
    raise FocusInputTypeError(f"prompt must be a str, a list of token ids or a tensor, got {type(prompt).__name__}")


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], model_name: str) -> str:
    """The prompt text for chat ``messages`` ([{"role", "content"}, ...]), ready for the assistant's turn."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise FocusInputError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise FocusInputTypeError(f"each message must be a dict with str 'role' and 'content', got {m!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise FocusConfigError(
            f"the tokenizer of {model_name} has no chat template (a base model): give it a completion-style "
            "prompt (generate(text); FocusLLM rather than ChatFocusLLM)",
            setting="chat_template",
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
