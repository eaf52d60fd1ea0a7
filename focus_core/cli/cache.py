"""``focusllm cache``: show or clear the cache of dequantized model weights."""

from __future__ import annotations

import argparse

from ..loading import cache_entries, cache_root, clear_cache
from ..memory import format_bytes


def add_parser(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser(
        "cache",
        help="show or clear the cache of dequantized model weights",
        description="The embedded model's GGUF is dequantized once (~20 s) and cached as safetensors in "
        "$FOCUSLLM_CACHE (default ~/.cache/focusllm), one copy per model file.",
    )
    cache.add_argument("--clear", action="store_true", help="delete every cached checkpoint")
    cache.set_defaults(run=run, settings=None)


def run(args: argparse.Namespace) -> int:
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
