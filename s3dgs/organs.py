"""Phyllotaxis from geometry alone: main stem, lateral organs, internodes and divergence angles.

    from s3dgs.organs import measure_organs
    res = measure_organs(points, weights, up=(0, 0, 1))          # points [N, 3], weights [N]
    res["internodes"], res["angles_deg"], res["organs"], res["notes"]

No semantic class is needed: the traits come from the shape of a point cloud (here, the centres of a
model's opaque Gaussians), in the convention of ROMI's plant-3d-vision pipeline and its ground truth
(``angles_internodes.json``): organs are ordered from the base up; ``internodes[i]`` is the arc
length along the main stem between the insertions of organs i and i+1; ``angles_deg[i]`` is the
divergence angle from organ i to organ i+1 around the stem, in [0, 360) degrees, counter-clockwise
seen from above (right-handed about the stem's tangent pointing up; a golden-angle spiral reads
about 137.5 every step). N organs give N - 1 internodes and N - 1 angles.

The steps, each with the rule and threshold written into ``res["method_rules"]`` /
``res["parameters"]`` (``measure_organs`` reads as these five steps; each is a function of this
module, named in brackets):

1. **Points** (``_points``). Voxel-grid downsampling (weighted centroids per voxel of ``voxel``,
   default the median nearest-neighbour spacing, at least 1/1000 of the plant's extent), a radius
   graph of the centroids (``neighbour``, default the larger of 2.5 voxels and twice the 90th
   percentile of the centroids' nearest-neighbour distances; scipy ``cKDTree``), pieces within
   ``bridge`` of the plant joined through their shortest link (``_bridge_gaps``), and its connected
   components (scipy ``csgraph``): the heaviest is the plant; the points of the others (strays,
   floaters) are dropped and counted in the notes.
2. **Skeleton** (``_skeleton``). Geodesic level sets (Verroust & Lazarus 2000, as used by several
   plant point-cloud pipelines): geodesic distance from the base (the lowest centroid along ``up``)
   by Dijkstra on the graph (scipy ``csgraph.dijkstra``); centroids binned by it (``bin_width``,
   default the neighbour radius); the connected components of each bin are the skeleton nodes (at
   their weighted median); each node hangs from the node of the previous bin it shares most graph
   edges with. With the bin no narrower than the longest graph edge, every node of bin k > 0 touches
   bin k - 1, so the nodes form one tree. Chosen over a voxel thinning (skimage ``skeletonize``) or
   a Laplacian contraction because it needs no watertight surface and no volume, only a
   neighbourhood graph, which an irregular cloud of Gaussian centres gives, and its tree is rooted
   at the base by construction (thinning leaves loops and spurs to prune on noisy clouds).
3. **Main stem** (``_main_path``, ``_stem_polyline``). The tree path from the root to the tip
   farthest from it (geodesic), or, with ``stem_mask``, to the tip whose path holds the most
   stem-labelled weight; in the upper half of the plant it ends where it leans more than
   ``MAX_LEAN_DEG`` from up (and, without a mask, when the farthest tip's path ran sideways, the
   path that reaches highest is taken). Its nodes are smoothed (scipy ``savgol_filter``, quadratic,
   over about ``smooth`` bins) into a polyline with arc length, then re-centred on the stem's own
   points (those within 1.5 stem radii of it) and smoothed again.
4. **Lateral organs** (``_lateral_organs``). Every subtree leaving the main-stem path. Length = the
   geodesic reach of its farthest point beyond the junction; subtrees shorter than
   ``min_organ_length`` (default 4 bins and 1 % of the main stem's length) are twigs of noise and
   are dropped (counted in the notes). Two subtrees leaving at the same skeleton node within
   ``merge_angle_deg`` of each other are one organ split by noise; organs at different nodes,
   however close, stay apart (Arabidopsis has near-coincident siliques). Direction: from the
   insertion to the centroid of the organ's points within ``direction_reach`` (geodesic) of its
   start, projected on the plane perpendicular to the stem's tangent there. Insertion: the stem
   point closest to the line (principal axis) through those points, searched near the junction (the
   level-set junction itself sits a graph radius or so above the true insertion, where the organ has
   parted from the stem); the nearest stem point of the organ's centroid when the line runs along
   the stem.
5. **Sequence** (``_sequence``). Organs sorted by insertion arc length; internodes = differences of
   successive insertions; angles = signed angle from organ i's direction to organ i+1's around the
   stem tangent at their mid-point (both projected on its normal plane), mapped to [0, 360).

Hand-written here, and why: the level-set skeleton (no kept library builds one from a point graph;
its parts, the kNN/radius graph, Dijkstra and connected components, are scipy's) and the
phyllotaxis bookkeeping. Units: lengths are in model units, or metres when ``metres_per_unit`` is
given (``units`` says which); positions stay in the model frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from s3dgs.errors import UsageError

__all__ = ["measure_organs", "signed_angle_deg"]


MAX_LEAN_DEG = 60.0
LEAN_WINDOW = 0.05
"""In the upper half of the plant, the main stem ends where it leans more than MAX_LEAN_DEG from up
over LEAN_WINDOW of the plant's height (the tomato centreline's rule, s3dgs.phenotype, with a wider
angle: an Arabidopsis stem curves)."""

ORGAN_SHARE = 0.25
"""With an organ mask, a side branch is an organ when at least this share of its weight is of the
organ classes (chosen on one run of the ROMI virtual plant, benchmarks/romi_study.py: 0.5 lost
fruits whose pedicels were labelled stem; 0.25 and 0.1 gave the same organs)."""


def length_units(metres_per_unit: float | None) -> tuple[float, str]:
    """(factor to metres, unit label) of lengths measured in model units: metres when a scale is
    known, else model units. Raises UsageError for a scale that is not a positive number."""
    if metres_per_unit is not None and not (math.isfinite(metres_per_unit) and metres_per_unit > 0):
        raise UsageError(f"metres_per_unit must be a positive number, got {metres_per_unit}")
    return (1.0, "model units") if metres_per_unit is None else (float(metres_per_unit), "m")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(3)
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n < 1e-12:
        raise UsageError(f"up vector {v.tolist()} has no direction")
    return v / n


def signed_angle_deg(a: np.ndarray, b: np.ndarray, axis: np.ndarray) -> float:
    """Angle from a [3] to b [3] around axis [3] (both projected on the plane perpendicular to it),
    right-handed (counter-clockwise looking down the axis from its tip), in [0, 360) degrees; NaN
    when either projection vanishes."""
    t = _unit(axis)
    a = np.asarray(a, np.float64) - (np.asarray(a, np.float64) @ t) * t
    b = np.asarray(b, np.float64) - (np.asarray(b, np.float64) @ t) * t
    if np.linalg.norm(a) < 1e-12 or np.linalg.norm(b) < 1e-12:
        return float("nan")
    ang = math.degrees(math.atan2(float(t @ np.cross(a, b)), float(a @ b)))
    return ang % 360.0


class _Polyline:
    """A dense polyline points [S, 3] with cumulative arc length s [S]; tangents are chords over
    +- max(2 % of the length, `half_span`)."""

    def __init__(self, pts: np.ndarray, half_span: float = 0.0):
        from scipy.spatial import cKDTree

        self.half_span = half_span
        self.points = pts
        self.s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        self.tree = cKDTree(pts)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def project(self, x: np.ndarray) -> np.ndarray:
        """Arc length [M] of the nearest polyline point of each x [M, 3]."""
        _, i = self.tree.query(np.asarray(x, np.float64).reshape(-1, 3))
        return self.s[i]

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """(point [3], unit tangent [3]) at arc length s."""
        s = float(np.clip(s, 0.0, self.length))
        p = np.array([np.interp(s, self.s, self.points[:, k]) for k in range(3)])
        h = max(0.02 * self.length, self.half_span, 1e-12)
        a = np.array([np.interp(max(s - h, 0.0), self.s, self.points[:, k]) for k in range(3)])
        b = np.array([np.interp(min(s + h, self.length), self.s, self.points[:, k]) for k in range(3)])
        t = b - a
        return p, t / max(np.linalg.norm(t), 1e-15)


def _voxelise(X: np.ndarray, w: np.ndarray, voxel: float):
    """Weighted centroids of the occupied voxels. Returns (centroids [V, 3], weights [V], voxel
    index of each point [N])."""
    key = np.floor((X - X.min(0)) / voxel).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    V = int(inv.max()) + 1
    ww = np.maximum(w, 1e-12)
    wsum = np.bincount(inv, ww, V)
    cen = np.stack([np.bincount(inv, ww * X[:, k], V) for k in range(3)], 1) / wsum[:, None]
    return cen, np.bincount(inv, w, V), inv


def _graph(C: np.ndarray, r: float):
    """Radius graph of C [V, 3] at r: (csr matrix of edge lengths, pairs [E, 2])."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    pairs = cKDTree(C).query_pairs(r, output_type="ndarray").reshape(-1, 2)
    d = np.linalg.norm(C[pairs[:, 0]] - C[pairs[:, 1]], axis=1)
    d = np.maximum(d, 1e-12 * max(r, 1e-300))  # a zero weight would read as no edge
    n = len(C)
    g = coo_matrix((np.r_[d, d], (np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]])),
                   shape=(n, n)).tocsr()
    return g, pairs


