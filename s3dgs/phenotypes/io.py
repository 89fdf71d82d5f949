"""The outputs of a measurement: RUN/phenotypes.json, .csv (`csv_text`, or the geometry's) and
.png (`plot_phenotypes`, or the geometry's figure), and the one-line and plain-text summaries."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.classes import CLASSES
from s3dgs.classes import class_color as _class_color
from s3dgs.phenotypes.common import _basis
from s3dgs.phenotypes.geometry import geometry_csv_text, plot_geometry

CSV_COLUMNS = ("scope", "index", "from_node", "to_node", "internode_length", "internode_straight_length",
               "stem_diameter", "node_height", "node_stem_position", "node_confidence", "node_peduncles",
               "plant_height", "stem_length", "node_count", "peduncle_count", "stem_diameter_median",
               "unit")


def csv_text(res: dict) -> str:
    """RUN/phenotypes.csv: one plant row, one row per node, one per internode (CSV_COLUMNS)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    p = res["plant"]
    u = res["units"]
    w.writerow({"scope": "plant", "plant_height": p["plant_height"], "stem_length": p["stem_length"],
                "node_count": p["node_count"], "peduncle_count": p["peduncle_count"],
                "stem_diameter_median": p["stem_diameter_median"], "unit": u})
    for n in res["nodes"]:
        w.writerow({"scope": "node", "index": n["index"], "node_height": n["height"],
                    "node_stem_position": n["stem_position"], "node_confidence": n["confidence"],
                    "node_peduncles": n["peduncles"], "unit": u})
    for i in res["internodes"]:
        w.writerow({"scope": "internode", "index": i["index"], "from_node": i["from_node"],
                    "to_node": i["to_node"], "internode_length": i["length"],
                    "internode_straight_length": i["straight_length"], "stem_diameter": i["stem_diameter"],
                    "unit": u})
    return buf.getvalue()


