"""Phenotypes from a trained model: plant height, nodes, internode lengths, stem diameters, peduncles.

    s3dgs phenotype RUN [--scale 0.30=2.45 | --scale 0.30=x1,y1,z1,x2,y2,z2 | --scale 0.012]

    from s3dgs.phenotype import measure_plant, run_phenotype
    res = measure_plant(means, scales, quats, opacities, probs, up=(0, 0, 1), metres_per_unit=1.0)
    res = run_phenotype("out/run")   # reads RUN/point_cloud.ply, writes phenotypes.json/.csv/.png

`measure_plant` works on arrays (Gaussians as the model holds them, activated); `run_phenotype`
finds the up axis and the metric scale of a run folder, calls it, and writes the files. The steps,
each written into ``phenotypes.json`` (``method``) with the thresholds it used:

1. **Frame.** Up: the normal of the camera ring (the plane of the camera centres, oriented like
   the cameras' up), else the cameras' mean up, else the normal of the ground plane fitted to
   opaque background Gaussians; ``up_source`` says which. Scale: ``--scale``, else known poses (the
   synthetic scene, or a scene aligned to a reference with `s3dgs run --reference`), else none:
   model units; ``scale.source`` says which.
2. **Classes.** A Gaussian is of class C when its class probability exceeds ``class_threshold``
   and its opacity ``min_opacity`` (the rule of `s3dgs export`).
3. **Main stem.** Its centreline is a smoothing spline (scipy ``UnivariateSpline``, FITPACK; each
   point weighted by the standard error of its median, residuals at the noise level) of the
   horizontal position against height through the weighted medians of the U, N and D Gaussians in
   height bins, refitted without the Gaussians farther than three median residuals of the first fit
   (robust to mislabelled leaf and floater Gaussians). A tomato main stem does not fold back on itself, so
   height parametrises it; lengths are arc lengths along the curve, not chords. Nor does it run
   sideways: the curve ends where it would lean more than 45 degrees from up (a curve pulled
   towards a stray cluster of stem-labelled Gaussians beside the plant does). Past the labelled
   stretch the centreline is followed through Gaussians (not P) in a tube along its end tangent,
   not below the ground: the heatmaps label the stem only up to the U/D keypoints, not down to
   the soil or up to the tip; ``stem.extended`` says how far. Heights are measured from the ground
   plane under the stem when one is found (``--base stem``: from the stem's lowest point).
4. **Nodes.** Confident N Gaussians within reach of the centreline, clustered by scipy's
   hierarchical clustering (average linkage) cut at ``node_separation`` (2.5 cm with a metric
   scale, else 3 median stem diameters); clusters with too little support are dropped and counted
   in the notes, clusters closer than ``node_separation`` along the stem are one node. Position =
   weighted mean, ordered by arc length from the base; confidence = opacity-weighted mean N
   probability of its Gaussians.
5. **Internodes.** Arc length along the centreline between consecutive nodes (and the chord).
6. **Stem diameter** per internode, over its middle half (away from the node swellings): the width
   of the silhouette the opaque (> 0.5) U and D Gaussians draw, in orthographic side views from
   ``n_views`` directions around the axis. A 3DGS Gaussian draws alpha = min(0.999, o exp(-d^T S^-1 d / 2))
   with S its projected covariance (plus the rasteriser's 0.3 px^2 low-pass at the training
   images' pixel size, when known); a stem's edge in an image is where the accumulated alpha
   1 - prod(1 - alpha) crosses 0.5. So the diameter is what the Gaussians draw, whether the model
   put flat Gaussians on the stem's surface (centres at radius r, thin across it) or a row of round
   ones on its axis (centres at radius 0, edge near sigma sqrt(2 ln 2o)): the spread of the centres
   alone is right only in the first case, the scales alone only in the second. Checked against
   the rasteriser in tests/test_phenotype.py. Semi-transparent Gaussians are left out: around a
   thin stem the model fits them with the colours of what lies behind as much as of the stem, so
   they add alpha where the images show no stem.
7. **Peduncles.** Confident P Gaussians linked into branches (single linkage at ``peduncle_link``:
   connected components of the cut-off graph); a branch whose nearest Gaussian is within reach of
   the stem and within ``node_separation`` of a node along it belongs to that node; pieces of one
   branch (leaving the stem the same way, or continuing an attached branch across a gap) count once.

8. **Geometry only** (``--method geometry``, or ``auto`` when the model has no U and D classes or
   under MIN_STEM_GAUSSIANS confident ones): `s3dgs.organs.measure_organs` on the opaque Gaussians
   (main stem, lateral organs, internodes, divergence angles in ROMI's convention; main-stem classes,
   where present, guide the main stem); ``--reference`` aligns the sequence with a ROMI
   angles_internodes.json (`s3dgs.sequence`) into ``reference_comparison``. The main stem's
   centreline of the class path is also carried on through stem-class Gaussians connected above its
   top, or a note says by how much it may be cut short.

Hand-written here, and why: the silhouette width (no library renders a 1D orthographic scanline
of 3D Gaussians; the formula is the rasteriser's, `s3dgs.render.raster`), the tube following at
the stem's ends, and a small RANSAC plane fit for the ground (scikit-learn's RANSACRegressor fits
z = f(x, y), which fails when the ground is vertical in the model's frame; SfM frames have any
orientation). Clustering, splines, trees and the assignment are scipy's.

Units: lengths are in metres when the scale is known (``units: "m"``), else in the model's units
(``units: "model units"``, labelled so everywhere); positions stay in the model's frame.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

import numpy as np
import tyro

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.classes import CLASSES
from s3dgs.classes import class_color as _class_color
from s3dgs.errors import S3dgsError, UsageError
from s3dgs.options import opt
from s3dgs.render.raster import ALPHA_MAX  # (the rasteriser's clamp, as gsplat)
from s3dgs.render.raster import ALPHA_THRESHOLD as ALPHA_MIN  # (alphas below are skipped)

__all__ = ["PhenotypeConfig", "phenotype_main", "run_phenotype", "measure_plant", "parse_scale",
           "up_from_cameras", "fit_ground_plane", "silhouette_diameter", "fit_centreline",
           "Centreline", "CSV_COLUMNS", "write_phenotypes", "compare_to_reference", "geometry_csv_text",
           "plot_geometry", "GEOMETRY_CSV_COLUMNS", "MIN_STEM_GAUSSIANS"]

NODE_SEPARATION_M = 0.025
"""Default node clustering cut with a metric scale: tomato internodes are 3-12 cm long and the
labelled region around a node 1-2 cm."""
EPS2D = 0.3  # the rasteriser's low-pass, pixels^2

CSV_COLUMNS = ("scope", "index", "from_node", "to_node", "internode_length", "internode_straight_length",
               "stem_diameter", "node_height", "node_stem_position", "node_confidence", "node_peduncles",
               "plant_height", "stem_length", "node_count", "peduncle_count", "stem_diameter_median",
               "unit")


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(3)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise UsageError(f"up vector {v.tolist()} has no direction")
    return v / n


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing `up` to a right-handed orthonormal frame (e1, e2, up)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = helper - (helper @ up) * up
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted median of x [M] with weights w [M] >= 0."""
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][min(np.searchsorted(c, 0.5 * c[-1]), len(x) - 1)])


def _covariances(scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """[M, 3] standard deviations and [M, 4] wxyz quaternions (any norm) -> [M, 3, 3] covariances."""
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)
    return np.einsum("mij,mj,mkj->mik", R, scales ** 2, R)


