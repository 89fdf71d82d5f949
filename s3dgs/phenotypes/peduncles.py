"""Step 7, the peduncles: confident P Gaussians linked into branches (single linkage at
``peduncle_link``), each attached to the node it leaves the stem at; pieces of one branch count
once."""

from __future__ import annotations

import math

import numpy as np

from s3dgs.phenotypes.clusters import _components
from s3dgs.phenotypes.common import PlantGaussians
from s3dgs.phenotypes.stem import MainStem


def attach_peduncles(g: PlantGaussians, st: MainStem, nodes: list[dict], node_separation: float | None,
                     peduncle_link: float | None, *, min_node_gaussians: int, min_cluster_weight: float,
                     f: float, notes: list, method: dict) -> tuple[list[dict], int | None]:
    """Step 7: the peduncles, each attached to a node (whose ``peduncles`` count it raises).

    A branch (connected P Gaussians) whose nearest Gaussian is within reach of the stem and within
    node_separation of a node along it belongs to that node; a second piece leaving the stem at
    the same node within 45 degrees of an attached branch is that branch, and a piece away from the
    stem within node_separation of an attached branch continues it. Returns (the peduncles ordered
    by node and position along the stem, their count: None when not measured or without nodes)."""
    X, pr, op, cl = g.X, g.probs, g.opac, st.cl
    mP, wP = g.m["P"], g.w["P"]
    peds: list[dict] = []
    if not mP.any():
        notes.append(f"peduncles not measured: no confident P Gaussians ({g.rule})")
        return peds, None
    if cl is None or peduncle_link is None:
        notes.append("peduncles not attached: there is no main stem to attach them to")
        return peds, None
    s_all, d_all = st.s_all, st.d_all
    idx = np.nonzero(mP)[0]
    lab = _components(X[idx], peduncle_link)
    groups = [idx[lab == k] for k in np.unique(lab)]
    gw = [float(wP[g_].sum()) for g_ in groups]
    wmax = max(gw)
    unattached = small = merged = 0
    attach_reach = max(0.5 * node_separation, st.tube)
    branches: dict[int, list[dict]] = {}
    loose = []
    for grp, wt in zip(groups, gw):
        if len(grp) < min_node_gaussians or wt < min_cluster_weight * wmax:
            small += 1
            continue
        j = grp[np.argmin(d_all[grp])]
        s_a, d_a = s_all[j], d_all[j]
        k = int(np.argmin([abs(n["_s"] - s_a) for n in nodes])) if nodes else -1
        if k < 0 or d_a > attach_reach or abs(nodes[k]["_s"] - s_a) > node_separation:
            loose.append(grp)
            continue
        c0, t0 = cl.at(s_a)
        cen = (X[grp] * wP[grp, None]).sum(0) / wP[grp].sum() - c0
        cen -= (cen @ t0) * t0
        dirn = cen / max(np.linalg.norm(cen), 1e-15)
        # pieces of one branch (broken by a gap in its P Gaussians) leave the stem the same way
        for br in branches.setdefault(k, []):
            if br["dir"] @ dirn > math.cos(math.radians(45)):
                br["members"] = np.concatenate([br["members"], grp])
                if d_a < br["d"]:
                    br.update(j=j, d=d_a, s=s_a)
                merged += 1
                break
        else:
            branches[k].append({"members": grp, "j": j, "d": d_a, "s": s_a, "dir": dirn})
    # a piece away from the stem continues the nearest attached branch when it is within a node
    # separation of it (a gap in the branch's P Gaussians); otherwise it attaches nowhere
    from scipy.spatial import cKDTree

    attached = [br for brs in branches.values() for br in brs]
    trees = [cKDTree(X[br["members"]]) for br in attached]
    for grp in loose:
        dist = [float(t.query(X[grp])[0].min()) for t in trees]
        if dist and min(dist) <= node_separation:
            br = attached[int(np.argmin(dist))]
            br["members"] = np.concatenate([br["members"], grp])
            merged += 1
        else:
            unattached += 1
    for k, brs in sorted(branches.items()):
        for br in brs:
            grp, j = br["members"], br["j"]
            nodes[k]["peduncles"] += 1
            peds.append({"node": nodes[k]["index"], "attach_model": X[j].tolist(),
                         "stem_position": br["s"] * f,
                         "reach": float(np.linalg.norm(X[grp] - X[j], axis=1).max()) * f,
                         "gaussians": int(len(grp)), "weight": float(wP[grp].sum()),
                         "confidence": float((pr[grp, g.classes.index("P")] * op[grp]).sum()
                                             / op[grp].sum())})
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
    if not nodes:
        notes.append("peduncle count not given: P branches attach to nodes, and no node was found")
    return peds, (len(peds) if nodes else None)
