"""`s3dgs synth OUT`: a synthetic tomato plant scene with ground truth (the built-in default scene).

A procedural plant (synth_plant) is ray cast on the CPU (synth_render) from cameras on one or more
rings; the inputs are then made the way real ones are:

- ``images/<stem>.png``: Lambertian shading, procedural textures, sensor noise;
- ``sparse/0`` (binary PINHOLE, true poses) and ``points3D.ply``: sparse noisy samples of visible
  textured surfaces, mostly background, few on thin stems, some outliers, like SfM;
- ``keypoints/<stem>.json``: U/N/D/P of each node projected, with pixel noise, misses, low
  confidences and boxes (Roboflow style), turned into ``heatmaps/`` and ``confidence.json`` by
  `s3dgs.scene.heatmaps.make_heatmaps`, the code of `s3dgs heatmaps`;
- ``depths/<stem>.png`` + ``depths/meta.json``: a *simulated* monocular prior (disparity, unknown
  per-image scale/shift, low-frequency warp, noise, thin-stem blur; each error switchable and sized);
- ``gt/``: ``depth/<stem>.npy`` (float32 z-depth in metres; every pixel hits a surface, the backdrop
  is a closed cylinder wall, so no 0 or inf), ``masks/<stem>.png`` (uint8 class ids, see
  `LABELS`), ``stems.json`` (centrelines per class with radii), ``primitives.json`` (every surface
  analytically), ``visibility.json`` (per view, per stem vertex: seen or not), ``cameras.json``,
  ``meta.json``; read them with `s3dgs.scene.groundtruth.load_ground_truth`;
- ``preview.png``: a contact sheet (views, true depth, class mask, prior, heatmaps).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import tyro

from s3dgs import CLASSES
from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.errors import UsageError
from s3dgs.options import opt
from s3dgs.scene.synth_plant import LABELS, Plant, PlantParams, make_plant

PRESETS: dict[str, dict] = {
    # ~48 views at 320x240, a young plant with 6 nodes and a 4 mm stem.
    "default": dict(views=48, width=320, height=240, rings=2, n_points=4000),
    # The same plant with a 1.6 mm stem and 0.8 mm branches (1-2 px wide): RGB-only breaks it.
    "thin": dict(views=48, width=320, height=240, rings=2, n_points=4000, stem_radius=0.0016,
                 branch_radius=0.0008, leaf_density=1.2),
    # For tests: a few views, small images, fewer nodes; about a second.
    "tiny": dict(views=10, width=160, height=120, rings=2, n_points=800, n_nodes=4, n_trusses=1,
                 leaf_density=0.8, stem_radius=0.005, branch_radius=0.002),
    # Close-up, as a phenotyping rig shoots one plant: three rings of 20 cameras 0.6 m from the stem
    # with a long focal length (about 31 degrees across), each ring seeing a band of the plant (the
    # three bands overlap and cover it), and a plant with the stem thicknesses of a mature tomato
    # (10 mm main stem at the base, 5 mm petioles). At 400x300 the main stem is at least 6 px wide,
    # petioles and peduncles at least 3 px, pedicels at least 2 px (tests/test_synth.py measures it).
    "closeup": dict(views=60, width=400, height=300, rings=3, n_points=6000, stem_radius=0.005,
                    branch_radius=0.0025, ring_radius=0.6, focal_scale=1.8,
                    ring_heights=(0.2, 0.5, 0.95), ring_targets=(0.2, 0.5, 0.8)),
}

# What `s3dgs demo --preset P` renders: the preset plus what structure from motion needs, since the
# demo sends the frames through SfM for real. The tiny preset's 10 views of 160x120 (72 degrees
# apart on each ring) are too few and too small for SIFT: about 250 features per frame and no
# verified pair, even with 48 views at that size. 20 views of 320x240 on one ring (18 degrees
# apart) all register with COLMAP's default thresholds; the tests keep the cheaper preset itself.
DEMO_OVERRIDES: dict[str, dict] = {"tiny": dict(views=20, rings=1, width=320, height=240)}


@dataclass
class SynthConfig:
    """Make the synthetic tomato plant scene with ground truth."""

    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Scene folder to write (created; existing files are overwritten)."""
    preset: Literal["default", "thin", "tiny", "closeup"] = "default"
    """default: 48 views 320x240; thin: the same with a thin stem; tiny: 10 small views for tests;
    closeup: 60 views 400x300 on three rings close to the plant, stems several pixels wide.
    Options left unset take the preset's value."""
    seed: int = 0
    """Random seed: the same seed and options give the same scene, file for file."""
    views: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Number of cameras (preset: 48 / 48 / 10 / 60)."""
    width: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Image width in pixels (preset: 320 / 320 / 160 / 400)."""
    height: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Image height in pixels (preset: 240 / 240 / 120 / 300)."""
    rings: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Camera rings around the plant; views alternate between them (preset: 2 / 2 / 2 / 3)."""
    ring_radius: Annotated[Optional[float], opt("FLOAT", "from the preset")] = None
    """Horizontal distance of the cameras from the stem (m) (preset: 0.75 / 0.75 / 0.75 / 0.6)."""
    focal_scale: Annotated[Optional[float], opt("FLOAT", "from the preset")] = None
    """Focal length in units of the image width (0.9: about 58 degrees horizontal field of view;
    1.8: about 31 degrees) (preset: 0.9 / 0.9 / 0.9 / 1.8)."""
    ring_heights: Annotated[Optional[tuple[float, ...]], opt(
        "FLOAT ...", "0.5 for one ring, 0.36 0.84 for two, evenly spread for more; "
        "closeup: 0.2 0.5 0.95")] = None
    """Camera height of each ring, as a fraction of the plant height."""
    ring_targets: Annotated[Optional[tuple[float, ...]], opt(
        "FLOAT ...", "0.5, the middle of the plant, for every ring; "
        "closeup: 0.2 0.5 0.8, each ring its own band")] = None
    """Height each ring looks at, as a fraction of the plant height."""

    # plant
    plant_height: float = 0.5
    """Main stem height (m)."""
    stem_radius: Annotated[Optional[float], opt("FLOAT", "from the preset")] = None
    """Main stem radius at the base (m); tapers to 55 % (preset: 0.004 / 0.0016 / 0.005 / 0.005)."""
    branch_radius: Annotated[Optional[float], opt("FLOAT", "from the preset")] = None
    """Petiole/peduncle radius (m) (preset: 0.0016 / 0.0008 / 0.002 / 0.0025)."""
    n_nodes: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Nodes on the main stem (preset: 6 / 6 / 4 / 6)."""
    leaf_density: Annotated[Optional[float], opt("FLOAT", "from the preset")] = None
    """Leaflet count and size, 0 = bare petioles (preset: 1.0 / 1.2 / 0.8 / 1.0)."""
    n_trusses: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Fruit trusses (preset: 3 / 3 / 1 / 3)."""
    fruit_radius: float = 0.016
    """Mean fruit radius (m)."""

    # images
    image_noise: float = 0.01
    """Sensor noise: standard deviation of Gaussian noise on [0, 1] colours."""

    # SfM-like points
    n_points: Annotated[Optional[int], opt("INT", "from the preset")] = None
    """Sparse points in sparse/0 and points3D.ply (preset: 4000 / 4000 / 800 / 6000)."""
    point_noise: float = 0.002
    """3D noise of the sparse points (m, at 0.75 m distance; grows with distance)."""
    outlier_fraction: float = 0.03
    """Fraction of sparse points that are outliers scattered in the scene volume."""

    # keypoints
    kp_noise_px: float = 1.5
    """Pixel noise of keypoints (std, at 320 px width; scales with the width)."""
    kp_miss: float = 0.1
    """Probability that a keypoint of a detected node is missing."""
    kp_low_conf: float = 0.1
    """Probability that a keypoint gets a low confidence (< 0.5, so it is ignored)."""
    hotspot_sigma: Annotated[Optional[float], opt(
        "FLOAT", "20 px at 1920 px width, scaled to the width (min 3)")] = None
    """Heatmap hotspot sigma (px)."""

    # simulated monocular prior
    prior_scale_shift: bool = True
    """Apply an unknown per-image scale and shift after normalising (so [0, 1] is not min-max)."""
    prior_min_scale: float = 0.7
    """Smallest per-image scale s (v = s * v01 + t, t in [0, 1 - s])."""
    prior_warp: bool = True
    """Apply a smooth low-frequency multiplicative warp to the disparity."""
    prior_warp_size: float = 0.15
    """Warp amplitude: disparity is multiplied by exp(size * field), field in about [-1, 1]."""
    prior_noise: bool = True
    """Add Gaussian noise to the normalised prior."""
    prior_noise_sigma: float = 0.01
    """Noise standard deviation on the [0, 1] prior."""
    prior_thin_blur: bool = True
    """Merge thin structures into what lies behind (grey opening), then blur."""
    prior_thin_blur_px: float = 10.79
    """Opening size in pixels of the network's input (a 518 px short side, as Depth Anything V2):
    structures thinner than this at that size fade into the background; in frame pixels it is
    this x short side / 518 (10.79: 5 px on a 320x240 frame, the opening used before this option
    followed the network's input)."""
    prior_thin_blur_strength: float = 0.7
    """How much of the opened map replaces the sharp one (0 keeps thin stems, 1 erases them)."""
    prior_blur_sigma_px: float = 2.158
    """Gaussian blur sigma after the opening, in pixels of the network's input (518 px short side;
    2.158: 1 px on a 320x240 frame, the blur used before this option followed the network's input)."""
    prior_tiles: int = 1
    """Simulate tiled inference (`s3dgs depth --tiles N`): N x N overlapping tiles, each blurred at
    its own scale (its short side maps to the network's 518 px, so thin structures blur less), with
    its own scale and shift, merged as `s3dgs depth` merges tiles (1: one pass over the frame)."""
    perfect_prior: bool = False
    """Switch every prior error off: the prior is the true disparity, min-max normalised."""

    preview: bool = True
    """Write preview.png (contact sheet)."""
    progress: bool = True
    """Show progress bars."""

    def resolved(self) -> "SynthConfig":
        """The config with every unset (None) option taken from the preset and the defaults."""
        base = dict(views=48, width=320, height=240, rings=2, n_points=4000, stem_radius=0.004,
                    branch_radius=0.0016, n_nodes=6, leaf_density=1.0, n_trusses=3, ring_radius=0.75,
                    focal_scale=0.9, ring_heights=None, ring_targets=None)
        self.validate()
        base.update(PRESETS[self.preset])
        upd = {k: v for k, v in base.items() if getattr(self, k) is None}
        cfg = replace(self, **upd)
        if cfg.hotspot_sigma is None:
            cfg = replace(cfg, hotspot_sigma=max(3.0, 20.0 * cfg.width / 1920.0))
        if cfg.perfect_prior:
            cfg = replace(cfg, prior_scale_shift=False, prior_warp=False, prior_noise=False,
                          prior_thin_blur=False)
        cfg.validate()
        for name in ("ring_heights", "ring_targets"):
            v = getattr(cfg, name)
            if v is not None and len(v) != cfg.rings:
                raise UsageError(f"--{name.replace('_', '-')} needs one value per ring ({cfg.rings}), "
                                 f"got {len(v)}: {' '.join(str(x) for x in v)}")
        return cfg

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option (unset ones pass)."""
        from s3dgs import validate as V

        V.one_of("--preset", self.preset, PRESETS)
        V.at_least("--views", self.views, 2)
        V.at_least("--width", self.width, 16)
        V.at_least("--height", self.height, 16)
        V.at_least("--rings", self.rings, 1)
        for name in ("ring_radius", "focal_scale", "plant_height", "stem_radius", "branch_radius",
                     "fruit_radius", "hotspot_sigma"):
            V.positive(V.flag(name), getattr(self, name))
        for name in ("ring_heights", "ring_targets"):
            for v in getattr(self, name) or ():
                V.finite(V.flag(name), v)
        V.at_least("--n-nodes", self.n_nodes, 1)
        V.at_least("--n-points", self.n_points, 1)
        for name in ("n_trusses", "leaf_density", "image_noise", "point_noise", "kp_noise_px",
                     "prior_warp_size", "prior_noise_sigma", "prior_thin_blur_px", "prior_blur_sigma_px"):
            V.non_negative(V.flag(name), getattr(self, name))
        for name in ("outlier_fraction", "kp_miss", "kp_low_conf", "prior_thin_blur_strength"):
            V.fraction(V.flag(name), getattr(self, name))
        V.in_range("--prior-min-scale", self.prior_min_scale, 0, 1, lo_open=True)
        V.in_range("--prior-tiles", self.prior_tiles, 1, 16)

    def plant_params(self) -> PlantParams:
        return PlantParams(height=self.plant_height, stem_radius=self.stem_radius,
                           branch_radius=self.branch_radius, n_nodes=self.n_nodes,
                           leaf_density=self.leaf_density, n_trusses=self.n_trusses,
                           fruit_radius=self.fruit_radius)


# ------------------------------------------------------------------------------ cameras

def make_cameras(cfg: SynthConfig, rng) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on `rings` rings looking at the plant. Returns (K [3, 3], viewmats [C, 4, 4])."""
    from s3dgs.scene.synth_render import look_at

    W, H = cfg.width, cfg.height
    f = cfg.focal_scale * W
    K = np.array([[f, 0, W / 2.0], [0, f, H / 2.0], [0, 0, 1.0]])
    h = cfg.plant_height
    if cfg.ring_heights is not None:
        heights = [float(x) * h for x in cfg.ring_heights]
    elif cfg.rings <= 2:
        heights = [0.5 * h] if cfg.rings == 1 else [0.36 * h, 0.84 * h]
    else:
        heights = [(0.15 + 0.8 * k / (cfg.rings - 1)) * h for k in range(cfg.rings)]
    targets = [0.5 * h] * cfg.rings if cfg.ring_targets is None else [float(x) * h for x in cfg.ring_targets]
    viewmats = []
    for i in range(cfg.views):
        ring = i % cfg.rings
        j = i // cfg.rings
        per = int(np.ceil(cfg.views / cfg.rings))
        # rings are staggered in azimuth by a fraction of the spacing (two rings: half of it)
        stagger = ring * np.pi / per if cfg.rings <= 2 else 2 * np.pi * ring / (per * cfg.rings)
        az = 2 * np.pi * j / per + stagger + rng.uniform(-0.03, 0.03)
        rad = cfg.ring_radius * rng.uniform(0.97, 1.03)
        eye = np.array([rad * np.cos(az), rad * np.sin(az), heights[ring] + rng.uniform(-0.01, 0.01)])
        target = np.array([0.0, 0.0, targets[ring]]) + rng.uniform(-0.01, 0.01, 3)
        viewmats.append(look_at(eye, target))
    return K, np.stack(viewmats)