def _r(x, nd: int = 6):
    """JSON-safe rounding of floats / arrays; NaN and inf become None."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return [_r(v, nd) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# scale and up
# ----------------------------------------------------------------------------------------------

SCALE_HELP = ("--scale takes one of: a factor, metres per model unit (e.g. 0.012); a known size, "
              "METRES=MODEL_LENGTH (e.g. 0.30=2.45: an object 0.30 m long measures 2.45 in the "
              "model); a known distance, METRES=x1,y1,z1,x2,y2,z2 (two points picked in the model, "
              "e.g. a ruler's ends, that are METRES apart)")


def _parse_up(text: str):
    """The --up option: "auto", "cameras", "ground", or a unit vector [3] from "X,Y,Z"."""
    t = str(text).strip().lower()
    if t in ("auto", "cameras", "ground"):
        return t
    try:
        vec = [float(v) for v in t.split(",")]
        if len(vec) != 3 or not all(math.isfinite(v) for v in vec):
            raise ValueError
        return _unit(vec)
    except (ValueError, UsageError):
        raise UsageError(f"--up {text!r}: give auto, cameras, ground, or a vector X,Y,Z in the model "
                         "frame (e.g. 0,0,1)") from None


def parse_scale(text: str) -> tuple[float, str]:
    """Parse the ``--scale`` option. Returns (metres per model unit, a sentence saying where it came
    from). Raises UsageError naming --scale and its three forms."""
    t = str(text).strip().replace(" ", "")

    def num(s: str, what: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise UsageError(f"--scale {text!r}: {what} {s!r} is not a number. {SCALE_HELP}") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"--scale {text!r}: {what} must be a positive number. {SCALE_HELP}")
        return v

    if "=" not in t:
        f = num(t, "the factor")
        return f, f"--scale {t}: {f:g} metres per model unit, given"
    left, right = t.split("=", 1)
    metres = num(left, "the known length in metres")
    parts = [p for p in right.split(",") if p != ""]
    if len(parts) == 1:
        model = num(parts[0], "the model length")
        return metres / model, (f"--scale {t}: a known size, {metres:g} m measuring {model:g} model "
                                f"units -> {metres / model:g} m per unit")
    if len(parts) == 6:
        try:
            xyz = np.array([float(p) for p in parts]).reshape(2, 3)
        except ValueError:
            raise UsageError(f"--scale {text!r}: the six coordinates must be numbers. {SCALE_HELP}") from None
        d = float(np.linalg.norm(xyz[1] - xyz[0]))
        if not np.isfinite(d) or d <= 0:
            raise UsageError(f"--scale {text!r}: the two points coincide. {SCALE_HELP}")
        return metres / d, (f"--scale {t}: a known distance, {metres:g} m between two model points "
                            f"{d:.6g} units apart -> {metres / d:g} m per unit")
    raise UsageError(f"--scale {text!r}: after '=' give one model length or six coordinates, got "
                     f"{len(parts)} numbers. {SCALE_HELP}")


def up_from_cameras(centres: np.ndarray, cam_ups: np.ndarray) -> tuple[np.ndarray, str]:
    """Up from a capture. centres [C, 3] camera centres, cam_ups [C, 3] each camera's up (-y axis).

    When the centres span a plane (a ring or an arc around the plant) and its normal is within 60
    degrees of the cameras' mean up, up = that normal, oriented like the cameras' up; otherwise
    (forward-facing or line captures) the cameras' mean up. Returns (unit up [3], which was used)."""
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    mean_up = np.asarray(cam_ups, np.float64).reshape(-1, 3).mean(0)
    if np.linalg.norm(mean_up) < 1e-9:
        raise S3dgsError("the cameras' up directions cancel out; pass --up X,Y,Z")
    mean_up = mean_up / np.linalg.norm(mean_up)
    if len(centres) >= 4:
        _, s, vt = np.linalg.svd(centres - centres.mean(0), full_matrices=False)
        n = vt[2]
        if s[1] > 0.2 * s[0] and s[2] < 0.5 * s[1] and abs(n @ mean_up) > 0.5:
            n = n if n @ mean_up > 0 else -n
            return n, (f"normal of the plane of the {len(centres)} camera centres (a ring around the "
                       "plant), oriented like the cameras' up")
    return mean_up, (f"mean up direction (-y) of the {len(centres)} cameras (their centres do not "
                     "span a ring around the plant)")


def fit_ground_plane(points: np.ndarray, *, tol: float | None = None, iterations: int = 400,
                     seed: int = 0) -> tuple[np.ndarray, float, float] | None:
    """RANSAC plane through points [M, 3] (e.g. opaque background Gaussians). Returns (unit normal
    [3], offset d with normal . x = d, inlier fraction), or None with fewer than 10 points or when
    the best plane's inliers lie along a line. `tol` defaults to 1 % of the points' robust extent.
    The normal's sign is arbitrary."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) < 10:
        return None
    rng = np.random.default_rng(seed)
    if tol is None:
        lo, hi = np.percentile(p, [5, 95], axis=0)
        tol = 0.01 * float(np.linalg.norm(hi - lo)) or 1e-6
    best, best_n = None, -1
    for _ in range(iterations):
        a, b, c = p[rng.choice(len(p), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n /= np.linalg.norm(n)
        k = int((np.abs((p - a) @ n) < tol).sum())
        if k > best_n:
            best, best_n = (n, float(n @ a)), k
    if best is None:
        return None
    n, d = best
    inl = np.abs(p @ n - d) < tol
    c = p[inl].mean(0)  # least-squares refinement on the inliers
    _, sv, vt = np.linalg.svd(p[inl] - c, full_matrices=False)
    if sv[1] < 0.2 * sv[0]:
        return None  # the inliers lie along a line (a stem, an edge): not a ground
    n2 = vt[2] if vt[2] @ n > 0 else -vt[2]
    return n2, float(n2 @ c), float(inl.mean())


# ----------------------------------------------------------------------------------------------
# the main stem
# ----------------------------------------------------------------------------------------------

@dataclass
class Centreline:
    """A fitted stem centreline: a dense polyline from base to apex.

    points [S, 3] (model frame), s [S] cumulative arc length (model units), labelled [2]: the arc
    lengths between which the curve was fitted to class Gaussians (outside: followed by the tube)."""

    points: np.ndarray
    s: np.ndarray
    labelled: tuple[float, float]
    _tree: object = None

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points x [M, 3] -> (arc length of the nearest curve point [M], distance to it [M])."""
        from scipy.spatial import cKDTree

        if self._tree is None:
            self._tree = cKDTree(self.points)
        x = np.asarray(x, np.float64).reshape(-1, 3)
        if len(x) == 0:
            return np.zeros(0), np.zeros(0)
        d, i = self._tree.query(x)
        return self.s[i], d

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """(point [3], unit tangent [3]) at arc length s (clamped to the curve)."""
        s = float(np.clip(s, 0.0, self.s[-1]))
        i = int(np.clip(np.searchsorted(self.s, s) - 1, 0, len(self.s) - 2))
        seg = self.points[i + 1] - self.points[i]
        L = max(self.s[i + 1] - self.s[i], 1e-15)
        return self.points[i] + (s - self.s[i]) / L * seg, seg / np.linalg.norm(seg)


def _bin_medians(h, q, w, edges):
    """Per height bin holding >= 2 points: weighted medians of height and horizontal position, the
    bin's weight, and the standard error of its median position: 1.2533 sigma / sqrt(n), sigma
    pooled over all bins (1.4826 x the median absolute deviation from the bins' medians), so a
    sparse bin is not trusted on the strength of its own two or three points."""
    idx = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, len(edges) - 2)
    hc, qc, wc, n, dev = [], [], [], [], []
    for b in range(len(edges) - 1):
        m = idx == b
        if m.sum() < 2:
            continue
        med = np.array([_wmedian(q[m, 0], w[m]), _wmedian(q[m, 1], w[m])])
        hc.append(_wmedian(h[m], w[m]))
        qc.append(med)
        wc.append(w[m].sum())
        n.append(m.sum())
        dev.append(np.abs(q[m] - med).ravel())
    if not hc:
        return np.zeros(0), np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    sigma = 1.4826 * float(np.median(np.concatenate(dev)))
    se = 1.2533 * max(sigma, 1e-12) / np.sqrt(np.asarray(n, np.float64))
    return np.asarray(hc), np.asarray(qc).reshape(-1, 2), np.asarray(wc), se


def _curve_fit(hc, qc, se):
    """Horizontal position against height through bin medians: a callable h [M] -> q [M, 2].
    FITPACK's smoothing spline (scipy UnivariateSpline) weighted by 1 / the standard error of each
    median, smoothing s = number of bins (residuals at the noise level)."""
    from scipy.interpolate import UnivariateSpline

    order = np.argsort(hc)
    hc, qc, se = hc[order], qc[order], se[order]
    keep = np.concatenate([[True], np.diff(hc) > 1e-9 * max(1.0, float(np.abs(hc).max()))])
    hc, qc, se = hc[keep], qc[keep], se[keep]
    # evaluated as fitted up to a tenth of the span past the outer medians (the stem's ends lie
    # within half a bin of them), held constant farther out
    pad = 0.1 * (hc[-1] - hc[0])
    lo, hi = hc[0] - pad, hc[-1] + pad
    if len(hc) >= 5:
        sp = [UnivariateSpline(hc, qc[:, k], w=1.0 / se, k=3, s=len(hc)) for k in range(2)]
        return lambda h: np.stack([s(np.clip(h, lo, hi)) for s in sp], -1)
    if len(hc) >= 2:
        co = [np.polyfit(hc, qc[:, k], 1, w=1.0 / se) for k in range(2)]
        return lambda h: np.stack([np.polyval(c, np.clip(h, lo, hi)) for c in co], -1)
    q0 = qc[0]
    return lambda h: np.broadcast_to(q0, (len(np.atleast_1d(h)), 2)).copy()


