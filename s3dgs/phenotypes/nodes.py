"""Steps 4 and 5: the nodes (confident N Gaussians on the main stem, clustered by average linkage
cut at the node separation, ordered by arc length from the base) and the internodes between
consecutive nodes (arc length, chord, and the stem diameter over the middle half)."""

from __future__ import annotations

import numpy as np

from s3dgs.phenotypes.clusters import _average_linkage
from s3dgs.phenotypes.common import PlantGaussians, _r
from s3dgs.phenotypes.diameter import silhouette_diameter
from s3dgs.phenotypes.stem import MainStem

NODE_SEPARATION_M = 0.025
"""Default node clustering cut with a metric scale: tomato internodes are 3-12 cm long and the
labelled region around a node 1-2 cm."""


def node_separation_rule(node_separation: float | None, peduncle_link: float | None,
                         metres_per_unit: float | None, f: float, st: MainStem,
                         method: dict) -> tuple[float | None, float | None]:
    """The node clustering cut (model units): as given, else NODE_SEPARATION_M with a metric scale,
    else 3 median stem diameters, else 2 stem tube radii, else None (no scale, no stem); and the
    peduncles' link (default 0.4 x the cut). Records both and the rule in `method`. Returns
    (node_separation, peduncle_link)."""
    if node_separation is None:
        if metres_per_unit is not None:
            node_separation = NODE_SEPARATION_M / f
            ns_rule = f"{NODE_SEPARATION_M} m (default)"
        elif st.diam_med:
            node_separation = 3.0 * st.diam_med
            ns_rule = "3 median stem diameters (default without a metric scale)"
        elif st.cl is not None:
            node_separation = 2.0 * max(st.tube, 3.0 * st.size)
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
    return node_separation, peduncle_link


def find_nodes(g: PlantGaussians, st: MainStem, up: np.ndarray, node_separation: float | None, *,
               min_node_gaussians: int, min_cluster_weight: float, f: float, notes: list,
               method: dict) -> list[dict]:
    """Step 4: the nodes, ordered from the base. Each a dict (index, position_model, height,
    stem_position, confidence, gaussians, weight, peduncles = 0, and ``_s``: its arc length in
    model units, for the later steps, or None without a stem). Empty, with a note, when there is no
    confident N Gaussian on the stem or no scale for the clustering."""
    mN, wN = g.m["N"], g.w["N"]
    X, pr, op, classes = g.X, g.probs, g.opac, g.classes
    cl = st.cl
    nodes: list[dict] = []
    if not mN.any():
        notes.append(f"nodes not measured: no confident N Gaussians ({g.rule}); node count, internode "
                     "lengths, per-internode diameters and peduncle attachment are not given")
        return nodes
    if node_separation is None:
        notes.append("nodes not measured: without a main stem there is no scale for the node clustering "
                     "(pass node_separation) and no order along the stem")
        return nodes
    cand = mN.copy()
    if cl is not None:
        far = cand & (st.d_all > max(0.5 * node_separation, st.tube))
        if far.any():
            notes.append(f"{int(far.sum())} confident N Gaussians lie off the main stem (beyond "
                         "half a node separation from the centreline) and were left out")
        cand &= ~far
    idx = np.nonzero(cand)[0]
    if len(idx) == 0:
        notes.append("nodes not measured: no confident N Gaussian lies on the main stem")
        return nodes
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
    if cl is not None:
        kept = _merge_along_stem(g, st, kept, node_separation, method)
    for i, c in enumerate(kept):
        nodes.append({
            "index": i + 1, "position_model": c["position"].tolist(),
            "height": (float(c["position"] @ up) - st.base_h) * f if st.base_h is not None else None,
            "stem_position": c["s"] * f if c["s"] is not None else None,
            "confidence": c["confidence"], "gaussians": int(len(c["members"])),
            "weight": c["weight"], "peduncles": 0, "_s": c["s"]})
    return nodes


def _merge_along_stem(g: PlantGaussians, st: MainStem, kept: list[dict], node_separation: float,
                      method: dict) -> list[dict]:
    """Clusters on either side of the stem at one node are one node: a cluster closer than
    node_separation along the stem to the previous one (kept ordered by arc length) joins it."""
    X, wN, pr, op = g.X, g.w["N"], g.probs, g.opac
    merged_n: list[dict] = []
    for c in kept:
        if merged_n and c["s"] - merged_n[-1]["s"] < node_separation:
            m0 = merged_n[-1]
            mem = np.concatenate([m0["members"], c["members"]])
            wt = wN[mem]
            pos = (X[mem] * wt[:, None]).sum(0) / wt.sum()
            merged_n[-1] = {"members": mem, "weight": float(wt.sum()), "position": pos,
                            "confidence": float((pr[mem, g.classes.index("N")] * op[mem]).sum()
                                                / op[mem].sum()),
                            "s": float(st.cl.project(pos[None])[0][0])}
        else:
            merged_n.append(c)
    if len(merged_n) < len(kept):
        method["node_merge"] = (f"{len(kept) - len(merged_n)} N cluster(s) closer than "
                                "node_separation along the stem to the previous one were "
                                "merged into it")
    return merged_n


def measure_internodes(g: PlantGaussians, st: MainStem, nodes: list[dict], *, f: float, n_views: int,
                       notes: list) -> list[dict]:
    """Step 5 (and 6 per internode): one row per pair of consecutive nodes: arc length along the
    centreline (None without a stem), the chord, and the stem diameter of the silhouette of the
    opaque U and D Gaussians over the middle half of the internode."""
    X, op, cl = g.X, g.opac, st.cl
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
            m = st.sil_m & (st.d_all < st.reach) & (np.abs(st.s_all - smid) < 0.375 * L)
            if m.sum() >= 2:
                d, dinfo = silhouette_diameter(X[m], g.covs(m), op[m], c0, t0, 0.25 * L, st.reach,
                                               n_views=n_views, eps=st.eps)
                row["stem_diameter"] = d * f if d is not None else None
                row["diameter_coverage"] = dinfo["coverage"]
            if row["stem_diameter"] is None:
                notes.append(f"stem diameter of internode {a['index']}-{b['index']} not measured: its "
                             "middle half draws no continuous silhouette from U and D Gaussians")
        internodes.append(row)
    if cl is None and len(nodes) > 1:
        notes.append("internode lengths along the stem not measured (no main stem); straight_length "
                     "is the straight line between the nodes")
    return internodes
