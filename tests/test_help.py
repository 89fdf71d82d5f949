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
    bad += [f"a Python name, not an option or a word: {w}" for w in _python_names(text)]
    bad += _defaults_said_twice(text)
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


# user-facing names with an underscore: the batch manifest's column
_WORDS_WITH_UNDERSCORE = {"plant_id"}


def _python_names(text: str) -> list[str]:
    """snake_case words in the help that are Python names (a field where the reader needs the
    option, `grow_grad2d` for `--grow-grad2d`; a function; a state key), not file names
    (`point_cloud.ply`, `OUT/<plant_id>/`), a choice of a `{...}` metavar or a default's words."""
    choices = set(re.findall(r"[\w.-]+", " ".join(re.findall(r"\{([^}]*)\}", text))))
    text = re.sub(r"\(default: [^)]*\)", "", text)
    found = []
    for m in re.finditer(r"(?<![\w/<.-])[a-z][a-z0-9]*_[a-z0-9_]+\b(?!\.\w)", text):
        if m.group() not in choices and m.group() not in _WORDS_WITH_UNDERSCORE:
            found.append(m.group())
    return sorted(set(found))


def _defaults_said_twice(text: str) -> list[str]:
    """Options whose own text states a default beside the `(default: ...)` tyro shows (two
    statements, one of which goes stale), or whose shown default points at text that is not there."""
    out = []
    for entry in re.split(r"\n(?=  -)", text):
        flat = " ".join(entry.split())
        at = flat.rfind("(default: ")
        if not flat.startswith("-") or at < 0:
            continue
        body, shown = flat[:at], flat[at:]
        if re.search(r"see (below|above)", shown):
            out.append(f"{flat.split()[0]}: {shown} (say the default itself)")
        choices = " ".join(re.findall(r"\{([^}]*)\}", body)).split(",")
        if "default" not in choices and re.search(r"\(default[:)]|\bdefault:|\bDefault\b|\bby default\b|"
                                                  r"\bdefault \d", body):
            out.append(f"{flat.split()[0]}: its text states a default besides {shown}")
    return out


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """The patterns above find what they are for (so a passing test means something)."""
    sample = "--scale {None}|STR   uses :func:`x` and ``y``. Default is 0.0002. (default: 0.0008)"
    assert re.search(r"\{None\}", sample) and re.search(r":(func|class):", sample) and "``" in sample
    m = re.search(r"Default is ([^.\s]+)\.?.{0,200}?\(default: ([^)]+)\)", sample)
    assert m and m.group(1) != m.group(2)
    names = ("--x {per_view,sfm}  per_view: as grow_grad2d_stem says, see depth_prior_loss and "
             "n_relocated; writes OUT/contact_sheet.png and point_cloud.ply. (default: demo_out)")
    assert _python_names(names) == ["depth_prior_loss", "grow_grad2d_stem", "n_relocated"]
    twice = ("  --a INT     Ring heights (default: 0.5 for one ring). (default: see below)\n"
             "  --b FLOAT   Sigma; default 20 px. (default: 20 px)\n"
             "  --c, --no-c Redo maps (default: skip them). (default: False)\n"
             "  --preset {default,tiny}  default: 48 views. (default: default)\n"
             "  --d INT     Threads (0: torch's default). (default: 0)\n")
    assert [s.split(":")[0] for s in _defaults_said_twice(twice)] == ["--a", "--a", "--b", "--c,"]
