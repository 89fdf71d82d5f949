"""Checks of option values, shared by every command's configuration.

Each check takes the option's name *as the user types it* (``"--views"``; `flag` turns a dataclass
field name into it) and its value, returns the value when it is fine, and otherwise raises
:class:`s3dgs.errors.UsageError` (exit status 2) with one message that names the option, the rule
and the value::

    positive("--views", 0)          # UsageError: --views must be greater than 0, got 0
    at_least("--views", 0, 2)       # UsageError: --views must be at least 2, got 0
    in_range("--kp-miss", 1.5, 0, 1)  # UsageError: --kp-miss must be between 0 and 1, got 1.5

Numbers must be finite (``nan`` and ``inf`` parse as floats, so every numeric check refuses them).
``None`` passes every check: it is how an unset optional option (``Optional[int] = None``) reads.

Where to call them: a configuration gets a ``validate()`` method that runs its checks, called first
thing by the command's ``*_main`` function (and by the library function that takes the config, so
the Python API is checked too). Not in ``__post_init__``: tyro catches a ``ValueError`` raised while
it builds the dataclass (UsageError is one) and prints its own box, so the message would not come
through ``s3dgs.cli.main`` and its ``s3dgs CMD: error: ...`` line.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

from s3dgs.errors import UsageError

__all__ = ["flag", "finite", "positive", "non_negative", "at_least", "in_range",
           "fraction", "one_of", "multiple_of", "integer"]


def flag(owner: Any, field: str | None = None, *, prefix: str = "") -> str:
    """The command-line spelling of a dataclass field, written once: in the field's annotation.

    ``flag(cls_or_instance, "field")`` reads the name tyro gives the field (``tyro.conf.arg(name=...)``
    in its ``Annotated[...]``, e.g. ``flag(SemanticConfig, "warmup_iterations")`` ->
    ``--sem-warmup-iterations``); a field without one is spelled as tyro spells it
    (``--refine-every``). ``prefix`` is the group prefix tyro puts in front (``"mcmc."``).
    ``flag("ring_radius")`` (one string) is the plain spelling ``--ring-radius``. A name that is not
    a field of the dataclass raises KeyError (a typo in the code, caught by the tests)."""
    if field is None:
        return "--" + prefix + str(owner).replace("_", "-")
    cls = owner if isinstance(owner, type) else type(owner)
    return "--" + prefix + _field_names(cls)[field]


@functools.cache
def _field_names(cls: type) -> dict[str, str]:
    """``{field: command-line name without --}`` of dataclass ``cls`` (its tyro annotations)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        name = None
        for meta in getattr(hints.get(f.name), "__metadata__", ()):
            n = getattr(meta, "name", None)
            if isinstance(n, str):
                name = n
                break
        out[f.name] = name if name is not None else f.name.replace("_", "-")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    return value


def finite(name: str, value):
    """A finite number (not nan, not inf)."""
    if value is None:
        return None
    _number(name, value)
    return value


def integer(name: str, value):
    """A whole number (an int, or a float with no fractional part)."""
    if value is None:
        return None
    v = _number(name, value)
    if float(v) != int(v):
        raise UsageError(f"{name} must be a whole number, got {value}")
    return value


def positive(name: str, value):
    """A finite number greater than 0."""
    if value is None:
        return None
    if not _number(name, value) > 0:
        raise UsageError(f"{name} must be greater than 0, got {_fmt(value)}")
    return value


def non_negative(name: str, value):
    """A finite number at least 0."""
    if value is None:
        return None
    if _number(name, value) < 0:
        raise UsageError(f"{name} must be at least 0, got {_fmt(value)}")
    return value


def at_least(name: str, value, lo, *, hint: str = ""):
    """A finite number >= ``lo``. ``hint`` is added to the message (e.g. what 0 would mean)."""
    if value is None:
        return None
    if _number(name, value) < lo:
        raise UsageError(f"{name} must be at least {_fmt(lo)}, got {_fmt(value)}" + (f" ({hint})" if hint else ""))
    return value


def in_range(name: str, value, lo, hi, *, lo_open: bool = False, hi_open: bool = False):
    """A finite number between ``lo`` and ``hi`` (inclusive unless ``lo_open`` / ``hi_open``)."""
    if value is None:
        return None
    v = _number(name, value)
    bad = (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi)
    if bad:
        if lo_open or hi_open:
            left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
            rule = f"in {left}{_fmt(lo)}, {_fmt(hi)}{right}"
        else:
            rule = f"between {_fmt(lo)} and {_fmt(hi)}"
        raise UsageError(f"{name} must be {rule}, got {_fmt(value)}")
    return value


def fraction(name: str, value):
    """A finite number in [0, 1] (a probability, a share)."""
    return in_range(name, value, 0, 1)


def one_of(name: str, value, choices: Iterable):
    """One of ``choices``."""
    if value is None:
        return None
    choices = list(choices)
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def multiple_of(name: str, value, m: int, *, at_least_value: int | None = None):
    """A whole multiple of ``m`` (and at least ``at_least_value``, default ``m``)."""
    if value is None:
        return None
    integer(name, value)
    lo = m if at_least_value is None else at_least_value
    if value < lo or int(value) % m:
        raise UsageError(f"{name} must be a multiple of {m} of at least {lo}, got {_fmt(value)}")
    return value
