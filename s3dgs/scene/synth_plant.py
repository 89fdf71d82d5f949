"""The procedural tomato plant of the synthetic scene, as analytic primitives.

World frame: metres, z up, the plant's base at the origin on the ground plane z = 0.
Every surface is one of:

- capsules (segment a-b, radius r): the main stem, petioles/rachises, peduncles and pedicels;
- spheres: node swellings (class N) and fruits;
- triangle meshes: leaflets (curved, pointed blades);
- the ground disk z = 0 (radius R) and the backdrop, the inside wall of the vertical cylinder of
  radius R around the z axis from z = 0 upwards (unbounded). Cameras stand inside it, so every
  camera ray hits some surface: no pixel is sky.

Labels (the class ids of gt/masks): 0 background (ground and backdrop), 1 U (main stem above a node),
2 N (node), 3 D (main stem below a node), 4 P (the fruit truss's stalks: peduncles and pedicels),
5 leaf (blades, petiolules, and the petiole/rachis that carries them), 6 fruit. P is the class
table's "peduncle": a petiole is a leaf stalk, not a peduncle (earlier versions labelled petioles P
and put the P keypoint on the petiole, so no peduncle ever got a P heatmap). The main stem between nodes k and k+1 is U of node k up to the midpoint, D of node
k+1 above it; below the first node it is D of node 0, above the last node U of the last node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from s3dgs.classes import GT_LABEL_NAMES

LABELS = GT_LABEL_NAMES  # ground-truth mask ids: the one class table, s3dgs/classes.py
LABEL_OF = {v: k for k, v in LABELS.items()}


@dataclass
class PlantParams:
    height: float = 0.5
    """Main stem height (m)."""
    stem_radius: float = 0.004
    """Main stem radius at the base (m); it tapers to 55 % at the top."""
    branch_radius: float = 0.0016
    """Petiole / peduncle radius at the node (m); tapers to 60 % at the tip."""
    n_nodes: int = 6
    """Number of nodes on the main stem (each carries a compound leaf)."""
    leaf_density: float = 1.0
    """Scales leaflet count and size: 0 gives bare petioles, 1 a typical young plant."""
    n_trusses: int = 3
    """Fruit trusses (peduncle with fruits), on every other node from the second."""
    fruit_radius: float = 0.016
    """Mean fruit radius (m)."""
    stem_bend: float = 0.02
    """Amplitude (m) of the main stem's lateral curvature and node zig-zag."""
    node_scale: float = 1.6
    """Node swelling radius as a multiple of the local stem radius."""


@dataclass
class Plant:
    """Primitives in world coordinates (see the module docstring)."""

    cap_a: np.ndarray  # [S, 3]
    cap_b: np.ndarray  # [S, 3]
    cap_r: np.ndarray  # [S]
    cap_label: np.ndarray  # [S] int
    sph_c: np.ndarray  # [Q, 3]
    sph_r: np.ndarray  # [Q]
    sph_label: np.ndarray  # [Q] int
    sph_color: np.ndarray  # [Q, 3] albedo
    meshes: list[dict]  # leaflets: {"vertices" [V,3], "faces" [F,3], "uv" [V,2], "color" [3]}
    stems: list[dict]  # {"class", "node", "points" [K,3], "radius" [K]}
    nodes: list[dict]  # {"N", "U", "D", "P": [3] world points of the node's keypoints (P None
    #                     at a node without a truss), "radius"}
    bg_radius: float = 1.6
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _normalize(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _point_at_arc_fraction(poly: np.ndarray, frac: float) -> np.ndarray:
    """The point at ``frac`` of the arc length along the polyline ``poly [K, 3]``."""
    seglen = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seglen)])
    s = frac * cum[-1]
    i = min(max(int(np.searchsorted(cum, s)) - 1, 0), len(seglen) - 1)
    f = (s - cum[i]) / max(seglen[i], 1e-12)
    return poly[i] + f * (poly[i + 1] - poly[i])


def _polyline_capsules(points, radius, label, caps):
    for i in range(len(points) - 1):
        caps.append((points[i], points[i + 1], 0.5 * (radius[i] + radius[i + 1]), label))


