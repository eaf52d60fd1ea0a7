"""``focusllm passkey``: the pass-key retrieval test."""

from __future__ import annotations

import argparse
import time

from ..config import FocusConfig
from ..passkey import make_case, spread_depths
from ..settings import number_parser
from .options import add_engine_options, config_from, engine_from, say

# A pass key is five digits and a period: 8 tokens leave room for any tokenizer's split of them.
MAX_NEW_TOKENS = 8


def add_parser(commands: argparse._SubParsersAction) -> None:
    passkey = commands.add_parser(
        "passkey",
        help="pass-key retrieval test",
        description="Hide a 5-digit pass key in filler text and ask for it back.",
    )
    passkey.add_argument(
        "--tokens", type=number_parser(int, 1), required=True, metavar="N", help="prompt length in tokens"
    )
    passkey.add_argument(
        "--seeds",
        type=number_parser(int, 1),
        default=5,
        metavar="N",
        help="number of cases, needle depths spread evenly (default: 5)",
    )
    add_engine_options(passkey, max_new_tokens=MAX_NEW_TOKENS)
    passkey.set_defaults(run=run, settings=FocusConfig)


def run(args: argparse.Namespace) -> int:
    engine = engine_from(args, config_from(args))
    correct, start = 0, time.perf_counter()
    for seed, depth in enumerate(spread_depths(args.seeds)):
        case = make_case(engine.tokenizer, args.tokens, depth, seed)
        t = time.perf_counter()
        answer = engine.generate(case.prompt)
        ok = case.is_correct(answer)
        correct += ok
        say(
            f"seed {seed} depth {depth:.2f} tokens {engine.count_tokens(case.prompt)}: expected {case.passkey}, "
            f"got {answer.strip()!r} ({'ok' if ok else 'wrong'}, {time.perf_counter() - t:.1f} s)"
        )
    processes = engine.group.world if engine.group else 1
    say(
        f"{engine.aggregation_for()} aggregation: {time.perf_counter() - start:.1f} s on {processes} "
        f"process{'es' if processes > 1 else ''}"
    )
    say(f"passkey@{args.tokens}: {correct}/{args.seeds} correct")
    return 0
