"""Command line: ``focusllm ask`` answers a question over whole files and folders; ``focusllm passkey``
runs the pass-key retrieval test; ``focusllm train`` trains candidate projections into an adapter;
``focusllm cache`` shows or clears the cache of dequantized weights. ``python -m focus_core`` is the
same program.

A user's mistake (a missing or binary file, an empty question, a model or device that cannot be had,
a bad setting) ends the program with one line on stderr, ``focusllm: error: ...``, naming what is at
fault, and exit status 2; never a traceback. Progress bars are drawn on stderr only when it is a
terminal (never with ``--quiet``); ``--verbose`` prints one line per phase whatever stderr is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from .config import AGGREGATIONS, FocusConfig
from .distributed import is_main_process, launched_group
from .engine import FocusEngine
from .errors import FocusConfigError, FocusError
from .loading import cache_entries, cache_root, clear_cache, load_model
from .memory import format_bytes
from .passkey import make_case, spread_depths
from .prompts import qa_prompt
from .training import LOSSES, TokenStream, TrainingConfig, read_documents, train

EXIT_USAGE = 2  # argparse's status for bad options; every user error here uses it too


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------- options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focusllm",
        description="FocusLLM: whole documents, far past the native window, for local "
        "Hugging Face models. Errors exit with status 2.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _add_common(ask, max_new_tokens=128)
    ask.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="print one line per phase on stderr (input read, model loaded, tokens and chunks "
        "encoded or reused, decoding speed), also when stderr is not a terminal",
    )

    passkey = commands.add_parser(
        "passkey",
        help="pass-key retrieval test",
        description="Hide a 5-digit pass key in filler text and ask for it back.",
    )
    passkey.add_argument("--tokens", type=_positive_int, required=True, help="prompt length in tokens")
    passkey.add_argument(
        "--seeds", type=_positive_int, default=5, help="number of cases, needle depths spread evenly (default: 5)"
    )
    _add_common(passkey, max_new_tokens=8)

    train = commands.add_parser("train", help="train candidate projections (an adapter for kv aggregation)")
    _add_train(train)

    cache = commands.add_parser(
        "cache",
        help="show or clear the cache of dequantized model weights",
        description="The embedded model's GGUF is dequantized once (~20 s) and cached as safetensors in "
        "$FOCUSLLM_CACHE (default ~/.cache/focusllm), one copy per model file.",
    )
    cache.add_argument("--clear", action="store_true", help="delete every cached checkpoint")
    return parser


def _add_train(train: argparse.ArgumentParser) -> None:
    t = TrainingConfig()
    train.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="text files, folders (read recursively) or JSONL files with a 'text' field",
    )
    train.add_argument("--output", required=True, type=Path, help="adapter directory (checkpoints go inside)")
    train.add_argument("--steps", type=_positive_int, default=t.steps, help=f"optimizer steps (default: {t.steps})")
    train.add_argument(
        "--chunk-sizes",
        type=_positive_int,
        nargs="+",
        default=list(t.chunk_sizes),
        metavar="N",
        help="chunk sizes, one drawn per step (default: %(default)s)",
    )
    train.add_argument(
        "--rank",
        type=_non_negative_int,
        default=t.rank,
        help="low-rank deltas of this rank; 0 = full copies (default: %(default)s)",
    )
    train.add_argument(
        "--memory-tokens",
        type=_positive_int,
        default=t.memory_tokens,
        help="tokens of memory (cut into chunks) per example (default: %(default)s)",
    )
    train.add_argument(
        "--local-tokens",
        type=_positive_int,
        default=t.local_tokens,
        help="tokens of local context per example (default: %(default)s)",
    )
    train.add_argument(
        "--dynamic-prompt-len",
        type=_positive_int,
        default=t.dynamic_prompt_len,
        help="local tokens appended to every chunk (default: %(default)s)",
    )
    train.add_argument(
        "--target-tokens",
        type=_positive_int,
        default=t.target_tokens,
        help="tokens predicted per example (default: %(default)s)",
    )
    train.add_argument(
        "--losses",
        nargs="+",
        choices=LOSSES,
        default=list(t.losses),
        help="losses, one drawn per example; repeat a name to weight it (default: %(default)s)",
    )
    train.add_argument(
        "--examples-per-window",
        type=_positive_int,
        default=t.examples_per_window,
        help="consecutive examples over one memory, which reuse its encoded chunks (default: %(default)s)",
    )
    train.add_argument(
        "--synthetic-fraction",
        type=_non_negative_float,
        default=t.synthetic_fraction,
        help="share of memories with recall facts spliced in, in [0, 1] (default: %(default)s)",
    )
    train.add_argument(
        "--lr", type=_non_negative_float, default=t.learning_rate, help="peak learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--warmup-steps",
        type=_non_negative_int,
        default=t.warmup_steps,
        help="linear warm-up steps (default: %(default)s)",
    )
    train.add_argument(
        "--grad-accum",
        type=_positive_int,
        default=t.grad_accum,
        help="examples accumulated per step (default: %(default)s)",
    )
    train.add_argument(
        "--eval-every",
        type=_positive_int,
        default=t.eval_every,
        help="steps between held-out evaluations (default: %(default)s)",
    )
    train.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=t.eval_examples,
        help="held-out examples per evaluation (default: %(default)s)",
    )
    train.add_argument(
        "--save-every",
        type=_positive_int,
        default=t.save_every,
        help="steps between checkpoints (default: %(default)s)",
    )
    train.add_argument(
        "--snapshot-every",
        type=_non_negative_int,
        default=t.snapshot_every,
        help="keep an adapter every this many steps in OUTPUT/snapshots, 0 for none (default: %(default)s)",
    )
    train.add_argument("--seed", type=_non_negative_int, default=t.seed, help="random seed (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    _add_model(train)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="Hugging Face model folder, hub id (looked up in the local Hugging Face cache first; "
        "downloaded only if not there and HF_HUB_OFFLINE is unset) or .gguf file "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--gguf-file",
        default=None,
        metavar="FILE",
        help="load this GGUF file from the --model folder or hub repo (dequantized by transformers "
        "at every load), e.g. --model ./models --gguf-file smollm2.Q4_K_M.gguf",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
        metavar="DTYPE",
        help="auto | float32 | bfloat16 | float16 (default: auto, the fastest the device runs natively: "
        "bf16 on CUDA and on CPUs with bf16 instructions, else fp32 on CPU; --verbose says which and why)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are drawn only on a terminal anyway)")


def _add_common(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    defaults = FocusConfig()
    _add_model(p)
    p.add_argument(
        "--adapter",
        default=None,
        type=Path,
        metavar="DIR",
        help="trained candidate projections (from `focusllm train`); makes auto aggregation kv",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=defaults.chunk_size,
        metavar="N",
        help="tokens per memory chunk (default: %(default)s)",
    )
    p.add_argument(
        "--local-window",
        type=_positive_int,
        default=defaults.local_window,
        metavar="N",
        help="the prompt's last N tokens, which hold the question, stay local context (default: %(default)s)",
    )
    p.add_argument(
        "--dynamic-prompt-len",
        type=_positive_int,
        default=defaults.dynamic_prompt_len,
        metavar="N",
        help="last N local tokens appended to every chunk; at most --local-window (default: %(default)s)",
    )
    p.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default=defaults.aggregation,
        help="how the chunks' candidates decide each token; see the README's Configuration table "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--select-tokens",
        type=_positive_int,
        default=defaults.select_tokens,
        metavar="N",
        help="select: document tokens read, in passages the question attends to (default: %(default)s)",
    )
    p.add_argument(
        "--passage-tokens",
        type=_positive_int,
        default=defaults.passage_tokens,
        metavar="N",
        help="select: tokens per passage (default: %(default)s)",
    )
    p.add_argument(
        "--exit-layer",
        type=_non_negative_int,
        default=None,
        metavar="L",
        help="select: the layer whose attention chooses the passages (default: 60%% of the model's depth)",
    )
    p.add_argument(
        "--native-window",
        type=_positive_int,
        default=None,
        metavar="N",
        help="pretend the model's window is N tokens (forces chunking of shorter prompts)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=max_new_tokens,
        metavar="N",
        help="longest answer in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sampling temperature; 0 = greedy (default: %(default)s)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=None, help="random seed for sampling")


# ------------------------------------------------------------------------------------------- input


def read_inputs(paths: list[Path], note=None) -> list[tuple[Path, str]]:
    """``(file, text)`` for every readable text file under ``paths``, in order: files as given, folders
    walked recursively in sorted order, skipping hidden entries as LlamaIndex's ``SimpleDirectoryReader``
    does. Inside a folder, files that are binary, not UTF-8 or unreadable are skipped with a ``note``;
    named explicitly, they are a :class:`UserError`, and so is a folder with nothing readable in it.
    Empty files are kept (the caller decides whether the whole input is empty)."""
    note = note or (lambda line: print(f"focusllm: {line}", file=sys.stderr, flush=True))
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found = 0
            for file in _walk(path):
                if file.resolve() in seen:
                    continue
                text, problem = _read_text(file)
                if problem:
                    note(f"skipped {file}: {problem}")
                    continue
                seen.add(file.resolve())
                out.append((file, text))
                found += 1
            if not found:
                raise UserError(f"folder {path} holds no readable text file")
        elif path.exists():
            if not path.is_file():
                raise UserError(f"{path} is not a regular file or a folder")
            if path.resolve() in seen:
                continue
            text, problem = _read_text(path)
            if problem:
                raise UserError(f"{path}: {problem}")
            seen.add(path.resolve())
            out.append((path, text))
        else:
            raise UserError(f"{path}: no such file or folder")
    return out


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                file = Path(root, name)
                if file.is_file():
                    yield file


def _read_text(file: Path) -> tuple[str, str | None]:
    """The file's text and ``None``, or ``""`` and why it cannot be read as text."""
    try:
        data = file.read_bytes()
    except OSError as err:
        return "", f"cannot be read ({err.strerror or err})"
    if b"\0" in data:
        return "", "binary file, not text"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        return "", f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"