def project(K, viewmat, X):
    """World points X [N, 3] -> (pixel xy [N, 2] continuous, z [N])."""
    pc = X @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    zz = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = np.stack([K[0, 0] * pc[:, 0] / zz + K[0, 2], K[1, 1] * pc[:, 1] / zz + K[1, 2]], 1)
    return uv, z


def visible(K, viewmat, X, depth, tol):
    """Points X [N, 3] in front, inside the image and not occluded (true depth >= z - tol)."""
    H, W = depth.shape
    uv, z = project(K, viewmat, X)
    j, i = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (j >= 0) & (j < W) & (i >= 0) & (i < H)
    vis = np.zeros(len(X), bool)
    vis[inside] = depth[i[inside], j[inside]] >= z[inside] - np.broadcast_to(tol, z.shape)[inside]
    return vis, uv, z


# ------------------------------------------------------------------------------ inputs

def make_keypoints(cfg, plant: Plant, K, viewmat, depth, rng) -> dict:
    """Roboflow-style detections of one view: one prediction per detected node."""
    W, H = cfg.width, cfg.height
    s = W / 320.0
    preds = []
    for node in plant.nodes:
        present = [c for c in CLASSES if node[c] is not None]  # no P keypoint at a node without a truss
        X = np.stack([node[c] for c in present])
        tol = 2.5 * node["radius"] + 0.004
        vis, uv, z = visible(K, viewmat, X, depth, tol)
        n = present.index("N")
        if z[n] <= 0 or not (0 <= uv[n, 0] < W and 0 <= uv[n, 1] < H):
            continue
        if rng.uniform() > (0.95 if vis[n] else 0.35):
            continue  # missed detection (occluded nodes are mostly missed)
        lo, hi = uv.min(0), uv.max(0)
        pad = 0.15 * (hi - lo) + 3.0 * s
        lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, [W, H])
        kps = []
        for c_i, c in enumerate(present):
            if rng.uniform() < cfg.kp_miss or z[c_i] <= 0:
                continue
            conf = rng.uniform(0.65, 0.98) if vis[c_i] else rng.uniform(0.3, 0.7)
            if rng.uniform() < cfg.kp_low_conf:
                conf = rng.uniform(0.1, 0.45)
            xy = uv[c_i] + rng.normal(0, cfg.kp_noise_px * s, 2)
            kps.append({"class": c, "class_id": CLASSES.index(c), "x": round(float(xy[0]), 2), "y": round(float(xy[1]), 2),
                        "confidence": round(float(conf), 3)})
        if not kps:
            continue
        preds.append({"x": round(float((lo[0] + hi[0]) / 2), 2), "y": round(float((lo[1] + hi[1]) / 2), 2),
                      "width": round(float(hi[0] - lo[0]), 2), "height": round(float(hi[1] - lo[1]), 2),
                      "confidence": round(float(np.mean([k["confidence"] for k in kps])), 3),
                      "class": "node", "class_id": 0, "keypoints": kps})
    return {"predictions": preds, "image": {"width": W, "height": H}}


