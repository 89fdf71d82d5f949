"""One helper for how an option reads in ``--help``: its name, its metavar, its default in words.

tyro generates every command's options from its dataclass. An optional value (``Optional[int] =
None``) would read ``--views {None}|INT ... (default: None)``; annotated with
``opt(metavar="INT", default="from the preset")`` it reads ``--views INT ... (default: from the
preset)``. ``flat=True`` drops the group prefix, so a field nested in a config group keeps one name
on every command (see s3dgs/config.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["auto_opt", "opt", "reflow_help"]


def opt(metavar: str | None = None, default: str | None = None, *, name: str | None = None,
        flat: bool = False) -> Any:
    """A ``tyro.conf.arg`` for ``Annotated[...]``: ``metavar`` (e.g. "INT", "DIR"), ``default``
    (the default in words, shown as ``(default: ...)``), ``name`` (the option's name without
    ``--``), ``flat`` (no group prefix)."""
    import tyro

    return tyro.conf.arg(name=name, metavar=metavar, prefix_name=False if flat else None,
                         help_behavior_hint=f"(default: {default})" if default is not None else None)


def auto_opt(metavar: str, words: str, *, name: str, flat: bool = True) -> Any:
    """A ``tyro.conf.arg`` for an option whose None means "auto": ``--help`` reads ``(default: auto:
    WORDS)``, or the value itself where a command's preset sets one (``s3dgs demo``'s warm-up)."""
    import tyro

    def hint(default: str) -> str:
        return f"(default: auto: {words})" if default == "None" else f"(default: {default})"

    return tyro.conf.arg(name=name, metavar=metavar, prefix_name=False if flat else None,
                         help_behavior_hint=hint)


def reflow_help(cls: type, _seen: set | None = None) -> None:
    """Give every field of the dataclass `cls` (and of the dataclasses nested in it) its docstring
    as one flowing help text, so `--help` does not break lines where the source does.

    tyro 1.x keeps the source's line breaks of a field docstring whose continuation lines are
    indented (every docstring written in the usual style), and the terminal then wraps each source
    line on its own: sentences broken mid-way. Hand-written here because it concerns how this
    project's docstrings reach tyro: the attribute docstrings are read from the source with `ast`,
    joined line by line (blank lines stay paragraph breaks) and added as ``tyro.conf.arg(help=...)``
    to the field's annotation, where tyro merges it with the other ``arg`` settings."""
    import ast
    import dataclasses
    import inspect
    import textwrap
    import typing

    import tyro

    seen = set() if _seen is None else _seen
    if cls in seen or not dataclasses.is_dataclass(cls):
        return
    seen.add(cls)
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            src = textwrap.dedent(inspect.getsource(klass))
            hints = typing.get_type_hints(klass, include_extras=True)
        except (OSError, TypeError, NameError):
            continue
        body = ast.parse(src).body[0].body
        docs = {}
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = b.value.value
        for name, doc in docs.items():
            if name not in klass.__dict__.get("__annotations__", {}) or name not in hints:
                continue
            paras = [" ".join(line.strip() for line in p.splitlines() if line.strip())
                     for p in inspect.cleandoc(doc).split("\n\n")]
            klass.__annotations__[name] = typing.Annotated[hints[name], tyro.conf.arg(help="\n\n".join(paras))]
    for f in dataclasses.fields(cls):
        try:
            t = typing.get_type_hints(cls, include_extras=True).get(f.name)
        except (TypeError, NameError):
            continue
        for sub in (typing.get_args(t) or (t,)):
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                reflow_help(sub, seen)