# -------------------------------------------------------------------------------------- the engine


def _config(args: argparse.Namespace) -> FocusConfig:
    """The settings the options ask for; a bad combination is a UserError naming the options."""
    stop = getattr(args, "stop", None)
    try:
        return _make_config(args, stop)
    except FocusConfigError as err:
        text = re.sub(
            r"\b(chunk_size|local_window|dynamic_prompt_len|max_new_tokens|native_window|stop|temperature"
            r"|seed|aggregation|select_tokens|passage_tokens|exit_layer)\b",
            lambda m: "--" + m.group(1).replace("_", "-"),
            _one_line(err),
        )
        raise UserError(text) from err


def _make_config(args: argparse.Namespace, stop: list[str] | None) -> FocusConfig:
    return FocusConfig(
        stop=("\n\n",) if stop is None and args.command == "ask" else (stop or ()),
        chunk_size=args.chunk_size,
        local_window=args.local_window,
        dynamic_prompt_len=args.dynamic_prompt_len,
        aggregation=args.aggregation,
        select_tokens=args.select_tokens,
        passage_tokens=args.passage_tokens,
        exit_layer=args.exit_layer,
        native_window=args.native_window,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        progress=False if args.quiet or not is_main_process() else None,
    )


def _engine(args: argparse.Namespace, config: FocusConfig) -> FocusEngine:
    device = args.device
    if device is None and dist.is_initialized() and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    return FocusEngine.from_pretrained(
        args.model,
        config,
        adapter=args.adapter,
        dtype=args.dtype,
        device=device,
        gguf_file=args.gguf_file,
        progress=False if args.quiet else None,
        group=args.group,
    )


