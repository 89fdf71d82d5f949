"""One helper for how an option reads in ``--help``: its name, its metavar, its default in words.

tyro generates every command's options from its dataclass. An optional value (``Optional[int] =
None``) would read ``--views {None}|INT ... (default: None)``; annotated with
``opt(metavar="INT", default="from the preset")`` it reads ``--views INT ... (default: from the
preset)``. ``flat=True`` drops the group prefix, so a field nested in a config group keeps one name
on every command (see s3dgs/config.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["opt"]


def opt(metavar: str | None = None, default: str | None = None, *, name: str | None = None,
        flat: bool = False) -> Any:
    """A ``tyro.conf.arg`` for ``Annotated[...]``: ``metavar`` (e.g. "INT", "DIR"), ``default``
    (the default in words, shown as ``(default: ...)``), ``name`` (the option's name without
    ``--``), ``flat`` (no group prefix)."""
    import tyro

    return tyro.conf.arg(name=name, metavar=metavar, prefix_name=False if flat else None,
                         help_behavior_hint=f"(default: {default})" if default is not None else None)
