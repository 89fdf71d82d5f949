"""The one place semantic classes are defined: tables of classes per species, and how a scene or a
run names its table.

A *class table* (:class:`ClassTable`) is a name and the classes in channel order: the order of the
heatmap channels, the semantic logits, the ``sem_<name>`` fields of a PLY and the ids of class
masks (``k`` = the k-th class, 1-based; 0 background; 255 unlabelled). Each class has a colour
(renders, exports, report), a meaning, and two flags: ``stem`` (a thin stem-like structure: stems
get special treatment in densification and depth losses) and ``main_stem`` (the plant's main stem,
for phenotyping).

Built-in tables (:data:`TABLES`):

- ``tomato`` (the default): U stem above a node, N node, D stem below a node, P peduncle; U and D
  are the main stem. Its names, colours and ground-truth ids are also exposed as the module
  constants ``CLASS_TABLE``, ``CLASSES``, ``CLASS_COLORS``, ``GT_LABELS`` that many modules use.
- ``arabidopsis``: stem, pedicel, fruit, flower, leaf; "stem" is the main stem, stem and pedicel
  are stem-like.

A user table is a JSON file ``{"name": "...", "classes": [{"name": "stem", "color": [r, g, b],
"meaning": "...", "stem": true, "main_stem": true}, ...]}``; :func:`load_class_table` takes a
built-in name or such a file. A scene names its table in ``SCENE/classes.json`` (``{"table":
"arabidopsis"}`` or a full table; absent: tomato), see :func:`scene_class_table`; a run records it
in ``RUN/config.json`` (``"class_table"``), see :func:`run_class_table`. See ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from s3dgs.errors import S3dgsError

__all__ = [
    "ARABIDOPSIS",
    "CLASSES",
    "CLASS_COLORS",
    "CLASS_TABLE",
    "DEFAULT_TABLE",
    "GT_LABELS",
    "GT_LABEL_NAMES",
    "TABLES",
    "TOMATO",
    "UNLABELLED",
    "ClassTable",
    "SemanticClass",
    "class_color",
    "load_class_table",
    "main_stem_classes",
    "run_class_table",
    "scene_class_table",
    "stem_classes",
]

UNLABELLED = 255
"""Class-mask id of a pixel that is not labelled (left out of the loss and of the IoU)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # a PLY property suffix and a file name alike


@dataclass(frozen=True)
class SemanticClass:
    """One semantic class. ``label`` is its id in class masks (0 is background): its 1-based channel
    index, which for tomato is also the id in the synthetic plant's ground-truth masks."""

    name: str
    label: int
    color: tuple[int, int, int]
    meaning: str
    stem: bool  # a thin stem-like structure (used where thin stems get special treatment)
    main_stem: bool = False  # part of the plant's main stem