def _leaflet_mesh(base, d_long, d_side, length, width, droop, cup, nu=9, nv=5):
    """Curved pointed blade: u along the midrib (0 base .. 1 tip), v across (-1 .. 1)."""
    n = np.cross(d_long, d_side)
    n /= np.linalg.norm(n)
    u = np.linspace(0.0, 1.0, nu)
    v = np.linspace(-1.0, 1.0, nv)
    U, V = np.meshgrid(u, v, indexing="ij")
    w = width * np.sqrt(U) * (1.0 - U) / 0.385 * 0.5  # half width, max `width / 2` at u = 1/3
    w = np.maximum(w, 1e-4 * width)
    across = V * w
    up = np.array([0.0, 0.0, 1.0])
    P = (base + (U * length)[..., None] * d_long + across[..., None] * d_side
         + (cup * (across / (0.5 * width)) ** 2 * 0.5 * width)[..., None] * n
         - (droop * U ** 2 * length)[..., None] * up)
    verts = P.reshape(-1, 3)
    uv = np.stack([U.ravel(), V.ravel()], 1)
    faces = []
    for i in range(nu - 1):
        for j in range(nv - 1):
            a, b, c, d = i * nv + j, i * nv + j + 1, (i + 1) * nv + j, (i + 1) * nv + j + 1
            if i == 0:  # the base row collapses towards the midrib; keep both triangles (thin)
                pass
            faces.append((a, c, b))
            faces.append((b, c, d))
    return verts, np.asarray(faces, np.int64), uv


