"""Step 3 and the plant figures: the main stem of a plant's Gaussians (`measure_main_stem`): its
centreline fitted to the U, N and D Gaussians, its median diameter along the labelled stretch,
the ground plane as its floor, its extension past the labels and up to the top of the stem-class
Gaussians, and the base the heights are measured from. The curve itself is `centreline.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s3dgs.errors import UsageError
from s3dgs.phenotypes.centreline import Centreline, _continue_to_stem_top, _extend, fit_centreline
from s3dgs.phenotypes.common import PlantGaussians, _unit
from s3dgs.phenotypes.diameter import EPS2D, silhouette_diameter


@dataclass
class MainStem:
    """The main stem as the later steps (nodes, internodes, peduncles) use it.

    `cl` is None when no stem was fitted; then only `sil_m` is set. Lengths in model units:
    `tube` (3 median residuals of the fit: where stem Gaussians lie), `reach` (the silhouette's
    scanline half-width), `step` (the curve's length over its height bins), `size` (the median
    largest scale of the stem's inliers), `eps` (the rasteriser's low-pass in model units^2).
    `s_all`, `d_all` [N]: arc length of each Gaussian's nearest centreline point and its distance
    to it. `base_h`: the height (along up) the plant's heights are measured from."""

    sil_m: np.ndarray
    cl: Centreline | None = None
    info: dict | None = None
    diam_med: float | None = None
    base_h: float | None = None
    tube: float = 0.0
    reach: float = 0.0
    step: float = 0.0
    size: float = 0.0
    eps: float = 0.0
    s_all: np.ndarray | None = None
    d_all: np.ndarray | None = None
    record: dict | None = None
    """``phenotypes.json``'s ``stem`` (None without a stem)."""


def check_base_rule(base_rule: str) -> None:
    """The base rule is one of auto, ground, stem (UsageError naming --base)."""
    if base_rule not in ("auto", "ground", "stem"):
        raise UsageError(f"--base {base_rule!r}: choose auto, ground or stem")


