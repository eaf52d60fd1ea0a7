"""The modes by name (docs/design.md, "Modes"): every ``aggregation`` setting resolves here.

A mode is registered with the module that defines it and imported on first use, so that a mode's
stack (``kv``'s trained candidate projections and adapter files) is loaded only by calls that use it.
Adding a mode is one module with a :class:`~focus_core.modes.base.Mode` subclass and one
:func:`register` call; the engine, the memory plan and the settings' validation then know it.

``auto`` tries the modes that registered an ``auto`` rank, lowest first, and takes the first whose
:meth:`~focus_core.modes.base.Mode.serves_auto` agrees; a ``stateful`` mode (one that must have been
given something, like trained weights, before it can serve ``auto``) is asked only once an engine has
built it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Mode


@dataclass(frozen=True)
class Entry:
    target: str | type[Mode]  # the class, or "module:Class" imported on first use
    selectable: bool = True  # a value of the aggregation setting (plain is chosen by fit instead)
    auto: int | None = None  # rank among the modes auto may resolve to
    stateful: bool = False

    def load(self) -> type[Mode]:
        if isinstance(self.target, str):
            module, _, name = self.target.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.target


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str, target: str | type[Mode], *, selectable: bool = True, auto: int | None = None, stateful: bool = False
) -> None:
    """Make mode ``name`` known: ``target`` is its class or ``"module:Class"`` (imported on first use)."""
    _REGISTRY[name] = Entry(target, selectable, auto, stateful)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The modes the ``aggregation`` setting may name (besides ``auto``)."""
    return tuple(name for name, entry in _REGISTRY.items() if entry.selectable)


def entry(name: str) -> Entry:
    return _REGISTRY[name]


def auto_order() -> list[str]:
    """The modes ``auto`` may resolve to, in the order it tries them."""
    ranked = [(e.auto, name) for name, e in _REGISTRY.items() if e.auto is not None]
    return [name for _, name in sorted(ranked)]


register("plain", "focus_core.modes.plain:Plain", selectable=False)
register("kv", "focus_core.modes.kv:KV", auto=0, stateful=True)
register("select", "focus_core.modes.select:Select", auto=1)
register("focus", "focus_core.modes.focus:Focus")
register("entropy", "focus_core.modes.entropy:Entropy", auto=2)
register("whole", "focus_core.modes.whole:Whole")