def _wmedian_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Coordinate-wise weighted median of x [M, 3] with weights w [M]."""
    out = np.empty(3)
    for k in range(3):
        o = np.argsort(x[:, k])
        c = np.cumsum(w[o])
        out[k] = x[o[min(int(np.searchsorted(c, 0.5 * c[-1])), len(o) - 1)], k]
    return out


def measure_organs(
    points: np.ndarray,
    weights: np.ndarray | None = None,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    stem_mask: np.ndarray | None = None,
    voxel: float | None = None,
    neighbour: float | None = None,
    bin_width: float | None = None,
    min_organ_length: float | None = None,
    direction_reach: float | None = None,
    bridge: float | None = None,
    organ_mask: np.ndarray | None = None,
    merge_angle_deg: float = 30.0,
    smooth: int = 9,
    metres_per_unit: float | None = None,
) -> dict:
    """Main stem, lateral organs, internodes and divergence angles of one plant's point cloud.

    Args:
        points [N, 3]: positions (model frame), e.g. the centres of a model's opaque Gaussians.
        weights [N] or None: per-point weight >= 0 (e.g. opacity); None: all 1.
        up [3]: the plant's up direction in the model frame.
        stem_mask [N] bool or None: points labelled main stem (from semantic classes, when a model
            has them); the main stem is then the tree path that holds most of their weight.
        voxel: downsampling voxel (model units); default the median nearest-neighbour spacing of
            the points, at least 1/1000 of their extent (1st-99th percentile box diagonal).
        neighbour: radius of the point graph; default the larger of 2.5 voxels and twice the 90th
            percentile of the voxel centroids' nearest-neighbour distances.
        bin_width: width of the geodesic level sets; default (and at least) the neighbour radius.
        min_organ_length: a subtree shorter than this (geodesic, beyond its junction) is a twig and
            not an organ; default the larger of 4 bins and 1 % of the main stem's length.
        direction_reach: an organ's direction is taken over its points within this geodesic
            distance of its start; default 4 bins.
        organ_mask [N] bool or None: points of the organ classes (when a model has classes, e.g.
            pedicel and fruit): a side branch counts as an organ only when at least ``ORGAN_SHARE``
            of its weight is theirs (so rosette leaves are not counted as organs).
        bridge: a piece of the point graph within this distance of the plant joins it through its
            shortest link (gaps along a thin stem drawn by sparse Gaussians); default 4 neighbour
            radii; 0 switches it off.
        merge_angle_deg: subtrees leaving at one skeleton node within this angle are one organ.
        smooth: main-stem smoothing window, in skeleton nodes (odd; Savitzky-Golay, quadratic).
        metres_per_unit: scale; lengths come out in metres when given, else in model units.

    Returns:
        A JSON-ready dict: ``method`` ("geometry"), ``units``, ``metres_per_unit``, ``up``,
        ``plant`` {plant_height (along up, base to top of the kept body), stem_length (main stem
        arc length), organ_count}, ``organs`` (list of {index, insertion_stem_position (arc length
        from the stem's base), insertion_height (along up above the base), insertion_model [3],
        direction_model [3] (unit, perpendicular to the stem), azimuth_deg (counter-clockwise from
        the first organ), length, points}), ``internodes`` [O - 1], ``angles_deg`` [O - 1],
        ``stem`` {polyline_model, base_model, apex_model}, ``skeleton`` {nodes_model, parents},
        ``points`` {input, kept, dropped_stray, stray_components}, ``parameters``, ``method_rules``
        and ``notes`` (what could not be measured and why). Nothing is guessed: a trait that could
        not be measured is None or absent, with a note.
    """
    X, w, sm, om, ok = _checked_inputs(points, weights, stem_mask, organ_mask)
    up = _unit(up)
    f, units = length_units(metres_per_unit)
    notes: list[str] = []
    out = _blank_result(len(ok), up, units, metres_per_unit, notes)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} points with non-finite coordinates were left out")
    X, w = X[ok], w[ok]
    sm = sm[ok] if sm is not None else None
    om = om[ok] if om is not None else None
    if len(X) < 20:
        notes.append(f"nothing measured: {len(X)} points (at least 20 are needed)")
        return out

    # ---- 1. points: voxels, graph, the main body -------------------------------------------------
    body = _points(X, w, sm, om, up, voxel=voxel, neighbour=neighbour, bin_width=bin_width,
                   direction_reach=direction_reach, bridge=bridge, notes=notes, f=f, units=units)
    out["points"].update(kept=body.kept, dropped_stray=body.dropped, stray_components=body.stray_components)
    out["plant"]["plant_height"] = (body.top_h - body.base_h) * f
    out["parameters"] = {"voxel": body.voxel * f, "neighbour": body.neighbour * f, "bridge": body.bridge * f,
                         "bin_width": body.bin_width * f,
                         "direction_reach": body.direction_reach * f, "merge_angle_deg": merge_angle_deg,
                         "smooth_nodes": smooth}
    if len(body.C) < 10:
        notes.append(f"main stem not measured: the plant is {len(body.C)} voxels of {body.voxel * f:.4g} "
                     f"{units} (at least 10 are needed); pass a smaller voxel")
        return _finish(out)

    # ---- 2. skeleton: geodesic level sets ---------------------------------------------------------
    sk = _skeleton(body, up, notes)
    out["skeleton"] = {"nodes_model": sk.npos.tolist(), "parents": sk.parent.tolist()}

    # ---- 3. main stem ----------------------------------------------------------------------------
    rules = out["method_rules"]
    path = _main_path(sk, body, up, rules, notes, f, units)
    fit = _stem_polyline(sk, body, path, smooth)
    if fit is None:
        notes.append("main stem not measured: the skeleton's main path has no length")
        return _finish(out)
    stem, r_stem, win = fit
    _record_stem(out, stem, r_stem, win, len(path), up, body, f, units)
    min_organ_length, mol_rule = _min_organ_length(min_organ_length, body.bin_width, stem)
    out["parameters"]["min_organ_length"] = min_organ_length * f
    rules["min_organ_length"] = mol_rule

    # ---- 4. lateral organs -------------------------------------------------------------------------
    organs = _lateral_organs(sk, body, stem, path, r_stem, min_organ_length, mol_rule, merge_angle_deg,
                             rules, notes, f, units)

    # ---- 5. the sequence ---------------------------------------------------------------------------
    out["organs"], out["internodes"], out["angles_deg"] = _sequence(organs, stem, up, body, f)
    out["plant"]["organ_count"] = len(organs)
    rules.update(_STEP_RULES)
    if len(organs) < 2:
        notes.append(f"{len(organs)} lateral organ(s) found: no internode or divergence angle to give")
    return _finish(out)


_STEP_RULES = {
    "points": "voxel-grid weighted centroids; radius graph; the heaviest connected component is the plant",
    "skeleton": "geodesic level sets (Verroust & Lazarus 2000): Dijkstra distance from the lowest "
                "point along up, binned; connected components per bin are nodes, each hung from the "
                "previous bin's node it shares most edges with",
    "insertion": "stem point closest to the principal axis of the organ's first points (within "
                 "direction_reach), searched from 4 bins below to 1 bin above the junction; else the "
                 "nearest stem point of their centroid",
    "direction": "insertion -> centroid of the organ's first points, projected perpendicular to the stem",
    "internodes": "arc length along the smoothed main stem between successive insertions",
    "angles": "divergence from organ i to organ i+1 around the stem tangent, counter-clockwise seen "
              "from above (right-handed about the tangent pointing up), in [0, 360) degrees",
}
"""The rules of the steps that take no threshold-dependent wording (``res["method_rules"]``)."""


def _checked_inputs(points, weights, stem_mask, organ_mask):
    """The inputs as arrays, checked: (points X [N, 3] float64, weights w [N] (non-finite or
    negative -> 0), stem mask [N] bool or None, organ mask [N] bool or None, finite-point mask
    ok [N]). Raises UsageError for a weights or mask array of the wrong length."""
    X = np.asarray(points, np.float64).reshape(-1, 3)
    N = len(X)
    w = np.ones(N) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != N:
        raise UsageError(f"weights has {len(w)} entries for {N} points")
    w = np.where(np.isfinite(w), np.maximum(w, 0.0), 0.0)
    sm = None if stem_mask is None else np.asarray(stem_mask, bool).reshape(-1)
    om = None if organ_mask is None else np.asarray(organ_mask, bool).reshape(-1)
    if om is not None and len(om) != N:
        raise UsageError(f"organ_mask has {len(om)} entries for {N} points")
    if sm is not None and len(sm) != N:
        raise UsageError(f"stem_mask has {len(sm)} entries for {N} points")
    return X, w, sm, om, np.isfinite(X).all(1)


def _blank_result(n_input: int, up: np.ndarray, units: str, metres_per_unit: float | None,
                  notes: list[str]) -> dict:
    """The result dict with nothing measured yet (every trait None or empty); `notes` is its
    ``notes`` list, filled by the steps."""
    return {"method": "geometry", "units": units, "metres_per_unit": metres_per_unit,
            "up": up.tolist(),
            "plant": {"plant_height": None, "stem_length": None, "apex_height": None, "organ_count": None},
            "organs": [], "internodes": [], "angles_deg": [], "stem": None, "skeleton": None,
            "points": {"input": int(n_input), "kept": 0, "dropped_stray": 0, "stray_components": 0},
            "parameters": {}, "method_rules": {}, "notes": notes}


# ---- step 1: points ---------------------------------------------------------------------------------

@dataclass
class _Body:
    """Step 1's result, the plant's voxels (V of them, strays dropped): centroids C [V, 3], weights
    Cw [V], stem-labelled weight Cs [V] and organ-class weight Co [V] (None without the masks),
    the radius graph G (csr [V, V] of edge lengths) and its edges pairs [E, 2], input points per
    voxel npts [V]; the counts of kept and dropped points and of stray pieces; base_h and top_h,
    the lowest and highest kept point along up; and the scales in model units."""

    C: np.ndarray
    Cw: np.ndarray
    Cs: np.ndarray | None
    Co: np.ndarray | None
    G: object
    pairs: np.ndarray
    npts: np.ndarray
    kept: int
    dropped: int
    stray_components: int
    base_h: float
    top_h: float
    voxel: float
    neighbour: float
    bridge: float
    bin_width: float
    direction_reach: float


def _voxel_size(X: np.ndarray, voxel: float | None) -> float:
    """The voxel for X [N, 3]: `voxel` when given, else the median nearest-neighbour spacing of
    (up to 20000 of) the points, at least 1/1000 of their 1st-99th percentile box diagonal. Raises
    UsageError for one that is not a positive number."""
    from scipy.spatial import cKDTree

    lo, hi = np.percentile(X, [1, 99], axis=0)
    extent = max(float(np.linalg.norm(hi - lo)), 1e-12)
    if voxel is None:
        sub = X if len(X) <= 20000 else X[np.random.default_rng(0).choice(len(X), 20000, replace=False)]
        d, _ = cKDTree(X).query(sub, k=2)
        voxel = max(float(np.median(d[:, 1])), extent / 1000.0)
    if not (math.isfinite(voxel) and voxel > 0):
        raise UsageError(f"voxel must be a positive number, got {voxel}")
    return voxel


def _neighbour_radius(C: np.ndarray, voxel: float, neighbour: float | None) -> float:
    """The graph radius for the voxel centroids C [V, 3]: `neighbour` when given, else the larger
    of 2.5 voxels and twice the 90th percentile of the centroids' nearest-neighbour distances
    (randomly placed points leave gaps well beyond their median spacing). Raises UsageError for
    one that is not a positive number."""
    from scipy.spatial import cKDTree

    if neighbour is None:
        sub = C if len(C) <= 20000 else C[np.random.default_rng(0).choice(len(C), 20000, replace=False)]
        d, _ = cKDTree(C).query(sub, k=2)
        neighbour = max(2.5 * voxel, 2.0 * float(np.percentile(d[:, 1], 90))) if len(C) > 1 else 2.5 * voxel
    neighbour = float(neighbour)
    if not (math.isfinite(neighbour) and neighbour > 0):
        raise UsageError(f"neighbour must be a positive number, got {neighbour}")
    return neighbour


def _bridge_gaps(C: np.ndarray, Cw: np.ndarray, G, pairs: np.ndarray, neighbour: float, bridge: float):
    """Gaps along a thin stem drawn by sparse Gaussians: a piece of the graph G (csr [V, V]) whose
    nearest centroid is within `bridge` of the plant (the heaviest piece, by weights Cw [V]) joins
    it through that shortest link (single linkage between pieces, heaviest first, repeated until
    no piece is within reach); strays farther away stay apart. Nothing is done unless bridge >
    neighbour. Returns (G with the links added, pairs [E', 2] with them appended)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    ncomp, lab = connected_components(G, directed=False)
    if not (bridge > neighbour and ncomp > 1):
        return G, pairs
    cw0 = np.bincount(lab, np.maximum(Cw, 1e-12), ncomp)
    members = np.split(np.argsort(lab, kind="stable"), np.cumsum(np.bincount(lab, minlength=ncomp))[:-1])
    joined = np.zeros(ncomp, bool)
    joined[int(np.argmax(cw0))] = True
    links = []
    while True:
        body = np.concatenate([members[c] for c in np.nonzero(joined)[0]])
        tree = cKDTree(C[body])
        added = False
        for c in np.argsort(-cw0):
            if joined[c]:
                continue
            d, j = tree.query(C[members[c]], distance_upper_bound=bridge)
            if np.isfinite(d).any():
                k = int(np.argmin(d))
                links.append((int(members[c][k]), int(body[j[k]]), max(float(d[k]), 1e-12)))
                joined[c] = added = True
        if not added:
            break
    if links:
        li = np.asarray(links)
        a_, b_ = li[:, 0].astype(np.int64), li[:, 1].astype(np.int64)
        G = (G + coo_matrix((np.r_[li[:, 2], li[:, 2]], (np.r_[a_, b_], np.r_[b_, a_])),
                            shape=G.shape)).tocsr()
        pairs = np.concatenate([pairs, np.stack([a_, b_], 1)])
    return G, pairs


def _points(X: np.ndarray, w: np.ndarray, sm: np.ndarray | None, om: np.ndarray | None, up: np.ndarray, *,
            voxel, neighbour, bin_width, direction_reach, bridge, notes: list[str], f: float,
            units: str) -> _Body:
    """Step 1: the points X [N, 3] (weights w [N], masks sm / om [N] bool or None) voxelised, their
    radius graph with its gaps bridged, and its heaviest connected component kept as the plant
    (the dropped pieces said in `notes`). The scales default as `measure_organs` says."""
    from scipy.sparse.csgraph import connected_components

    voxel = _voxel_size(X, voxel)
    C, Cw, inv = _voxelise(X, w, voxel)
    neighbour = _neighbour_radius(C, voxel, neighbour)
    bin_width = neighbour if bin_width is None else max(float(bin_width), neighbour)
    direction_reach = 4.0 * bin_width if direction_reach is None else float(direction_reach)
    Cs = np.bincount(inv, w * sm, len(C)) if sm is not None else None
    Co = np.bincount(inv, w * om, len(C)) if om is not None else None
    G, pairs = _graph(C, neighbour)
    bridge = 4.0 * neighbour if bridge is None else float(bridge)
    G, pairs = _bridge_gaps(C, Cw, G, pairs, neighbour, bridge)
    ncomp, lab = connected_components(G, directed=False)
    cw = np.bincount(lab, np.maximum(Cw, 1e-12), ncomp)
    keep_v = lab == int(np.argmax(cw))
    keep_pts = keep_v[inv]
    if ncomp > 1:
        notes.append(f"{int((~keep_pts).sum())} of {len(X)} points in {ncomp - 1} piece(s) not connected "
                     f"to the plant (no neighbour within {neighbour * f:.4g} {units}, nor a bridge within "
                     f"{bridge * f:.4g}) were dropped")
    idx_v = np.nonzero(keep_v)[0]
    remap = -np.ones(len(C), np.int64)
    remap[idx_v] = np.arange(len(idx_v))
    pairs = remap[pairs]
    h_pts = X[keep_pts] @ up
    return _Body(C=C[idx_v], Cw=Cw[idx_v], Cs=Cs[idx_v] if Cs is not None else None,
                 Co=Co[idx_v] if Co is not None else None, G=G[idx_v][:, idx_v],
                 pairs=pairs[(pairs >= 0).all(1)],
                 npts=np.bincount(remap[inv[keep_pts]], minlength=len(idx_v)),
                 kept=int(keep_pts.sum()), dropped=int((~keep_pts).sum()), stray_components=int(ncomp - 1),
                 base_h=float(h_pts.min()), top_h=float(h_pts.max()), voxel=voxel, neighbour=neighbour,
                 bridge=bridge, bin_width=bin_width, direction_reach=direction_reach)


# ---- step 2: skeleton -------------------------------------------------------------------------------

@dataclass
class _Skeleton:
    """Step 2's result, the level-set tree of K nodes over the V voxels: geodesic distance from the
    base g [V], node of each voxel node [V], parent [K] (-1 at the root), children (K lists),
    node positions npos [K, 3] (weighted medians), mean geodesic distance ng [K] and farthest
    gmax [K] of each node's voxels, members (K arrays of voxel indices), and topo [K], the nodes
    in bin order (parents before children)."""

    g: np.ndarray
    node: np.ndarray
    K: int
    parent: np.ndarray
    children: list[list[int]]
    npos: np.ndarray
    ng: np.ndarray
    gmax: np.ndarray
    members: list[np.ndarray]
    topo: np.ndarray


def _level_set_nodes(b: np.ndarray, pairs: np.ndarray, n: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The skeleton nodes: connected components of the graph edges pairs [E, 2] within one bin, of
    n voxels binned b [n]. Returns (K, node of each voxel [n], bin of each node [K])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p_in = pairs[b[pairs[:, 0]] == b[pairs[:, 1]]]
    A = coo_matrix((np.ones(len(p_in)), (p_in[:, 0], p_in[:, 1])), shape=(n, n))
    K, node = connected_components(A, directed=False)
    nb = np.zeros(K, np.int64)
    nb[node] = b
    return K, node, nb


def _parents(b: np.ndarray, node: np.ndarray, pairs: np.ndarray, K: int) -> np.ndarray:
    """Parent [K] of each skeleton node: the node of the previous bin it shares most graph edges
    (pairs [E, 2], voxels binned b [V], in nodes node [V]) with; -1 where it shares none."""
    cross = pairs[b[pairs[:, 0]] != b[pairs[:, 1]]]
    lo_end = np.where(b[cross[:, 0]] < b[cross[:, 1]], cross[:, 0], cross[:, 1])
    hi_end = np.where(b[cross[:, 0]] < b[cross[:, 1]], cross[:, 1], cross[:, 0])
    adj = b[hi_end] - b[lo_end] == 1
    ch, pa = node[hi_end[adj]], node[lo_end[adj]]
    parent = -np.ones(K, np.int64)
    if len(ch):
        key, cnt = np.unique(np.stack([ch, pa], 1), axis=0, return_counts=True)
        order = np.lexsort((-cnt, key[:, 0]))  # per child, the most shared edges first
        key = key[order]
        first = np.r_[True, key[1:, 0] != key[:-1, 0]]
        parent[key[first, 0]] = key[first, 1]
    return parent


def _skeleton(body: _Body, up: np.ndarray, notes: list[str]) -> _Skeleton:
    """Step 2: geodesic level sets from the lowest voxel along up (Dijkstra on body.G), binned by
    body.bin_width; each bin's connected components are nodes at their weighted median, each hung
    from its parent (`_parents`); a node touching no lower bin (cannot happen with bin_width >=
    neighbour; kept safe) hangs on the nearest lower node, said in `notes`."""
    from scipy.sparse.csgraph import dijkstra

    C, Cw = body.C, body.Cw
    root = int(np.argmin(C @ up))
    g = dijkstra(body.G, directed=False, indices=root)
    g = np.where(np.isfinite(g), g, 0.0)
    b = np.floor(g / body.bin_width).astype(np.int64)
    K, node, nb = _level_set_nodes(b, body.pairs, len(C))
    parent = _parents(b, node, body.pairs, K)
    root_node = int(node[root])
    parent[root_node] = -1
    orphans = np.nonzero((parent < 0) & (np.arange(K) != root_node))[0]
    if len(orphans):
        notes.append(f"{len(orphans)} skeleton node(s) touched no lower level set and were hung on the "
                     "nearest lower node")
    npos = np.zeros((K, 3))
    ng = np.bincount(node, Cw * g, K) / np.maximum(np.bincount(node, Cw, K), 1e-300)
    gmax = np.full(K, -np.inf)
    np.maximum.at(gmax, node, g)
    members = np.split(np.argsort(node, kind="stable"), np.cumsum(np.bincount(node, minlength=K))[:-1])
    for k in range(K):
        npos[k] = _wmedian_rows(C[members[k]], np.maximum(Cw[members[k]], 1e-12))
    for k in orphans:
        lower = np.nonzero(nb < nb[k])[0]
        parent[k] = lower[np.argmin(np.linalg.norm(npos[lower] - npos[k], axis=1))] if len(lower) else root_node
    children: list[list[int]] = [[] for _ in range(K)]
    for k in range(K):
        if parent[k] >= 0:
            children[parent[k]].append(k)
    return _Skeleton(g=g, node=node, K=K, parent=parent, children=children, npos=npos, ng=ng, gmax=gmax,
                     members=members, topo=np.argsort(nb, kind="stable"))


# ---- step 3: main stem ------------------------------------------------------------------------------

def _path_to(parent: np.ndarray, t: int) -> list[int]:
    """The skeleton nodes from the root to node t, by the parent [K] links."""
    p_ = [t]
    while parent[p_[-1]] >= 0:
        p_.append(int(parent[p_[-1]]))
    return p_[::-1]


def _lean_cut(npos: np.ndarray, p_: list[int], up: np.ndarray, base_h: float, top_h: float,
              win_len: float) -> int:
    """Number of nodes of path p_ (node positions npos [K, 3]) kept by the lean rule: in the upper
    half of the plant (base_h to top_h along up), the path ends where it leans more than
    MAX_LEAN_DEG from up over win_len (a main stem does not run sideways; a path drawn to a tip
    through stray Gaussians beside or above the plant does)."""
    P_ = npos[p_]
    s_ = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(P_, axis=0), axis=1))]
    h_ = P_ @ up - base_h
    for i in range(len(p_)):
        if h_[i] < 0.5 * (top_h - base_h):
            continue  # the base of a plant (a rosette, a pot) may run any way
        j = int(np.searchsorted(s_, s_[i] + win_len))
        if j >= len(p_):
            break
        d = P_[j] - P_[i]
        if np.linalg.norm(d) > 0 and d @ up < math.cos(math.radians(MAX_LEAN_DEG)) * np.linalg.norm(d):
            return i + 1
    return len(p_)


def _stem_tip(sk: _Skeleton, Cs: np.ndarray | None, rules: dict, notes: list[str]) -> tuple[list[int], int]:
    """The main stem's first choice of tip: the tip farthest from the base (geodesic), or, with
    stem-labelled weights Cs [V], the tip whose root path holds most of it (ties: the farthest).
    Writes ``rules["main_stem"]``. Returns (all tips, the chosen one)."""
    tips = [k for k in range(sk.K) if not sk.children[k]]
    far = np.array([sk.gmax[k] for k in tips])
    tip = tips[int(np.argmax(far))]
    rules["main_stem"] = "tree path from the base to the tip farthest from it along the plant (geodesic)"
    if Cs is not None:
        sw = np.bincount(sk.node, Cs, sk.K)
        total = float(sw.sum())
        if total > 0:
            cum = np.zeros(sk.K)
            for k in sk.topo:
                cum[k] = sw[k] + (cum[sk.parent[k]] if sk.parent[k] >= 0 else 0.0)
            score = np.array([cum[k] for k in tips])
            best = score.max()
            cand = [t for t, s_ in zip(tips, score) if s_ >= best - 1e-9 * max(best, 1e-300)]
            tip = max(cand, key=lambda t: sk.gmax[t])
            rules["main_stem"] = (f"tree path from the base to the tip whose path holds most stem-labelled "
                                  f"weight ({cum[tip] / total:.0%} of it)")
        else:
            notes.append("stem_mask marks no point of the plant; the main stem is the path to the farthest tip")
    return tips, tip


def _main_path(sk: _Skeleton, body: _Body, up: np.ndarray, rules: dict, notes: list[str], f: float,
               units: str) -> list[int]:
    """Step 3's choice of path: the skeleton nodes from the root to the stem's tip (`_stem_tip`),
    cut by the lean rule (`_lean_cut`, over LEAN_WINDOW of the plant's height, at least 4 bins).
    Without a stem mask, when the farthest tip's path ran sideways, the path (cut by the same
    rule) that reaches highest is taken instead (ties: the longer one; among the 200 farthest
    tips). The rule is written to `rules`, a cut to `notes`."""
    tips, tip = _stem_tip(sk, body.Cs, rules, notes)
    base_h, top_h, npos = body.base_h, body.top_h, sk.npos
    win_len = max(LEAN_WINDOW * (top_h - base_h), 4.0 * body.bin_width)
    path = _path_to(sk.parent, tip)
    keep_n = _lean_cut(npos, path, up, base_h, top_h, win_len)
    if keep_n < len(path) and body.Cs is None:
        best = (float(npos[path[keep_n - 1]] @ up), keep_n, tip)
        for t in sorted(tips, key=lambda t: -sk.gmax[t])[:200]:
            p_ = _path_to(sk.parent, t)
            n_ = _lean_cut(npos, p_, up, base_h, top_h, win_len)
            cand = (float(npos[p_[n_ - 1]] @ up), n_, t)
            if cand[:2] > best[:2]:
                best = cand
        if best[2] != tip:
            rules["main_stem"] += ("; its end ran sideways, so the path (cut by the lean rule) that reaches "
                                   "highest was taken")
            tip = best[2]
            path = _path_to(sk.parent, tip)
            keep_n = _lean_cut(npos, path, up, base_h, top_h, win_len)
    if keep_n < len(path):
        sp = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(npos[path], axis=0), axis=1))]
        notes.append(f"the main stem was cut where it leans more than {MAX_LEAN_DEG:g} degrees from up "
                     f"({(npos[path[keep_n - 1]] @ up - base_h) * f:.4g} {units} above the base): beyond, the "
                     f"path ran sideways ({(sp[-1] - sp[keep_n - 1]) * f:.4g} {units} more), through stray "
                     "Gaussians or an organ")
        path = path[:keep_n]
    return path