def fit_centreline(points: np.ndarray, weights: np.ndarray, up: np.ndarray, *, iterations: int = 4,
                   gap_fraction: float = 0.35, max_lean_deg: float = 45.0) -> tuple[Centreline, dict] | tuple[None, dict]:
    """Robust centreline of a stem through points [M, 3] with weights [M] (see the module docstring,
    step 3). Inliers are the points within 3 median residuals of the first fit (over all points: a
    50 % breakdown scale) of the curve; the threshold stays fixed while refitting, since a scale
    re-estimated on each shrinking inlier set shrinks further and cuts sparse stretches off.
    The curve ends where it would lean more than ``max_lean_deg`` from up, going out from the
    weighted median height of its inliers: a stem does not run sideways, a curve pulled towards a
    stray cluster of stem-labelled Gaussians beside the plant does.
    Returns (Centreline, info) or (None, info with "reason")."""
    x = np.asarray(points, np.float64).reshape(-1, 3)
    w = np.asarray(weights, np.float64).reshape(-1)
    if len(x) < 5:
        return None, {"reason": f"{len(x)} stem Gaussians (at least 5 are needed)"}
    up = _unit(up)
    e1, e2 = _basis(up)
    h = x @ up
    q = np.stack([x @ e1, x @ e2], -1)
    def fit(inl, scale):
        lo, hi = float(h[inl].min()), float(h[inl].max())
        span = max(hi - lo, 1e-12)
        # bins of about 4 residual scales, with at least 4 points each on average
        nb = int(np.clip(min(span / (4 * scale), inl.sum() / 4), 8, 80)) if scale \
            else int(np.clip(inl.sum() / 10, 8, 40))
        hc, qc, _, se = _bin_medians(h[inl], q[inl], w[inl], np.linspace(lo, hi, nb + 1))
        return (_curve_fit(hc, qc, se) if len(hc) else None), nb

    inl = np.ones(len(x), bool)
    fn, nb = fit(inl, None)
    if fn is None:
        return None, {"reason": "stem Gaussians too sparse for a curve (no height bin holds two)"}
    res = np.linalg.norm(q - fn(h), axis=1)
    thr = 3.0 * max(_wmedian(res, w), 1e-12)
    for _ in range(iterations):
        new = res <= thr
        if new.sum() < 5 or (new == inl).all():
            break
        inl = new
        fn2, nb2 = fit(inl, _wmedian(res[inl], w[inl]))
        if fn2 is None:
            break
        fn, nb = fn2, nb2
        res = np.linalg.norm(q - fn(h), axis=1)
    if (inl & (res <= thr)).sum() >= 5:  # the inliers of the final curve, not of the one before it
        inl = inl & (res <= thr)
    r_med = max(_wmedian(res[inl], w[inl]), 1e-12)
    # the stem's extent: the heaviest run of inliers without a gap over gap_fraction of the span
    order = np.argsort(h[inl])
    hs, ws = h[inl][order], w[inl][order]
    span = hs[-1] - hs[0]
    cuts = np.nonzero(np.diff(hs) > gap_fraction * max(span, 1e-12))[0]
    pieces = np.split(np.arange(len(hs)), cuts + 1)
    best = max(pieces, key=lambda p: ws[p].sum())
    lo, hi = float(hs[best[0]]), float(hs[best[-1]])
    dropped_gap = len(hs) - len(best)
    if hi - lo <= 0:
        return None, {"reason": "the stem Gaussians span no height"}
    hh = np.linspace(lo, hi, 1000)
    qq = fn(hh)
    # trim where the curve leans over max_lean_deg, from the weighted median height of the inliers out
    # (the lean over a twentieth of the height span, so that a wiggle of a noisy fit does not count)
    k = max(1, len(hh) // 40)
    i0, i1 = np.maximum(np.arange(len(hh)) - k, 0), np.minimum(np.arange(len(hh)) + k, len(hh) - 1)
    lean = np.linalg.norm(qq[i1] - qq[i0], axis=1)
    steep = lean > math.tan(math.radians(max_lean_deg)) * np.maximum(hh[i1] - hh[i0], 1e-12)
    mid = int(np.clip(np.searchsorted(hh, _wmedian(hs[best], ws[best])), 0, len(hh) - 1))
    a = mid - int(np.argmax(steep[mid::-1])) + 1 if steep[: mid + 1].any() else 0
    b = mid + int(np.argmax(steep[mid:])) if steep[mid:].any() else len(hh)
    trimmed = 0.0
    if b - a >= 2 and (a > 0 or b < len(hh)):
        trimmed = float(hh[a] - hh[0] + hh[-1] - hh[b - 1])
        hh, qq = hh[a:b], qq[a:b]
    pts = qq[:, :1] * e1 + qq[:, 1:] * e2 + hh[:, None] * up
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    keep = np.zeros(len(x), bool)
    keep[np.nonzero(inl)[0][order][best]] = True
    keep &= (h >= hh[0] - 1e-12) & (h <= hh[-1] + 1e-12)
    info = {"gaussians": int(len(x)), "inliers": int(keep.sum()), "outliers": int(len(x) - inl.sum()),
            "dropped_beyond_gap": int(dropped_gap), "trimmed_leaning": trimmed,
            "residual_median": r_med, "outlier_threshold": thr,
            "bins": int(nb), "inlier_mask": keep}
    return Centreline(pts, s, (0.0, float(s[-1]))), info


def _extend(cl: Centreline, cand: np.ndarray, up: np.ndarray, radius: float, step: float,
            max_len: float, floor: float | None = None) -> tuple[Centreline, float, float]:
    """Follow the stem beyond its labelled ends through candidate centres cand [M, 3] (opaque,
    unlabelled or stem-class Gaussians): step along the end tangent, re-centre on the candidates
    within `radius` of the step point (lateral move at most radius), stop at the first step with
    fewer than 2 candidates, at `max_len`, or below `floor` (height). Returns (curve, added at the
    base, added at the apex)."""
    from scipy.spatial import cKDTree

    if len(cand) < 2:
        return cl, 0.0, 0.0
    tree = cKDTree(cand)

    def walk(p0, d):
        out, p, total = [], p0.copy(), 0.0
        while total + step <= max_len + 1e-12:
            q = p + step * d
            idx = tree.query_ball_point(q, radius)
            if len(idx) < 2:
                break
            c = cand[idx].mean(0)
            lat = (c - q) - ((c - q) @ d) * d
            if np.linalg.norm(lat) > radius:
                lat *= radius / np.linalg.norm(lat)
            q = q + lat
            if floor is not None and q @ up < floor:
                break
            total += float(np.linalg.norm(q - p))
            out.append(q)
            p = q
        return out, total

    p_base, t_base = cl.at(0.0)
    p_apex, t_apex = cl.at(cl.length)
    t_apex = t_apex if t_apex @ up > 0 else -t_apex
    t_base = -t_base if t_base @ up > 0 else t_base
    low, add_lo = walk(p_base, t_base)
    high, add_hi = walk(p_apex, t_apex)
    pts = np.concatenate([np.asarray(low[::-1]).reshape(-1, 3), cl.points, np.asarray(high).reshape(-1, 3)])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    return Centreline(pts, s, (add_lo, add_lo + cl.length)), add_lo, add_hi


def _continue_to_stem_top(cl: Centreline, X: np.ndarray, stem_m: np.ndarray, up: np.ndarray, *, link: float,
                          step: float, min_beyond: float = 0.05) -> tuple[Centreline, dict]:
    """Make sure the centreline does not stop below the stem's top (the 45-degree lean rule or a
    thin top can cut it). X [N, 3] centres, stem_m [N] opaque stem-class (U/D) Gaussians.

    The stem-class Gaussians above the apex connected to it (single linkage at `link`) are followed
    when they reach more than `min_beyond` of the centreline's height span (and more than 2 links)
    above it: the centreline goes on through their weighted medians in height bins of `step`.
    Stem-class Gaussians above the (possibly extended) apex that are not connected but lie within
    the tube around its upward continuation (a cone of 30 degrees, at least 3 links wide) are
    reported as ``short_by`` (how far above the apex they reach). Returns (curve, {"extended",
    "extended_height", "short_by", "link"})."""
    info = {"extended": 0.0, "extended_height": 0.0, "short_by": 0.0, "link": link}
    S = X[stem_m]
    if len(S) == 0 or link <= 0:
        return cl, info
    apex = cl.points[-1]
    apex_h = float(apex @ up)
    span = float(np.ptp(cl.points @ up))
    margin = max(min_beyond * span, 2.0 * link)
    hS = S @ up
    lab = _components(np.vstack([apex[None], S]), link)
    conn = (lab[1:] == lab[0]) & (hS > apex_h)
    if conn.any() and float(hS[conn].max()) - apex_h > margin:
        h, P = hS[conn], S[conn]
        edges = np.arange(apex_h, float(h.max()) + step, step)
        idx = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, len(edges) - 2)
        new = [np.median(P[idx == b], axis=0) for b in range(len(edges) - 1) if (idx == b).any()]
        new = [q for q in new if q @ up > apex_h]
        if new:
            pts = np.concatenate([cl.points, np.asarray(new)])
            s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
            info["extended"] = float(s[-1] - cl.length)
            info["extended_height"] = float(pts[-1] @ up - apex_h)
            cl = Centreline(pts, s, cl.labelled)
            apex, apex_h = cl.points[-1], float(cl.points[-1] @ up)
    # stem-class Gaussians still above the apex, in the cone around its upward continuation
    d = S - apex
    hh = d @ up
    lat = np.linalg.norm(d - hh[:, None] * up, axis=1)
    cone = (hh > margin) & (lat <= np.maximum(3.0 * link, math.tan(math.radians(30)) * hh))
    if cone.sum() >= 2:
        info["short_by"] = float(hh[cone].max())
    return cl, info


