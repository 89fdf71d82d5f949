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


def _allowed(i: int, rows: list[dict]) -> tuple[set[int], set[str]]:
    """(rows whose modules row i may import, extra module prefixes it may import)."""
    cell = rows[i]["allow"]
    ok: set[int] = {i}
    extra: set[str] = set()
    if re.search(r"\beverything\b(?! above)(?! below)", cell) and "but" not in cell:
        ok |= set(range(len(rows)))
    if "everything above" in cell or "everything below" in cell:
        ok |= set(range(i))
        if "but train" in cell:
            ok -= {_row_of("s3dgs.train", rows)}
    for word in re.findall(r"[a-z_][a-z_.]*", cell):
        if word in ("everything", "above", "below", "but", "it", "and", "outputs", "files", "ray", "pyarrow"):
            continue
        mod = "s3dgs." + word
        j = _row_of(mod, rows)
        if j is None:
            continue
        if mod in rows[j]["keys"]:
            ok.add(j)
        else:
            extra.add(mod)  # a named module inside another row's package (scene.groundtruth)
    if "pipeline and everything below" in cell:
        ok |= set(range(_row_of("s3dgs.pipeline", rows) + 1))
    return ok, extra


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every `s3dgs...` module imported by the file (module level and inside functions)."""
    tree = ast.parse(path.read_text())
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
        if "viewer_assets" in path.parts:
            continue
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        i = _row_of(mod, rows)
        if i is None:
            problems.append(f"{path.relative_to(ROOT)}: no row in docs/ARCHITECTURE.md's module table")
            continue
        ok, extra = _allowed(i, rows)
        for target, line in _imports(path):
            if target == "s3dgs":
                continue  # the package's own __init__ (version, re-exports)
            j = _row_of(target, rows)
            if j is None:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which has no row")
            elif j not in ok and not any(target == e or target.startswith(e + ".") for e in extra):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}: up the table "
                                f"(row of {rows[i]['keys'][0]} allows: {rows[i]['allow']})")
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


@pytest.mark.parametrize("name", ["s3dgs.scene.romi", "s3dgs.organs", "s3dgs.batch", "s3dgs.viewer"])
def test_new_modules_have_rows(name):
    assert _row_of(name, _rows()) is not None
