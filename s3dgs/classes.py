"""The one table of semantic classes: name, label id in ground-truth masks, colour, meaning.

Everything that names, numbers or colours a class reads it from here: heatmap channels, the
``sem_<name>`` fields of a PLY, ground-truth mask ids of the synthetic plant, export and report
colours, metrics. See ``docs/ARCHITECTURE.md`` (conventions).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SemanticClass", "CLASS_TABLE", "CLASSES", "CLASS_COLORS", "GT_LABELS", "GT_LABEL_NAMES",
           "class_color", "stem_classes"]


@dataclass(frozen=True)
class SemanticClass:
    """One semantic class. ``label`` is its id in ground-truth class masks (0 is background)."""

    name: str
    label: int
    color: tuple[int, int, int]
    meaning: str
    stem: bool  # part of a stem (used where thin stems get special treatment)


CLASS_TABLE: tuple[SemanticClass, ...] = (
    SemanticClass("U", 1, (230, 60, 60), "stem above a node", True),
    SemanticClass("N", 2, (250, 210, 40), "node", False),
    SemanticClass("D", 3, (60, 110, 240), "stem below a node", True),
    SemanticClass("P", 4, (220, 60, 220), "peduncle", True),
)
"""The trained classes, in channel order (heatmap channels, semantic logits, PLY fields)."""

CLASSES: tuple[str, ...] = tuple(c.name for c in CLASS_TABLE)
"""Class names in channel order: ("U", "N", "D", "P")."""

CLASS_COLORS: dict[str, tuple[int, int, int]] = {c.name: c.color for c in CLASS_TABLE}
"""RGB colour of each class, used by renders, exports and the report alike."""

GT_LABEL_NAMES: dict[int, str] = {0: "background", **{c.label: c.name for c in CLASS_TABLE},
                                  5: "leaf", 6: "fruit"}
"""Ids of ground-truth class masks (the synthetic plant): the classes plus background, leaf, fruit."""

GT_LABELS: dict[str, int] = {v: k for k, v in GT_LABEL_NAMES.items()}
"""Name -> ground-truth mask id."""


def class_color(name: str) -> tuple[int, int, int]:
    """The class's colour; white for a name outside the table (e.g. a PLY with other classes)."""
    return CLASS_COLORS.get(name, (255, 255, 255))


def stem_classes(classes: tuple[str, ...] = CLASSES) -> list[int]:
    """Channel indices (into ``classes``) of the stem classes U, D, P."""
    stems = {c.name for c in CLASS_TABLE if c.stem}
    return [i for i, c in enumerate(classes) if c in stems]