# ----------------------------------------------------------------------------------------------
# stem diameter: the rendered silhouette
# ----------------------------------------------------------------------------------------------

def silhouette_diameter(means: np.ndarray, covs: np.ndarray, opacities: np.ndarray, centre: np.ndarray,
                        axis: np.ndarray, half_length: float, reach: float, *, n_views: int = 8,
                        n_rows: int = 7, n_cols: int = 257, eps: float = 0.0,
                        chunk: int = 2048) -> tuple[float | None, dict]:
    """Width of the silhouette the Gaussians draw around an axis, in orthographic side views.

    Args:
        means [M, 3], covs [M, 3, 3], opacities [M]: the Gaussians (activated opacity).
        centre [3], axis [3]: a point on the stem axis and its direction.
        half_length: rows are sampled at axial offsets in [-half_length, half_length].
        reach: the scanline spans [-reach, reach] across the axis.
        n_views: view directions around the axis over 180 degrees (opposite views see the same
            silhouette: accumulated alpha does not depend on the order).
        eps: isotropic variance added to the projected covariance (the rasteriser's 0.3 px^2
            low-pass in model units^2, when the pixel size is known).

    Returns:
        (median width over views and rows, or None when under a third of the rows reach alpha 0.5;
        {"coverage": share of rows that do, "iqr": [q25, q75] of the widths}).
    """
    axis = _unit(axis)
    b1, b2 = _basis(axis)
    rows = np.linspace(-half_length, half_length, n_rows)
    cols = np.linspace(-reach, reach, n_cols)
    dc = cols[1] - cols[0]
    widths, total = [], 0
    x = np.asarray(means, np.float64) - centre
    for k in range(n_views):
        phi = np.pi * k / n_views
        v = np.cos(phi) * b1 + np.sin(phi) * b2
        wdir = np.cross(axis, v)
        P = np.stack([axis, wdir])  # [2, 3]
        mu = x @ P.T  # [M, 2]
        S = np.einsum("ij,mjk,lk->mil", P, covs, P) + eps * np.eye(2)
        det = S[:, 0, 0] * S[:, 1, 1] - S[:, 0, 1] ** 2
        det = np.maximum(det, 1e-30)
        ia, ib, ic = S[:, 1, 1] / det, -S[:, 0, 1] / det, S[:, 0, 0] / det
        logT = np.zeros((n_rows, n_cols))
        # a Gaussian reaches alpha >= 1/255 on row t only where (t - mu_t)^2 / S_tt <= 2 ln(255 o)
        # (the minimum over the column of the quadratic form): skip the rest, as the rasteriser does
        reach2 = 2.0 * np.log(np.maximum(opacities * 255.0, 1.0))
        for r in range(n_rows):
            dt_all = rows[r] - mu[:, 0]
            sel = np.nonzero((dt_all ** 2 <= reach2 * S[:, 0, 0]) & (reach2 > 0))[0]
            for a in range(0, len(sel), chunk):
                g = sel[a:a + chunk]
                dt = dt_all[g, None]
                dd = cols[None, :] - mu[g, 1, None]
                maha = ia[g, None] * dt ** 2 + 2 * ib[g, None] * dt * dd + ic[g, None] * dd ** 2
                al = np.minimum(ALPHA_MAX, opacities[g, None] * np.exp(-0.5 * maha))
                al = np.where(al < ALPHA_MIN, 0.0, al)
                logT[r] += np.log1p(-al).sum(0)
        acc = 1.0 - np.exp(logT)  # [R, C]
        for r in range(n_rows):
            total += 1
            on = acc[r] >= 0.5
            if not on.any():
                continue
            idx = np.nonzero(on)[0]
            j0 = idx[np.argmin(np.abs(cols[idx]))]
            if abs(cols[j0]) > 0.5 * reach:
                continue
            lo = j0
            while lo > 0 and on[lo - 1]:
                lo -= 1
            hi = j0
            while hi < n_cols - 1 and on[hi + 1]:
                hi += 1

            def edge(i_in, i_out):  # linear interpolation of the 0.5 crossing
                a_in, a_out = acc[r, i_in], acc[r, i_out]
                f = (a_in - 0.5) / max(a_in - a_out, 1e-12)
                return cols[i_in] + f * (cols[i_out] - cols[i_in])

            if lo == 0 or hi == n_cols - 1:
                continue  # wider than the scanline: not a stem's silhouette
            widths.append(edge(hi, hi + 1) - edge(lo, lo - 1))
    cov = len(widths) / max(total, 1)
    if not widths or cov < 1 / 3:
        return None, {"coverage": cov, "iqr": None, "column_step": dc}
    return float(np.median(widths)), {"coverage": cov, "iqr": np.percentile(widths, [25, 75]).tolist(),
                                      "column_step": dc}


# ----------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------

def _average_linkage(x: np.ndarray, cut: float, max_points: int = 3000, w: np.ndarray | None = None):
    """Labels [M] from scipy's average-linkage clustering cut at distance `cut`. Above `max_points`
    the heaviest `max_points` are clustered and the rest join the cluster of their nearest one."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial import cKDTree

    if len(x) == 1:
        return np.zeros(1, np.int64)
    sel = np.arange(len(x))
    if len(x) > max_points:
        sel = np.argsort(-(w if w is not None else np.ones(len(x))))[:max_points]
    lab_sel = fcluster(linkage(x[sel], method="average"), t=cut, criterion="distance") - 1
    if len(sel) == len(x):
        return lab_sel
    _, nn = cKDTree(x[sel]).query(x)
    return lab_sel[nn]


def _components(x: np.ndarray, link: float) -> np.ndarray:
    """Single-linkage labels [M] at distance `link`: connected components of the graph joining
    points closer than `link` (scipy cKDTree + csgraph; the same partition as scipy's
    fcluster(linkage(x, 'single'), link, 'distance') without its M^2 distance matrix)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(x) == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(x).query_pairs(link, output_type="ndarray")
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(x), len(x)))
    return connected_components(g, directed=False)[1]


# ----------------------------------------------------------------------------------------------
# the measurement
# ----------------------------------------------------------------------------------------------