@dataclass(frozen=True)
class ClassTable:
    """A named tuple of classes in channel order (``len(table)`` = K channels)."""

    name: str
    classes: tuple[SemanticClass, ...]

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in channel order."""
        return tuple(c.name for c in self.classes)

    @property
    def colors(self) -> dict[str, tuple[int, int, int]]:
        """Name -> RGB colour."""
        return {c.name: c.color for c in self.classes}

    def stem_indices(self) -> list[int]:
        """Channel indices of the stem-like classes."""
        return [i for i, c in enumerate(self.classes) if c.stem]

    def main_stem_indices(self) -> list[int]:
        """Channel indices of the main-stem classes (tomato: U, D; arabidopsis: stem)."""
        return [i for i, c in enumerate(self.classes) if c.main_stem]

    def to_dict(self) -> dict:
        """The table as JSON-able data, the layout of a user table file."""
        return {"name": self.name, "classes": [
            {"name": c.name, "color": list(c.color), "meaning": c.meaning, "stem": c.stem,
             "main_stem": c.main_stem} for c in self.classes]}

    @classmethod
    def from_dict(cls, data, source: str = "class table") -> ClassTable:
        """A table from :meth:`to_dict`'s layout; ``source`` (a file name) is named in errors."""
        fix = ('Expected {"name": "...", "classes": [{"name": "stem", "color": [r, g, b], "meaning": '
               '"...", "stem": true, "main_stem": true}, ...]}.')

        def bad(why: str) -> S3dgsError:
            return S3dgsError(f"{source}: {why}. {fix}")

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, got {type(data).__name__}")
        name = data.get("name", "custom")
        if not isinstance(name, str) or not name:
            raise bad(f'"name" must be a non-empty string, got {name!r}')
        raw = data.get("classes")
        if not isinstance(raw, list) or not raw:
            raise bad('"classes" must be a non-empty list')
        if len(raw) >= UNLABELLED:
            raise bad(f"{len(raw)} classes; at most {UNLABELLED - 1} fit 8-bit masks (255 = unlabelled)")
        out, seen = [], set()
        for k, c in enumerate(raw):
            if not isinstance(c, dict):
                raise bad(f"class {k + 1} must be an object, got {c!r}")
            unknown = sorted(set(c) - {"name", "color", "meaning", "stem", "main_stem"})
            if unknown:
                raise bad(f"class {k + 1} has unknown key(s) {', '.join(unknown)}")
            cname = c.get("name")
            if not isinstance(cname, str) or not _NAME_RE.match(cname):
                raise bad(f"class {k + 1}: name {cname!r} must be letters, digits, '_' or '-' (it names "
                          "PLY fields sem_<name> and files classes/<name>.ply)")
            if cname in seen:
                raise bad(f"class name {cname!r} appears twice")
            seen.add(cname)
            col = c.get("color")
            if (not isinstance(col, (list, tuple)) or len(col) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in col)):
                raise bad(f"class {cname!r}: color must be [r, g, b] integers in 0..255, got {col!r}")
            meaning = c.get("meaning", "")
            if not isinstance(meaning, str):
                raise bad(f"class {cname!r}: meaning must be a string")
            main = c.get("main_stem", False)
            stem = c.get("stem", main)
            if not isinstance(stem, bool) or not isinstance(main, bool):
                raise bad(f"class {cname!r}: stem and main_stem must be true or false")
            if main and not stem:
                raise bad(f"class {cname!r}: a main_stem class must also be a stem class")
            out.append(SemanticClass(cname, k + 1, tuple(int(v) for v in col), meaning, stem, main))
        return cls(name, tuple(out))


TOMATO = ClassTable("tomato", (
    SemanticClass("U", 1, (230, 60, 60), "stem above a node", True, True),
    SemanticClass("N", 2, (250, 210, 40), "node", False, False),
    SemanticClass("D", 3, (60, 110, 240), "stem below a node", True, True),
    SemanticClass("P", 4, (220, 60, 220), "peduncle", True, False),
))
"""Tomato: the stem classes of the skeleton heatmaps (the default table)."""

ARABIDOPSIS = ClassTable("arabidopsis", (
    SemanticClass("stem", 1, (150, 90, 40), "inflorescence stem: the main stem and its branches", True, True),
    SemanticClass("pedicel", 2, (255, 140, 0), "pedicel: the short stalk joining a fruit or flower to the stem",
                  True, False),
    SemanticClass("fruit", 3, (70, 130, 240), "fruit (silique)", False, False),
    SemanticClass("flower", 4, (240, 90, 200), "flower or flower bud", False, False),
    SemanticClass("leaf", 5, (50, 180, 70), "leaf (rosette or cauline)", False, False),
))
"""Arabidopsis thaliana: the organ classes of the ROMI scans."""

TABLES: dict[str, ClassTable] = {t.name: t for t in (TOMATO, ARABIDOPSIS)}
"""The built-in tables by name."""

DEFAULT_TABLE = TOMATO

CLASS_TABLE: tuple[SemanticClass, ...] = TOMATO.classes
"""The default (tomato) classes, in channel order (heatmap channels, semantic logits, PLY fields)."""

CLASSES: tuple[str, ...] = TOMATO.names
"""Class names of the default table in channel order: ("U", "N", "D", "P")."""

CLASS_COLORS: dict[str, tuple[int, int, int]] = TOMATO.colors
"""RGB colour of each default class, used by renders, exports and the report alike."""

GT_LABEL_NAMES: dict[int, str] = {0: "background", **{c.label: c.name for c in CLASS_TABLE},
                                  5: "leaf", 6: "fruit"}
"""Ids of ground-truth class masks (the synthetic plant): the classes plus background, leaf, fruit."""

GT_LABELS: dict[str, int] = {v: k for k, v in GT_LABEL_NAMES.items()}
"""Name -> ground-truth mask id."""


def class_color(name: str, table: ClassTable | None = None) -> tuple[int, int, int]:
    """The class's colour: from ``table`` when given and it holds ``name``, else from the default
    table, else from any built-in table; white for a name no table knows."""
    if table is not None and name in table.names:
        return table.colors[name]
    if name in CLASS_COLORS:
        return CLASS_COLORS[name]
    for t in TABLES.values():
        if name in t.names:
            return t.colors[name]
    return (255, 255, 255)