def _smoothed_polyline(P: np.ndarray, smooth: int, bin_width: float) -> tuple[_Polyline | None, int]:
    """Node positions P [M, 3] smoothed (Savitzky-Golay, quadratic, over `smooth` nodes, odd, at
    most M; none under 5) and resampled every 0.1 bin_width. Returns (the polyline, None when it
    has no length; the window used)."""
    from scipy.signal import savgol_filter

    win = min(smooth | 1, len(P) if len(P) % 2 else len(P) - 1)
    if win >= 5:
        P = savgol_filter(P, win, 2, axis=0, mode="interp")
    seg = np.linalg.norm(np.diff(P, axis=0), axis=1)
    s_nodes = np.r_[0.0, np.cumsum(seg)]
    if s_nodes[-1] <= 0:
        return None, win
    ss = np.linspace(0.0, s_nodes[-1], max(int(s_nodes[-1] / (0.1 * bin_width)), 2) + 1)
    return _Polyline(np.stack([np.interp(ss, s_nodes, P[:, k]) for k in range(3)], 1), 10 * bin_width), win


def _stem_polyline(sk: _Skeleton, body: _Body, path: list[int], smooth: int):
    """Step 3's polyline of the main path's nodes, re-centred: a level set where an organ leaves
    holds the organ's base too, which pulls the node sideways; the stem's own points lie within
    about its radius of the first curve, so each node is moved to the weighted median of its
    voxels within 1.5 stem radii (+ a voxel) of it and the polyline drawn again. Returns (the
    polyline, the stem radius, the smoothing window), or None when the path has no length."""
    C, Cw, members = body.C, body.Cw, sk.members
    stem, win = _smoothed_polyline(sk.npos[path], smooth, body.bin_width)
    if stem is None:
        return None
    pv = np.concatenate([members[k] for k in path])
    dist = np.linalg.norm(C[pv] - stem.points[stem.tree.query(C[pv])[1]], axis=1)
    r_stem = float(np.median(dist))
    close = np.zeros(len(C), bool)
    close[pv[dist <= 1.5 * r_stem + body.voxel]] = True
    P2 = np.array([_wmedian_rows(C[m], np.maximum(Cw[m], 1e-12)) if (m := members[k][close[members[k]]]).size
                   else sk.npos[k] for k in path])
    stem2, win = _smoothed_polyline(P2, smooth, body.bin_width)
    return (stem2 if stem2 is not None else stem), r_stem, win


