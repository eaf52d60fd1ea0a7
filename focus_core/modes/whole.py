"""``whole``: requests about the whole document, a summary or "list every ..." (docs/design.md,
"Whole-document requests").

Map: every chunk, ``[BOS] + chunk`` (prefix KV from the prefix cache) with the dynamic prompt appended,
decodes its own short extraction, greedily, many chunks in one batch; each row stops on its own (an
end-of-sequence token, a stop string, or the end of its first paragraph). An extraction is read when
two ratios of likelihoods say it answers the request from its chunk (:data:`MIN_GAIN`). Reduce: the
extractions read, one a line in document order, each labelled with its chunk (``Part 3: ...``), then
the request (the dynamic prompt from the question's line on) are read after ``[BOS]`` and the prompt's
template opening (a chat template's system turn and user marker) with ordinary attention, as a prompt
is read. Where they do not fit the window they are packed into chunks and mapped again; every
level at least halves them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..aggregation import PlainDecoding
from ..chunking import ChunkPlan
from ..config import FocusConfig
from ..errors import FocusConfigError
from ..kv_cache import PrefixKV
from ..memory import KVBlock, Layout, one_sequence, parallel_buffers
from ..request import Request
from ..runner import SequenceBatch
from ..sampling import TextStream
from ..selection import question_marks, question_rows
from .base import Mode, Reading, Unit

# An extraction is read when each of two tests finds a factor of 2 per token (log 2 nats): its chunk makes
# the request likelier than no chunk does (the chunk is about the request, :mod:`focus_core.relevance`),
# and the chunk makes the extraction likelier than the request alone does (it says what the chunk says,
# not a guess the model would write whatever the chunk: a refusal, a made-up value, a repetition).
MIN_GAIN = math.log(2)

SEPARATOR = "\n\n"  # ends an extraction: its first paragraph is kept
WIDEST_LABEL = "Parts 999-999: \n"  # what the window checks reserve for a label (and the line break after it)
MIN_CONTENT_CHARS = 3  # a token shared by an extraction and the answer counts when it holds this many letters


@dataclass(frozen=True)
class Extraction:
    """What one chunk (or, after a second map, a run of chunks) gave for the request; the two gains are in
    nats per token (:data:`MIN_GAIN`)."""

    chunks: tuple[int, ...]  # the memory chunks it covers, document order
    ids: tuple[int, ...]  # its tokens (empty: the chunk had nothing to say)
    relevance: float  # what the chunk adds to the request's log-probability
    support: float = 0.0  # what the chunk adds to the extraction's, over the request alone
    content: frozenset[int] = frozenset()  # its tokens that carry content (attribution)

    @property
    def supported(self) -> bool:
        """It says something its chunk supports (:data:`MIN_GAIN`)."""
        return bool(self.ids) and self.support >= MIN_GAIN

    @property
    def read(self) -> bool:
        """Whether the reduce read reads it when the request singles out chunks: supported, and its chunk
        relevant (:data:`MIN_GAIN`)."""
        return self.supported and self.relevance >= MIN_GAIN

    @property
    def label(self) -> str:
        first, last = self.chunks[0] + 1, self.chunks[-1] + 1
        return f"Part {first}: " if first == last else f"Parts {first}-{last}: "


@dataclass
class WholeReading(Reading):
    """The map step's extractions per chunk (``found``), what the reduce read reads (``extractions``, after
    any further map levels) and its prompt (``read_ids``); ``answer`` grows with the decoded answer."""

    found: list[Extraction] = field(default_factory=list)
    extractions: list[Extraction] = field(default_factory=list)
    read_ids: tuple[int, ...] = ()
    answer: list[int] = field(default_factory=list)

    def sources(self) -> list[Unit]:
        """The chunks whose extraction reached the answer: it shares content tokens with it (as many as the
        score says), document order."""
        answer = set(self.answer)
        read = set(self.chosen)
        shared = [(e.chunks[0], len(e.content & answer)) for e in self.found if e.chunks[0] in read]
        return [(i, self.units[i], float(n)) for i, n in shared if n > 0]


class Whole(Mode):
    name = "whole"

    def check(self, cfg: FocusConfig) -> None:
        labelled = cfg.extract_tokens + self.label_tokens
        if 2 * labelled > cfg.chunk_size:
            raise FocusConfigError(
                f"whole packs at least two extractions per chunk when it maps them again: extract_tokens "
                f"({cfg.extract_tokens}) + {self.label_tokens} label tokens must be at most chunk_size / 2 "
                f"({cfg.chunk_size // 2}); lower extract_tokens",
                setting="extract_tokens",
            )

    def describe(self, cfg: FocusConfig) -> str:
        return f"whole (every chunk extracts up to {cfg.extract_tokens} tokens; one read of the extractions)"

    def room(self, plan: ChunkPlan, cfg: FocusConfig) -> int:
        """Tokens of labelled extractions the reduce read holds beside [BOS], the template's opening, a line
        break, the request and the answer."""
        around = self.template_opening(plan, cfg) + self.newline + self.request_tokens(plan)
        return self.parts.native_window - len(self.parts.encoder.bos) - len(around) - cfg.max_new_tokens

    @functools.cached_property
    def newline(self) -> tuple[int, ...]:
        return self.tokens("\n")

    @functools.cached_property
    def label_tokens(self) -> int:
        """Tokens the window checks reserve for an extraction's label (a longer one is cut to this)."""
        return len(self.tokens(WIDEST_LABEL))

    def tokens(self, text: str) -> tuple[int, ...]:
        return tuple(self.parts.tokenizer(text, add_special_tokens=False).input_ids)

    def map_rows(self, chunks: int, cfg: FocusConfig) -> int:
        """Chunks decoding their extractions together: up to ``encode_batch_tokens`` new tokens per batch."""
        return max(1, min(chunks, cfg.encode_batch_tokens // cfg.extract_tokens))

    def layout(self, ids: Sequence[int], plan: ChunkPlan, cfg: FocusConfig) -> Layout:
        parts = self.parts
        bos, mine = len(parts.encoder.bos), parts.my_chunks(plan).chunks
        prefix_slots = bos + max(cfg.chunk_size, max(len(c) for c in plan.chunks))  # a packed level's too
        rows = self.map_rows(len(mine), cfg)
        parallel = parallel_buffers(
            chunks=len(mine),
            prefix_slots=prefix_slots,
            dynamic_prompt=len(plan.dynamic_prompt),
            read=rows,  # the prefixes of the chunks being mapped
            batch_tokens=cfg.encode_batch_tokens,
            cached=parts.stored_prefixes([bos + len(c) for c in mine]),
        )
        mapping = KVBlock(rows, prefix_slots + len(plan.dynamic_prompt) + cfg.extract_tokens)
        listed = min(self.room(plan, cfg), len(plan.chunks) * (cfg.extract_tokens + self.label_tokens))
        read = parts.native_window - cfg.max_new_tokens - self.room(plan, cfg) + max(0, listed)
        return one_sequence(read + cfg.max_new_tokens, read, parts.windows(cfg), step=mapping, **parallel)

    def read(self, request: Request, keep: int | None = None) -> WholeReading:
        """The map step over every chunk (this process's share, then gathered), further map levels until
        the extractions fit the window, and the reduce read's prompt."""
        parts, plan, cfg = self.parts, request.plan, request.config
        mine = parts.my_chunks(plan).chunks
        first = parts.group.share(len(plan.chunks)).start if parts.group else 0
        runs = [(first + i,) for i in range(len(mine))]
        found = self.map(mine, runs, request, desc="extracting")
        if parts.group is not None:
            found = self.gathered(found, plan, cfg)
        extractions = self.chosen(found)
        chosen = [e.chunks[0] for e in extractions]
        room = self.room(plan, cfg)
        while extractions and len(self.labelled(extractions)) > room:
            fewer = self.chosen(self.map_again(extractions, request))
            if len(fewer) >= len(extractions):  # nothing packed two to a chunk: keep the best supported that fit
                fewer = self.best(extractions, room)
            extractions = fewer
        listed = self.labelled(extractions) + self.newline
        read_ids = parts.encoder.bos + self.template_opening(plan, cfg) + listed + self.request_tokens(plan)
        relevance = torch.tensor([e.relevance for e in found])
        units = plan.ranges
        return WholeReading(units, relevance, chosen, found=found, extractions=extractions, read_ids=read_ids)

    def chosen(self, found: list[Extraction]) -> list[Extraction]:
        """What the reduce read reads: the supported extractions of relevant chunks; where the request singles
        out no chunk (a summary: no chunk makes it likelier than no chunk does), every supported one."""
        return [e for e in found if e.read] or [e for e in found if e.supported]

    def template_opening(self, plan: ChunkPlan, cfg: FocusConfig) -> tuple[int, ...]:
        """The prompt's template opening, which the reduce read starts with as the prompt does: its tokens up
        to the end of the line holding the last special token of its opening passage (a chat template's system
        turn and the user's turn marker); nothing in a prompt without special tokens."""
        opening = plan.chunks[0][: cfg.passage_tokens]
        line_ends, special = question_marks(self.parts.tokenizer, opening)
        marks = [i for i, t in enumerate(opening) if t in special]
        if not marks:
            return ()
        end = next((i + 1 for i in range(marks[-1], len(opening)) if opening[i] in line_ends), len(opening))
        return opening[:end]

    def request_tokens(self, plan: ChunkPlan) -> tuple[int, ...]:
        """The request as the reduce read reads it: the dynamic prompt from the question's line on (what a
        chat template puts after it included), without the document text before it."""
        prompt = plan.dynamic_prompt
        return prompt[question_rows(prompt, *question_marks(self.parts.tokenizer, prompt))[0] :]

    def start(self, request: Request, reading: WholeReading) -> PlainDecoding:
        """Ordinary attention over [BOS], the template's opening, the labelled extractions and the request."""
        reading.answer = request.completion_ids
        sequence = self.parts.sequence(request.layout, request.config)
        return PlainDecoding(sequence, sequence.append(torch.tensor(reading.read_ids, device=self.parts.runner.device)))

    # ----------------------------------------------------------------- the map step

    def map(
        self, texts: Sequence[tuple[int, ...]], runs: list[tuple[int, ...]], request: Request, desc: str
    ) -> list[Extraction]:
        """The extraction of each of ``texts`` (covering the memory chunks ``runs``), ``map_rows`` at a time."""
        parts, cfg, layout = self.parts, request.config, request.layout
        rows, found = self.map_rows(len(texts), cfg), []
        baseline = parts.encoder.baseline(request.plan.dynamic_prompt)
        with tqdm(total=len(texts), desc=desc, unit="chunk", disable=not parts.progress(cfg)) as bar:
            for start in range(0, len(texts), rows):
                group = [parts.encoder.bos + t for t in texts[start : start + rows]]
                prefixes: list[PrefixKV] = []
                for i in range(0, len(group), layout.encode.rows):  # encoded a micro-batch at a time
                    prefixes += parts.encoder.prefixes(group[i : i + layout.encode.rows], slots=layout.encode.slots)
                for run, (ids, logprob, loglik) in zip(runs[start:], self.extract(prefixes, request)):
                    found.append(self.tested(run, ids, logprob, loglik - baseline, request))
                bar.update(len(group))
        return found

    def extract(self, prefixes: list[PrefixKV], request: Request) -> list[tuple[tuple[int, ...], float, float]]:
        """Each prefix followed by the dynamic prompt, decoded greedily in one batch, every row until its
        end-of-sequence token, a stop string, the end of its first paragraph or ``extract_tokens``. Per row:
        the extraction, its mean token log-probability and the dynamic prompt's log-probability after it."""
        parts, cfg, prompt = self.parts, request.config, request.plan.dynamic_prompt
        width, room = max(p.tokens for p in prefixes), len(prompt) + cfg.extract_tokens
        batch = parts.encoder.batch(prefixes, slots=width + room, extra_slots=room)
        prompted = torch.tensor(prompt, device=parts.runner.device)
        logits, loglik = batch.append(prompted, max_batch_tokens=cfg.encode_batch_tokens, loglik=True)
        streams = [TextStream(parts.tokenizer, cfg.stop) for _ in prefixes]
        texts, logprob = [""] * len(prefixes), torch.zeros(len(prefixes))
        open_rows, cut = set(range(len(prefixes))), set()
        for step in range(cfg.extract_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1)  # [rows, vocab]
            tokens = logp.argmax(dim=-1)  # [rows]
            chosen = logp.gather(1, tokens[:, None])[:, 0].cpu()
            for row in sorted(open_rows):
                token = int(tokens[row])
                if token in parts.eos_token_ids:
                    open_rows.discard(row)
                    continue
                texts[row] += streams[row].push(token)
                logprob[row] += chosen[row]
                paragraph = texts[row].lstrip()
                if SEPARATOR in paragraph:  # one paragraph: what follows repeats or wanders
                    texts[row] = paragraph[: paragraph.index(SEPARATOR)]
                    open_rows.discard(row)
                    cut.add(row)
                if streams[row].stopped:
                    open_rows.discard(row)
            if not open_rows or step + 1 == cfg.extract_tokens:
                break
            logits = batch.append(tokens[:, None])  # finished rows run on, their tokens unused
        out = []
        for row, stream in enumerate(streams):
            text = (texts[row] + ("" if row in cut else stream.flush())).strip()
            ids = tuple(parts.tokenizer(text, add_special_tokens=False).input_ids)[: cfg.extract_tokens] if text else ()
            out.append((ids, float(logprob[row]) / max(1, len(stream.ids)), float(loglik[row])))
        return out

    def tested(
        self, run: tuple[int, ...], ids: tuple[int, ...], logprob: float, relevance: float, request: Request
    ) -> Extraction:
        """An extraction with its two gains (:data:`MIN_GAIN`)."""
        prompt = request.plan.dynamic_prompt
        support = logprob - self.request_alone(ids, request) if ids else 0.0
        return Extraction(run, ids, relevance / max(1, len(prompt) - 1), support, self.content(ids, prompt))

    def request_alone(self, ids: tuple[int, ...], request: Request) -> float:
        """Mean log-probability of an extraction's tokens after [BOS] and the dynamic prompt, no chunk."""
        parts, context = self.parts, self.parts.encoder.bos + request.plan.dynamic_prompt
        batch = SequenceBatch(parts.runner, rows=1, capacity=len(context) + len(ids))
        device = parts.runner.device
        if len(context) > 1:
            batch.append(torch.tensor(context[:-1], device=device))
        loglik = batch.append(torch.tensor(context[-1:] + ids, device=device), loglik=True)[1]
        return float(loglik[0]) / len(ids)

    def map_again(self, extractions: list[Extraction], request: Request) -> list[Extraction]:
        """The extractions packed in document order into chunks of at most ``chunk_size`` tokens (at least
        two each, as :meth:`check` ensures), and mapped again."""
        texts, runs, text, run = [], [], (), ()
        for e in extractions:
            piece = self.labelled([e])
            if text and len(text) + len(piece) > request.config.chunk_size:
                texts.append(text)
                runs.append(run)
                text, run = (), ()
            text, run = text + piece, run + e.chunks
        texts.append(text)
        runs.append(run)
        return self.map(texts, runs, request, desc="extracting again")

    def best(self, extractions: list[Extraction], room: int) -> list[Extraction]:
        """The extractions best supported by their chunks whose labelled tokens fit ``room``, document order."""
        kept, used = [], 0
        for e in sorted(extractions, key=lambda e: -e.support):
            size = len(self.labelled([e]))
            if used + size <= room:
                kept.append(e)
                used += size
        return sorted(kept, key=lambda e: e.chunks)

    def gathered(self, found: list[Extraction], plan: ChunkPlan, cfg: FocusConfig) -> list[Extraction]:
        """Every process's extractions (its share of the plan's chunks), in chunk order, on every process."""
        rows = torch.full((len(found), 3 + cfg.extract_tokens), -1.0, dtype=torch.float64)
        for r, e in enumerate(found):  # [length, relevance, support, ids ... -1]
            rows[r, :3] = torch.tensor([len(e.ids), e.relevance, e.support], dtype=torch.float64)
            rows[r, 3 : 3 + len(e.ids)] = torch.tensor(e.ids, dtype=torch.float64)
        out = []
        for i, row in enumerate(self.parts.group.gather_rows(rows, len(plan.chunks)).tolist()):
            ids = tuple(int(t) for t in row[3 : 3 + int(row[0])])
            out.append(Extraction((i,), ids, *row[1:3], content=self.content(ids, plan.dynamic_prompt)))
        return out

    def labelled(self, extractions: list[Extraction]) -> tuple[int, ...]:
        """The extractions in order, one a line, each after its label (``Part 3: ``)."""
        out, newline = [], self.newline
        for e in extractions:
            out += self.tokens(e.label)[: self.label_tokens - len(newline)] + e.ids + newline
        return tuple(out)

    def content(self, ids: tuple[int, ...], request: tuple[int, ...]) -> frozenset[int]:
        """Of ``ids``, the tokens that carry content of their own: at least :data:`MIN_CONTENT_CHARS` letters or
        digits, and not in the ``request`` (the dynamic prompt)."""
        decode = self.parts.tokenizer.decode
        own = set(ids) - set(request)
        return frozenset(t for t in own if sum(ch.isalnum() for ch in decode([t])) >= MIN_CONTENT_CHARS)
