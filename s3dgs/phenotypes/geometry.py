"""Step 8, geometry only (``--method geometry``, or ``auto`` without usable stem classes):
`s3dgs.organs.measure_organs` on the opaque Gaussians, its CSV and figure, and the comparison of
the organ sequence with a ROMI reference (`s3dgs.sequence`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from s3dgs.atomic import atomic_write
from s3dgs.phenotypes.common import _basis, _r_tree, _unit

MIN_STEM_GAUSSIANS = 20
"""`--method auto` measures with the classes when the model has U and D classes with at least this
many confident opaque Gaussians, else with the geometry."""


MAX_GROUND_SHARE = 0.25
"""A plane fitted to background Gaussians with more than this share of the opaque Gaussians on or
under it cuts through the plant: it is not taken for the ground."""


ORGAN_CLASS_NAMES = ("pedicel", "fruit", "flower", "silique", "peduncle", "p")
"""Class names (any table) whose Gaussians make a lateral organ in the geometry path (the tomato P
is the peduncle); a side branch of mostly other Gaussians (leaves) is not counted."""


GEOMETRY_CSV_COLUMNS = ("scope", "index", "insertion_stem_position", "insertion_height", "angle_to_next_deg",
                        "internode_to_next", "organ_length", "azimuth_deg", "plant_height", "stem_length",
                        "organ_count", "unit")


def _stem_classes_usable(probs: np.ndarray, opac: np.ndarray, classes: Sequence[str], class_threshold: float,
                         min_opacity: float) -> tuple[bool, str]:
    """Can the class-based measurement run? (yes/no, why not)."""
    classes = tuple(classes)
    if "U" not in classes or "D" not in classes:
        return False, (f"the model has no U and D stem classes (its classes: {', '.join(classes) or 'none'}), "
                       "so the traits were measured from the geometry")
    m = np.zeros(len(opac), bool)
    for c in ("U", "D"):
        m |= (probs[:, classes.index(c)] > class_threshold) & (opac > min_opacity)
    if m.sum() < MIN_STEM_GAUSSIANS:
        return False, (f"only {int(m.sum())} confident U/D Gaussians (class probability > {class_threshold}, "
                       f"opacity > {min_opacity}; at least {MIN_STEM_GAUSSIANS} needed), so the traits were "
                       "measured from the geometry")
    return True, ""


def _measure_geometry(means, opac, probs, classes, up, mpu, class_threshold, min_opacity, ground,
                      why: str, box: Optional[np.ndarray] = None) -> tuple[dict, np.ndarray]:
    """`s3dgs.organs.measure_organs` on the opaque Gaussians (inside the scan's box when the scene
    has one; above the ground plane, when one was found within 15 degrees of up). Returns (the
    phenotypes dict, the points measured [M, 3])."""
    from s3dgs.classes import main_stem_classes
    from s3dgs.organs import measure_organs

    classes = tuple(classes)
    keep = opac > min_opacity
    notes = []
    if box is not None:
        inside = ((means >= box[0]) & (means <= box[1])).all(1)
        if (keep & ~inside).any():
            notes.append(f"{int((keep & ~inside).sum())} opaque Gaussians outside the scan's box "
                         "(prepare.json, the region the plant stands in: the background) were left out")
        keep &= inside
    if ground is not None:
        n_g, d_g = _unit(ground[0]), float(ground[1])
        if abs(n_g @ up) > math.cos(math.radians(15)) and keep.any():
            lo, hi = np.percentile(means[keep], [1, 99], axis=0)
            tol = 0.01 * float(np.linalg.norm(hi - lo))
            low = keep & (means @ n_g - d_g < 2 * tol)
            share = float(low[keep].mean())
            if share > MAX_GROUND_SHARE:
                # a plane through the plant, not under it (a model with no background classes fits
                # its RANSAC plane to the plant itself): nothing is left out
                notes.append(f"the plane fitted to background Gaussians has {share:.0%} of the opaque Gaussians "
                             f"on or under it (more than {MAX_GROUND_SHARE:.0%}): it cuts through the plant, so "
                             "it was not taken for the ground and no Gaussian was left out")
            elif low.any():
                notes.append(f"{int(low.sum())} opaque Gaussians on or under the fitted ground plane were "
                             "left out")
                keep &= ~low
    stem_idx = sorted(set(main_stem_classes(classes)) | {i for i, c in enumerate(classes) if c.lower() == "stem"})
    stem_mask = None
    if stem_idx and probs.shape[1]:
        stem_mask = ((probs[:, stem_idx] > class_threshold).any(1) & keep)[keep]
        if not stem_mask.any():
            stem_mask = None
    # organ classes: the classes a table does not call stem-like, main stem or leaf (e.g. pedicel,
    # fruit and flower of the Arabidopsis table): side branches made mostly of other points (leaves)
    # are not counted as organs
    organ_idx = [i for i, c in enumerate(classes) if c.lower() in ORGAN_CLASS_NAMES]
    organ_mask = None
    if organ_idx and probs.shape[1]:
        organ_mask = (probs[:, organ_idx] > class_threshold).any(1)[keep]
        if not organ_mask.any():
            organ_mask = None
        else:
            notes.append(f"organs: side branches of mostly {', '.join(classes[i] for i in organ_idx)} Gaussians")
    pts = means[keep]
    g = measure_organs(pts, opac[keep], up, stem_mask=stem_mask, organ_mask=organ_mask, metres_per_unit=mpu)
    g["notes"] = notes + g["notes"]
    if stem_mask is not None:
        g["notes"].insert(0, f"main-stem class(es) {', '.join(classes[i] for i in stem_idx)} guided the choice of "
                             f"the main stem ({int(stem_mask.sum())} confident opaque Gaussians)")
    angles, inter = g["angles_deg"], g["internodes"]
    organs = g["organs"]
    for i, o in enumerate(organs):
        o["angle_to_next_deg"] = angles[i] if i < len(angles) else None
        o["internode_to_next"] = inter[i] if i < len(inter) else None
    rows = [{"index": i + 1, "from_node": i + 1, "to_node": i + 2, "length": L, "straight_length": None,
             "stem_diameter": None, "angle_deg": a} for i, (L, a) in enumerate(zip(inter, angles))]
    res = {
        "units": g["units"], "metres_per_unit": mpu, "up": g["up"], "method": "geometry", "measured_by": "geometry",
        "method_reason": why,
        "plant": {**g["plant"], "node_count": None, "peduncle_count": None, "stem_diameter_median": None},
        "sequence": {"angles_deg": angles, "internodes": inter,
                     "convention": "ROMI's: organs from the base up; internodes[i] = arc length along the main "
                                   "stem between the insertions of organs i and i+1; angles_deg[i] = divergence "
                                   "from organ i to organ i+1 around the stem, counter-clockwise seen from above, "
                                   "in [0, 360) degrees (ROMI's files hold radians)"},
        "organs": organs, "internodes": rows, "nodes": [], "peduncles": [], "stem": g["stem"],
        "points": g["points"], "parameters": g["parameters"], "method_rules": g["method_rules"],
        "notes": [why] + g["notes"],
        "opacity_rule": f"Gaussians of opacity > {min_opacity}",
    }
    return res, pts


def compare_to_reference(res: dict, reference, reference_scale: float = 1.0) -> dict:
    """Align a geometry result's organ sequence with a ROMI angles_internodes.json
    (`s3dgs.sequence.align_sequences`). Returns the scores, the alignment and the reference path."""
    from s3dgs.sequence import align_sequences, load_reference

    ref = load_reference(reference)
    seq = res["sequence"]
    out = align_sequences(seq["angles_deg"], seq["internodes"], ref["angles_deg"], ref["internodes"],
                          internode_scale=reference_scale)
    out["reference"] = ref["path"]
    out["units"] = (f"internode errors in {res['units']}; the reference's internodes were multiplied by "
                    f"{reference_scale:g} ({res['units']} per reference unit)")
    return _r_tree(out)


def geometry_csv_text(res: dict) -> str:
    """RUN/phenotypes.csv of a geometry result: one plant row and one row per organ (the angle and
    internode to the next organ on its row)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=GEOMETRY_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    p, u = res["plant"], res["units"]
    w.writerow({"scope": "plant", "plant_height": p["plant_height"], "stem_length": p["stem_length"],
                "organ_count": p["organ_count"], "unit": u})
    for o in res["organs"]:
        w.writerow({"scope": "organ", "index": o["index"], "insertion_stem_position": o["insertion_stem_position"],
                    "insertion_height": o["insertion_height"], "angle_to_next_deg": o["angle_to_next_deg"],
                    "internode_to_next": o["internode_to_next"], "organ_length": o["length"],
                    "azimuth_deg": o["azimuth_deg"], "unit": u})
    return buf.getvalue()


