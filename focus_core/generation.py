"""Decoding one request: read, start the mode's decoding state, sample token by token, detokenise
(docs/design.md, "Data path"). :class:`Generation` is the caller's view of the request as it runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import attribution
from .modes.base import DecodingState
from .planning import Planner
from .relevance import ChunkScore
from .request import Request
from .sampling import Sampler, TextStream

logger = logging.getLogger(__name__)


def start(planner: Planner, request: Request) -> DecodingState:
    """Read the request's prompt (its mode's pass, kept on the request; under ``auto`` the mode may hand
    it over: :meth:`Planner.read`) and start its decoding state."""
    reading = planner.read(request)  # may change the request's mode
    return request.mode.start(request, reading)


@torch.inference_mode()
def token_ids(planner: Planner, request: Request) -> Iterator[int]:
    """The new tokens, up to ``max_new_tokens``; an end-of-sequence token ends them unyielded. In a
    process group every process continues with rank 0's choice."""
    parts, eos_ids = planner.parts, planner.parts.eos_token_ids
    cfg, state = request.config, start(planner, request)
    sampler = Sampler(cfg, parts.runner.device)
    for step in range(cfg.max_new_tokens):
        token = sampler(state.next_logits())
        if parts.group is not None:
            token = parts.group.broadcast_token(token)
        if token in eos_ids:
            return
        yield token
        if step + 1 < cfg.max_new_tokens:
            state.append(token)


def teacher_forced(planner: Planner, request: Request, targets: list[int]) -> torch.Tensor:
    """Log-probabilities ``[len(targets)]`` (fp32) of each target token given the request's prompt and the
    targets before it."""
    state, logprobs = start(planner, request), []
    for step, token in enumerate(targets):
        logprobs.append(torch.log_softmax(state.next_logits().float(), dim=-1)[token])
        if step + 1 < len(targets):
            state.append(token)
    return torch.stack(logprobs)


def text_pieces(planner: Planner, request: Request) -> Iterator[str]:
    """Text pieces of the new tokens, cut at a stop string or where the answer loops; the request records
    the tokens and why decoding ended."""
    parts = planner.parts
    cfg, text = request.config, TextStream(parts.tokenizer, request.config.stop)
    produced = request.completion_ids
    for token in token_ids(planner, request):
        produced.append(token)
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            request.finish_reason = "stop"
            return
        if cfg.repeat_stop is not None and ends_in_a_loop(produced, cfg.repeat_stop):
            request.finish_reason = "repetition"
            break
    else:
        request.finish_reason = "length" if len(produced) == cfg.max_new_tokens else "stop" if produced else "empty"
    if request.finish_reason == "empty":
        logger.warning(
            "%s ended its answer at its first token (end-of-sequence): the reply is empty. Ask the question so "
            "that it invites an answer (a chat template, or an answer prefix after 'Answer:')",
            parts.model_name,
        )
    tail = text.flush()
    if tail:
        yield tail


def ends_in_a_loop(ids: list[int], shortest: int) -> bool:
    """Whether ``ids`` end with a block of at least ``shortest`` tokens written twice back to back (a model
    repeating its answer: ``"The answer is: 5. The answer is: 5."``)."""
    return any(ids[-n:] == ids[-2 * n : -n] for n in range(shortest, len(ids) // 2 + 1))


class Generation(Iterator[str]):
    """Text pieces as they are decoded: a view of the running :class:`Request`. Once the first piece
    has been asked for, ``relevance`` holds every chunk's :class:`ChunkScore` (document order; passages
    in ``select``) and ``sources`` the chunks or passages decoding read, most relevant first (both empty
    when the prompt fits the native window). ``prompt_tokens`` counts the prompt's tokens,
    ``completion_ids`` grows with every token decoded (a stop string's tokens included) and, once the
    text is exhausted, ``finish_reason`` says why it ended: ``"stop"`` (end-of-sequence token or a stop
    string), ``"length"`` (``max_new_tokens``), ``"repetition"`` (the answer began to repeat itself:
    ``repeat_stop``) or ``"empty"`` (the model's very first token ended the answer: nothing was generated,
    which a small model does when the prompt's ending does not invite an answer; a warning says so too)."""

    def __init__(self, planner: Planner, request: Request):
        self.request, self._tokenizer = request, planner.parts.tokenizer
        self._pieces = text_pieces(planner, request)

    def __next__(self) -> str:
        return next(self._pieces)

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.ids)

    @property
    def mode(self) -> str:
        """The mode that read the prompt (``plain`` when it fit the window)."""
        return self.request.mode.name

    @property
    def route(self) -> str | None:
        """Under ``auto``, why the mode that read the prompt took it over from the one first chosen (or why the
        mode a hand-over named could not, with these settings)."""
        return self.request.route

    @property
    def completion_ids(self) -> list[int]:
        return self.request.completion_ids

    @property
    def finish_reason(self) -> str | None:
        return self.request.finish_reason

    @property
    def relevance(self) -> list[ChunkScore]:
        return attribution.relevance(self.request, self._tokenizer)

    @property
    def sources(self) -> list[ChunkScore]:
        return attribution.sources(self.request, self._tokenizer)


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
    mode: str | None = None
    route: str | None = None

    @classmethod
    def of(cls, generation: Generation) -> Completion:
        """Run ``generation`` to its end."""
        text = "".join(generation)
        return cls(
            text,
            generation.sources,
            generation.relevance,
            generation.prompt_tokens,
            tuple(generation.completion_ids),
            generation.finish_reason,
            generation.mode,
            generation.route,
        )
