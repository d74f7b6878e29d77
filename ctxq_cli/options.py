"""Options objects that validate themselves.

A field's constraint lives beside its default (:func:`option`); :class:`Options` checks every
field when the object is made and raises :class:`~ctxq_cli.errors.OptionError`, whose text
names the field as ``Kind.field`` (the command line shows it as its flag). Checks that involve
several fields go in ``check``.
"""

from __future__ import annotations

import operator
from dataclasses import field, fields
from typing import Any

import numpy as np

from ctxq_cli.errors import OptionError


def option(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, choices: tuple[Any, ...] | None = None,
           integer: bool = False) -> Any:
    """A dataclass field with its default and constraints (None always allowed for a None
    default)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "choices": choices,
                                            "integer": integer})


BOUNDS = (("ge", "≥", operator.ge), ("gt", ">", operator.gt), ("le", "≤", operator.le))


def _problem(value: Any, rule: dict[str, Any]) -> str | None:
    """What is wrong with ``value`` under ``rule``, or None."""
    if rule["choices"] is not None:
        return None if value in rule["choices"] else \
            f"must be one of {', '.join(map(str, rule['choices']))}"
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if rule["integer"] and (not integer or (rule["ge"] == 1 and value < 1)):
        return "must be a positive integer" if rule["ge"] == 1 else "must be an integer"
    number = integer or isinstance(value, (float, np.floating))
    for key, sign, holds in BOUNDS:
        if rule[key] is not None and not (number and holds(value, rule[key])):
            return f"must be {sign} {rule[key]:g}"
    return None


class Options:
    """Base of the frozen options dataclasses: every field checked on creation."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or not f.metadata:
                continue
            problem = _problem(value, dict(f.metadata))
            if problem:
                self.fail(f.name, f"{problem}, not {value!r}")
        self.check()

    def check(self) -> None:
        """Checks across fields (none by default)."""

    def fail(self, name: str, problem: str) -> None:
        """Raise the one-line error for field ``name``."""
        raise OptionError(f"{type(self).__name__}.{name} {problem}")


def check_channels(options: Any) -> None:
    """U-Net widths: at least one, each a positive multiple of 8."""
    widths = tuple(options.channels)
    if not widths or any(not isinstance(w, (int, np.integer)) or w < 8 or w % 8
                         for w in widths):
        options.fail("channels", f"must be multiples of 8, not {widths}")
