"""`--help` of every command reads as plain text: no reStructuredText markup, no `{None}|`
metavars, no gsplat docstring that contradicts the default shown beside it or names its internals."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from s3dgs.cli import ALIASES, COMMANDS, main

CMDS = [[c] for c in COMMANDS] + [list(k) for k in ALIASES]


def _help(cmd: list[str], monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code in (0, None)
    return buf.getvalue()


@pytest.mark.parametrize("cmd", CMDS, ids=[" ".join(c) for c in CMDS])
def test_help_reads_as_plain_text(cmd, monkeypatch):
    text = _help(cmd, monkeypatch)
    assert text.strip(), "no help printed"
    bad = []
    for pat, why in [(r":(func|class|meth|mod|attr):", "reStructuredText role"),
                     (r"``", "reStructuredText literal"),
                     (r"\{None\}", "a {None} metavar (annotate the option with s3dgs.options.opt)"),
                     (r"key[-_]for[-_]gradient|initialize_state|GSs\b|Default to\b", "gsplat's own docstring")]:
        for m in re.finditer(pat, text):
            line = text[text.rfind("\n", 0, m.start()) + 1: text.find("\n", m.end())]
            bad.append(f"{why}: {line.strip()}")
    # "Default is X. (default: Y)" with X != Y: a docstring stating another default than the option's
    flat = re.sub(r"\s*│\s*", " ", text)
    for m in re.finditer(r"Default (?:is|to) ([^.\s]+)\.?.{0,200}?\(default: ([^)]+)\)", flat):
        if m.group(1).replace("_", "") != m.group(2):
            bad.append(f"docstring default {m.group(1)} vs shown default {m.group(2)}")
    # a sentence broken where the source breaks it: a short description line (not an option's
    # overflowing name) followed by a continuation that starts in lower case
    lines = text.splitlines()
    for a, b in zip(lines, lines[1:]):
        da, db = a[27:-1].rstrip(), b[27:-1].strip()
        if (da and db and not b[2:27].strip() and "{" not in a and "}" not in a and len(da) < 25
                and re.match(r"^[a-z]", db) and not da.endswith((".", ":", ")"))):
            bad.append(f"a line broken mid-sentence: {da!r} / {db[:40]!r}")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """The patterns above find what they are for (so a passing test means something)."""
    sample = "--scale {None}|STR   uses :func:`x` and ``y``. Default is 0.0002. (default: 0.0008)"
    assert re.search(r"\{None\}", sample) and re.search(r":(func|class):", sample) and "``" in sample
    m = re.search(r"Default is ([^.\s]+)\.?.{0,200}?\(default: ([^)]+)\)", sample)
    assert m and m.group(1) != m.group(2)