def plot_geometry(res: dict, points: np.ndarray, path) -> Path:
    """RUN/phenotypes.png of a geometry result: two side views of the points with the main stem and
    the numbered insertions, and the divergence angles and internodes against the organ index."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    up = np.asarray(res["up"], np.float64)
    e1, e2 = _basis(up)
    f = res["metres_per_unit"] or 1.0
    unit = res["units"]
    X = np.asarray(points, np.float64).reshape(-1, 3)
    if len(X) > 60000:
        X = X[np.random.default_rng(0).choice(len(X), 60000, replace=False)]
    origin = np.zeros(3)
    if len(X):
        origin = up * float((X @ up).min())

    def frame(x):
        x = (np.asarray(x, np.float64).reshape(-1, 3) - origin) * f
        return x @ e1, x @ e2, x @ up

    fig, axes = plt.subplots(1, 3, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    P = frame(X)
    stem = res.get("stem")
    S = frame(stem["polyline_model"]) if stem else None
    for ax, (i, j), title in zip(axes[:2], ((0, 2), (1, 2)), ("side view (along e2)", "side view (along e1)")):
        ax.scatter(P[i], P[j], s=1, color="0.6", alpha=0.5, linewidths=0, label="opaque Gaussians")
        if S is not None:
            ax.plot(S[i], S[j], "k-", lw=1.5, label="main stem")
        for o in res["organs"]:
            q = frame(o["insertion_model"])
            ax.plot(q[i], q[j], "o", mfc="none", mec="tab:red", ms=6)
            ax.annotate(str(o["index"]), (q[i][0], q[j][0]), xytext=(5, 1), textcoords="offset points",
                        fontsize=7, color="tab:red")
        ax.set_title(f"{title}, {unit}", fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, markerscale=4, loc="upper left")
    ax = axes[2]
    ang = [np.nan if a is None else a for a in res["sequence"]["angles_deg"]]
    idx = np.arange(1, len(ang) + 1)
    ax.plot(idx, ang, "o-", color="tab:blue", ms=4, label="divergence angle (measured)")
    ax.axhline(137.5, color="tab:blue", ls=":", lw=1, label="137.5 deg")
    rc = res.get("reference_comparison")
    ax.set_xlabel("organ i -> i + 1 (from the base)")
    ax.set_ylabel("divergence angle (deg, counter-clockwise from above)", color="tab:blue")
    ax.set_ylim(0, 360)
    ax2 = ax.twinx()
    ax2.plot(idx, res["sequence"]["internodes"], "s-", color="tab:orange", ms=3, label="internode")
    ax2.set_ylabel(f"internode ({unit})", color="tab:orange")
    title = "organ sequence"
    if rc and rc.get("angle_error_deg_median") is not None:
        title += (f" · vs reference: {rc['organs']['found']}/{rc['organs']['reference']} organs, median errors "
                  f"{rc['angle_error_deg_median']:.3g} deg, {rc['internode_error_pct_of_mean']:.3g} % of mean internode")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    p = res["plant"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3g}"

    fig.suptitle(f"geometry: plant height {fmt(p['plant_height'])} {unit} · main stem {fmt(p['stem_length'])} "
                 f"{unit} · lateral organs {fmt(p['organ_count'])}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
