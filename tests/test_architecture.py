"""The import rule of docs/ARCHITECTURE.md, checked against the code: imports go down the table of
modules, never up. The table is parsed from the page itself, so the page and this test cannot drift:
a module without a row, or an import its row does not allow, fails here naming both."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PKG = ROOT / "s3dgs"


def _rows() -> list[dict]:
    """The table's rows in order: {"keys": module prefixes the row holds, "allow": its "may import"
    cell}. A key is a dotted module prefix ("s3dgs.scene", "s3dgs.errors")."""
    text = DOC.read_text()
    table = text.split("## Modules, and what each may import", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if not line.startswith("| `s3dgs/"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = []
        for name in re.findall(r"`([^`]+)`", cells[0]):
            name = name if name.startswith("s3dgs/") else "s3dgs/" + name
            if name.endswith(".cpp"):
                continue
            keys.append(name.rstrip("/").removesuffix(".py").replace("/", ".").removesuffix(".__init__"))
        rows.append({"keys": keys, "allow": cells[-1], "line": line})
    return rows


def _row_of(module: str, rows: list[dict]) -> int | None:
    best, best_len = None, -1
    for i, r in enumerate(rows):
        for k in r["keys"]:
            prefix_ok = module.startswith(k + ".") and k != "s3dgs"  # the package row holds __init__ only
            if (module == k or prefix_ok) and len(k) > best_len:
                best, best_len = i, len(k)
    return best


def _named(cell: str) -> list[str]:
    """The modules a "may import" cell names, as dotted names; words in parentheses are remarks."""
    cell = re.sub(r"\([^)]*\)|\bbut [a-z_.]+", "", cell)
    words = re.findall(r"[a-z_][a-z_.]*", cell)
    return ["s3dgs." + w for w in words if w not in ("everything", "above", "but", "ray", "pyarrow")]


def _allowed(i: int, rows: list[dict]) -> tuple[set[int], set[str]]:
    """(rows whose modules row i may import, extra module prefixes it may import)."""
    cell = re.sub(r"\([^)]*\)", "", rows[i]["allow"])
    ok: set[int] = {i}
    extra: set[str] = set()
    if re.search(r"\beverything\b(?! above)", cell):
        ok |= set(range(len(rows)))  # the command line only, at the bottom of the table
    if "everything above" in cell:
        ok |= set(range(i))
        for but in re.findall(r"\bbut ([a-z_.]+)", cell):
            ok -= {_row_of("s3dgs." + but, rows)}
    for mod in _named(cell):
        j = _row_of(mod, rows)
        if j is None:
            continue
        if mod in rows[j]["keys"]:
            ok.add(j)
        else:
            extra.add(mod)  # a named module inside another row's package (scene.groundtruth)
    return ok, extra


def _imports(path: Path, text: str | None = None) -> list[tuple[str, int]]:
    """Every `s3dgs...` module imported by the file (module level and inside functions); `text`
    stands in for the file's source (the checker's own test)."""
    tree = ast.parse(path.read_text() if text is None else text)
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        mod = pkg.removesuffix(".__init__")
        pkg = mod
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("s3dgs")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("s3dgs"):
                # `from s3dgs import CLASSES` names the package; `from s3dgs.scene import romi` a module
                subs = [f"{name}.{a.name}" for a in node.names]
                out += [(s if _is_module(s) else name, node.lineno) for s in subs]
    return out


def _is_module(dotted: str) -> bool:
    p = ROOT / Path(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def test_every_module_has_a_row_and_imports_go_down():
    rows = _rows()
    assert len(rows) > 10, "the module table of docs/ARCHITECTURE.md was not found"
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        if "viewer_assets" not in path.parts:
            problems += _file_problems(path, rows)
    assert not problems, "\n".join(problems)


def _file_problems(path: Path, rows: list[dict], text: str | None = None) -> list[str]:
    """The file's row missing, or each of its imports that its row does not allow."""
    problems = []
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    i = _row_of(mod, rows)
    if i is None:
        return [f"{path.relative_to(ROOT)}: no row in docs/ARCHITECTURE.md's module table"]
    ok, extra = _allowed(i, rows)
    for target, line in _imports(path, text):
        if target == "s3dgs":
            continue  # the package's own __init__ (version, re-exports)
        j = _row_of(target, rows)
        if j is None:
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which has no row")
        elif j not in ok and not any(target == e or target.startswith(e + ".") for e in extra):
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}: up the table "
                            f"(row of {rows[i]['keys'][0]} allows: {rows[i]['allow']})")
    return problems


