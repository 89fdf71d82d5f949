"""Step 3, the main stem's curve: `fit_centreline` (a robust smoothing spline of the horizontal
position against height), `Centreline` (a polyline with arc lengths), and the two ways it is
carried past the labelled stretch: `_extend` (a tube along the end tangents through opaque
Gaussians) and `_continue_to_stem_top` (stem-class Gaussians connected above the apex).

Hand-written here, and why: the tube following at the stem's ends (no library follows a curve
through a point cloud); the spline is scipy's (FITPACK)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s3dgs.phenotypes.clusters import _components
from s3dgs.phenotypes.common import _basis, _unit, _wmedian


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
    """Robust centreline of a stem through points [M, 3] with weights [M] (see `s3dgs.phenotypes`,
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
