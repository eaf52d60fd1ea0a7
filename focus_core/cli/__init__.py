"""Command line: ``focusllm ask`` answers a question over whole files and folders; ``focusllm passkey``
runs the pass-key retrieval test; ``focusllm train`` trains candidate projections into an adapter;
``focusllm cache`` shows or clears the cache of dequantized weights. ``python -m focus_core`` is the
same program. One module per command; the settings' options are generated from their declarations
(:mod:`focus_core.settings`) in :mod:`.options`.

A user's mistake (a missing or binary file, an empty question, a model or device that cannot be had,
a bad setting) ends the program with one line on stderr, ``focusllm: error: ...``, naming what is at
fault (settings by their options), and exit status 2; never a traceback. Progress bars are drawn on
stderr only when it is a terminal (never with ``--quiet``); ``--verbose`` prints one line per phase
whatever stderr is.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import FocusConfigError, FocusError
from ..settings import with_flags
from . import ask, cache, passkey, train
from .options import EXIT_USAGE, one_line

COMMANDS = (ask, passkey, train, cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focusllm",
        description="FocusLLM: whole documents, far past the native window, for local "
        "Hugging Face models. Errors exit with status 2.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    args = build_parser().parse_args(argv)
    verbosity = hf_logging.get_verbosity()
    if not getattr(args, "verbose", False):
        hf_logging.set_verbosity_error()  # transformers' advice to library users (e.g. GGUF dtypes) is noise here
    try:
        return args.run(args)
    except (FocusError, OSError) as err:
        text = one_line(err)
        if isinstance(err, FocusConfigError) and args.settings is not None:
            text = with_flags(text, args.settings)
        print(f"focusllm: error: {text}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("focusllm: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        hf_logging.set_verbosity(verbosity)