def measure_plant(
    means: np.ndarray,
    scales: np.ndarray,
    quats: np.ndarray,
    opacities: np.ndarray,
    probs: np.ndarray,
    *,
    up: Sequence[float],
    metres_per_unit: float | None = None,
    classes: Sequence[str] = CLASSES,
    class_threshold: float = 0.5,
    min_opacity: float = 0.1,
    node_separation: float | None = None,
    min_node_gaussians: int = 2,
    min_cluster_weight: float = 0.1,
    peduncle_link: float | None = None,
    pixel_size: float | None = None,
    ground: tuple[Sequence[float], float] | None = None,
    base_rule: str = "auto",
    extend_stem: bool = True,
    n_views: int = 8,
    silhouette_opacity: float = 0.5,
) -> dict:
    """Phenotypic traits of one plant from its Gaussians (see the module docstring for each step).

    Args:
        means [N, 3]: centres (model frame). scales [N, 3]: standard deviations (activated, i.e. exp
            of the PLY's log scales). quats [N, 4]: wxyz rotations, any norm. opacities [N]:
            activated, in [0, 1]. probs [N, K]: class probabilities in the order of `classes`.
        up [3]: the plant's up direction in the model frame.
        metres_per_unit: metric scale; None gives lengths in model units, labelled so.
        class_threshold, min_opacity: class membership rule (as `s3dgs export`).
        node_separation: cut distance of the node clustering and attachment tolerance of peduncles
            (model units); default NODE_SEPARATION_M (2.5 cm) with a metric scale, else 3 median
            stem diameters.
        min_node_gaussians, min_cluster_weight: a node or peduncle cluster needs this many
            Gaussians and this share of the heaviest cluster's weight (sum of probability x opacity).
        peduncle_link: single-linkage distance of P branches (default 0.4 x node_separation).
        pixel_size: model units per pixel at the plant in the training images; adds the
            rasteriser's 0.3 px^2 low-pass to the silhouette (None: no low-pass).
        ground: (normal [3], offset d) of the ground plane n . x = d; the stem is not followed
            below it (used when within 15 degrees of up).
        base_rule: the plant's base for heights: "auto" / "ground" (the ground plane under the
            stem when there is one, else the stem's lowest point) or "stem" (its lowest point).
        extend_stem: follow the stem past its labelled ends through opaque Gaussians.
        n_views: view directions of the silhouette.
        silhouette_opacity: the stem's silhouette is drawn by its Gaussians of at least this
            opacity. Semi-transparent Gaussians around a thin stem are fitted with the colours of
            what lies behind as much as of the stem: they add alpha where the images show no stem
            (on the closeup plant all U and D Gaussians made diameters 9-17 mm of 6-9 mm true,
            the opaque ones 6-10 mm).

    Returns:
        A JSON-ready dict: ``units``, ``plant`` (plant_height, stem_length, node_count,
        peduncle_count, stem_diameter_median), ``nodes``, ``internodes``, ``peduncles``, ``stem``
        (centreline, base, apex), ``counts`` per class, ``notes`` (what could not be measured
        and why) and ``method`` (the rules and thresholds). A trait that could not be measured is
        None, with a note; none is ever guessed.
    """
    X = np.asarray(means, np.float64).reshape(-1, 3)
    N = len(X)
    sc = np.asarray(scales, np.float64).reshape(N, 3)
    qt = np.asarray(quats, np.float64).reshape(N, 4)
    op = np.asarray(opacities, np.float64).reshape(N)
    pr = np.asarray(probs, np.float64).reshape(N, -1)
    classes = tuple(classes)
    if pr.shape[1] != len(classes):
        raise S3dgsError(f"probs has {pr.shape[1]} columns but {len(classes)} classes were named")
    up = _unit(up)
    from s3dgs.organs import length_units

    f, units = length_units(metres_per_unit)
    notes: list[str] = []

    def cls(name):
        if name not in classes:
            return np.zeros(N, bool), np.zeros(N)
        p = pr[:, classes.index(name)]
        m = (p > class_threshold) & (op > min_opacity)
        return m, p * op

    mU, wU = cls("U")
    mN, wN = cls("N")
    mD, wD = cls("D")
    mP, wP = cls("P")
    counts = {c: int(cls(c)[0].sum()) for c in ("U", "N", "D", "P")}
    for c in ("U", "N", "D", "P"):
        if c not in classes:
            notes.append(f"the model has no class {c} (its classes: {', '.join(classes) or 'none'})")
    rule = f"class probability > {class_threshold} and opacity > {min_opacity}"
    method = {
        "classes": rule,
        "stem": "smoothing spline (scipy UnivariateSpline, s = bins, weights 1 / standard error of the "
                "median) of horizontal position against height through weighted medians of the U, N and D "
                "Gaussians in height bins; refitted without Gaussians beyond 3 median residuals of the "
                "first fit; arc lengths along the curve",
        "stem_extension": "off",
        "plant_height": "height of the main stem's apex above the base (see base), along up",
        "nodes": "confident N Gaussians within reach of the centreline, average-linkage clustering "
                 "(scipy) cut at node_separation; ordered by arc length from the base",
        "internode_length": "arc length along the centreline between consecutive nodes "
                            "(straight_length: the chord)",
        "stem_diameter": "median width of the silhouette (accumulated alpha >= 0.5) of the U and D "
                         f"Gaussians of opacity > {silhouette_opacity} over the internode's middle half, "
                         f"{n_views} orthographic side views around the axis"
                         + (f", rasteriser low-pass 0.3 px^2 at {pixel_size:.4g} model units per pixel"
                            if pixel_size else ", no rasteriser low-pass (pixel size unknown)"),
        "peduncles": "confident P Gaussians linked at peduncle_link (single linkage); a branch whose "
                     "nearest Gaussian is within reach of the stem and within node_separation of a "
                     "node along it belongs to that node",
    }
    out: dict = {"units": units, "metres_per_unit": metres_per_unit, "up": up.tolist(), "counts": counts,
                 "plant": {"plant_height": None, "stem_length": None, "node_count": None,
                           "peduncle_count": None, "stem_diameter_median": None},
                 "nodes": [], "internodes": [], "peduncles": [], "stem": None, "notes": notes,
                 "method": method}

    # ---- main stem ------------------------------------------------------------------------------
    stem_m = mU | mD | mN
    w_stem = np.maximum.reduce([wU * mU, wD * mD, wN * mN])
    cl, info = (None, {"reason": f"no confident U or D Gaussians ({rule})"}) \
        if not (mU | mD).any() else fit_centreline(X[stem_m], w_stem[stem_m], up)
    sil_m = (mU | mD) & (op > silhouette_opacity)
    diam_med = None
    base_h = None
    if base_rule not in ("auto", "ground", "stem"):
        raise UsageError(f"--base {base_rule!r}: choose auto, ground or stem")
    if cl is None:
        notes.append(f"main stem not measured: {info['reason']}; plant height, stem length, internode "
                     "lengths along the stem and stem diameters are not given")
    else:
        def covs(m):  # covariances of the Gaussians selected by mask m
            return _covariances(np.maximum(sc[m], 1e-12), qt[m])
        eps = EPS2D * pixel_size ** 2 if pixel_size else 0.0
        # the tube of the fit (3 median residuals: where stem Gaussians lie), and the scanline's
        # reach for the silhouette, which must also hold Gaussians on the axis (residual about 0)
        # out to several of their sizes
        size = float(np.median(sc[stem_m][info["inlier_mask"]].max(1)))
        tube = 3.0 * info["residual_median"]
        reach = 12.0 * max(info["residual_median"], size)
        step = cl.length / max(info["bins"], 1)

        # stem diameter along the labelled stem: the plant figure, and the width of the tube the
        # extension follows
        s_all, d_all = cl.project(X)
        sel = sil_m & (d_all < reach)
        ws = []
        for s0 in np.linspace(0.0, cl.length, 12)[1:-1]:
            m = sel & (np.abs(s_all - s0) < step)
            if m.sum() < 2:
                continue
            c0, t0 = cl.at(s0)
            d, _ = silhouette_diameter(X[m], covs(m), op[m], c0, t0, 0.5 * step, reach, n_views=n_views,
                                       n_rows=3, eps=eps)
            if d is not None:
                ws.append(d)
        if ws:
            diam_med = float(np.median(ws))
            out["plant"]["stem_diameter_median"] = diam_med * f
        else:
            notes.append("stem diameter not measured: the U and D Gaussians draw no continuous "
                         "silhouette (accumulated alpha >= 0.5) across the stem")

        ext_lo = ext_hi = 0.0
        floor = None
        if ground is not None:
            n_g, d_g = _unit(ground[0]), float(ground[1])
            if abs(n_g @ up) > math.cos(math.radians(15)):
                b = cl.points[0]
                floor = float((b + (d_g - n_g @ b) / (n_g @ up) * up) @ up)
                method["ground"] = "the stem's base is not followed below the fitted ground plane"
            else:
                notes.append("the fitted ground plane is over 15 degrees from up; not used as the floor")
        if extend_stem:
            cand = (op > min_opacity) & ~mP
            radius = 1.5 * diam_med if diam_med else tube
            cl, ext_lo, ext_hi = _extend(cl, X[cand], up, radius=radius, step=step,
                                         max_len=0.5 * cl.length, floor=floor)
            method["stem_extension"] = (
                f"past the labelled ends, followed through Gaussians of opacity > {min_opacity}, not P, within "
                f"{radius * f:.4g} {units} (1.5 median stem diameters) of the end tangent, one bin "
                "per step, until a step finds fewer than 2" + (", not below the ground" if floor is not None
                                                                else ""))
        cl, above = _continue_to_stem_top(cl, X, (mU | mD) & (op > min_opacity), up,
                                          link=max(2.0 * tube, 2.0 * (diam_med or 0.0), 0.5 * step), step=step)
        if above["extended"] > 0:
            ext_hi += above["extended"]
            method["stem_top"] = (f"stem-class Gaussians connected to the centreline's top (links of "
                                  f"{above['link'] * f:.4g} {units}) went on above it: the centreline follows "
                                  "them (weighted medians in height bins)")
            notes.append(f"the fitted centreline stopped {above['extended_height'] * f:.4g} {units} below the "
                         "top of the stem-class Gaussians connected to it; it was extended along them")
        if above["short_by"] > 0:
            notes.append(f"the main stem may be cut short: stem-class Gaussians go on {above['short_by'] * f:.4g} "
                         f"{units} above its top (in the tube around its upward continuation) beyond a gap the "
                         "centreline does not cross; plant height and stem length may be too small by up to that")
        base, apex = cl.points[0], cl.points[-1]
        low_h = float(base @ up)
        if base_rule in ("auto", "ground") and floor is not None and floor <= low_h:
            base_h = floor
            method["base"] = (f"the ground plane under the stem; the stem's lowest reconstructed point is "
                              f"{(low_h - floor) * f:.4g} {units} above it")
        else:
            base_h = low_h
            method["base"] = "the stem's lowest reconstructed point"
            if base_rule == "ground":
                notes.append("--base ground: no ground plane under the stem was found; the base is the "
                             "stem's lowest reconstructed point")
        out["plant"]["plant_height"] = (float(apex @ up) - base_h) * f
        out["plant"]["stem_length"] = cl.length * f
        out["stem"] = {
            "base_model": base.tolist(), "apex_model": apex.tolist(), "base_height_model": base_h,
            "lowest_point_above_base": (low_h - base_h) * f,
            "centreline_model": cl.points[:: max(1, len(cl.points) // 200)].tolist() + [apex.tolist()],
            "gaussians": info["gaussians"], "inliers": info["inliers"], "outliers": info["outliers"],
            "tube_radius": tube * f,
            "extended": {"base": ext_lo * f, "apex": ext_hi * f,
                         "labelled_stretch": [cl.labelled[0] * f, cl.labelled[1] * f]},
        }
        if info["dropped_beyond_gap"]:
            notes.append(f"{info['dropped_beyond_gap']} stem Gaussians beyond a gap of over a third of "
                         "the stem were left out of the main stem")
        s_all, d_all = cl.project(X)

    if node_separation is None:
        if metres_per_unit is not None:
            node_separation = NODE_SEPARATION_M / f
            ns_rule = f"{NODE_SEPARATION_M} m (default)"
        elif diam_med:
            node_separation = 3.0 * diam_med
            ns_rule = "3 median stem diameters (default without a metric scale)"
        elif cl is not None:
            node_separation = 2.0 * max(tube, 3.0 * size)
            ns_rule = "2 stem tube radii (default without a metric scale or a diameter)"
        else:
            ns_rule = "none: no scale, no stem"
    else:
        ns_rule = "given"
    if peduncle_link is None and node_separation is not None:
        peduncle_link = 0.4 * node_separation
    method["node_separation"] = _r(node_separation * f if node_separation else None)
    method["node_separation_rule"] = ns_rule
    method["peduncle_link"] = _r(peduncle_link * f if peduncle_link else None)

    # ---- nodes ----------------------------------------------------------------------------------
    nodes: list[dict] = []
    if not mN.any():
        notes.append(f"nodes not measured: no confident N Gaussians ({rule}); node count, internode "
                     "lengths, per-internode diameters and peduncle attachment are not given")
    elif node_separation is None:
        notes.append("nodes not measured: without a main stem there is no scale for the node clustering "
                     "(pass node_separation) and no order along the stem")
    else:
        cand = mN.copy()
        if cl is not None:
            far = cand & (d_all > max(0.5 * node_separation, tube))
            if far.any():
                notes.append(f"{int(far.sum())} confident N Gaussians lie off the main stem (beyond "
                             "half a node separation from the centreline) and were left out")
            cand &= ~far
        idx = np.nonzero(cand)[0]
        if len(idx) == 0:
            notes.append("nodes not measured: no confident N Gaussian lies on the main stem")
        else:
            lab = _average_linkage(X[idx], node_separation, w=wN[idx])
            clusters = []
            for k in np.unique(lab):
                mem = idx[lab == k]
                wt = wN[mem]
                clusters.append({"members": mem, "weight": float(wt.sum()),
                                 "position": (X[mem] * wt[:, None]).sum(0) / wt.sum(),
                                 "confidence": float((pr[mem, classes.index("N")] * op[mem]).sum()
                                                     / op[mem].sum())})
            wmax = max(c["weight"] for c in clusters)
            kept = [c for c in clusters if len(c["members"]) >= min_node_gaussians
                    and c["weight"] >= min_cluster_weight * wmax]
            rej = len(clusters) - len(kept)
            if not kept:
                notes.append(f"nodes not measured: each of the {len(clusters)} N cluster(s) has under "
                             f"{min_node_gaussians} Gaussians")
            elif rej:
                notes.append(f"{rej} N cluster(s) with under {min_node_gaussians} Gaussians or under "
                             f"{min_cluster_weight:.0%} of the heaviest cluster's weight were dropped")
            for c in kept:
                if cl is not None:
                    s_c, _ = cl.project(c["position"][None])
                    c["s"] = float(s_c[0])
                else:
                    c["s"] = None
            kept.sort(key=lambda c: c["s"] if c["s"] is not None else float(c["position"] @ up))
            if cl is not None:  # clusters on either side of the stem at one node are one node
                merged_n = []
                for c in kept:
                    if merged_n and c["s"] - merged_n[-1]["s"] < node_separation:
                        m0 = merged_n[-1]
                        mem = np.concatenate([m0["members"], c["members"]])
                        wt = wN[mem]
                        pos = (X[mem] * wt[:, None]).sum(0) / wt.sum()
                        merged_n[-1] = {"members": mem, "weight": float(wt.sum()), "position": pos,
                                        "confidence": float((pr[mem, classes.index("N")] * op[mem]).sum()
                                                            / op[mem].sum()),
                                        "s": float(cl.project(pos[None])[0][0])}
                    else:
                        merged_n.append(c)
                if len(merged_n) < len(kept):
                    method["node_merge"] = (f"{len(kept) - len(merged_n)} N cluster(s) closer than "
                                            "node_separation along the stem to the previous one were "
                                            "merged into it")
                kept = merged_n
            for i, c in enumerate(kept):
                nodes.append({
                    "index": i + 1, "position_model": c["position"].tolist(),
                    "height": (float(c["position"] @ up) - base_h) * f if base_h is not None else None,
                    "stem_position": c["s"] * f if c["s"] is not None else None,
                    "confidence": c["confidence"], "gaussians": int(len(c["members"])),
                    "weight": c["weight"], "peduncles": 0, "_s": c["s"]})
    out["plant"]["node_count"] = len(nodes) if nodes else None

    # ---- internodes -----------------------------------------------------------------------------
    internodes = []
    for a, b in zip(nodes[:-1], nodes[1:]):
        pa, pb = np.asarray(a["position_model"]), np.asarray(b["position_model"])
        row = {"index": a["index"], "from_node": a["index"], "to_node": b["index"],
               "length": (b["_s"] - a["_s"]) * f if cl is not None else None,
               "straight_length": float(np.linalg.norm(pb - pa)) * f,
               "stem_diameter": None, "diameter_coverage": None}
        if cl is not None:
            L = b["_s"] - a["_s"]
            smid = 0.5 * (a["_s"] + b["_s"])
            c0, t0 = cl.at(smid)
            m = sil_m & (d_all < reach) & (np.abs(s_all - smid) < 0.375 * L)
            if m.sum() >= 2:
                d, dinfo = silhouette_diameter(X[m], covs(m), op[m], c0, t0, 0.25 * L, reach,
                                               n_views=n_views, eps=eps)
                row["stem_diameter"] = d * f if d is not None else None
                row["diameter_coverage"] = dinfo["coverage"]
            if row["stem_diameter"] is None:
                notes.append(f"stem diameter of internode {a['index']}-{b['index']} not measured: its "
                             "middle half draws no continuous silhouette from U and D Gaussians")
        internodes.append(row)
    if cl is None and len(nodes) > 1:
        notes.append("internode lengths along the stem not measured (no main stem); straight_length "
                     "is the straight line between the nodes")
    out["internodes"] = internodes

    # ---- peduncles ------------------------------------------------------------------------------
    peds = []
    if not mP.any():
        notes.append(f"peduncles not measured: no confident P Gaussians ({rule})")
    elif cl is None or peduncle_link is None:
        notes.append("peduncles not attached: there is no main stem to attach them to")
    else:
        idx = np.nonzero(mP)[0]
        lab = _components(X[idx], peduncle_link)
        groups = [idx[lab == k] for k in np.unique(lab)]
        gw = [float(wP[g].sum()) for g in groups]
        wmax = max(gw)
        unattached = small = merged = 0
        attach_reach = max(0.5 * node_separation, tube)
        branches: dict[int, list[dict]] = {}
        loose = []
        for g, wt in zip(groups, gw):
            if len(g) < min_node_gaussians or wt < min_cluster_weight * wmax:
                small += 1
                continue
            j = g[np.argmin(d_all[g])]
            s_a, d_a = s_all[j], d_all[j]
            k = int(np.argmin([abs(n["_s"] - s_a) for n in nodes])) if nodes else -1
            if k < 0 or d_a > attach_reach or abs(nodes[k]["_s"] - s_a) > node_separation:
                loose.append(g)
                continue
            c0, t0 = cl.at(s_a)
            cen = (X[g] * wP[g, None]).sum(0) / wP[g].sum() - c0
            cen -= (cen @ t0) * t0
            dirn = cen / max(np.linalg.norm(cen), 1e-15)
            # pieces of one branch (broken by a gap in its P Gaussians) leave the stem the same way
            for br in branches.setdefault(k, []):
                if br["dir"] @ dirn > math.cos(math.radians(45)):
                    br["members"] = np.concatenate([br["members"], g])
                    if d_a < br["d"]:
                        br.update(j=j, d=d_a, s=s_a)
                    merged += 1
                    break
            else:
                branches[k].append({"members": g, "j": j, "d": d_a, "s": s_a, "dir": dirn})
        # a piece away from the stem continues the nearest attached branch when it is within a node
        # separation of it (a gap in the branch's P Gaussians); otherwise it attaches nowhere
        from scipy.spatial import cKDTree

        attached = [br for brs in branches.values() for br in brs]
        trees = [cKDTree(X[br["members"]]) for br in attached]
        for g in loose:
            dist = [float(t.query(X[g])[0].min()) for t in trees]
            if dist and min(dist) <= node_separation:
                br = attached[int(np.argmin(dist))]
                br["members"] = np.concatenate([br["members"], g])
                merged += 1
            else:
                unattached += 1
        for k, brs in sorted(branches.items()):
            for br in brs:
                g, j = br["members"], br["j"]
                nodes[k]["peduncles"] += 1
                peds.append({"node": nodes[k]["index"], "attach_model": X[j].tolist(),
                             "stem_position": br["s"] * f,
                             "reach": float(np.linalg.norm(X[g] - X[j], axis=1).max()) * f,
                             "gaussians": int(len(g)), "weight": float(wP[g].sum()),
                             "confidence": float((pr[g, classes.index("P")] * op[g]).sum() / op[g].sum())})
        if merged:
            method["peduncle_merge"] = ("P clusters of one node leaving the stem within 45 degrees of "
                                        "each other, and pieces away from the stem within node_separation "
                                        f"of an attached branch, count as one branch ({merged} merged)")
        if small:
            notes.append(f"{small} P cluster(s) with too little support were dropped")
        if unattached:
            notes.append(f"{unattached} P branch(es) attach to no node (farther than the node "
                         "separation from every node along the stem, or away from the stem)")
        peds.sort(key=lambda p: (p["node"], p["stem_position"]))
        for i, p in enumerate(peds):
            p["index"] = i + 1
        out["plant"]["peduncle_count"] = len(peds) if nodes else None
        if not nodes:
            notes.append("peduncle count not given: P branches attach to nodes, and no node was found")
    out["peduncles"] = peds
    for n in nodes:
        n.pop("_s")
    out["nodes"] = nodes
    return _r_tree(out)


def _r_tree(d):
    if isinstance(d, dict):
        return {k: _r_tree(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_r_tree(v) for v in d]
    if isinstance(d, (float, np.floating, np.integer, np.bool_)):
        return _r(d, 7)
    return d


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# geometry only: no stem classes needed (s3dgs.organs), and the comparison with a reference
# ----------------------------------------------------------------------------------------------

MIN_STEM_GAUSSIANS = 20
"""`--method auto` measures with the classes when the model has U and D classes with at least this
many confident opaque Gaussians, else with the geometry."""
MAX_GROUND_SHARE = 0.25
ORGAN_CLASS_NAMES = ("pedicel", "fruit", "flower", "silique", "peduncle", "p")
"""Class names (any table) whose Gaussians make a lateral organ in the geometry path (the tomato P
is the peduncle); a side branch of mostly other Gaussians (leaves) is not counted."""
"""A plane fitted to background Gaussians with more than this share of the opaque Gaussians on or
under it cuts through the plant: it is not taken for the ground."""

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


def scene_box(scene: Optional[Path]) -> Optional[np.ndarray]:
    """The box [2, 3] the plant stands in, when the scene knows it: a ROMI scan's workspace or
    bounding box, as `s3dgs prepare` carved it (prepare.json ``carve.box``); else None."""
    if scene is None or not (Path(scene) / "prepare.json").is_file():
        return None
    try:
        box = json.loads((Path(scene) / "prepare.json").read_text()).get("carve", {}).get("box")
        box = np.asarray(box, np.float64)
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
    return box if box.shape == (2, 3) and np.isfinite(box).all() and (box[1] > box[0]).all() else None


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


# ----------------------------------------------------------------------------------------------
# a run folder
# ----------------------------------------------------------------------------------------------

def _scene_of(run: Path, rc: dict, scene) -> Optional[Path]:
    if scene is not None:
        p = Path(scene)
        if not p.is_dir():
            raise UsageError(f"--scene {p}: folder not found")
        return p
    if rc["scene"] is not None and Path(rc["scene"]).is_dir():
        return Path(rc["scene"])
    cd = rc["paths"].get("colmap_dir")
    if cd and Path(cd).exists():
        return Path(cd)
    p = run.parent / "scene"
    return p if p.is_dir() else None


def scale_of_scene(scene: Optional[Path], metric_poses: bool = False) -> tuple[float | None, str]:
    """Metric scale from what is known about a scene's poses: (metres per unit or None, source)."""
    if scene is not None:
        al = scene / "alignment.json"
        if al.is_file():
            try:
                a = json.loads(al.read_text())
            except json.JSONDecodeError:
                a = {}
            ref = Path(str(a.get("reference", "")))
            if (ref / "gt" / "meta.json").is_file():
                return 1.0, (f"known poses: the scene was aligned to the reference {ref} (Sim3 from "
                             f"{a.get('matched_cameras')} cameras, alignment.json), whose poses are "
                             "metric (a synthetic scene, metres)")
            return 1.0, (f"known poses: the scene was aligned to the reference {ref} (alignment.json); "
                         "lengths are in the reference's units, taken as metres")
        if (scene / "gt" / "meta.json").is_file() and (scene / "gt" / "stems.json").is_file():
            return 1.0, "known poses: the synthetic scene's true poses are metric (metres)"
        un = scene / "units.json"
        if un.is_file():
            try:
                u = json.loads(un.read_text())
            except (OSError, json.JSONDecodeError):
                u = {}
            mpu = u.get("metres_per_unit") if isinstance(u, dict) else None
            if isinstance(mpu, (int, float)) and mpu > 0:
                return float(mpu), f"known poses: {u.get('source', un)} (units.json: {u.get('units')})"
    if metric_poses:
        return 1.0, "known poses: --metric-poses says the scene's poses are in metres"
    return None, ("none: structure from motion is up to scale; lengths are in model units (give "
                  "--scale, or align the scene to a reference with known poses)")


def run_phenotype(run_dir, *, scale: str | None = None, up: str = "auto", scene=None,
                  metric_poses: bool = False, class_threshold: float = 0.5, min_opacity: float = 0.1,
                  node_separation: float | None = None, extend_stem: bool = True, base: str = "auto",
                  write: bool = True, method: str = "auto", reference=None,
                  reference_scale: float = 1.0) -> dict:
    """Measure the plant of a run folder and write RUN/phenotypes.json, .csv and .png.

    Args:
        run_dir: holds point_cloud.ply (and config.json naming the scene, for up and scale).
        scale: the --scale option (see `parse_scale`); overrides the scale of known poses.
        up: "auto" (cameras, else the ground plane), "cameras", "ground", or "X,Y,Z".
        scene: the scene folder (default: config.json's scene, else RUN/../scene).
        metric_poses: the scene's poses are known to be in metres.
        node_separation: in metres when the scale is known, else model units (default: derived).
        base: "auto", "ground" or "stem" (see `measure_plant`'s base_rule).
        method: "classes" (`measure_plant`: the stem classes U/N/D/P), "geometry"
            (`s3dgs.organs.measure_organs` on the opaque Gaussians: main stem, lateral organs,
            internodes and divergence angles, no class needed; main-stem classes, where the model
            has them, sharpen the main stem), or "auto": classes when the model has U and D classes
            with at least MIN_STEM_GAUSSIANS confident opaque Gaussians, else geometry.
        reference: a ROMI angles_internodes.json; the measured organ sequence (geometry) is aligned
            with it (`s3dgs.sequence.align_sequences`) into ``reference_comparison``.
        reference_scale: measured length units per reference unit (the reference's internodes are
            multiplied by it before comparing).

    Returns:
        The `measure_plant` dict plus ``run``, ``scene``, ``scale`` {"metres_per_unit", "source"},
        ``up_source``, ``ground_model``, ``pixel_size_model``, ``summary`` (one line) and ``files``.
        Raises S3dgsError (UsageError for bad options) naming the file or option.
    """
    import torch

    from s3dgs.config import load_run_config
    from s3dgs.gaussians.model import load_ply, semantic_probs

    run = Path(run_dir)
    ply = run / "point_cloud.ply"
    if not ply.is_file():
        from s3dgs.checkpoint import train_first_advice

        raise S3dgsError(f"{ply}: not found; {train_first_advice(run)}")
    try:
        rc = load_run_config(run)  # the run's scene, class activation and training resolution
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise S3dgsError(f"{run / 'config.json'}: unreadable ({exc}); pass --scene and --up, or "
                         "restore the file") from exc
    try:
        params, classes = load_ply(ply)
    except Exception as exc:  # plyfile raises several types for a bad file
        raise S3dgsError(f"{ply}: not a readable 3DGS PLY ({exc})") from exc
    means = params["means"].numpy().astype(np.float64)
    scales = torch.exp(params["scales"]).numpy().astype(np.float64)
    quats = params["quats"].numpy().astype(np.float64)
    opac = torch.sigmoid(params["opacities"].reshape(-1)).numpy().astype(np.float64)
    if "semantics" in params and params["semantics"].shape[1] > 0:
        probs = semantic_probs(params["semantics"], rc["train"].semantics.activation).numpy()
    else:
        probs, classes = np.zeros((len(means), 0)), ()
    probs = probs.astype(np.float64)
    scene_dir = _scene_of(run, rc, scene)

    # scale
    if scale is not None:
        mpu, scale_src = parse_scale(scale)
    else:
        mpu, scale_src = scale_of_scene(scene_dir, metric_poses)

    # cameras (up, pixel size)
    views = None
    if scene_dir is not None:
        try:
            from s3dgs.scene.colmap import read_model

            views = read_model(scene_dir).views
        except S3dgsError:
            views = None
    # the ground: opaque Gaussians of no class; a plane under the plant (up fallback, stem floor)
    maxp = probs.max(1) if probs.shape[1] else np.zeros(len(means))
    bg = np.nonzero((opac > 0.5) & (maxp < class_threshold))[0]
    if len(bg) > 20000:
        bg = np.random.default_rng(0).choice(bg, 20000, replace=False)
    ground = fit_ground_plane(means[bg])
    plant = maxp > class_threshold
    if ground is not None:
        n, d, frac = ground
        side = np.median(means[plant] @ n - d) if plant.any() else 1.0
        ground = (n, d, frac) if side >= 0 else (-n, -d, frac)  # the plant stands on its + side

    up_s = _parse_up(up)
    if isinstance(up_s, np.ndarray):
        up_vec, up_src = up_s, f"--up {up}: given"
    elif up_s in ("auto", "cameras") and views:
        centres = np.stack([v.camera_center for v in views])
        cam_ups = np.stack([-v.viewmat[1, :3] for v in views])
        up_vec, up_src = up_from_cameras(centres, cam_ups)
    elif up_s == "cameras":
        raise UsageError(f"--up cameras: no cameras found (scene {scene_dir}); pass --scene DIR or "
                         "--up ground / X,Y,Z")
    elif ground is None:
        moved = (f" The scene recorded in {run}/config.json ({rc['scene']}) is not there (moved?): pass "
                 "--scene DIR to use its cameras, or" if scene_dir is None and rc["scene"] is not None else " Pass")
        raise UsageError("--up: no cameras found, and no ground plane among the opaque background "
                         f"Gaussians.{moved} --up X,Y,Z (the plant's up direction in the model frame)")
    else:
        up_vec = ground[0]
        up_src = (f"normal of the ground plane fitted (RANSAC) to {len(bg)} opaque background "
                  f"Gaussians ({ground[2]:.0%} inliers), oriented towards the plant")

    pixel_size = None
    if views:
        rs = float(rc["train"].data.resolution_scale)
        plant_m = (probs.max(1) > class_threshold) if probs.shape[1] else np.zeros(len(means), bool)
        target = np.median(means[plant_m], 0) if plant_m.any() else np.median(means, 0)
        dist = np.array([np.linalg.norm(v.camera_center - target) for v in views])
        fx = np.array([v.K[0, 0] * rs for v in views])
        pixel_size = float(np.median(dist / fx))

    ns = None
    if node_separation is not None:
        ns = node_separation / (mpu or 1.0)
    if method not in ("auto", "classes", "geometry"):
        raise UsageError(f"--method {method!r}: choose auto, classes or geometry")
    usable, why = _stem_classes_usable(probs, opac, classes, class_threshold, min_opacity)
    geo_pts = None
    if method == "geometry" or (method == "auto" and not usable):
        why = "--method geometry" if method == "geometry" else why
        res, geo_pts = _measure_geometry(means, opac, probs, classes, up_vec, mpu, class_threshold,
                                         min_opacity, ground, why, box=scene_box(scene_dir))
    else:
        res = measure_plant(means, scales, quats, opac, probs, up=up_vec, metres_per_unit=mpu, classes=classes,
                            class_threshold=class_threshold, min_opacity=min_opacity, node_separation=ns,
                            pixel_size=pixel_size, extend_stem=extend_stem, base_rule=base,
                            ground=(ground[0], ground[1]) if ground is not None else None)
        res["measured_by"] = "classes"
    res = {"run": str(run), "scene": str(scene_dir) if scene_dir else None,
           "scale": {"metres_per_unit": mpu, "source": scale_src}, "up_source": up_src,
           "pixel_size_model": _r(pixel_size),
           "ground_model": ({"normal": _r(ground[0]), "offset": _r(ground[1]), "inliers": _r(ground[2], 3)}
                            if ground is not None else None), **res}
    if mpu is None:
        res["notes"].insert(0, "lengths are in model units: " + scale_src)
    if reference is not None:
        if res.get("method") == "geometry":
            res["reference_comparison"] = compare_to_reference(res, reference, reference_scale)
        else:
            res["notes"].append("--reference: the comparison needs divergence angles, which the geometry "
                                "method measures; rerun with --method geometry")
    res["summary"] = summary_line(res)
    if write:
        if geo_pts is not None:
            paths = write_phenotypes(res, run, geo_pts)
        else:
            paths = write_phenotypes(res, run, means, probs, opac, classes=classes,
                                     class_threshold=class_threshold, min_opacity=min_opacity)
        res["files"] = {k: str(v) for k, v in paths.items()}
    return res


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


@dataclass
class PhenotypeConfig:
    """Measure a trained plant: height, nodes, internodes, stem diameters, peduncles."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder holding point_cloud.ply (and config.json, which names the scene)."""
    scale: Annotated[Optional[str], opt("SCALE", "from known poses, else model units")] = None
    """Metric scale when the poses are not metric. A factor, metres per model unit (0.012); a known
    size, METRES=MODEL_LENGTH (0.30=2.45: an object 0.30 m long measures 2.45 in the model); or a
    known distance, METRES=x1,y1,z1,x2,y2,z2 (two points picked in the model, e.g. a ruler's ends).
    Known poses are metric for the synthetic scene, a scene aligned with `s3dgs run --reference`, or
    with --metric-poses; otherwise lengths are in model units, labelled so."""
    up: str = "auto"
    """The plant's up axis: auto (the camera ring's normal, else the ground plane), cameras, ground
    (plane fitted to background Gaussians), or a vector X,Y,Z in the model frame."""
    scene: Annotated[Optional[Path], opt("DIR", "RUN/config.json's scene, else RUN/../scene")] = None
    """Scene folder (for the cameras, the scale and the scan's box)."""
    metric_poses: bool = False
    """The scene's camera poses are in metres (e.g. from a calibrated rig)."""
    class_threshold: float = 0.5
    """Class probability a Gaussian needs to belong to a class."""
    min_opacity: float = 0.1
    """Opacity a Gaussian needs to count."""
    node_separation: Annotated[Optional[float], opt(
        "M", "0.025 m with a metric scale, else 3 median stem diameters")] = None
    """Node clustering cut and peduncle attachment tolerance (metres when the scale is known; tomato
    internodes are 3-12 cm)."""
    extend_stem: bool = True
    """Follow the stem past its labelled ends through opaque Gaussians (to the soil and the tip)."""
    method: Literal["auto", "classes", "geometry"] = "auto"
    """How to measure: classes (the stem classes U/N/D/P: nodes, internodes, diameters, peduncles),
    geometry (the shape of the opaque Gaussians alone: main stem, lateral organs, internodes and
    divergence angles in ROMI's convention; main-stem classes, where present, guide the main stem),
    or auto (classes when the model has confident U and D Gaussians, else geometry)."""
    reference: Annotated[Optional[Path], opt("FILE", "none")] = None
    """A ROMI angles_internodes.json to compare the measured organ sequence with (geometry method):
    organs found / missed / extra and median angle and internode errors, in phenotypes.json."""
    reference_scale: float = 1.0
    """Measured length units per unit of the reference's internodes (its internodes are multiplied
    by it before comparing)."""
    base: Literal["auto", "ground", "stem"] = "auto"
    """Base of the plant for heights: the ground plane under the stem (fitted to background
    Gaussians; auto uses it when found) or the stem's lowest reconstructed point (stem; use it for
    potted plants, where the ground found may be the bench under the pot)."""

    def validate(self) -> None:
        """Every option's value, before any work (UsageError naming the option)."""
        from s3dgs import validate as V

        V.in_range("--class-threshold", self.class_threshold, 0.0, 1.0, hi_open=True)
        V.in_range("--min-opacity", self.min_opacity, 0.0, 1.0, hi_open=True)
        V.positive("--node-separation", self.node_separation)
        V.one_of("--base", self.base, ("auto", "ground", "stem"))
        V.one_of("--method", self.method, ("auto", "classes", "geometry"))
        V.positive("--reference-scale", self.reference_scale)
        if self.reference is not None and not Path(self.reference).is_file():
            raise UsageError(f"--reference {self.reference}: file not found (give ROMI's angles_internodes.json)")
        if self.scale is not None:
            parse_scale(self.scale)
        _parse_up(self.up)


def phenotype_main(cfg: PhenotypeConfig) -> int:
    """CLI: `s3dgs phenotype RUN`."""
    from s3dgs.runlock import run_lock

    cfg.validate()
    if Path(cfg.run).is_dir():  # RUN/phenotypes.* must be writable before the measuring
        from s3dgs.atomic import check_writable_folder

        check_writable_folder(cfg.run, "RUN", files=("phenotypes.json", "phenotypes.csv", "phenotypes.png"))
    with run_lock(cfg.run, "s3dgs phenotype", create=False):  # no other command writes into RUN meanwhile
        res = run_phenotype(cfg.run, scale=cfg.scale, up=cfg.up, scene=cfg.scene, metric_poses=cfg.metric_poses,
                            class_threshold=cfg.class_threshold, min_opacity=cfg.min_opacity,
                            node_separation=cfg.node_separation, extend_stem=cfg.extend_stem, base=cfg.base,
                        method=cfg.method, reference=cfg.reference, reference_scale=cfg.reference_scale)
    print(format_summary(res))
    print(f"-> {res['files']['json']}, {Path(res['files']['csv']).name}, {Path(res['files']['png']).name}")
    return 0
