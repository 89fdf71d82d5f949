"""`measure_plant`: the phenotypes of one plant from its Gaussians as arrays, step by step (the steps
are described in `s3dgs.phenotypes`; each lives in its own module):

    g = PlantGaussians(...)              # 2. classes (common.py)
    st = measure_main_stem(g, up, ...)   # 3. main stem, its diameter, base and apex (stem.py)
    nodes = find_nodes(g, st, ...)       # 4. nodes (nodes.py)
    measure_internodes(g, st, nodes)     # 5.-6. internodes and their diameters (nodes.py)
    attach_peduncles(g, st, nodes, ...)  # 7. peduncles (peduncles.py)

The frame (up, scale, ground: step 1) comes from the caller (`run_phenotype` finds it for a run
folder)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from s3dgs.classes import CLASSES
from s3dgs.errors import S3dgsError
from s3dgs.phenotypes.common import PlantGaussians, _r_tree, _unit
from s3dgs.phenotypes.nodes import find_nodes, measure_internodes, node_separation_rule
from s3dgs.phenotypes.peduncles import attach_peduncles
from s3dgs.phenotypes.stem import check_base_rule, measure_main_stem


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
    """Phenotypic traits of one plant from its Gaussians (see `s3dgs.phenotypes` for each step).

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
    pr = np.asarray(probs, np.float64).reshape(N, -1)
    classes = tuple(classes)
    if pr.shape[1] != len(classes):
        raise S3dgsError(f"probs has {pr.shape[1]} columns but {len(classes)} classes were named")
    sc = np.asarray(scales, np.float64).reshape(N, 3)
    qt = np.asarray(quats, np.float64).reshape(N, 4)
    op = np.asarray(opacities, np.float64).reshape(N)
    g = PlantGaussians(X, sc, qt, op, pr, classes, class_threshold, min_opacity)
    up = _unit(up)
    check_base_rule(base_rule)
    from s3dgs.organs import length_units

    f, units = length_units(metres_per_unit)
    notes: list[str] = []
    counts = _class_counts(g, notes)
    method = _method_rules(g.rule, silhouette_opacity, n_views, pixel_size)
    out: dict = {"units": units, "metres_per_unit": metres_per_unit, "up": up.tolist(), "counts": counts,
                 "plant": {"plant_height": None, "stem_length": None, "node_count": None,
                           "peduncle_count": None, "stem_diameter_median": None},
                 "nodes": [], "internodes": [], "peduncles": [], "stem": None, "notes": notes,
                 "method": method}

    st = measure_main_stem(g, up, f=f, units=units, notes=notes, method=method, pixel_size=pixel_size,
                           ground=ground, base_rule=base_rule, extend_stem=extend_stem, n_views=n_views,
                           silhouette_opacity=silhouette_opacity)
    if st.diam_med is not None:
        out["plant"]["stem_diameter_median"] = st.diam_med * f
    if st.cl is not None:
        out["plant"]["plant_height"] = (float(st.cl.points[-1] @ up) - st.base_h) * f
        out["plant"]["stem_length"] = st.cl.length * f
        out["stem"] = st.record

    node_separation, peduncle_link = node_separation_rule(node_separation, peduncle_link, metres_per_unit, f,
                                                          st, method)
    nodes = find_nodes(g, st, up, node_separation, min_node_gaussians=min_node_gaussians,
                       min_cluster_weight=min_cluster_weight, f=f, notes=notes, method=method)
    out["plant"]["node_count"] = len(nodes) if nodes else None
    out["internodes"] = measure_internodes(g, st, nodes, f=f, n_views=n_views, notes=notes)
    out["peduncles"], out["plant"]["peduncle_count"] = attach_peduncles(
        g, st, nodes, node_separation, peduncle_link, min_node_gaussians=min_node_gaussians,
        min_cluster_weight=min_cluster_weight, f=f, notes=notes, method=method)
    for n in nodes:
        n.pop("_s")
    out["nodes"] = nodes
    return _r_tree(out)


def _class_counts(g: PlantGaussians, notes: list) -> dict:
    """Step 2: the number of Gaussians of each stem class U, N, D, P (`PlantGaussians`' rule); a note
    for each class the model does not have."""
    counts = {c: int(g.m[c].sum()) for c in ("U", "N", "D", "P")}
    for c in ("U", "N", "D", "P"):
        if c not in g.classes:
            notes.append(f"the model has no class {c} (its classes: {', '.join(g.classes) or 'none'})")
    return counts


def _method_rules(rule: str, silhouette_opacity: float, n_views: int, pixel_size: float | None) -> dict:
    """``phenotypes.json``'s ``method`` as it starts: the rule of each step (the steps add their
    thresholds and what they did)."""
    return {
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
