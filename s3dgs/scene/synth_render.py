"""CPU ray caster for the synthetic plant: one ray through each pixel centre, vectorised numpy.

Each primitive is tested only against the pixels inside the screen-space box of its world-space
bounding box, so thin stems cost a few pixels each. Shading is Lambertian (sun + ambient, a small
specular on fruit) with procedural textures that depend on world position, so views agree.
"""

from __future__ import annotations

import numpy as np

from s3dgs.scene.synth_plant import Plant

KIND_BG, KIND_GROUND, KIND_WALL, KIND_CAP, KIND_SPH, KIND_MESH = 0, 1, 2, 3, 4, 5
SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera [4, 4] (OpenCV: x right, y down, z forward) for a camera at `eye`."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R = np.stack([r, d, f])
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def camera_rays(K, viewmat, width, height):
    """Rays through pixel centres. Returns origin [3], unit dirs [H, W, 3], z per unit length [H, W]."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    o = -R.T @ t
    js = np.arange(width) + 0.5
    is_ = np.arange(height) + 0.5
    x = (js[None, :] - K[0, 2]) / K[0, 0]
    y = (is_[:, None] - K[1, 2]) / K[1, 1]
    dc = np.stack(np.broadcast_arrays(x, y, np.ones_like(x * y)), -1)  # [H, W, 3] camera space
    n = np.linalg.norm(dc, axis=-1)
    d = (dc / n[..., None]) @ R  # world = R^T dc  (row vectors: dc @ R)
    return o, d, 1.0 / n


# ---------------------------------------------------------------- intersections (unit dirs)

def hit_capsule(o, d, a, b, r):
    """Nearest positive t of rays (o [3], d [P, 3]) with the capsule a-b of radius r; inf if none."""
    ba = b - a
    oa = o - a
    baba = ba @ ba
    bard = d @ ba
    baoa = oa @ ba
    rdoa = d @ oa
    oaoa = oa @ oa
    A = baba - bard * bard
    B = baba * rdoa - baoa * bard
    C = baba * oaoa - baoa * baoa - r * r * baba
    h = B * B - A * C
    t = np.full(d.shape[0], np.inf)
    ok = (h >= 0) & (A > 1e-18)
    with np.errstate(invalid="ignore", divide="ignore"):
        tc = (-B - np.sqrt(np.where(ok, h, 0.0))) / np.where(ok, A, 1.0)
        y = baoa + tc * bard
        body = ok & (y > 0) & (y < baba) & (tc > 0)
        t[body] = tc[body]
        # caps: sphere at a (y <= 0) or b (y >= baba); for rays missing the infinite cylinder
        # (h < 0) both caps may still be hit only if ... they cannot (caps lie inside the cylinder)
    rest = ok & ~body
    if rest.any():
        for centre in (a, b):
            ts = hit_sphere(o, d[rest], centre, r)
            cur = t[rest]
            t[rest] = np.minimum(cur, ts)
    return t


def hit_sphere(o, d, c, r):
    oc = o - c
    b = d @ oc
    cc = oc @ oc - r * r
    h = b * b - cc
    t = np.full(d.shape[0], np.inf)
    ok = h >= 0
    sq = np.sqrt(np.where(ok, h, 0.0))
    t0 = -b - sq
    good = ok & (t0 > 0)
    t[good] = t0[good]
    return t


def hit_triangles(o, d, v0, v1, v2):
    """Moller-Trumbore for rays d [P, 3] against triangles [F, 3] each.

    Returns (t [P], face [P] (-1 none), bary u [P], bary v [P]).
    """
    e1 = v1 - v0  # [F, 3]
    e2 = v2 - v0
    pvec = np.cross(d[:, None, :], e2[None, :, :])  # [P, F, 3]
    det = np.einsum("pfk,fk->pf", pvec, e1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tvec = o - v0  # [F, 3]
        u = np.einsum("pfk,fk->pf", pvec, tvec) * inv
        qvec = np.cross(tvec, e1)  # [F, 3]
        v = (d @ qvec.T) * inv
        t = (e2 * qvec).sum(1)[None, :] * inv
    ok = (np.abs(det) > 1e-14) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9)
    t = np.where(ok, t, np.inf)
    f = np.argmin(t, axis=1)
    rows = np.arange(d.shape[0])
    tb = t[rows, f]
    face = np.where(np.isfinite(tb), f, -1)
    return tb, face, u[rows, f], v[rows, f]


def hit_background(o, d, R):
    """Ground disk z=0 (|xy| < R) and the cylinder wall |xy| = R, z >= 0, seen from inside."""
    P = d.shape[:-1]
    t = np.full(P, np.inf)
    kind = np.zeros(P, np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(d[..., 2] < 0, -o[2] / d[..., 2], np.inf)
    pg = o + tg[..., None] * d
    ground = np.isfinite(tg) & (pg[..., 0] ** 2 + pg[..., 1] ** 2 < R * R)
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = 2 * (o[0] * d[..., 0] + o[1] * d[..., 1])
    c = o[0] ** 2 + o[1] ** 2 - R * R
    with np.errstate(divide="ignore", invalid="ignore"):
        tw = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0))) / (2 * a)
    t = np.where(ground, tg, tw)
    kind[:] = np.where(ground, KIND_GROUND, KIND_WALL)
    return t, kind


# ---------------------------------------------------------------- textures

class Noise:
    """Band-limited procedural noise: sums of random-direction sinusoids (deterministic per seed)."""

    def __init__(self, seed: int, n: int = 24, fmin: float = 1.0, fmax: float = 8.0, dim: int = 3):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, n, int(fmin * 1000), dim]))
        dirs = rng.normal(size=(n, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = np.exp(rng.uniform(np.log(fmin), np.log(fmax), n))
        self.wT = (dirs * freqs[:, None] * 2 * np.pi).T.astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        amp = 1.0 / np.sqrt(freqs)
        self.amp = (amp / np.sqrt((amp ** 2).sum() / 2)).astype(np.float32)  # unit variance

    def __call__(self, p):
        """Noise at points p [P, dim] (float32 arithmetic: fast, deterministic): [P] float64."""
        arg = np.asarray(p, np.float32) @ self.wT
        arg += self.phase
        np.sin(arg, out=arg)
        return (arg @ self.amp).astype(np.float64)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


class Shader:
    def __init__(self, seed: int):
        self.n_soil = Noise(seed + 11, 20, 3.0, 120.0)
        self.n_pebble = Noise(seed + 12, 14, 60.0, 160.0)
        self.n_wall = Noise(seed + 13, 20, 1.5, 60.0, dim=2)
        self.n_wall2 = Noise(seed + 14, 10, 4.0, 30.0, dim=2)
        self.n_stem = Noise(seed + 15, 16, 100.0, 600.0)
        self.n_leaf = Noise(seed + 16, 24, 40.0, 400.0)
        self.n_fruit = Noise(seed + 17, 12, 20.0, 100.0)

    def ground(self, p):
        n = self.n_soil(p * np.array([1.0, 1.0, 0.0]))
        base = np.array([0.40, 0.30, 0.20]) * (0.85 + 0.18 * n)[:, None]
        peb = 0.7 * _smoothstep(1.5, 2.0, self.n_pebble(p))[:, None]
        return base * (1 - peb) + np.array([0.55, 0.50, 0.44]) * peb

    def wall(self, p, R):
        ang = np.arctan2(p[:, 1], p[:, 0])
        q = np.stack([ang * R, p[:, 2]], 1)
        n1, n2 = self.n_wall(q), self.n_wall2(q)
        c1, c2, c3 = np.array([0.70, 0.68, 0.62]), np.array([0.45, 0.52, 0.62]), np.array([0.62, 0.50, 0.45])
        m1 = _smoothstep(-0.3, 0.3, n2)[:, None]
        col = c1 * (1 - m1) + c2 * m1
        m2 = _smoothstep(0.9, 1.3, n1)[:, None]
        col = col * (1 - m2) + c3 * m2
        col = col * (0.9 + 0.08 * n1)[:, None]
        # frame lines every 0.25 m (like a greenhouse wall): dark, 8 mm wide
        lines = (np.abs(((q[:, 0] / 0.25) + 0.5) % 1 - 0.5) < 0.016) | (np.abs(((q[:, 1] / 0.25) + 0.5) % 1 - 0.5) < 0.016)
        col[lines] *= 0.45
        return col

    def stem(self, p):
        return np.array([0.30, 0.48, 0.17]) * (0.92 + 0.08 * self.n_stem(p))[:, None]

    def fruit(self, p, base):
        return base * (0.95 + 0.05 * self.n_fruit(p))[:, None]


def render_view(plant: Plant, K, viewmat, width, height, shader: Shader, noise_sigma=0.0, rng=None):
    """Render one view.

    Returns:
        rgb [H, W, 3] float32 in [0, 1], depth [H, W] float32 (z along the optical axis, metres),
        label [H, W] uint8 (synth_plant.LABELS), rgb_clean (no sensor noise).
    """
    H, W = int(height), int(width)
    o, d, zfac = camera_rays(K, viewmat, W, H)
    R = plant.bg_radius
    t, kind = hit_background(o, d, R)
    idx = np.full((H, W), -1, np.int64)
    bu = np.zeros((H, W))
    bv = np.zeros((H, W))

    Rw, tw = viewmat[:3, :3], viewmat[:3, 3]
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.float64)

    def boxes(lo, hi):
        """Pixel boxes [N, 4] (i0, i1, j0, j1) of world AABBs lo/hi [N, 3]; whole image if behind."""
        pts = lo[:, None, :] + corners[None] * (hi - lo)[:, None, :]  # [N, 8, 3]
        pc = pts @ Rw.T + tw
        z = pc[..., 2]
        behind = (z <= 1e-3).any(axis=1)
        zz = np.maximum(z, 1e-3)
        u = K[0, 0] * pc[..., 0] / zz + K[0, 2]
        v = K[1, 1] * pc[..., 1] / zz + K[1, 2]
        j0 = np.floor(u.min(1) - 1).astype(np.int64)
        j1 = np.ceil(u.max(1) + 1).astype(np.int64)
        i0 = np.floor(v.min(1) - 1).astype(np.int64)
        i1 = np.ceil(v.max(1) + 1).astype(np.int64)
        j0, i0 = np.where(behind, 0, j0), np.where(behind, 0, i0)
        j1, i1 = np.where(behind, W, j1), np.where(behind, H, i1)
        return np.stack([np.clip(i0, 0, H), np.clip(i1, 0, H), np.clip(j0, 0, W), np.clip(j1, 0, W)], 1)

    def update(box, tnew, k, index, u=None, v=None):
        i0, i1, j0, j1 = box
        sl = (slice(i0, i1), slice(j0, j1))
        tn = tnew.reshape(i1 - i0, j1 - j0)
        better = tn < t[sl]
        if not better.any():
            return
        t[sl][better] = tn[better]
        kind[sl][better] = k
        idx[sl][better] = np.reshape(index, tn.shape)[better] if np.ndim(index) else index
        if u is not None:
            bu[sl][better] = u.reshape(tn.shape)[better]
            bv[sl][better] = v.reshape(tn.shape)[better]

    # capsules
    lo = np.minimum(plant.cap_a, plant.cap_b) - plant.cap_r[:, None]
    hi = np.maximum(plant.cap_a, plant.cap_b) + plant.cap_r[:, None]
    for s, box in enumerate(boxes(lo, hi)):
        i0, i1, j0, j1 = box
        if i0 >= i1 or j0 >= j1:
            continue
        dd = d[i0:i1, j0:j1].reshape(-1, 3)
        update(box, hit_capsule(o, dd, plant.cap_a[s], plant.cap_b[s], plant.cap_r[s]), KIND_CAP, s)
    # spheres
    for s, box in enumerate(boxes(plant.sph_c - plant.sph_r[:, None], plant.sph_c + plant.sph_r[:, None])):
        i0, i1, j0, j1 = box
        if i0 >= i1 or j0 >= j1:
            continue
        dd = d[i0:i1, j0:j1].reshape(-1, 3)
        update(box, hit_sphere(o, dd, plant.sph_c[s], plant.sph_r[s]), KIND_SPH, s)
    # leaflet meshes (face ids are global: offsets into the concatenated face list)
    offs = plant.extra["mesh_face_offset"]
    V = plant.extra["tri"]  # [F, 3, 3]
    for m, mesh in enumerate(plant.meshes):
        lo, hi = mesh["vertices"].min(0), mesh["vertices"].max(0)
        box = boxes(lo[None], hi[None])[0]
        i0, i1, j0, j1 = box
        if i0 >= i1 or j0 >= j1:
            continue
        dd = d[i0:i1, j0:j1].reshape(-1, 3)
        tri = V[offs[m]:offs[m + 1]]
        tm, face, uu, vv = hit_triangles(o, dd, tri[:, 0], tri[:, 1], tri[:, 2])
        update(box, tm, KIND_MESH, face + offs[m], uu, vv)

    # ---- shading
    p = o + t[..., None] * d
    rgb = np.zeros((H, W, 3))
    label = np.zeros((H, W), np.uint8)
    normal = np.zeros((H, W, 3))
    m = kind == KIND_GROUND
    if m.any():
        rgb[m] = shader.ground(p[m])
        normal[m] = (0, 0, 1)
    m = kind == KIND_WALL
    if m.any():
        rgb[m] = shader.wall(p[m], R)
        nn = -p[m] * np.array([1, 1, 0])
        normal[m] = nn / np.linalg.norm(nn, axis=1, keepdims=True)
    m = kind == KIND_CAP
    if m.any():
        s = idx[m]
        a, b = plant.cap_a[s], plant.cap_b[s]
        ba = b - a
        pa = p[m] - a
        h = np.clip((pa * ba).sum(1) / (ba * ba).sum(1), 0, 1)
        nn = pa - h[:, None] * ba
        normal[m] = nn / np.maximum(np.linalg.norm(nn, axis=1, keepdims=True), 1e-12)
        lab = plant.cap_label[s]
        label[m] = lab
        col = shader.stem(p[m])
        col[lab == 5] *= np.array([0.8, 0.95, 0.8])
        rgb[m] = col
    m = kind == KIND_SPH
    if m.any():
        s = idx[m]
        nn = p[m] - plant.sph_c[s]
        normal[m] = nn / np.linalg.norm(nn, axis=1, keepdims=True)
        label[m] = plant.sph_label[s]
        fr = plant.sph_label[s] == 6
        col = np.repeat(plant.sph_color[s][:, None, :], 1, 1)[:, 0]
        col[fr] = shader.fruit(p[m][fr], plant.sph_color[s][fr])
        col[~fr] = shader.stem(p[m][~fr]) * 0.9
        rgb[m] = col
    m = kind == KIND_MESH
    if m.any():
        f = idx[m]
        tri_uv = plant.extra["tri_uv"][f]  # [P, 3, 2]
        w0 = 1 - bu[m] - bv[m]
        uv = w0[:, None] * tri_uv[:, 0] + bu[m][:, None] * tri_uv[:, 1] + bv[m][:, None] * tri_uv[:, 2]
        tri = V[f]
        nn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal[m] = nn / np.maximum(np.linalg.norm(nn, axis=1, keepdims=True), 1e-18)
        label[m] = 5
        rgb[m] = _leaf_colour(shader, p[m], uv, plant.extra["tri_color"][f])

    # two-sided Lambert: normals face the camera
    flip = (normal * d).sum(-1) > 0
    normal[flip] *= -1
    lam = np.clip(normal @ SUN, 0, 1)
    sky = 0.5 + 0.5 * normal[..., 2]
    shade = 0.30 + 0.12 * sky + 0.70 * lam
    trans = (kind == KIND_MESH) & ((normal @ SUN) <= 0)  # leaves lit from behind glow a little
    shade = np.where(trans, shade + 0.15, shade)
    img = rgb * shade[..., None]
    fm = (kind == KIND_SPH) & (label == 6)
    if fm.any():
        hv = SUN[None, :] - d[fm]
        hv /= np.linalg.norm(hv, axis=1, keepdims=True)
        spec = np.clip((normal[fm] * hv).sum(1), 0, 1) ** 40
        img[fm] += 0.6 * spec[:, None]
    clean = np.clip(img, 0, 1).astype(np.float32)
    out = clean
    if noise_sigma > 0 and rng is not None:
        out = np.clip(clean + rng.normal(0, noise_sigma, clean.shape), 0, 1).astype(np.float32)
    depth = (t * zfac).astype(np.float32)
    return out, depth, label, clean


def _leaf_colour(shader, p, uv, base):
    u, v = uv[:, 0], uv[:, 1]
    midrib = np.exp(-(v / 0.07) ** 2)
    lat = np.exp(-((np.abs((u * 7 - np.abs(v) * 1.8 + 0.5) % 1 - 0.5)) / 0.07) ** 2) * (np.abs(v) < 0.85)
    vein = np.maximum(midrib, 0.6 * lat)
    col = base * (0.9 + 0.1 * shader.n_leaf(p))[:, None]
    return col * (1 - 0.45 * vein[:, None]) + np.array([0.45, 0.62, 0.30]) * 0.45 * vein[:, None]


def prepare_plant(plant: Plant) -> None:
    """Concatenate leaflet meshes into triangle arrays used by the renderer (plant.extra)."""
    tris, uvs, cols, offs = [], [], [], [0]
    for m in plant.meshes:
        v, f = m["vertices"], m["faces"]
        tris.append(v[f])
        uvs.append(m["uv"][f])
        cols.append(np.repeat(m["color"][None], len(f), 0))
        offs.append(offs[-1] + len(f))
    plant.extra["tri"] = np.concatenate(tris) if tris else np.zeros((0, 3, 3))
    plant.extra["tri_uv"] = np.concatenate(uvs) if uvs else np.zeros((0, 3, 2))
    plant.extra["tri_color"] = np.concatenate(cols) if cols else np.zeros((0, 3))
    plant.extra["mesh_face_offset"] = offs
