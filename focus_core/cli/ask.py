"""``focusllm ask``: answer a question over whole files and folders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import FocusConfig
from ..distributed import is_main_process
from ..documents import read_files
from ..engine import FocusEngine
from ..errors import FocusInputError
from ..prompts import qa_prompt
from ..request import Request
from .options import add_engine_options, config_from, engine_from, log

# An answer in sentences, ended by a blank line (the default --stop) well before its length limit; the
# engine's default (64) cuts such answers short.
MAX_NEW_TOKENS = 128
STOP = ("\n\n",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser(
        "ask",
        help="answer a question over whole files and folders",
        description="Answer a question over the text of FILEs and folders (read recursively; hidden files "
        "and files that are not UTF-8 text are skipped with a note), in the order given. The "
        "answer goes to stdout; notes, progress and --verbose lines to stderr.",
    )
    ask.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="text files, or folders to read recursively (as LlamaIndex's SimpleDirectoryReader "
        "would: every non-hidden file, as UTF-8 text)",
    )
    ask.add_argument("--question", "-q", required=True, help="the question, asked after the documents")
    ask.add_argument(
        "--answer-prefix",
        default="",
        metavar="TEXT",
        help="words that start the answer (completion style), e.g. 'The editor was'; small models "
        "answer far more reliably when the answer is begun for them",
    )
    ask.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when the answer produces TEXT (not printed); repeatable; default: a blank line "
        "(\\n\\n). Write a newline as $'\\n' in bash",
    )
    ask.add_argument(
        "--chat",
        action="store_true",
        help="wrap documents and question in the model's chat template instead of the "
        "'Question: ... Answer:' completion prompt",
    )
    add_engine_options(ask, max_new_tokens=MAX_NEW_TOKENS)
    ask.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="print one line per phase on stderr (input read, model loaded, tokens and chunks "
        "encoded or reused, decoding speed), also when stderr is not a terminal",
    )
    ask.set_defaults(run=run, settings=FocusConfig)


def run(args: argparse.Namespace) -> int:
    question = args.question.strip()
    if not question:
        raise FocusInputError("the question is empty (--question)")
    config = config_from(args, stop=STOP if args.stop is None else tuple(args.stop))
    start = time.perf_counter()
    inputs = read_files(args.files)
    documents = "\n\n".join(text for _, text in inputs if text.strip())
    if not documents:
        names = ", ".join(str(f) for f, _ in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise FocusInputError(f"no text to read: {names} {'is' if len(inputs) == 1 else 'are'} empty")
    log(
        args,
        f"read {len(inputs)} file{'s' if len(inputs) != 1 else ''}: {len(documents):,} characters "
        f"({time.perf_counter() - start:.1f} s)",
    )
    start = time.perf_counter()
    engine = engine_from(args, config)
    weight = next(engine.model.parameters())
    log(
        args,
        f"loaded {engine.model_name} ({str(weight.dtype).removeprefix('torch.')}, {weight.device}; native "
        f"window {engine.native_window:,} tokens) in {time.perf_counter() - start:.1f} s",
    )
    log(args, engine.model.focus_precision_reason)
    if args.chat:
        prompt = engine.apply_chat_template([{"role": "user", "content": f"{documents}\n\n{question}"}])
        prompt += args.answer_prefix
    else:
        prompt = qa_prompt(documents, question, args.answer_prefix)
    request = engine.request(prompt)
    tokens = len(request.ids)
    log(
        args,
        f"prompt: {tokens:,} tokens, "
        + (
            "fits the native window, read as-is"
            if request.plain
            else f"{tokens / engine.native_window:.1f}x the native window, read in chunks of {config.chunk_size:,} "
            f"with {request.mode} aggregation"
        ),
    )
    _answer(args, engine, request)
    return 0


def _answer(args: argparse.Namespace, engine: FocusEngine, request: Request) -> None:
    """Stream the answer to stdout, with --verbose lines on the reading and decoding."""
    before = _stats(engine)
    start = time.perf_counter()
    show_bar = is_main_process() and not args.quiet and sys.stderr.isatty()
    writer = _AnswerWriter(request.config.max_new_tokens, show_bar)
    generation = engine.stream(request)
    first = None
    try:
        for piece in generation:
            if first is None:
                first = time.perf_counter()
                after = _stats(engine)
                encoded, reused = after[0] - before[0], after[2] - before[2]
                chunks = (
                    f"encoded {encoded} chunk{'s' if encoded != 1 else ''} ({after[1] - before[1]:,} tokens, "
                    f"{after[3] - before[3]:.1f} s), reused {reused} from the cache; "
                    if encoded or reused
                    else "no chunks (the prompt fits); "
                )
                log(args, f"{chunks}first token after {first - start:.1f} s")
            if is_main_process():
                writer.write(piece, len(generation.completion_ids))
    finally:
        writer.close()
    end = time.perf_counter()
    if first is None:
        log(args, f"no answer: the model ended at once ({end - start:.1f} s)")
    else:
        n = len(generation.completion_ids)
        rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
        log(
            args,
            f"decoded {n} token{'s' if n != 1 else ''} in {end - start:.1f} s ({rate:.1f} tokens/s after the first)",
        )


def _stats(engine: FocusEngine) -> tuple[int, int, int, float]:
    s = engine.stats
    return s.chunks_encoded, s.tokens_encoded, s.chunks_reused, s.encode_seconds


class _AnswerWriter:
    """Prints the answer on stdout as it streams and, when stderr is a terminal, a decoding bar there
    (tokens and tokens/s). When stdout is that same terminal, the answer is written a line at a time
    through the bar (tqdm.write), so the bar and a half-written line never overwrite each other."""

    def __init__(self, max_new_tokens: int, show_bar: bool):
        self.max_new_tokens, self.show_bar = max_new_tokens, show_bar
        self.pending, self.bar = "", None
        self.shared_terminal = show_bar and sys.stdout.isatty()

    def write(self, piece: str, tokens: int) -> None:
        """``piece`` of the answer, ``tokens`` decoded so far."""
        if self.show_bar:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=self.max_new_tokens,
                    desc="decoding",
                    unit="tok",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                )
            self.bar.update(min(tokens, self.max_new_tokens) - self.bar.n)
        if not self.shared_terminal:
            print(piece, end="", flush=True)
            return
        self.pending += piece
        if "\n" in self.pending:
            done, self.pending = self.pending.rsplit("\n", 1)
            self.bar.write(done, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if is_main_process():
            print(self.pending, flush=True)  # the rest of the answer and the final newline
        self.pending = ""