def _record_stem(out: dict, stem: _Polyline, r_stem: float, win: int, n_nodes: int, up: np.ndarray,
                 body: _Body, f: float, units: str) -> None:
    """Writes the main stem (polyline, base, apex, length, apex height, radius, smoothing rule)
    into the result `out`, with a note when the plant's points reach well above its apex."""
    out["method_rules"]["smoothing"] = (f"Savitzky-Golay (scipy, quadratic) over {win} skeleton nodes"
                                        if win >= 5 else "none (main path of under 5 nodes)")
    out["plant"]["stem_length"] = stem.length * f
    apex_h = float(stem.points[-1] @ up)
    base_h, top_h = body.base_h, body.top_h
    out["plant"]["apex_height"] = (apex_h - base_h) * f
    if top_h - apex_h > 0.05 * (top_h - base_h):
        out["notes"].append(f"the plant's points reach {(top_h - apex_h) * f:.4g} {units} above the main "
                            "stem's apex (organs above it, or stray Gaussians joined to the plant): plant_height "
                            "is the top of the points, apex_height the top of the main stem")
    out["parameters"]["stem_radius"] = r_stem * f
    out["stem"] = {"polyline_model": stem.points[:: max(1, len(stem.points) // 300)].tolist()
                   + [stem.points[-1].tolist()],
                   "base_model": stem.points[0].tolist(), "apex_model": stem.points[-1].tolist(),
                   "skeleton_nodes": n_nodes}


def _min_organ_length(given: float | None, bin_width: float, stem: _Polyline) -> tuple[float, str]:
    """(the shortest organ, model units; its rule): `given`, else the larger of 4 bins and 1 % of
    the main stem's length."""
    if given is None:
        rule = "the larger of 4 bins and 1 % of the main stem's length (default)"
        return max(4.0 * bin_width, 0.01 * stem.length), rule
    return float(given), "given"


# ---- step 4: lateral organs -------------------------------------------------------------------------

def _subtree(children: list[list[int]], k0: int) -> list[int]:
    """Node k0 and every node below it (children: K lists of child nodes)."""
    todo, got = [k0], []
    while todo:
        k = todo.pop()
        got.append(k)
        todo.extend(children[k])
    return got


def _organ_candidates(sk: _Skeleton, body: _Body, stem: _Polyline, path: list[int], r_stem: float,
                      min_organ_length: float) -> tuple[list[dict], int, int]:
    """Every subtree leaving the main path at a node j: a twig when shorter than min_organ_length
    (geodesic, beyond j) or reaching under half that beyond the stem's surface (radius r_stem);
    not an organ when under ORGAN_SHARE of its weight is of the organ classes (body.Co). Returns
    (candidates {junction j, vox [n] its voxels, near [m] those within direction_reach (or half
    its length) of its start, length, reach}, twigs dropped, side branches not organs)."""
    C, Cw, Co, g = body.C, body.Cw, body.Co, sk.g
    on_path = np.zeros(sk.K, bool)
    on_path[path] = True
    cands, twigs, not_organs = [], 0, 0
    for j in path:
        for c in sk.children[j]:
            if on_path[c]:
                continue
            sub = _subtree(sk.children, c)
            length = float(max(sk.gmax[k] for k in sub) - sk.ng[j])
            vox = np.concatenate([sk.members[k] for k in sub])
            gap = np.linalg.norm(C[vox] - stem.points[stem.tree.query(C[vox])[1]], axis=1)
            reach = float(gap.max()) - r_stem
            if length < min_organ_length or reach < 0.5 * min_organ_length:
                twigs += 1
                continue
            if Co is not None and Co[vox].sum() < ORGAN_SHARE * max(Cw[vox].sum(), 1e-12):
                not_organs += 1  # hardly any point of an organ class (e.g. a rosette leaf)
                continue
            g0 = float(g[vox].min())
            near = vox[g[vox] <= g0 + max(body.direction_reach, 0.5 * length)]
            if len(near) < 2:
                near = vox
            cands.append({"junction": j, "vox": vox, "near": near, "length": length, "reach": reach})
    return cands, twigs, not_organs


def _locate(o: dict, C: np.ndarray, Cw: np.ndarray, npos: np.ndarray, stem: _Polyline,
            bin_width: float) -> tuple[float, np.ndarray, np.ndarray | None]:
    """An organ's (candidate o, its first voxels o["near"] of the centroids C [V, 3], weights Cw
    [V]; node positions npos [K, 3]) insertion arc length, insertion point [3] and unit direction
    [3] perpendicular to the stem (None when it runs along the stem). Insertion: the stem point
    closest to the principal axis of its first points, from 4 bins below to 1 bin above the
    junction, when that axis is clear and not along the stem; else the nearest stem point of their
    centroid."""
    Cn, wn = C[o["near"]], np.maximum(Cw[o["near"]], 1e-12)
    cen = (Cn * wn[:, None]).sum(0) / wn.sum()
    s_j = float(stem.project(npos[o["junction"]][None])[0])
    s_ins = float(stem.project(cen[None])[0])
    if len(Cn) >= 3:
        _, sv, vt = np.linalg.svd((Cn - cen) * np.sqrt(wn)[:, None], full_matrices=False)
        axis = vt[0]
        _, t_j = stem.at(s_j)
        if sv[0] > 1.5 * sv[1] and abs(axis @ t_j) < math.cos(math.radians(15)):
            # the stem point closest to the organ's line, within a few bins of the junction
            m = (stem.s >= s_j - 4 * bin_width) & (stem.s <= s_j + bin_width)
            q = stem.points[m] - cen
            dist = np.linalg.norm(q - (q @ axis)[:, None] * axis, axis=1)
            s_ins = float(stem.s[m][np.argmin(dist)])
    p, t = stem.at(s_ins)
    d = cen - p
    d -= (d @ t) * t
    nd = float(np.linalg.norm(d))
    return s_ins, p, (d / nd if nd > 1e-12 else None)


def _merge_organs(cands: list[dict], merge_angle_deg: float, locate) -> tuple[list[dict], int]:
    """Candidates (located: "s", "p", "dir") leaving at one skeleton node within merge_angle_deg of
    each other are one organ split by noise: merged (voxels joined, longest length) and located
    again by `locate` (candidate -> (s, p, dir)). Returns (the organs, how many were merged)."""
    merged = 0
    organs: list[dict] = []
    for o in sorted(cands, key=lambda o: (o["junction"], o["s"])):
        prev = next((q for q in organs if q["junction"] == o["junction"] and q["dir"] is not None
                     and o["dir"] is not None
                     and q["dir"] @ o["dir"] > math.cos(math.radians(merge_angle_deg))), None)
        if prev is None:
            organs.append(o)
            continue
        merged += 1
        prev["vox"] = np.concatenate([prev["vox"], o["vox"]])
        prev["near"] = np.concatenate([prev["near"], o["near"]])
        prev["length"] = max(prev["length"], o["length"])
        prev["s"], prev["p"], prev["dir"] = locate(prev)
    return organs, merged


def _lateral_organs(sk: _Skeleton, body: _Body, stem: _Polyline, path: list[int], r_stem: float,
                    min_organ_length: float, mol_rule: str, merge_angle_deg: float, rules: dict,
                    notes: list[str], f: float, units: str) -> list[dict]:
    """Step 4: the organs leaving the main path (`_organ_candidates`), located (`_locate`) and
    merged (`_merge_organs`), sorted by insertion arc length; each a dict with junction, vox, near,
    length, reach, s (insertion arc length), p [3] (insertion point), dir [3] or None. What was
    dropped, merged or has no direction is said in `rules` and `notes`."""
    cands, twigs, not_organs = _organ_candidates(sk, body, stem, path, r_stem, min_organ_length)
    if not_organs:
        notes.append(f"{not_organs} side branch(es) with under {ORGAN_SHARE:.0%} of their weight in the organ "
                     "classes (e.g. leaves) were not counted as organs")
    if twigs:
        notes.append(f"{twigs} side branch(es) shorter than {min_organ_length * f:.4g} {units} ({mol_rule}), "
                     "or reaching under half that beyond the stem's surface, were taken for noise, not organs")

    def locate(o):
        return _locate(o, body.C, body.Cw, sk.npos, stem, body.bin_width)

    for o in cands:
        o["s"], o["p"], o["dir"] = locate(o)
    organs, merged = _merge_organs(cands, merge_angle_deg, locate)
    rules["organ_merge"] = (f"subtrees leaving the main stem at the same skeleton node within {merge_angle_deg:g} "
                            f"degrees of each other are one organ ({merged} merged); organs at different nodes "
                            "stay apart however close")
    organs.sort(key=lambda o: o["s"])
    no_dir = sum(o["dir"] is None for o in organs)
    if no_dir:
        notes.append(f"{no_dir} organ(s) run along the stem: no direction around it, so the angles next to "
                     "them are not given (NaN -> null)")
    return organs


# ---- step 5: the sequence ---------------------------------------------------------------------------

def _sequence(organs: list[dict], stem: _Polyline, up: np.ndarray, body: _Body,
              f: float) -> tuple[list[dict], list[float], list[float | None]]:
    """Step 5: the organs (sorted, from `_lateral_organs`) as result rows (azimuth counter-clockwise
    from the first organ with a direction), internodes [O - 1] (differences of insertion arc
    lengths) and divergence angles [O - 1] (around the stem tangent at the mid-point, in [0, 360);
    None where an organ has no direction)."""
    ref = next((o["dir"] for o in organs if o["dir"] is not None), None)
    rows = []
    for i, o in enumerate(organs):
        az = None
        if ref is not None and o["dir"] is not None:
            _, t = stem.at(o["s"])
            az = signed_angle_deg(ref, o["dir"], t)
        rows.append({"index": i + 1, "insertion_stem_position": o["s"] * f,
                     "insertion_height": (float(o["p"] @ up) - body.base_h) * f,
                     "insertion_model": o["p"].tolist(),
                     "direction_model": o["dir"].tolist() if o["dir"] is not None else None,
                     "azimuth_deg": az, "length": o["length"] * f,
                     "points": int(body.npts[o["vox"]].sum())})
    internodes, angles = [], []
    for a, c in zip(organs[:-1], organs[1:]):
        internodes.append((c["s"] - a["s"]) * f)
        if a["dir"] is None or c["dir"] is None:
            angles.append(None)
            continue
        _, t = stem.at(0.5 * (a["s"] + c["s"]))
        ang = signed_angle_deg(a["dir"], c["dir"], t)
        angles.append(None if not math.isfinite(ang) else ang)
    return rows, internodes, angles


def _finish(out: dict) -> dict:
    """Round floats for JSON; NaN and inf become None."""
    def r(x):
        if isinstance(x, dict):
            return {k: r(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [r(v) for v in x]
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            x = float(x)
            return round(x, 7) if math.isfinite(x) else None
        return x
    return r(out)