def plot_phenotypes(res: dict, means: np.ndarray, probs: np.ndarray, opacities: np.ndarray, path,
                    *, classes: Sequence[str] = CLASSES, class_threshold: float = 0.5,
                    min_opacity: float = 0.1) -> Path:
    """RUN/phenotypes.png: the class Gaussians with the fitted centreline and numbered nodes, two
    side views and a top view (heights above the stem base along up)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    up = np.asarray(res["up"], np.float64)
    e1, e2 = _basis(up)
    stem = res.get("stem")
    origin = np.zeros(3)
    if stem:  # under the stem's lowest point, at the base's height
        origin = np.asarray(stem["base_model"], np.float64)
        origin = origin + (stem["base_height_model"] - origin @ up) * up
    f = res["metres_per_unit"] or 1.0
    unit = res["units"]

    def frame(x):
        x = (np.asarray(x, np.float64).reshape(-1, 3) - origin) * f
        return x @ e1, x @ e2, x @ up

    X = np.asarray(means, np.float64)
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.6), gridspec_kw={"width_ratios": [1, 1, 1]})
    titles = [f"side view (along e2), {unit}", f"side view (along e1), {unit}", f"top view, {unit}"]
    pick = [(0, 2), (1, 2), (0, 1)]
    shown = []
    for k, c in enumerate(classes):
        m = (probs[:, k] > class_threshold) & (opacities > min_opacity)
        if m.any():
            shown.append((c, frame(X[m])))
    cl = frame(stem["centreline_model"]) if stem else None
    for ax, (i, j), title in zip(axes, pick, titles):
        for c, pts in shown:
            rgb = _class_color(c)  # any built-in table's colour; grey for an unknown class
            col = np.array(rgb if rgb != (255, 255, 255) else (120, 120, 120)) / 255.0
            ax.scatter(pts[i], pts[j], s=6, color=col, alpha=0.7, label=c, linewidths=0)
        if cl is not None:
            ax.plot(cl[i], cl[j], "k-", lw=1.5, label="centreline")
            if j == 2:  # side views: the base the heights are measured from
                ax.axhline(0.0, color="0.4", ls="--", lw=1, label="base")
        for n in res["nodes"]:
            p = frame(n["position_model"])
            ax.plot(p[i], p[j], "o", mfc="none", mec="k", ms=8)
            ax.annotate(str(n["index"]), (p[i][0], p[j][0]), xytext=(6, 2), textcoords="offset points",
                        fontsize=9, weight="bold")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    if shown or cl is not None:
        axes[0].legend(fontsize=8, markerscale=4, loc="upper left")
    p = res["plant"]

    def fmt(v, d=3):
        return "n/a" if v is None else f"{v:.{d}g}"

    fig.suptitle(f"plant height {fmt(p['plant_height'])} {unit} · stem length {fmt(p['stem_length'])} "
                 f"{unit} · nodes {fmt(p['node_count'])} · peduncles {fmt(p['peduncle_count'])}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def write_phenotypes(res: dict, run_dir, means=None, probs=None, opacities=None, *,
                     classes: Sequence[str] = CLASSES, class_threshold: float = 0.5,
                     min_opacity: float = 0.1) -> dict[str, Path]:
    """Write RUN/phenotypes.json, .csv and (when the arrays are given) .png. Returns the paths.
    A geometry result (``res["method"] == "geometry"``) takes the measured points as `means`
    (probs and opacities unused): one CSV row per organ, and its own figure."""
    run = Path(run_dir)
    if res.get("method") == "geometry":
        paths = {"json": atomic_write_text(run / "phenotypes.json", json.dumps(res, indent=2)),
                 "csv": atomic_write_text(run / "phenotypes.csv", geometry_csv_text(res))}
        if means is not None:
            paths["png"] = plot_geometry(res, means, run / "phenotypes.png")
        return paths
    paths = {"json": atomic_write_text(run / "phenotypes.json", json.dumps(res, indent=2)),
             "csv": atomic_write_text(run / "phenotypes.csv", csv_text(res))}
    if means is not None:
        paths["png"] = plot_phenotypes(res, means, probs, opacities, run / "phenotypes.png", classes=classes,
                                       class_threshold=class_threshold, min_opacity=min_opacity)
    return paths


def summary_line(res: dict) -> str:
    """One line: height, nodes, internodes, peduncles, the number of notes (e.g. a stage's note)."""
    p, u = res["plant"], res["units"]
    if res.get("method") == "geometry":
        h = "height not measured" if p["plant_height"] is None else f"height {p['plant_height']:.3g} {u}"
        org = "organs not measured" if p["organ_count"] is None else f"{p['organ_count']} organs"
        line = f"{h}, {org}, {len(res['internodes'])} internodes (geometry)"
        rc = res.get("reference_comparison")
        if rc and rc.get("angle_error_deg_median") is not None:
            line += (f", vs reference: {rc['organs']['found']}/{rc['organs']['reference']} organs, angle error "
                     f"{rc['angle_error_deg_median']:.3g} deg, internode error "
                     f"{rc['internode_error_pct_of_mean']:.3g} %")
        return f"{line}; {len(res['notes'])} notes"
    h = "height not measured" if p["plant_height"] is None else f"height {p['plant_height']:.3g} {u}"
    nodes = "nodes not measured" if p["node_count"] is None else f"{p['node_count']} nodes"
    peds = "peduncles not measured" if p["peduncle_count"] is None else f"{p['peduncle_count']} peduncles"
    return f"{h}, {nodes}, {len(res['internodes'])} internodes, {peds}; {len(res['notes'])} notes"


def format_summary(res: dict) -> str:
    """A few plain-text lines: the plant traits, the internodes, the notes."""
    u = res["units"]
    p = res["plant"]

    def v(x, unit=u):
        return "not measured" if x is None else (f"{x:.4g} {unit}" if unit else str(x))

    if res.get("method") == "geometry":
        lines = [f"scale: {res['scale']['source']}", f"up: {res['up_source']}",
                 f"method: geometry ({res.get('method_reason', '')})",
                 f"plant height {v(p['plant_height'])}, main stem length {v(p['stem_length'])}, "
                 f"lateral organs {v(p['organ_count'], '')}"]
        for i in res["internodes"]:
            a = i.get("angle_deg")
            lines.append(f"  organ {i['from_node']}-{i['to_node']}: internode {v(i['length'])}, divergence "
                         + ("not measured" if a is None else f"{a:.1f} deg"))
        rc = res.get("reference_comparison")
        if rc:
            o = rc["organs"]
            lines.append(f"reference {rc['reference']}: {o['found']} of {o['reference']} organs found, "
                         f"{o['missed']} missed, {o['extra']} extra; median angle error "
                         f"{v(rc['angle_error_deg_median'], 'deg')}, median internode error "
                         f"{v(rc['internode_error_median'])} ({v(rc['internode_error_pct_of_mean'], '%')} of the "
                         "reference's mean)")
        lines += [f"note: {n}" for n in res["notes"]]
        return "\n".join(lines)
    lines = [f"scale: {res['scale']['source']}", f"up: {res['up_source']}",
             f"plant height {v(p['plant_height'])}, stem length {v(p['stem_length'])}, "
             f"nodes {v(p['node_count'], '')}, peduncles {v(p['peduncle_count'], '')}, "
             f"median stem diameter {v(p['stem_diameter_median'])}"]
    for i in res["internodes"]:
        lines.append(f"  internode {i['from_node']}-{i['to_node']}: length {v(i['length'])}, "
                     f"diameter {v(i['stem_diameter'])}")
    for n in res["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)