def test_the_table_itself_points_up():
    """A row names only modules that exist and have a row above its own (an import of a row
    further down the table is the layering broken, even where a row's cell allows it)."""
    rows = _rows()
    problems = []
    for i, r in enumerate(rows):
        for k in r["keys"]:
            if not _is_module(k):
                problems.append(f"row {k}: no such module in s3dgs/ (a stale row)")
        for mod in _named(r["allow"]):
            j = _row_of(mod, rows)
            if j is None or not _is_module(mod):
                problems.append(f"row {r['keys'][0]} names {mod}: no such module or no row for it")
            elif j >= i:
                problems.append(f"row {r['keys'][0]} names {mod}, whose row is not above it")
    assert not problems, "\n".join(problems)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a low module importing the trainer is reported."""
    rows = _rows()
    i = _row_of("s3dgs.errors", rows)
    ok, _ = _allowed(i, rows)
    assert _row_of("s3dgs.train", rows) not in ok
    j = _row_of("s3dgs.pipeline", rows)
    ok, _ = _allowed(j, rows)
    assert _row_of("s3dgs.train", rows) in ok
    ok, _ = _allowed(_row_of("s3dgs.evaluate", rows), rows)  # "everything above but train"
    assert _row_of("s3dgs.train", rows) not in ok and _row_of("s3dgs.export", rows) in ok
    ok, _ = _allowed(_row_of("s3dgs.report", rows), rows)  # "(... evaluate ... write)" is a remark
    assert _row_of("s3dgs.evaluate", rows) not in ok and _row_of("s3dgs.viewer", rows) in ok
    # every kind of import statement, in a function too, is seen and named with its line
    src = ("import s3dgs.train\n"
           "from s3dgs.scene import dataset\n"
           "def f():\n    from .export import export_classes\n"
           "from . import errors\n"
           "from .scene.groundtruth import load_ground_truth\n")
    found = _file_problems(PKG / "checkpoint.py", rows, src)
    assert sorted(p.split(" imports ")[1].split(":")[0] for p in found) == [
        "s3dgs.export", "s3dgs.scene.dataset", "s3dgs.scene.groundtruth", "s3dgs.train"], found
    assert "s3dgs/checkpoint.py:4 imports s3dgs.export" in "\n".join(found)
    found = _file_problems(PKG / "depth" / "io.py", rows, "def g():\n    from ..scene import dataset\n")
    assert len(found) == 1 and "s3dgs/depth/io.py:2 imports s3dgs.scene.dataset" in found[0]
    # a row may name a module inside a package (report: scene.groundtruth) without the whole package
    ok = _file_problems(PKG / "report.py", rows, "from s3dgs.scene.groundtruth import x\n")
    bad = _file_problems(PKG / "report.py", rows, "from s3dgs.scene.dataset import x\n")
    assert not ok and len(bad) == 1


@pytest.mark.parametrize("name", ["s3dgs.scene.romi", "s3dgs.organs", "s3dgs.batch", "s3dgs.viewer"])
def test_new_modules_have_rows(name):
    assert _row_of(name, _rows()) is not None


def test_the_page_names_the_commands_there_are():
    """"Data flows one way" names every command of `s3dgs.cli.COMMANDS` (and says report is none)."""
    from s3dgs.cli import COMMANDS

    section = DOC.read_text().split("## Data flows one way", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z]+)`", section))
    assert set(COMMANDS) <= named, f"commands the page does not name: {set(COMMANDS) - named}"
    assert "report" not in COMMANDS and "`report` is not a command" in section