def _table_with(classes) -> ClassTable:
    """The built-in table whose names are ``classes`` (the default when none matches)."""
    classes = tuple(classes)
    for t in TABLES.values():
        if t.names == classes:
            return t
    return DEFAULT_TABLE


def stem_classes(classes: tuple[str, ...] = CLASSES, table: ClassTable | None = None) -> list[int]:
    """Channel indices (into ``classes``) of the stem-like classes (tomato: U, D, P; arabidopsis:
    stem, pedicel). ``table``: the run's table (default: the built-in one with these names)."""
    table = table or _table_with(classes)
    stems = {c.name for c in table if c.stem}
    return [i for i, c in enumerate(classes) if c in stems]


def main_stem_classes(classes: tuple[str, ...] = CLASSES, table: ClassTable | None = None) -> list[int]:
    """Channel indices (into ``classes``) of the main-stem classes (tomato: U, D; arabidopsis: stem)."""
    table = table or _table_with(classes)
    mains = {c.name for c in table if c.main_stem}
    return [i for i, c in enumerate(classes) if c in mains]


def _known() -> str:
    return ", ".join(TABLES)


def load_class_table(spec) -> ClassTable:
    """A class table from a built-in name (``"tomato"``, ``"arabidopsis"``), a JSON file path
    (a full table, or ``{"table": "<built-in name>"}`` as SCENE/classes.json may hold), a dict of
    either layout, a :class:`ClassTable` (returned as is), or None (the default, tomato).

    Raises S3dgsError naming the file or the known tables."""
    if spec is None:
        return DEFAULT_TABLE
    if isinstance(spec, ClassTable):
        return spec
    if isinstance(spec, dict):
        return _from_data(spec, "class table")
    text = str(spec)
    if text in TABLES:
        return TABLES[text]
    if text.lower() in TABLES:
        return TABLES[text.lower()]
    path = Path(text)
    if not path.is_file():
        if path.suffix.lower() == ".json" or "/" in text or path.exists():
            raise S3dgsError(f"{path}: class table file not found. Give an existing JSON file or a built-in "
                             f"table ({_known()}).")
        raise S3dgsError(f"unknown class table {text!r}: the built-in tables are {_known()}; or give a JSON "
                         'file {"name": ..., "classes": [...]}.')
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise S3dgsError(f"{path}: unreadable class table ({exc}). Fix or replace the file.") from exc
    except json.JSONDecodeError as exc:
        raise S3dgsError(f"{path}: malformed JSON ({exc}). Write {{\"table\": \"{_known().split(', ')[0]}\"}} "
                         'or a full table {"name": ..., "classes": [...]}.') from exc
    return _from_data(data, str(path))


def _from_data(data, source: str) -> ClassTable:
    if isinstance(data, dict) and "table" in data:
        name = data["table"]
        extra = sorted(set(data) - {"table"})
        if extra:
            raise S3dgsError(f"{source}: {{\"table\": ...}} names a built-in table and takes no other key "
                             f"(found {', '.join(extra)}); give a full table without \"table\" instead.")
        if not isinstance(name, str) or name not in TABLES:
            raise S3dgsError(f"{source}: unknown class table {name!r}; the built-in tables are {_known()}.")
        return TABLES[name]
    return ClassTable.from_dict(data, source)


def scene_class_table(scene_dir) -> ClassTable:
    """The table a scene uses: ``SCENE/classes.json`` when present, else tomato (the default)."""
    if scene_dir is None:
        return DEFAULT_TABLE
    p = Path(scene_dir) / "classes.json"
    return load_class_table(p) if p.is_file() else DEFAULT_TABLE


def run_class_table(config: dict | None, classes: tuple[str, ...] | None = None) -> ClassTable:
    """The table a run was trained with, from its config.json dict (``"class_table"``). Older runs
    (no table recorded): the built-in table with names ``classes`` (or config's ``"classes"``),
    else a table of those names coloured from the built-in tables."""
    config = config or {}
    if isinstance(config.get("class_table"), dict):
        try:
            return ClassTable.from_dict(config["class_table"], "config.json class_table")
        except S3dgsError:
            pass  # fall back on the names below
    names = tuple(classes if classes is not None else config.get("classes") or CLASSES)
    for t in TABLES.values():
        if t.names == names:
            return t
    return ClassTable("custom", tuple(
        SemanticClass(n, k + 1, class_color(n), "", False, False) for k, n in enumerate(names)))
