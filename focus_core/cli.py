"""Command line: ``focusllm ask`` answers a question over whole files; ``focusllm passkey`` runs the
pass-key retrieval test; ``focusllm train`` trains candidate projections into an adapter.
``python -m focus_core`` is the same program."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .config import AGGREGATIONS, FocusConfig
from .distributed import init_from_environment, is_main_process
from .engine import FocusEngine
from .errors import FocusError
from .loading import load_model
from .passkey import make_case, spread_depths
from .training import LOSSES, TokenStream, TrainingConfig, read_documents, train

ASK_TEMPLATE = "{documents}\n\nQuestion: {question}\nAnswer:{answer_prefix}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focusllm", description="FocusLLM: long documents for local Hugging Face models")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question over whole files")
    ask.add_argument("files", nargs="+", type=Path)
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--answer-prefix", default="",
                     help="words that start the answer (completion style), e.g. 'The editor was'; small models "
                          "answer far more reliably when the answer is begun for them")
    ask.add_argument("--stop", action="append", default=None,
                     help="stop sequence (repeatable; default: a blank line)")
    ask.add_argument("--chat", action="store_true", help="use the model's chat template instead of completion style")
    _add_common(ask, max_new_tokens=128)

    passkey = commands.add_parser("passkey", help="pass-key retrieval test")
    passkey.add_argument("--tokens", type=int, required=True, help="prompt length in tokens")
    passkey.add_argument("--seeds", type=int, default=5, help="number of cases (needle depths spread evenly)")
    _add_common(passkey, max_new_tokens=8)

    train = commands.add_parser("train", help="train candidate projections (an adapter for kv aggregation)")
    t = TrainingConfig()
    train.add_argument("--data", nargs="+", required=True, type=Path,
                       help="text files, folders (read recursively) or JSONL files with a 'text' field")
    train.add_argument("--output", required=True, type=Path, help="adapter directory (checkpoints go inside)")
    train.add_argument("--steps", type=int, default=t.steps)
    train.add_argument("--chunk-sizes", type=int, nargs="+", default=list(t.chunk_sizes))
    train.add_argument("--rank", type=int, default=t.rank, help="low-rank deltas of this rank; 0 = full copies")
    train.add_argument("--memory-tokens", type=int, default=t.memory_tokens)
    train.add_argument("--local-tokens", type=int, default=t.local_tokens)
    train.add_argument("--dynamic-prompt-len", type=int, default=t.dynamic_prompt_len)
    train.add_argument("--target-tokens", type=int, default=t.target_tokens)
    train.add_argument("--losses", nargs="+", choices=LOSSES, default=list(t.losses))
    train.add_argument("--lr", type=float, default=t.learning_rate)
    train.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    train.add_argument("--grad-accum", type=int, default=t.grad_accum)
    train.add_argument("--eval-every", type=int, default=t.eval_every)
    train.add_argument("--eval-examples", type=int, default=t.eval_examples)
    train.add_argument("--save-every", type=int, default=t.save_every)
    train.add_argument("--seed", type=int, default=t.seed)
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    _add_model(train)
    return parser


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bfloat16)")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_common(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    defaults = FocusConfig()
    _add_model(p)
    p.add_argument("--adapter", default=None, type=Path,
                   help="trained candidate projections (from `focusllm train`); makes auto aggregation kv")
    p.add_argument("--no-adapter", action="store_true", help="do not load the adapter shipped for the default model")
    p.add_argument("--chunk-size", type=int, default=defaults.chunk_size)
    p.add_argument("--local-window", type=int, default=defaults.local_window)
    p.add_argument("--dynamic-prompt-len", type=int, default=defaults.dynamic_prompt_len)
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=defaults.aggregation)
    p.add_argument("--native-window", type=int, default=None, help="pretend the model's window is this short")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)


def _engine(args: argparse.Namespace) -> FocusEngine:
    stop = getattr(args, "stop", None)
    config = FocusConfig(
        stop=("\n\n",) if stop is None and args.command == "ask" else stop,
        chunk_size=args.chunk_size, local_window=args.local_window, dynamic_prompt_len=args.dynamic_prompt_len,
        aggregation=args.aggregation, native_window=args.native_window, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, progress=False if args.quiet or not is_main_process() else None,
    )
    device = args.device
    if device is None and dist.is_initialized() and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    adapter = False if args.no_adapter else args.adapter
    return FocusEngine.from_pretrained(args.model, config, adapter=adapter, dtype=args.dtype, device=device,
                                       gguf_file=args.gguf_file)


def run_ask(args: argparse.Namespace) -> int:
    documents = "\n\n".join(path.read_text(encoding="utf-8") for path in args.files)
    engine = _engine(args)
    if args.chat:
        prompt = engine.apply_chat_template([{"role": "user", "content": f"{documents}\n\n{args.question}"}])
        prompt += args.answer_prefix
    else:
        prefix = f" {args.answer_prefix.strip()}" if args.answer_prefix.strip() else ""
        prompt = ASK_TEMPLATE.format(documents=documents, question=args.question, answer_prefix=prefix)
    main = is_main_process()
    for piece in engine.stream(prompt):
        if main:
            print(piece, end="", flush=True)
    _say("")
    return 0


def run_passkey(args: argparse.Namespace) -> int:
    engine = _engine(args)
    correct, start = 0, time.perf_counter()
    for seed, depth in enumerate(spread_depths(args.seeds)):
        case = make_case(engine.tokenizer, args.tokens, depth, seed)
        t = time.perf_counter()
        answer = engine.generate(case.prompt)
        ok = case.is_correct(answer)
        correct += ok
        _say(f"seed {seed} depth {depth:.2f} tokens {engine.count_tokens(case.prompt)}: expected {case.passkey}, "
             f"got {answer.strip()!r} ({'ok' if ok else 'wrong'}, {time.perf_counter() - t:.1f} s)")
    processes = engine.group.world if engine.group else 1
    _say(f"{time.perf_counter() - start:.1f} s on {processes} process{'es' if processes > 1 else ''}")
    _say(f"passkey@{args.tokens}: {correct}/{args.seeds} correct")
    return 0


def _say(line: str) -> None:
    """Print on the main process only (every process of a torchrun job runs the same loop)."""
    if is_main_process():
        print(line, flush=True)


def run_train(args: argparse.Namespace) -> int:
    config = TrainingConfig(
        steps=args.steps, chunk_sizes=tuple(args.chunk_sizes), memory_tokens=args.memory_tokens,
        local_tokens=args.local_tokens, dynamic_prompt_len=args.dynamic_prompt_len, target_tokens=args.target_tokens,
        losses=tuple(args.losses), rank=args.rank or None, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        grad_accum=args.grad_accum, eval_every=args.eval_every, eval_examples=args.eval_examples,
        save_every=args.save_every, seed=args.seed,
    )
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, gguf_file=args.gguf_file)
    stream = TokenStream(tokenizer, read_documents(args.data))
    print(f"training text: {len(stream.train)} tokens, held out: {len(stream.eval)}", flush=True)
    state = train(model, tokenizer, stream, args.output, config, resume=args.resume,
                  progress=False if args.quiet else None)
    evals = state["evaluations"]
    print(f"adapter written to {args.output}: {state['step']} steps, {state['tokens']} tokens, "
          f"{state['seconds']:.0f} s; held-out loss {evals[0]['loss']:.4f} -> {evals[-1]['loss']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "train":  # training joins its process group through accelerate
            init_from_environment()
        return {"ask": run_ask, "passkey": run_passkey, "train": run_train}[args.command](args)
    except (FocusError, FileNotFoundError, UnicodeDecodeError) as err:
        print(f"focusllm: error: {err}", file=sys.stderr)
        return 2
