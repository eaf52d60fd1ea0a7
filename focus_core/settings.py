"""Settings declared once: a dataclass field made with :func:`setting` carries its help, its lowest allowed
value and its command-line name, and from that one declaration come its validation
(:func:`check_minimums`) and its command-line option (:func:`add_options`).

:class:`~focus_core.FocusConfig` and the training configuration are declared this way; the CLI builds
its options from them and the wrappers check their fields against them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

from .errors import FocusConfigError


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field: ``default``, a one-line ``help``, the lowest value allowed (numbers; ``None``
    stays allowed where the type is optional), the values allowed (strings; a ``Literal`` type says it
    too) and the command-line name (default: ``--field-name``)."""
    metadata = {"help": help, "minimum": minimum, "choices": choices, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def flag(field: dataclasses.Field) -> str:
    """The command-line option of a setting."""
    return "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))


def check_minimums(config: Any) -> None:
    """Refuse, naming the setting, a value of the wrong type or below its declared minimum."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        minimum, value = field.metadata.get("minimum"), getattr(config, field.name)
        if minimum is None or value is None:
            continue
        kind, _ = value_type(hints[field.name])
        several = typing.get_origin(hints[field.name]) is tuple
        for item in value if several else (value,):
            if not _at_least(item, kind, minimum):
                what = (
                    ("integers" if several else "an integer") if kind is int else "numbers" if several else "a number"
                )
                raise FocusConfigError(f"{field.name} must be {what} >= {minimum}, got {value!r}", setting=field.name)


def _at_least(value: Any, kind: type, minimum: float) -> bool:
    allowed = (int,) if kind is int else (int, float)
    return not isinstance(value, bool) and isinstance(value, allowed) and value >= minimum


def value_type(hint: Any) -> tuple[type, tuple[Any, ...] | None]:
    """The scalar type of a setting's annotation and its choices: ``int | None`` -> ``(int, None)``,
    ``Literal["a", "b"]`` -> ``(str, ("a", "b"))``, ``tuple[int, ...]`` -> ``(int, None)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        hint, _ = value_type(typing.get_args(hint)[0])
    return hint, None


def add_options(
    parser: argparse.ArgumentParser,
    config_type: type,
    names: Iterable[str],
    defaults: dict[str, Any] | None = None,
) -> None:
    """An option for each of the settings ``names`` of ``config_type``, checked as it is parsed (type,
    minimum, choices); ``defaults`` replace the declared default where a command needs another."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    hints = typing.get_type_hints(config_type)
    for name in names:
        field, hint = fields[name], hints[name]
        kind, choices = value_type(hint)
        choices = choices or field.metadata["choices"]
        default = (defaults or {}).get(name, field.default)  # setting() always declares a default
        help = field.metadata["help"].replace("%", "%%")  # argparse formats help with %
        options: dict[str, Any] = {"dest": name, "default": default, "help": help}
        if default is not None:
            options["help"] += " (default: %(default)s)"
        if choices:
            options["choices"] = choices
        else:
            options["type"] = number_parser(kind, field.metadata["minimum"])
            options["metavar"] = "N" if kind is int else "X"
        if typing.get_origin(hint) is tuple:
            options["nargs"] = "+"
            options["default"] = list(default)
        parser.add_argument(flag(field), **options)


def option_values(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``config_type``'s settings that have options in ``args``."""
    values = {}
    for field in dataclasses.fields(config_type):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def with_flags(message: str, config_type: type) -> str:
    """``message`` with every setting it names written as its command-line option."""
    for field in dataclasses.fields(config_type):
        message = re.sub(rf"\b{field.name}\b", flag(field), message)
    return message


def number_parser(kind: type, minimum: float | None = None) -> Callable[[str], Any]:
    """An argparse type: text to a ``kind`` (int or float) of at least ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number" if kind is float else kind.__name__
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if minimum is not None and not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