def measure_main_stem(g: PlantGaussians, up: np.ndarray, *, f: float, units: str, notes: list, method: dict,
                      pixel_size: float | None, ground, base_rule: str, extend_stem: bool, n_views: int,
                      silhouette_opacity: float) -> MainStem:
    """Step 3: the main stem of the Gaussians g, up [3] unit. Appends to `notes` and `method` (see
    `measure_plant` for the options). Returns the `MainStem` (its `cl` None, with a note, when the
    model has no confident U or D Gaussians or they make no curve)."""
    mU, mD, mN = g.m["U"], g.m["D"], g.m["N"]
    stem_m = mU | mD | mN
    w_stem = np.maximum.reduce([g.w["U"] * mU, g.w["D"] * mD, g.w["N"] * mN])
    cl, info = (None, {"reason": f"no confident U or D Gaussians ({g.rule})"}) \
        if not (mU | mD).any() else fit_centreline(g.X[stem_m], w_stem[stem_m], up)
    st = MainStem(sil_m=(mU | mD) & (g.opac > silhouette_opacity), info=info)
    if cl is None:
        notes.append(f"main stem not measured: {info['reason']}; plant height, stem length, internode "
                     "lengths along the stem and stem diameters are not given")
        return st
    st.eps = EPS2D * pixel_size ** 2 if pixel_size else 0.0
    # the tube of the fit (3 median residuals: where stem Gaussians lie), and the scanline's
    # reach for the silhouette, which must also hold Gaussians on the axis (residual about 0)
    # out to several of their sizes
    st.size = float(np.median(g.scales[stem_m][info["inlier_mask"]].max(1)))
    st.tube = 3.0 * info["residual_median"]
    st.reach = 12.0 * max(info["residual_median"], st.size)
    st.step = cl.length / max(info["bins"], 1)
    st.diam_med = _labelled_stem_diameter(g, cl, st, n_views, notes)

    ext_lo = ext_hi = 0.0
    floor = _ground_floor(cl, ground, up, notes, method)
    if extend_stem:
        cl, ext_lo, ext_hi = _extend_past_labels(g, cl, st, up, floor, f, units, method)
    cl, ext_top = _continue_to_top(g, cl, st, up, f, units, notes, method)
    ext_hi += ext_top
    base, apex = cl.points[0], cl.points[-1]
    low_h = float(base @ up)
    st.base_h = _base_height(low_h, floor, base_rule, f, units, notes, method)
    st.cl = cl
    st.record = {
        "base_model": base.tolist(), "apex_model": apex.tolist(), "base_height_model": st.base_h,
        "lowest_point_above_base": (low_h - st.base_h) * f,
        "centreline_model": cl.points[:: max(1, len(cl.points) // 200)].tolist() + [apex.tolist()],
        "gaussians": info["gaussians"], "inliers": info["inliers"], "outliers": info["outliers"],
        "tube_radius": st.tube * f,
        "extended": {"base": ext_lo * f, "apex": ext_hi * f,
                     "labelled_stretch": [cl.labelled[0] * f, cl.labelled[1] * f]},
    }
    if info["dropped_beyond_gap"]:
        notes.append(f"{info['dropped_beyond_gap']} stem Gaussians beyond a gap of over a third of "
                     "the stem were left out of the main stem")
    st.s_all, st.d_all = cl.project(g.X)
    return st


def _labelled_stem_diameter(g: PlantGaussians, cl: Centreline, st: MainStem, n_views: int,
                            notes: list) -> float | None:
    """Stem diameter along the labelled stem (step 6), the median over ten stations of the
    silhouette of the opaque U and D Gaussians: the plant figure, and the width of the tube the
    extension follows. None, with a note, when no station draws a silhouette."""
    s_all, d_all = cl.project(g.X)
    sel = st.sil_m & (d_all < st.reach)
    ws = []
    for s0 in np.linspace(0.0, cl.length, 12)[1:-1]:
        m = sel & (np.abs(s_all - s0) < st.step)
        if m.sum() < 2:
            continue
        c0, t0 = cl.at(s0)
        d, _ = silhouette_diameter(g.X[m], g.covs(m), g.opac[m], c0, t0, 0.5 * st.step, st.reach,
                                   n_views=n_views, n_rows=3, eps=st.eps)
        if d is not None:
            ws.append(d)
    if ws:
        return float(np.median(ws))
    notes.append("stem diameter not measured: the U and D Gaussians draw no continuous "
                 "silhouette (accumulated alpha >= 0.5) across the stem")
    return None


def _ground_floor(cl: Centreline, ground, up: np.ndarray, notes: list, method: dict) -> float | None:
    """The height (along up) of the ground plane (normal [3], offset d) under the stem's base, the
    floor the stem is not followed below; None without a ground plane or with one over 15 degrees
    from up (a note says so)."""
    if ground is None:
        return None
    n_g, d_g = _unit(ground[0]), float(ground[1])
    if abs(n_g @ up) > math.cos(math.radians(15)):
        b = cl.points[0]
        method["ground"] = "the stem's base is not followed below the fitted ground plane"
        return float((b + (d_g - n_g @ b) / (n_g @ up) * up) @ up)
    notes.append("the fitted ground plane is over 15 degrees from up; not used as the floor")
    return None


def _extend_past_labels(g: PlantGaussians, cl: Centreline, st: MainStem, up: np.ndarray, floor: float | None,
                        f: float, units: str, method: dict) -> tuple[Centreline, float, float]:
    """Follow the stem past its labelled ends through opaque Gaussians, not P, in a tube of 1.5
    median stem diameters (else the fit's tube) along the end tangents (`_extend`), not below the
    floor. Returns (curve, added at the base, added at the apex)."""
    cand = (g.opac > g.min_opacity) & ~g.m["P"]
    radius = 1.5 * st.diam_med if st.diam_med else st.tube
    cl, ext_lo, ext_hi = _extend(cl, g.X[cand], up, radius=radius, step=st.step,
                                 max_len=0.5 * cl.length, floor=floor)
    method["stem_extension"] = (
        f"past the labelled ends, followed through Gaussians of opacity > {g.min_opacity}, not P, within "
        f"{radius * f:.4g} {units} (1.5 median stem diameters) of the end tangent, one bin "
        "per step, until a step finds fewer than 2" + (", not below the ground" if floor is not None
                                                        else ""))
    return cl, ext_lo, ext_hi


def _continue_to_top(g: PlantGaussians, cl: Centreline, st: MainStem, up: np.ndarray, f: float, units: str,
                     notes: list, method: dict) -> tuple[Centreline, float]:
    """Carry the centreline on through the opaque stem-class Gaussians connected above its top
    (`_continue_to_stem_top`); a note when stem-class Gaussians beyond a gap go on higher.
    Returns (curve, length added at the apex)."""
    cl, above = _continue_to_stem_top(cl, g.X, (g.m["U"] | g.m["D"]) & (g.opac > g.min_opacity), up,
                                      link=max(2.0 * st.tube, 2.0 * (st.diam_med or 0.0), 0.5 * st.step),
                                      step=st.step)
    if above["extended"] > 0:
        method["stem_top"] = (f"stem-class Gaussians connected to the centreline's top (links of "
                              f"{above['link'] * f:.4g} {units}) went on above it: the centreline follows "
                              "them (weighted medians in height bins)")
        notes.append(f"the fitted centreline stopped {above['extended_height'] * f:.4g} {units} below the "
                     "top of the stem-class Gaussians connected to it; it was extended along them")
    if above["short_by"] > 0:
        notes.append(f"the main stem may be cut short: stem-class Gaussians go on {above['short_by'] * f:.4g} "
                     f"{units} above its top (in the tube around its upward continuation) beyond a gap the "
                     "centreline does not cross; plant height and stem length may be too small by up to that")
    return cl, above["extended"]


def _base_height(low_h: float, floor: float | None, base_rule: str, f: float, units: str, notes: list,
                 method: dict) -> float:
    """The height the plant's heights are measured from: the ground plane under the stem (rule
    auto or ground, when there is one below the stem's lowest point low_h), else low_h."""
    if base_rule in ("auto", "ground") and floor is not None and floor <= low_h:
        method["base"] = (f"the ground plane under the stem; the stem's lowest reconstructed point is "
                          f"{(low_h - floor) * f:.4g} {units} above it")
        return floor
    method["base"] = "the stem's lowest reconstructed point"
    if base_rule == "ground":
        notes.append("--base ground: no ground plane under the stem was found; the base is the "
                     "stem's lowest reconstructed point")
    return low_h