def low_frequency_field(H, W, rng, n=4):
    """Smooth random field over the image in about [-1, 1] (a few waves of <= 1.5 cycles)."""
    y, x = np.mgrid[0:H, 0:W]
    x, y = (x + 0.5) / W, (y + 0.5) / H
    f = np.zeros((H, W))
    for _ in range(n):
        fx, fy = rng.uniform(-1.5, 1.5, 2)
        f += np.cos(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    return f / np.sqrt(n / 2) / 1.5


NETWORK_SHORT_SIDE = 518  # Depth Anything V2's input short side (s3dgs.depth.backends.SHORT_SIDE)


def _thin_blur(cfg, disp: np.ndarray) -> np.ndarray:
    """The resolution loss of a network that sees ``disp [h, w]`` with its short side resized to
    518 px: grey opening of ``prior_thin_blur_px`` and Gaussian blur of ``prior_blur_sigma_px``
    network pixels, i.e. times ``min(h, w) / 518`` frame pixels."""
    from scipy.ndimage import gaussian_filter, grey_opening

    s = min(disp.shape) / NETWORK_SHORT_SIDE
    k = max(int(round(cfg.prior_thin_blur_px * s)), 1)
    if k > 1:
        opened = grey_opening(disp, size=(k, k))
        a = cfg.prior_thin_blur_strength
        disp = (1 - a) * disp + a * opened
    if cfg.prior_blur_sigma_px > 0:
        disp = gaussian_filter(disp, cfg.prior_blur_sigma_px * s)
    return disp


def simulate_prior(cfg, depth, rng) -> tuple[np.ndarray, dict]:
    """Simulated monocular disparity in [0, 1] from true z-depth [H, W]; returns (prior, per-image record).

    Thin-structure loss (``prior_thin_blur``) follows the network's input size: the opening and
    the blur are given in pixels of a 518 px short side (:func:`_thin_blur`). With
    ``prior_tiles`` N > 1 the frame is cut as `s3dgs depth --tiles N` cuts it
    (`s3dgs.depth.tiles.tile_grid`), each tile blurred at its own scale and given its own random
    scale (0.5-2) and shift, and the tiles merged by `s3dgs.depth.tiles.merge_tiles` onto the
    whole-frame simulation; the warp, noise and scale/shift follow, as for one pass."""
    from s3dgs.depth.io import normalise01

    H, W = depth.shape
    disp = 1.0 / depth.astype(np.float64)
    rec = {}
    if cfg.prior_thin_blur:
        full = _thin_blur(cfg, disp)
        n = int(getattr(cfg, "prior_tiles", 1) or 1)
        if n > 1:
            from s3dgs.depth.tiles import merge_tiles, tile_grid

            tiles = []
            for (y0, y1, x0, x1) in tile_grid(H, W, n):
                a, b = np.exp(rng.uniform(np.log(0.5), np.log(2.0))), rng.uniform(-0.5, 0.5)
                tiles.append(((y0, y1, x0, x1), a * _thin_blur(cfg, disp[y0:y1, x0:x1]) + b))
            full, _ = merge_tiles(full, tiles)
        disp = full
    if cfg.prior_warp:
        disp = disp * np.exp(cfg.prior_warp_size * low_frequency_field(H, W, rng))
    v, _, _ = normalise01(disp)
    v = v.astype(np.float64)
    if cfg.prior_noise:
        v = v + rng.normal(0, cfg.prior_noise_sigma, v.shape)
        v, _, _ = normalise01(v)
    if cfg.prior_scale_shift:
        sc = rng.uniform(cfg.prior_min_scale, 1.0)
        sh = rng.uniform(0.0, 1.0 - sc)
        v = sc * v + sh
        rec = {"scale": round(float(sc), 5), "shift": round(float(sh), 5)}
    return np.clip(v, 0, 1).astype(np.float32), rec


def make_points(cfg, images, depths, labels, K, viewmats, rng):
    """SfM-like sparse points: textured, visible surface samples with noise and outliers."""
    from scipy.ndimage import sobel

    C = len(images)
    n_total = cfg.n_points
    n_out = int(round(cfg.outlier_fraction * n_total))
    per = max((n_total - n_out) // C, 1)
    class_weight = np.array([1.0, 0.08, 0.08, 0.08, 0.08, 0.5, 0.25])  # background, U N D P, leaf, fruit
    xs, cs = [], []
    H, W = depths[0].shape
    for c in range(C):
        g = images[c].astype(np.float64).mean(-1)
        grad = np.hypot(sobel(g, 0), sobel(g, 1))
        w = (grad / (grad.mean() + 1e-9)) ** 1.5 * class_weight[labels[c]]
        w = w.ravel() / w.sum()
        pick = rng.choice(H * W, size=per, replace=False, p=w)
        i, j = pick // W, pick % W
        z = depths[c][i, j].astype(np.float64)
        xc = np.stack([(j + 0.5 - K[0, 2]) / K[0, 0] * z, (i + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
        R, t = viewmats[c][:3, :3], viewmats[c][:3, 3]
        X = (xc - t) @ R
        X += rng.normal(0, 1, X.shape) * (cfg.point_noise * z / 0.75)[:, None]
        xs.append(X)
        cs.append(images[c][i, j])
    lo = np.array([-1.0, -1.0, 0.0]) * cfg.ring_radius
    hi = np.array([1.0, 1.0, 0.0]) * cfg.ring_radius + np.array([0, 0, 1.3 * cfg.plant_height])
    xs.append(rng.uniform(lo, hi, (n_out, 3)))
    cs.append(rng.integers(0, 256, (n_out, 3)).astype(np.uint8))
    return np.concatenate(xs), np.concatenate(cs).astype(np.uint8)


# ------------------------------------------------------------------------------ ground truth files

def _r(a, nd=6):
    return np.round(np.asarray(a, np.float64), nd).tolist()


def primitives_dict(plant: Plant) -> dict:
    return {
        "units": "metres", "up": [0, 0, 1], "labels": {str(k): v for k, v in LABELS.items()},
        "ground": {"type": "disk", "z": 0.0, "radius": plant.bg_radius, "label": 0},
        "backdrop": {"type": "cylinder_wall", "axis": "z", "radius": plant.bg_radius, "z_min": 0.0,
                     "z_max": None, "label": 0,
                     "note": "inside wall of an unbounded vertical cylinder: every camera ray hits a surface"},
        "capsules": {"a": _r(plant.cap_a), "b": _r(plant.cap_b), "radius": _r(plant.cap_r, 7),
                     "label": plant.cap_label.tolist()},
        "spheres": {"center": _r(plant.sph_c), "radius": _r(plant.sph_r, 7), "label": plant.sph_label.tolist()},
        "meshes": [{"label": 5, "node": int(m["node"]), "vertices": _r(m["vertices"]),
                    "faces": m["faces"].tolist()} for m in plant.meshes],
    }


def stems_dict(plant: Plant) -> dict:
    return {"units": "metres", "classes": list(CLASSES),
            "note": "centrelines as polylines; radius per vertex; node = index of the node it belongs to",
            "stems": [{"class": s["class"], "node": int(s["node"]), "part": s["part"],
                       "points": _r(s["points"]), "radius": _r(s["radius"], 7)} for s in plant.stems],
            "nodes": [{c: (_r(n[c]) if n[c] is not None else None) for c in CLASSES}
                      | {"radius": round(float(n["radius"]), 7)}
                      for n in plant.nodes]}


# ------------------------------------------------------------------------------ preview

CLASS_COLOURS = np.array([[0.0, 0.0, 0.0], [1.0, 0.15, 0.1], [1.0, 0.9, 0.1], [0.2, 0.45, 1.0],
                          [1.0, 0.2, 1.0], [0.25, 0.75, 0.25], [1.0, 0.55, 0.1]])
HEAT_COLOURS = np.array([[1.0, 0.15, 0.1], [1.0, 0.9, 0.1], [0.2, 0.45, 1.0], [1.0, 0.2, 1.0]])  # U N D P


def write_preview(path, images, depths, labels, priors, heatmaps, n_show=4):
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    C = len(images)
    pick = np.unique(np.linspace(0, C - 1, min(n_show, C)).round().astype(int))
    rows = []
    for c in pick:
        img = images[c].astype(np.float64) / 255.0
        inv = 1.0 / depths[c]
        dv = (inv - inv.min()) / max(inv.max() - inv.min(), 1e-9)
        dcol = colormaps["turbo"](dv)[..., :3]
        mcol = CLASS_COLOURS[labels[c]] * 0.85 + 0.15 * img
        pcol = colormaps["turbo"](priors[c])[..., :3]
        h = heatmaps[c].astype(np.float64)
        over = img * 0.45
        for k in range(h.shape[-1]):
            a = np.clip(h[..., k], 0, 1)[..., None] * 0.9
            over = over * (1 - a) + HEAT_COLOURS[k] * a
        rows.append(np.concatenate([img, dcol, mcol, pcol, over], 1))
    sheet = (np.clip(np.concatenate(rows, 0), 0, 1) * 255).astype(np.uint8)
    H, W = images[0].shape[:2]
    scale = max(1, int(np.ceil(240 / H)))
    im = Image.fromarray(sheet)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    head = Image.new("RGB", (im.width, 16), (255, 255, 255))
    dr = ImageDraw.Draw(head)
    titles = ["image", "true disparity", "class mask", "simulated prior", "heatmaps U N D P"]
    for k, t in enumerate(titles):
        dr.text((k * W * scale + 4, 2), t, fill=(0, 0, 0))
    out = Image.new("RGB", (im.width, im.height + 16), (255, 255, 255))
    out.paste(head, (0, 0))
    out.paste(im, (0, 16))
    atomic_write(path, lambda tmp: out.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ main

def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
            np.save(f, arr)

    atomic_write(path, write)


_VIEW_NAME = re.compile(r"view_(\d{3,})$")


def _remove_stale_views(out: Path, views: int) -> list[Path]:
    """Remove the files of views ``view_<i>`` with ``i >= views`` that an earlier, larger synthetic
    scene left in ``out`` (images, keypoints, heatmaps, depth priors, ground truth): a scene made
    again in the same folder holds only its own views. Returns the removed paths."""
    removed = []
    for sub in ("images", "keypoints", "heatmaps", "depths", "gt/depth", "gt/masks"):
        for p in (out / sub).glob("view_*"):
            m = _VIEW_NAME.match(p.stem)
            if m and int(m.group(1)) >= views and p.is_file():
                p.unlink()
                removed.append(p)
    if removed:
        print(f"synth: removed {len(removed)} files of views beyond the {views} made now, left in {out} "
              "by an earlier, larger scene")
    return removed


def make_synthetic_scene(cfg: SynthConfig) -> Path:
    """Write the synthetic scene of `cfg` (see the module docstring). Returns the scene folder."""
    from s3dgs.depth.io import save_depth_png, write_meta
    from s3dgs.scene.colmap import write_model
    from s3dgs.scene.heatmaps import make_heatmaps
    from s3dgs.scene.ply import write_points_ply
    from s3dgs.scene.synth_render import Shader, prepare_plant, render_view

    t_start = time.perf_counter()
    cfg = cfg.resolved()
    out = Path(cfg.out)
    for sub in ("images", "depths", "keypoints", "gt/depth", "gt/masks", "sparse/0"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _remove_stale_views(out, cfg.views)

    def stream(tag):  # independent random streams, so one knob does not reshuffle the others
        return np.random.default_rng(np.random.SeedSequence([cfg.seed, tag]))

    plant = make_plant(cfg.plant_params(), seed=cfg.seed, bg_radius=2.6 * cfg.ring_radius)
    prepare_plant(plant)
    K, viewmats = make_cameras(cfg, stream(2))
    names = [f"view_{i:03d}.png" for i in range(cfg.views)]
    stems_ = [Path(n).stem for n in names]
    shader = Shader(cfg.seed)

    it = range(cfg.views)
    if cfg.progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synth: render", unit="view", leave=False)
    images, depths, labels = [], [], []
    noise_rng = stream(3)
    for c in it:
        rgb, depth, label, _ = render_view(plant, K, viewmats[c], cfg.width, cfg.height, shader,
                                           cfg.image_noise, noise_rng)
        img8 = np.round(rgb * 255).astype(np.uint8)
        images.append(img8)
        depths.append(depth)
        labels.append(label)
        _save_png(out / "images" / names[c], img8)
        _save_npy(out / "gt" / "depth" / f"{stems_[c]}.npy", depth)
        _save_png(out / "gt" / "masks" / f"{stems_[c]}.png", label)

    # keypoints -> heatmaps (the code of `s3dgs heatmaps`)
    kp_rng = stream(4)
    for c in range(cfg.views):
        doc = make_keypoints(cfg, plant, K, viewmats[c], depths[c], kp_rng)
        atomic_write_text(out / "keypoints" / f"{stems_[c]}.json", json.dumps(doc, indent=1))
    make_heatmaps(out / "keypoints", out, progress=False, hotspot_sigma=cfg.hotspot_sigma)

    # simulated monocular prior
    pr_rng = stream(5)
    priors, per_image = [], {}
    for c in range(cfg.views):
        v, rec = simulate_prior(cfg, depths[c], pr_rng)
        priors.append(v)
        per_image[stems_[c]] = rec
        save_depth_png(out / "depths" / f"{stems_[c]}.png", v)
    meta = {
        "kind": "disparity", "simulated": True, "model": "s3dgs synth (simulated monocular prior)",
        "normalised": "per image to [0, 1], 16-bit PNG",
        "errors": {
            "scale_shift": {"on": cfg.prior_scale_shift, "min_scale": cfg.prior_min_scale,
                            "how": "v = s * v01 + t, s ~ U(min_scale, 1), t ~ U(0, 1 - s)"},
            "warp": {"on": cfg.prior_warp, "size": cfg.prior_warp_size,
                     "how": "disparity * exp(size * smooth field in about [-1, 1])"},
            "noise": {"on": cfg.prior_noise, "sigma": cfg.prior_noise_sigma},
            "thin_blur": {"on": cfg.prior_thin_blur,
                          "opening_px": cfg.prior_thin_blur_px * min(cfg.width, cfg.height) / NETWORK_SHORT_SIDE,
                          "strength": cfg.prior_thin_blur_strength,
                          "blur_sigma_px": cfg.prior_blur_sigma_px * min(cfg.width, cfg.height) / NETWORK_SHORT_SIDE,
                          "network_px": {"opening": cfg.prior_thin_blur_px, "blur_sigma": cfg.prior_blur_sigma_px,
                                         "short_side": NETWORK_SHORT_SIDE},
                          "tiles": cfg.prior_tiles,
                          "how": "(1 - strength) * d + strength * grey_opening(d), then Gaussian blur; "
                                 "sizes in frame px = network px * short side / 518 (per tile when tiled)"},
        },
        "per_image": per_image,
    }
    write_meta(out / "depths", meta)

    # SfM-like model and points
    xyz, rgb = make_points(cfg, images, depths, labels, K, viewmats, stream(6))
    write_model(out / "sparse" / "0", names, K, viewmats, cfg.width, cfg.height, xyz, rgb)
    write_points_ply(out / "points3D.ply", xyz, rgb)

    # ground truth
    gt = out / "gt"
    atomic_write_text(gt / "primitives.json", json.dumps(primitives_dict(plant)))
    atomic_write_text(gt / "stems.json", json.dumps(stems_dict(plant)))
    vis = {}
    for c in range(cfg.views):
        vis[stems_[c]] = []
        for s in plant.stems:
            v, _, _ = visible(K, viewmats[c], s["points"], depths[c], 2.0 * s["radius"] + 0.002)
            vis[stems_[c]].append("".join("1" if b else "0" for b in v))
    atomic_write_text(gt / "visibility.json", json.dumps({
        "note": "per view, per entry of stems.json: one character per centreline vertex, 1 = inside "
                "the image and not occluded (true depth >= vertex depth - 2 r - 2 mm)",
        "views": vis}))
    atomic_write_text(gt / "cameras.json", json.dumps({
        "width": cfg.width, "height": cfg.height, "K": _r(K, 9),
        "views": [{"name": n, "viewmat": _r(vm, 9)} for n, vm in zip(names, viewmats)]}))
    cfg_dict = {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")}
    atomic_write_text(gt / "meta.json", json.dumps({
        "labels": {str(k): v for k, v in LABELS.items()},
        "depth": "gt/depth/<stem>.npy: float32 z-depth along the optical axis (m) of the surface hit by "
                 "the ray through each pixel centre; every pixel hits a surface (ground disk or "
                 "cylindrical backdrop), so there is no 0 or inf",
        "masks": "gt/masks/<stem>.png: uint8 class id per pixel (labels)",
        "config": cfg_dict, "seed": cfg.seed}, indent=1))

    if cfg.preview:
        heat = [np.load(out / "heatmaps" / f"{s}.npy") for s in stems_]
        write_preview(out / "preview.png", images, depths, labels, priors, heat)
    dt = time.perf_counter() - t_start
    if cfg.progress:
        print(f"synth: wrote {cfg.views} views ({cfg.width}x{cfg.height}, preset {cfg.preset}) "
              f"to {out} in {dt:.1f} s")
    return out


def demo_synth_config(out: Path, preset: str = "default", seed: int = 0, **options) -> SynthConfig:
    """The SynthConfig `s3dgs demo --preset PRESET` renders: the preset with its `DEMO_OVERRIDES`
    (and any other SynthConfig `options`)."""
    return SynthConfig(out=Path(out), preset=preset, seed=seed, **{**DEMO_OVERRIDES.get(preset, {}), **options})


def synth_main(cfg: SynthConfig) -> int:
    from s3dgs.atomic import check_writable_folder

    cfg.validate()
    check_writable_folder(cfg.out, "OUT")
    make_synthetic_scene(cfg)
    return 0


__all__ = ["SynthConfig", "make_synthetic_scene", "synth_main", "demo_synth_config", "PRESETS",
           "DEMO_OVERRIDES", "LABELS"]