def _say(line: str) -> None:
    """Print on the main process only (every process of a torchrun job runs the same loop)."""
    if is_main_process():
        print(line, flush=True)


def _log(args: argparse.Namespace, line: str) -> None:
    """A --verbose line on stderr (main process only)."""
    if getattr(args, "verbose", False) and is_main_process():
        print(f"focusllm: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- commands


def run_ask(args: argparse.Namespace) -> int:
    question = args.question.strip()
    if not question:
        raise UserError("the question is empty (--question)")
    config = _config(args)
    start = time.perf_counter()
    inputs = read_inputs(args.files)
    documents = "\n\n".join(text for _, text in inputs if text.strip())
    if not documents:
        names = ", ".join(str(f) for f, _ in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise UserError(f"no text to read: {names} {'is' if len(inputs) == 1 else 'are'} empty")
    _log(
        args,
        f"read {len(inputs)} file{'s' if len(inputs) != 1 else ''}: {len(documents):,} characters "
        f"({time.perf_counter() - start:.1f} s)",
    )
    start = time.perf_counter()
    engine = _engine(args, config)
    weight = next(engine.model.parameters())
    _log(
        args,
        f"loaded {engine.model_name} ({str(weight.dtype).removeprefix('torch.')}, {weight.device}; native "
        f"window {engine.native_window:,} tokens) in {time.perf_counter() - start:.1f} s",
    )
    _log(args, engine.model.focus_precision_reason)
    if args.chat:
        prompt = engine.apply_chat_template([{"role": "user", "content": f"{documents}\n\n{question}"}])
        prompt += args.answer_prefix
    else:
        prompt = qa_prompt(documents, question, args.answer_prefix)
    tokens = engine.count_tokens(prompt)
    _log(
        args,
        f"prompt: {tokens:,} tokens, "
        + (
            "fits the native window, read as-is"
            if tokens + config.max_new_tokens <= engine.native_window
            else f"{tokens / engine.native_window:.1f}x the native window, read in chunks of {config.chunk_size:,} "
            f"with {engine.aggregation_for(config)} aggregation"
        ),
    )
    before = _stats(engine)
    start = time.perf_counter()
    show_bar = is_main_process() and not args.quiet and sys.stderr.isatty()
    writer = _AnswerWriter(engine, config.max_new_tokens, show_bar)
    pieces = engine.stream(prompt)
    first = None
    try:
        for piece in pieces:
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
                _log(args, f"{chunks}first token after {first - start:.1f} s")
            if is_main_process():
                writer.write(piece)
    finally:
        writer.close()
    end = time.perf_counter()
    if first is None:
        _log(args, f"no answer: the model ended at once ({end - start:.1f} s)")
    else:
        n = writer.tokens
        rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
        _log(
            args,
            f"decoded {n} token{'s' if n != 1 else ''} in {end - start:.1f} s ({rate:.1f} tokens/s after the first)",
        )
    return 0


def _stats(engine: FocusEngine) -> tuple[int, int, int, float]:
    s = engine.stats
    return s.chunks_encoded, s.tokens_encoded, s.chunks_reused, s.encode_seconds


class _AnswerWriter:
    """Prints the answer on stdout as it streams and, when stderr is a terminal, a decoding bar there
    (tokens and tokens/s). When stdout is that same terminal, the answer is written a line at a time
    through the bar (tqdm.write), so the bar and a half-written line never overwrite each other."""

    def __init__(self, engine: FocusEngine, max_new_tokens: int, show_bar: bool):
        self.engine, self.max_new_tokens, self.show_bar = engine, max_new_tokens, show_bar
        self.text, self.pending, self.tokens, self.bar = "", "", 0, None
        self.shared_terminal = show_bar and sys.stdout.isatty()

    def write(self, piece: str) -> None:
        self.text += piece
        self.tokens = len(self.engine.tokenizer(self.text, add_special_tokens=False).input_ids)
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
            self.bar.update(min(self.tokens, self.max_new_tokens) - self.bar.n)
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


def run_passkey(args: argparse.Namespace) -> int:
    engine = _engine(args, _config(args))
    correct, start = 0, time.perf_counter()
    for seed, depth in enumerate(spread_depths(args.seeds)):
        case = make_case(engine.tokenizer, args.tokens, depth, seed)
        t = time.perf_counter()
        answer = engine.generate(case.prompt)
        ok = case.is_correct(answer)
        correct += ok
        _say(
            f"seed {seed} depth {depth:.2f} tokens {engine.count_tokens(case.prompt)}: expected {case.passkey}, "
            f"got {answer.strip()!r} ({'ok' if ok else 'wrong'}, {time.perf_counter() - t:.1f} s)"
        )
    processes = engine.group.world if engine.group else 1
    _say(
        f"{engine.aggregation_for()} aggregation: {time.perf_counter() - start:.1f} s on {processes} "
        f"process{'es' if processes > 1 else ''}"
    )
    _say(f"passkey@{args.tokens}: {correct}/{args.seeds} correct")
    return 0


def run_train(args: argparse.Namespace) -> int:
    config = TrainingConfig(
        steps=args.steps,
        chunk_sizes=tuple(args.chunk_sizes),
        memory_tokens=args.memory_tokens,
        local_tokens=args.local_tokens,
        dynamic_prompt_len=args.dynamic_prompt_len,
        target_tokens=args.target_tokens,
        losses=tuple(args.losses),
        examples_per_window=args.examples_per_window,
        synthetic_fraction=args.synthetic_fraction,
        rank=args.rank or None,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        save_every=args.save_every,
        snapshot_every=args.snapshot_every,
        seed=args.seed,
    )
    model, tokenizer = load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        gguf_file=args.gguf_file,
        progress=False if args.quiet else None,
    )
    stream = TokenStream(tokenizer, read_documents(args.data))
    _say(f"training text: {len(stream.train)} tokens, held out: {len(stream.eval)}")
    state = train(
        model, tokenizer, stream, args.output, config, resume=args.resume, progress=False if args.quiet else None
    )
    evals = state["evaluations"]
    _say(
        f"adapter written to {args.output}: {state['step']} steps, {state['tokens']} tokens, "
        f"{state['seconds']:.0f} s; held-out loss {evals[0]['loss']:.4f} -> {evals[-1]['loss']:.4f}"
    )
    return 0


def run_cache(args: argparse.Namespace) -> int:
    root, entries = cache_root(), cache_entries()
    total = sum(e.size for e in entries)
    if args.clear:
        freed = clear_cache()
        print(f"cleared {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {format_bytes(freed)} freed")
        return 0
    print(f"cache of dequantized weights: {root} (set FOCUSLLM_CACHE to move it)")
    for e in entries:
        what = "  (the installed default model)" if e.current else ""
        print(f"  {e.path.name}  {format_bytes(e.size)}{what}")
    if entries:
        print(
            f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {format_bytes(total)}; "
            "`focusllm cache --clear` empties the cache (the next load dequantizes again, ~20 s)"
        )
    else:
        print("empty (the first load of the default model fills it, ~20 s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    args = build_parser().parse_args(argv)
    verbosity = hf_logging.get_verbosity()
    if not getattr(args, "verbose", False):
        hf_logging.set_verbosity_error()  # transformers' advice to library users (e.g. GGUF dtypes) is noise here
    try:
        # under torchrun the chunks shard over the launched processes; training joins through accelerate
        args.group = launched_group() if args.command in ("ask", "passkey") else None
        return {"ask": run_ask, "passkey": run_passkey, "train": run_train, "cache": run_cache}[args.command](args)
    except (UserError, FocusError, OSError) as err:
        print(f"focusllm: error: {_one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("focusllm: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        hf_logging.set_verbosity(verbosity)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FocusError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text