def make_plant(params: PlantParams, seed: int = 0, bg_radius: float = 1.6) -> Plant:
    """Build the plant for `params` deterministically from `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    H = params.height
    nn = max(int(params.n_nodes), 1)
    # Node heights: first node at ~22 % of the height, last at ~90 %, internodes a little irregular.
    zs = np.linspace(0.22 * H, 0.9 * H, nn)
    if nn > 1:
        zs += rng.uniform(-0.15, 0.15, nn) * (zs[1] - zs[0])
    zs.sort()

    ph = rng.uniform(0, 2 * np.pi, 4)
    A = params.stem_bend
    zig_dirs = [rng.uniform(0, 2 * np.pi) for _ in range(nn)]

    def centre(z):
        z = np.asarray(z, np.float64)
        x = A * np.sin(2 * np.pi * z / (1.3 * H) + ph[0]) + 0.6 * A * np.sin(2 * np.pi * z / (0.45 * H) + ph[1])
        y = A * np.sin(2 * np.pi * z / (1.1 * H) + ph[2]) + 0.6 * A * np.sin(2 * np.pi * z / (0.5 * H) + ph[3])
        # zig-zag: a small bump towards alternating sides at each node
        for k in range(nn):
            bump = 0.35 * A * np.exp(-((z - zs[k]) / (0.05 * H)) ** 2)
            x = x + bump * np.cos(zig_dirs[k])
            y = y + bump * np.sin(zig_dirs[k])
        x = x - (A * np.sin(ph[0]) + 0.6 * A * np.sin(ph[1]))  # base at the origin
        y = y - (A * np.sin(ph[2]) + 0.6 * A * np.sin(ph[3]))
        return np.stack([x, y, z], -1)

    def stem_r(z):
        return params.stem_radius * (1.0 - 0.45 * np.asarray(z) / H)

    caps: list = []
    stems: list[dict] = []
    nodes: list[dict] = []
    sph: list = []  # (centre, radius, label, color)
    meshes: list[dict] = []

    # --- main stem, split into U / D stretches at nodes and internode midpoints ---
    bounds = [0.0]
    labels = []
    owners = []
    for k in range(nn):
        bounds.append(zs[k])
        labels.append("D")
        owners.append(k)
        top = zs[k + 1] if k + 1 < nn else H
        mid = 0.5 * (zs[k] + top) if k + 1 < nn else H
        bounds.append(mid)
        labels.append("U")
        owners.append(k)
    # stretches: [bounds[i], bounds[i+1]] with labels[i]
    step = 0.012
    for i, (lab, k) in enumerate(zip(labels, owners)):
        z0, z1 = bounds[i], bounds[i + 1]
        if z1 - z0 < 1e-6:
            continue
        nseg = max(int(np.ceil((z1 - z0) / step)), 1)
        z = np.linspace(z0, z1, nseg + 1)
        pts, rad = centre(z), stem_r(z)
        _polyline_capsules(pts, rad, LABEL_OF[lab], caps)
        stems.append({"class": lab, "node": k, "part": "main stem", "points": pts, "radius": rad})

    # --- nodes, leaves, trusses ---
    golden = np.deg2rad(137.5)
    az0 = rng.uniform(0, 2 * np.pi)
    truss_nodes = [k for k in range(1, nn, 2)][: max(int(params.n_trusses), 0)]
    fruit_palette = [np.array([0.78, 0.10, 0.06]), np.array([0.85, 0.30, 0.05]),
                     np.array([0.42, 0.62, 0.18]), np.array([0.70, 0.08, 0.05])]
    up = np.array([0.0, 0.0, 1.0])
    for k in range(nn):
        zc = zs[k]
        c = centre(zc)
        rN = params.node_scale * float(stem_r(zc))
        sph.append((c, rN, LABEL_OF["N"], np.array([0.26, 0.40, 0.14])))
        tang = _normalize(centre(zc + 1e-3) - centre(zc - 1e-3))
        stems.append({"class": "N", "node": k, "part": "node",
                      "points": np.stack([c - rN * tang, c + rN * tang]), "radius": np.array([rN, rN])})

        # compound leaf: petiole/rachis arcs up and out, then droops
        az = az0 + k * golden + rng.uniform(-0.2, 0.2)
        out = np.array([np.cos(az), np.sin(az), 0.0])
        L = H * (0.36 - 0.12 * k / max(nn - 1, 1)) * rng.uniform(0.9, 1.1)
        elev = np.deg2rad(rng.uniform(35, 55))
        t = np.linspace(0.0, 1.0, 9)
        # quadratic Bezier: start at node, control point up-out, end lower and further out
        p0 = c
        p1 = c + 0.5 * L * (np.cos(elev) * out + np.sin(elev) * up)
        p2 = c + L * (0.92 * out + (0.05 - 0.25 * rng.uniform(0.5, 1.0)) * up)
        pet = ((1 - t) ** 2)[:, None] * p0 + (2 * (1 - t) * t)[:, None] * p1 + (t ** 2)[:, None] * p2
        prad = params.branch_radius * (1.0 - 0.4 * t)
        _polyline_capsules(pet, prad, LABEL_OF["leaf"], caps)
        stems.append({"class": "leaf", "node": k, "part": "petiole", "points": pet, "radius": prad})

        # keypoints of this node: U above, D below; P on the truss's peduncle (nodes with a truss)
        z_up = (zs[k + 1] if k + 1 < nn else H)
        z_dn = (zs[k - 1] if k > 0 else 0.0)
        nodes.append({"N": c, "U": centre(zc + 0.45 * (z_up - zc)), "D": centre(zc - 0.45 * (zc - z_dn)),
                      "P": None, "radius": rN})

        # leaflets along the rachis: pairs + a terminal one
        dens = max(params.leaf_density, 0.0)
        n_pairs = int(round(2 * dens + (1 if dens > 0.75 and k < nn - 3 else 0)))
        if dens > 0:
            size = (0.14 + 0.05 * dens) * H * rng.uniform(0.85, 1.15) * (1.0 - 0.25 * k / max(nn - 1, 1))
            pos = list(np.linspace(0.35, 0.8, n_pairs)) if n_pairs else []
            attach = [(s, side) for s in pos for side in (-1, 1)] + [(1.0, 0)]
            for s, side in attach:
                j = min(int(s * (len(t) - 1)), len(t) - 2)
                f = s * (len(t) - 1) - j
                a = pet[j] + f * (pet[j + 1] - pet[j])
                tan = _normalize(pet[j + 1] - pet[j])
                horiz = _normalize(np.array([tan[0], tan[1], 0.0]))
                lateral = _normalize(np.cross(up, horiz))
                if side == 0:
                    d_long = horiz
                    Ls = size * 1.1
                else:
                    ang = np.deg2rad(rng.uniform(50, 75))
                    d_long = _normalize(np.cos(ang) * horiz + side * np.sin(ang) * lateral
                                        + rng.uniform(-0.15, 0.2) * up)
                    Ls = size * rng.uniform(0.8, 1.0)
                d_side = _normalize(np.cross(up, d_long))
                tilt = rng.uniform(-0.35, 0.35)
                d_side = _normalize(d_side + tilt * up)
                d_side = _normalize(d_side - (d_side @ d_long) * d_long)
                gap = 0.06 * Ls  # short petiolule: the blade starts a little off the rachis
                base = a + gap * d_long
                if side != 0:  # petiolule as a thin pedicel-like capsule (leaf tissue)
                    caps.append((a, base, 0.6 * params.branch_radius, LABEL_OF["leaf"]))
                verts, faces, uv = _leaflet_mesh(base, d_long, d_side, Ls, 0.55 * Ls,
                                                 droop=rng.uniform(0.05, 0.2), cup=rng.uniform(0.05, 0.2))
                col = np.array([0.17, 0.42, 0.10]) * rng.uniform(0.85, 1.15, 3)
                meshes.append({"vertices": verts, "faces": faces, "uv": uv, "color": col, "node": k})

        # truss: peduncle opposite the leaf, fruits hanging on pedicels
        if k in truss_nodes:
            taz = az + np.pi + rng.uniform(-0.4, 0.4)
            tout = np.array([np.cos(taz), np.sin(taz), 0.0])
            Lp = H * 0.14 * rng.uniform(0.85, 1.15)
            start = centre(zc + 0.3 * (z_up - zc))
            t2 = np.linspace(0, 1, 6)
            q1 = start + 0.5 * Lp * _normalize(tout + 0.5 * up)
            q2 = start + Lp * tout - 0.15 * Lp * up
            ped = ((1 - t2) ** 2)[:, None] * start + (2 * (1 - t2) * t2)[:, None] * q1 + (t2 ** 2)[:, None] * q2
            prr = 0.9 * params.branch_radius * (1.0 - 0.3 * t2)
            _polyline_capsules(ped, prr, LABEL_OF["P"], caps)
            stems.append({"class": "P", "node": k, "part": "peduncle", "points": ped, "radius": prr})
            nodes[-1]["P"] = _point_at_arc_fraction(ped, 0.3)  # the P keypoint: ~0.3 along the peduncle
            nf = int(rng.integers(2, 5))
            for f_i in range(nf):
                s = 0.45 + 0.55 * f_i / max(nf - 1, 1)
                j = min(int(s * 5), 4)
                fr = s * 5 - j
                a = ped[j] + fr * (ped[j + 1] - ped[j])
                R = params.fruit_radius * rng.uniform(0.75, 1.2)
                sideways = _normalize(np.cross(up, tout)) * rng.uniform(-1, 1) * 0.6 * R
                tip = a + sideways - (0.6 * R + 0.006) * up
                pr = 0.55 * params.branch_radius
                caps.append((a, tip, pr, LABEL_OF["P"]))
                stems.append({"class": "P", "node": k, "part": "pedicel",
                              "points": np.stack([a, tip]), "radius": np.array([pr, pr])})
                colr = fruit_palette[int(rng.integers(len(fruit_palette)))] * rng.uniform(0.9, 1.1)
                sph.append((tip - 0.9 * R * up, R, LABEL_OF["fruit"], np.clip(colr, 0, 1)))

    cap_a = np.array([c[0] for c in caps])
    cap_b = np.array([c[1] for c in caps])
    return Plant(
        cap_a=cap_a, cap_b=cap_b, cap_r=np.array([c[2] for c in caps]),
        cap_label=np.array([c[3] for c in caps], np.int64),
        sph_c=np.array([s[0] for s in sph]), sph_r=np.array([s[1] for s in sph]),
        sph_label=np.array([s[2] for s in sph], np.int64), sph_color=np.array([s[3] for s in sph]),
        meshes=meshes, stems=stems, nodes=nodes, bg_radius=bg_radius, seed=seed)
