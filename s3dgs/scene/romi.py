"""ROMI scans as input: a ROMI scan folder -> an s3dgs scene with its known, metric poses.

    s3dgs prepare SCAN OUT          (and `s3dgs run SCAN OUT`: the prepare stage reads it the same way)

    from s3dgs.scene.romi import is_romi_scan, prepare_romi
    summary = prepare_romi("romi_real_plant", "out/scene", max_size=540)

A ROMI scan (the layout of ROMI's plant scanner and virtual scanner, plant-3d-vision) is

```
SCAN/images/NNNNN_rgb.{jpg,png}              the photos
SCAN/images/NNNNN_<class>.png                (virtual scans) one 8-bit coverage mask per organ class
SCAN/metadata/images/NNNNN_rgb.json          the camera of each photo: "camera" or "colmap_camera" =
                                             {"camera_model": {"model", "width", "height", "params"},
                                              "rotmat": R, "tvec": t}   (x_cam = R x_world + t, COLMAP)
SCAN/metadata/images.json                    the scan's metadata: "bounding_box" or "workspace" (world box)
```

No structure from motion: the poses are the scan's own (calibrated, in the scanner's units:
millimetres for ROMI's real scanner), kept as they are. The steps, each said in ``prepare.json``:

1. **Frames.** Photos are undistorted to PINHOLE (OPENCV / RADIAL / ... as pycolmap projects them:
   pycolmap maps each output pixel to its source, scipy samples it), the black bars a scanner's
   camera leaves at the sides are cropped (``--crop auto``: columns and rows at the border that are
   black in every photo), and the frames are scaled so the longer side is at most ``--max-size``.
2. **Class masks** (virtual scans): ``scene/masks/<stem>.png``, one id per pixel in the order of the
   Arabidopsis class table (stem, pedicel, fruit, flower, leaf = 1..5; 0 background; 255 not
   labelled), and ``scene/classes.json`` = ``{"table": "arabidopsis"}``. The scanner's masks are
   anti-aliased coverages: a pixel takes the organ of highest coverage when that coverage is at
   least a quarter (``MASK_MIN_COVERAGE``); a pixel with some organ coverage below that is left
   unlabelled (255: neither supervised nor scored), since a stem 0.4 px wide covers no pixel by
   half.
3. **Initial points: space carving**, as ROMI's own pipeline reconstructs (masks -> voxels). The
   plant's silhouette in each photo is its class masks (virtual scans) or, as ROMI's default for
   real photos, the excess-green index 2g - r - b above ``--exg-threshold`` (plants on a dark
   cloth); a voxel of the scan's box is kept when it falls on the silhouette in all but
   ``--carve-tolerance`` of the views that see it. Up to ``--max-points`` points are drawn in the
   kept voxels, coloured by the photos. Written by hand: no dependency of s3dgs carves voxels
   (Open3D's VoxelGrid.carve_silhouette would add a 100 MB library for 40 lines of numpy).
4. ``scene/units.json``: the scan's unit (``--units``; by default millimetres for a real scan, as
   ROMI's scanner is calibrated, and the mesh's own units for a virtual scan) so phenotypes come
   out in millimetres, or in the virtual plant's units like its ground truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.scene.colmap import import_pycolmap, write_model
from s3dgs.scene.frames import IMAGE_SUFFIXES, PrepareError
from s3dgs.scene.ply import write_points_ply

__all__ = ["RomiView", "RomiSummary", "is_romi_scan", "read_romi_scan", "prepare_romi", "carve",
           "excess_green", "romi_class_mask", "MASK_MIN_COVERAGE", "ROMI_MASK_CLASSES", "UNITS"]

ROMI_MASK_CLASSES = ("stem", "pedicel", "fruit", "flower", "leaf")
"""The virtual scanner's organ channels, in the order of the Arabidopsis class table (ids 1..5)."""

MASK_MIN_COVERAGE = 64
"""An organ's 8-bit coverage (of 255) from which a pixel is labelled with it (a quarter)."""

POINTS_PER_VOXEL = 8
"""At most this many initial points per carved voxel (and at most ``max_points`` in all)."""

UNITS = {"mm": 0.001, "cm": 0.01, "m": 1.0, "model": None}
"""Scan units -> metres per unit (None: model units, no metric scale)."""


@dataclass
class RomiView:
    """One photo of a scan and its camera. ``R [3, 3]``, ``t [3]``: world-to-camera (COLMAP)."""

    image: Path
    stem: str  # e.g. "00000" (the photo's id without the channel)
    model: str
    width: int
    height: int
    params: list[float]
    R: np.ndarray
    t: np.ndarray
    masks: dict[str, Path] = field(default_factory=dict)  # class -> coverage PNG (virtual scans)


@dataclass
class RomiSummary:
    """What `prepare_romi` did; also written to OUT/prepare.json."""

    scene: str
    source: str  # "romi scan"
    frames_total: int
    frames_used: int
    registered: int  # = frames_used: the poses are known
    camera_model: str
    width: int
    height: int
    crop: list[int]  # x0, y0, x1, y1 of the original photos kept
    scale: float  # output pixels per photo pixel
    masks: int  # frames with class masks
    points: int
    carve: dict
    units: str
    metres_per_unit: float | None
    ring_radius: float  # distance of the camera centres from their axis, in scan units
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mean_reprojection_error: float = 0.0  # known poses: no reprojection (kept for prepare.json readers)
    frames_blurred: int = 0

    def text(self) -> str:
        unit = self.units if self.units != "model" else "model units"
        lines = [
            f"scene            {self.scene}",
            f"frames           {self.frames_used} of {self.frames_total} (ROMI scan: known poses, no SfM)",
            f"camera           {self.camera_model} -> PINHOLE {self.width}x{self.height} "
            f"(crop x {self.crop[0]}-{self.crop[2]}, y {self.crop[1]}-{self.crop[3]}; scale {self.scale:.3g})",
            f"camera ring      radius {self.ring_radius:.1f} {unit}",
            f"class masks      {self.masks} frames" + (" (Arabidopsis table)" if self.masks else ""),
            f"initial points   {self.points} by space carving ({self.carve.get('kept_voxels', 0)} voxels "
            f"of {self.carve.get('voxel_size', 0):.3g} {unit})",
            "time             " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _meta_dir(scan: Path) -> Path:
    return scan / "metadata" / "images"


def is_romi_scan(path: str | Path) -> bool:
    """True when `path` is a ROMI scan folder: images/ and metadata/images/ with a camera JSON
    for at least one photo."""
    p = Path(path)
    if not (p / "images").is_dir() or not _meta_dir(p).is_dir():
        return False
    return any(_meta_dir(p).glob("*.json"))


def _camera_of(meta: dict, where: Path) -> tuple[str, int, int, list[float], np.ndarray, np.ndarray]:
    cam = meta.get("colmap_camera") or meta.get("camera")
    if not isinstance(cam, dict) or "camera_model" not in cam or "rotmat" not in cam or "tvec" not in cam:
        raise PrepareError(f"{where}: no camera (expected 'camera' or 'colmap_camera' with camera_model, "
                           "rotmat and tvec, as ROMI writes them). Is this a ROMI scan's metadata?")
    cm = cam["camera_model"]
    try:
        model, w, h = str(cm["model"]), int(cm["width"]), int(cm["height"])
        params = [float(x) for x in cm["params"]]
        R = np.asarray(cam["rotmat"], np.float64).reshape(3, 3)
        t = np.asarray(cam["tvec"], np.float64).reshape(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise PrepareError(f"{where}: malformed camera ({exc}); expected camera_model {{model, width, height, "
                           "params}, rotmat 3x3 and tvec 3") from None
    if not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(params).all()):
        raise PrepareError(f"{where}: the camera holds NaN or infinite values")
    if abs(np.linalg.det(R) - 1.0) > 1e-3:
        raise PrepareError(f"{where}: rotmat is not a rotation (det {np.linalg.det(R):.4g})")
    if w <= 0 or h <= 0 or params[0] <= 0:
        raise PrepareError(f"{where}: the camera's size and focal length must be positive")
    return model, w, h, params, R, t


def read_romi_scan(scan: str | Path) -> tuple[list[RomiView], dict]:
    """The photos of a ROMI scan with their cameras and masks, and the scan's metadata.

    Returns ``(views sorted by name, metadata of metadata/images.json or {})``. A photo without a
    camera file is left out (said by `prepare_romi`); a camera file without its photo is named."""
    scan = Path(scan)
    if not is_romi_scan(scan):
        raise PrepareError(f"{scan}: not a ROMI scan (needs images/ and metadata/images/*.json)")
    views = []
    for mp in sorted(_meta_dir(scan).glob("*.json")):
        try:
            meta = json.loads(mp.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PrepareError(f"{mp}: unreadable camera file ({exc}); restore it from the scan") from None
        if not isinstance(meta, dict):
            raise PrepareError(f"{mp}: expected a JSON object with the photo's camera")
        if meta.get("channel", "rgb") != "rgb" or (not meta.get("camera") and not meta.get("colmap_camera")):
            continue  # the masks' metadata of a virtual scan, or a photo without a camera
        name = mp.stem  # NNNNN_rgb
        image = next((scan / "images" / f"{name}{s}" for s in IMAGE_SUFFIXES
                      if (scan / "images" / f"{name}{s}").is_file()), None)
        if image is None:
            raise PrepareError(f"{mp}: its photo images/{name}.jpg/.png is missing")
        model, w, h, params, R, t = _camera_of(meta, mp)
        stem = name[:-4] if name.endswith("_rgb") else name
        masks = {c: scan / "images" / f"{stem}_{c}.png" for c in ROMI_MASK_CLASSES}
        masks = {c: p for c, p in masks.items() if p.is_file()}
        views.append(RomiView(image, stem, model, w, h, params, R, t, masks))
    if not views:
        raise PrepareError(f"{scan}: no photo with a camera in metadata/images/ (ROMI writes one "
                           "NNNNN_rgb.json per photo with 'camera' or 'colmap_camera')")
    meta = {}
    mpath = scan / "metadata" / "images.json"
    if mpath.is_file():
        try:
            meta = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
    return views, meta if isinstance(meta, dict) else {}


# ----------------------------------------------------------------------------------------------
# frames


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"), np.float32)
                a = rgba[..., 3:] / 255.0  # composite on black, the scanner's background
                return np.clip(rgba[..., :3] * a + 0.5, 0, 255).astype(np.uint8)
            if im.mode not in ("RGB", "L"):
                raise PrepareError(f"{path}: {im.mode} images are not supported; save it as 8-bit RGB")
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise PrepareError(f"{path}: unreadable image ({exc})") from None


def _load_coverage(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L"))
    except OSError as exc:
        raise PrepareError(f"{path}: unreadable mask ({exc})") from None
    if m.shape != shape:
        raise PrepareError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, its photo {shape[1]}x{shape[0]}")
    return m


def romi_class_mask(coverages: dict[str, np.ndarray], classes: tuple[str, ...] = ROMI_MASK_CLASSES,
                    min_coverage: int = MASK_MIN_COVERAGE) -> np.ndarray:
    """Per-organ 8-bit coverage masks ``{class: [H, W] uint8}`` -> one id per pixel ``[H, W] uint8``:
    k (1-based index into `classes`) where organ k has the highest coverage and it is at least
    `min_coverage`; 0 where no organ covers the pixel; 255 (not labelled) where some organ covers
    it by less than `min_coverage`."""
    shape = next(iter(coverages.values())).shape
    stack = np.stack([coverages.get(c, np.zeros(shape, np.uint8)) for c in classes], 0)
    best = stack.argmax(0)
    top = stack.max(0)
    out = np.where(top >= min_coverage, best + 1, np.where(top > 0, 255, 0))
    return out.astype(np.uint8)


def _black_border(images: list[np.ndarray], level: int = 8, margin: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the box inside the rows and columns that are black (every channel <=
    `level`) in every image, from the borders in, widened by `margin` of the longer side (kept
    inside the image). Cropping them loses nothing any photo shows: the bars of a scanner's
    camera, the empty black margins of a virtual scan."""
    mx = np.max(np.stack([im.max(-1) for im in images], 0), axis=0)  # [H, W]
    cols = np.flatnonzero(mx.max(0) > level)
    rows = np.flatnonzero(mx.max(1) > level)
    H, W = mx.shape
    if len(cols) == 0 or len(rows) == 0:
        return 0, 0, W, H
    m = int(round(margin * max(H, W)))
    return (max(int(cols[0]) - m, 0), max(int(rows[0]) - m, 0), min(int(cols[-1]) + 1 + m, W),
            min(int(rows[-1]) + 1 + m, H))


def _undistort_map(view: RomiView):
    """pycolmap's projection of the photo's camera model: for each pixel of the PINHOLE camera with
    the same focal lengths and principal point, its source position in the photo ([H, W, 2] x, y),
    or None when the model has no distortion."""
    pycolmap = import_pycolmap()

    cam = pycolmap.Camera(model=view.model, width=view.width, height=view.height, params=view.params)
    fx, fy, cx, cy = _pinhole(view)
    n_focal_pp = 3 if view.model.startswith("SIMPLE") or view.model.startswith("RADIAL") else 4
    if np.allclose(list(view.params)[n_focal_pp:], 0):
        return None
    H, W = view.height, view.width
    ys, xs = np.mgrid[:H, :W].astype(np.float64) + 0.5
    norm = np.stack([(xs.ravel() - cx) / fx, (ys.ravel() - cy) / fy, np.ones(H * W)], 1)
    src = cam.img_from_cam(norm)
    return (src - 0.5).reshape(H, W, 2)  # pixel centres at +0.5 -> array coordinates


def _pinhole(view: RomiView) -> tuple[float, float, float, float]:
    p = view.params
    if view.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        return p[0], p[0], p[1], p[2]
    return p[0], p[1], p[2], p[3]


def _remap(img: np.ndarray, src: np.ndarray | None, order: int) -> np.ndarray:
    if src is None:
        return img
    from scipy.ndimage import map_coordinates

    coords = [src[..., 1], src[..., 0]]
    if img.ndim == 2:
        return map_coordinates(img, coords, order=order, mode="constant", cval=0).astype(img.dtype)
    return np.stack([map_coordinates(img[..., c], coords, order=order, mode="constant", cval=0)
                     for c in range(img.shape[2])], -1).astype(img.dtype)


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if (img.shape[1], img.shape[0]) == size:
        return img
    im = Image.fromarray(img)
    return np.asarray(im.resize(size, Image.NEAREST if nearest else Image.LANCZOS))


# ----------------------------------------------------------------------------------------------
# space carving


def excess_green(rgb: np.ndarray) -> np.ndarray:
    """The excess-green index 2g - r - b of ``rgb [H, W, 3]`` uint8, on chromatic coordinates
    (each channel divided by r + g + b), the plant-segmentation index ROMI's pipeline uses by
    default. Returns ``[H, W]`` float32 in [-1, 2]; dark pixels (r + g + b < 30) are -1."""
    x = rgb.astype(np.float32)
    s = x.sum(-1)
    c = x / np.maximum(s, 1.0)[..., None]
    exg = 2 * c[..., 1] - c[..., 0] - c[..., 2]
    return np.where(s < 30, -1.0, exg).astype(np.float32)


def carve(silhouettes: list[np.ndarray], Ks: np.ndarray, viewmats: np.ndarray, box: np.ndarray, *,
          max_voxels: int = 4_000_000, tolerance: int = 1, min_seen: float = 0.5,
          progress: bool = False) -> tuple[np.ndarray, float, dict]:
    """Space carving: the voxels of `box` that project onto every silhouette but `tolerance`.

    Args:
        silhouettes: [C] bool masks [H, W] (the plant in each view).
        Ks: [C, 3, 3] intrinsics; viewmats: [C, 4, 4] world-to-camera.
        box: [2, 3] lower and upper corner of the region to carve, in world units.
        max_voxels: the grid's size; the voxel edge follows from the box.
        tolerance: a voxel may miss this many of the silhouettes that see it.
        min_seen: a voxel must be seen by at least this fraction of the views (the corners of the
            box that few photos show cannot be carved away).

    Returns:
        (centres [V, 3] of the kept voxels, voxel edge, info dict). A voxel seen by no view is
        dropped, and so is one seen by fewer than `min_seen` of the views. Each silhouette is
        widened by the voxel's projected half-size first, so a structure thinner than a voxel is
        kept where it is seen.
    """
    from scipy.ndimage import binary_dilation

    box = np.asarray(box, np.float64)
    ext = np.maximum(box[1] - box[0], 1e-9)
    edge = float((np.prod(ext) / max_voxels) ** (1 / 3))
    n = np.maximum(np.ceil(ext / edge).astype(int), 1)
    axes = [box[0, i] + (np.arange(n[i]) + 0.5) * edge for i in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)
    alive = np.arange(len(pts))
    misses = np.zeros(len(pts), np.int32)
    seen = np.zeros(len(pts), np.int32)
    it = range(len(silhouettes))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="carving", unit="view")
    for c in it:
        sil = silhouettes[c]
        H, W = sil.shape
        p = pts[alive]
        cam = p @ viewmats[c, :3, :3].T + viewmats[c, :3, 3]
        z = cam[:, 2]
        front = z > 1e-9
        uv = (cam[:, :2] / np.where(front, z, 1.0)[:, None]) @ Ks[c, :2, :2].T + Ks[c, :2, 2]
        # widen by the voxel's projected half-diagonal at the box's distance
        zmed = float(np.median(z[front])) if front.any() else 1.0
        r = int(np.ceil(0.87 * edge * Ks[c, 0, 0] / max(zmed, 1e-9)))
        wide = binary_dilation(sil, iterations=r) if r > 0 else sil
        ui, vi = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = front & (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
        hit = np.zeros(len(p), bool)
        hit[inside] = wide[vi[inside], ui[inside]]
        seen[alive] += inside
        misses[alive] += inside & ~hit
        keep = misses[alive] <= tolerance
        alive = alive[keep]
    need = max(1, int(np.ceil(min_seen * len(silhouettes))))
    kept = alive[seen[alive] >= need]
    info = {"grid": [int(v) for v in n], "voxel_size": edge, "kept_voxels": int(len(kept)),
            "tolerance": int(tolerance), "min_seen": need, "box": box.tolist()}
    return pts[kept], edge, info


def _box_of(meta: dict, centres: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, str]:
    for key in ("bounding_box", "workspace"):
        b = meta.get(key)
        if isinstance(b, dict) and all(k in b for k in "xyz"):
            try:
                lo = np.array([float(b[k][0]) for k in "xyz"])
                hi = np.array([float(b[k][1]) for k in "xyz"])
            except (TypeError, ValueError, IndexError):
                continue
            if (hi > lo).all():
                pad = 0.05 * (hi - lo)
                return np.stack([lo - pad, hi + pad]), f"metadata/images.json {key} (+5 %)"
    # no box: a cube around the point nearest to every optical axis, half the ring's radius wide
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, axes):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    target = np.linalg.lstsq(A, b, rcond=None)[0]
    half = 0.5 * float(np.median(np.linalg.norm(centres - target, axis=1)))
    return np.stack([target - half, target + half]), "no box in the metadata: a cube where the cameras look"


def _ring_radius(centres: np.ndarray) -> float:
    """Mean distance of the camera centres from the axis of their ring (the normal of their plane
    through their centroid)."""
    c = centres - centres.mean(0)
    if len(c) < 3:
        return float(np.linalg.norm(c, axis=1).mean())
    normal = np.linalg.svd(c, full_matrices=False)[2][-1]
    off = c - np.outer(c @ normal, normal)
    return float(np.linalg.norm(off, axis=1).mean())


# ----------------------------------------------------------------------------------------------
# the scene


def prepare_romi(
    scan: str | Path,
    out: str | Path,
    *,
    max_size: int = 0,
    crop: str = "auto",
    units: str = "auto",
    masks: bool = True,
    max_points: int = 100_000,
    max_voxels: int = 4_000_000,
    exg_threshold: float = 0.1,
    carve_tolerance: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> RomiSummary:
    """A ROMI scan folder -> scene folder (images/, sparse/0 PINHOLE, points3D.ply, masks/,
    classes.json, units.json, prepare.json). See the module docstring for each step.

    Args:
        scan: the ROMI scan folder (images/, metadata/images/).
        out: the scene folder to write.
        max_size: longer side of the scene's frames in pixels (after cropping); 0 keeps the size.
        crop: "auto" crops the black bars at the borders (black in every photo); "none" keeps them.
        units: the scan's unit: "auto" (the default) is "mm" for a real scan (ROMI's scanner is
            calibrated in millimetres) and "model" for a virtual scan (one with organ masks, in its
            mesh's units); or "mm", "cm", "m", "model".
        masks: write the virtual scanner's organ masks as class masks (when the scan has them).
        max_points: initial points drawn in the carved voxels (at most ``POINTS_PER_VOXEL`` each).
        max_voxels: size of the carving grid.
        exg_threshold: silhouettes of photos without masks: excess green above this.
        carve_tolerance: fraction of the views that see a voxel which it may miss.
        seed: random seed of the point draw.
        overwrite: replace a scene already in `out`.

    Returns:
        RomiSummary. Raises PrepareError naming the file and the fix.
    """
    from PIL import Image

    scan, out = Path(scan), Path(out)
    if units != "auto" and units not in UNITS:
        raise PrepareError(f"--units {units!r}: use auto or one of {', '.join(UNITS)}")
    if crop not in ("auto", "none"):
        raise PrepareError(f"--crop {crop!r}: use auto or none")
    if out.resolve() == scan.resolve():
        raise PrepareError(f"{out}: OUT must be a new directory, not the scan itself.")
    existing = [p for p in ("images", "sparse") if (out / p).exists()]
    if existing and not overwrite:
        raise PrepareError(f"{out}: already holds a scene ({', '.join(existing)}). Pass --overwrite to "
                           "replace it, or choose another OUT.")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    views, meta = read_romi_scan(scan)
    n_photos = sum(1 for p in (scan / "images").iterdir() if p.stem.endswith("_rgb"))
    if n_photos > len(views):
        warnings.append(f"{n_photos - len(views)} photos have no camera in metadata/images/ and are left out")
    if units == "auto":
        units = "model" if any(v.masks for v in views) else "mm"
    sizes = {(v.width, v.height) for v in views}
    if len(sizes) > 1:
        raise PrepareError(f"{scan}: the photos' cameras have different sizes {sorted(sizes)}; s3dgs reads "
                           "scans whose photos share one camera size")

    # 1. frames: undistort, then find the black bars
    rgbs, covs = _read_undistorted(views, masks, progress)
    timings["read + undistort"] = time.perf_counter() - t0
    H, W = rgbs[0].shape[:2]
    x0, y0, x1, y1 = _black_border(rgbs) if crop == "auto" else (0, 0, W, H)
    cw, ch = x1 - x0, y1 - y0
    scale = 1.0 if max_size <= 0 or max(cw, ch) <= max_size else max_size / max(cw, ch)
    ow, oh = max(int(round(cw * scale)), 1), max(int(round(ch * scale)), 1)
    sx, sy = ow / cw, oh / ch

    # 2. write frames, masks, cameras
    t1 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").unlink(missing_ok=True)  # written last: its presence means a finished prepare
    img_dir, mask_dir = out / "images", out / "masks"
    for d in (img_dir, mask_dir):
        if d.exists():
            for p in d.iterdir():
                if p.is_file():
                    p.unlink()
    img_dir.mkdir(parents=True, exist_ok=True)
    names, Ks, viewmats, sils, frames = [], [], [], [], []
    n_masks = 0
    for v, rgb, cov in zip(views, rgbs, covs):
        fx, fy, cx, cy = _pinhole(v)
        K = np.array([[fx * sx, 0, (cx - x0) * sx], [0, fy * sy, (cy - y0) * sy], [0, 0, 1]])
        frame = _resize(np.ascontiguousarray(rgb[y0:y1, x0:x1]), (ow, oh), nearest=False)
        ext = ".png" if v.image.suffix.lower() == ".png" else ".jpg"
        name = f"{v.stem}{ext}"
        kw = {"quality": 95} if ext == ".jpg" else {}
        atomic_write(img_dir / name, lambda tmp, f=frame, kw=kw: Image.fromarray(f).save(
            tmp, format="JPEG" if ext == ".jpg" else "PNG", **kw))
        vm = np.eye(4)
        vm[:3, :3], vm[:3, 3] = v.R, v.t
        names.append(name)
        Ks.append(K)
        viewmats.append(vm)
        frames.append(frame)
        if cov is not None:
            ids = romi_class_mask({k: m[y0:y1, x0:x1] for k, m in cov.items()})
            ids = _resize(ids, (ow, oh), nearest=True)
            mask_dir.mkdir(exist_ok=True)
            atomic_write(mask_dir / f"{v.stem}.png", lambda tmp, m=ids: Image.fromarray(m).save(tmp, format="PNG"))
            sils.append((ids > 0))
            n_masks += 1
        else:
            sils.append(excess_green(frame) > exg_threshold)
    if n_masks:
        atomic_write_text(out / "classes.json", json.dumps({"table": "arabidopsis"}, indent=2) + "\n")
    else:
        (out / "classes.json").unlink(missing_ok=True)
        if mask_dir.is_dir() and not any(mask_dir.iterdir()):
            mask_dir.rmdir()
    Ks, viewmats = np.stack(Ks), np.stack(viewmats)
    timings["write frames"] = time.perf_counter() - t1

    # 3. initial points by space carving
    t2 = time.perf_counter()
    centres = np.stack([-v.R.T @ v.t for v in views])
    axes = np.stack([v.R[2] for v in views])
    box, box_src = _box_of(meta, centres, axes)
    tol = int(np.floor(carve_tolerance * len(views)))
    pts, edge, cinfo = carve(sils, Ks, viewmats, box, max_voxels=max_voxels, tolerance=tol, progress=progress)
    cinfo["box_source"] = box_src
    cinfo["silhouettes"] = "class masks" if n_masks else f"excess green > {exg_threshold}"
    if len(pts) == 0:
        warnings.append("space carving kept no voxel (are the silhouettes right? see --exg-threshold); "
                        "training starts from random points in the box")
    pts = _draw_points(pts, edge, box, max_points, seed)
    rgb = _colour_points(pts, frames, Ks, viewmats)
    write_points_ply(out / "points3D.ply", pts, rgb)
    sparse = out / "sparse" / "0"
    if sparse.exists():
        for p in sparse.iterdir():
            p.unlink()
    write_model(sparse, names, Ks, viewmats, ow, oh)
    timings["carve"] = time.perf_counter() - t2

    mpu = UNITS[units]
    atomic_write_text(out / "units.json", json.dumps(
        {"units": units, "metres_per_unit": mpu,
         "source": f"ROMI scan {scan}: calibrated poses in the scanner's units ({units})"}, indent=2) + "\n")
    summary = RomiSummary(
        scene=str(out), source="romi scan", frames_total=n_photos, frames_used=len(views),
        registered=len(views), camera_model=views[0].model, width=ow, height=oh,
        crop=[int(x0), int(y0), int(x1), int(y1)], scale=float(scale), masks=n_masks, points=int(len(pts)),
        carve=cinfo, units=units, metres_per_unit=mpu, ring_radius=_ring_radius(centres),
        timings={k: round(v, 2) for k, v in timings.items()}, warnings=warnings)
    from dataclasses import asdict

    atomic_write_text(out / "prepare.json", json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _read_undistorted(views: list[RomiView], masks: bool, progress: bool) -> tuple[list, list]:
    """Step 1: every photo read and undistorted (one pycolmap map per camera), with its organ
    coverages when `masks` and the scan has them: ``(rgbs [C] of [H, W, 3] uint8, covs [C] of
    {class: [H, W] uint8} or None)``."""
    rgbs, covs = [], []
    it = views
    if progress:
        from tqdm import tqdm

        it = tqdm(views, desc="reading the scan", unit="photo")
    maps: dict[tuple, object] = {}
    for v in it:
        img = _load_rgb(v.image)
        if img.shape[:2] != (v.height, v.width):
            raise PrepareError(f"{v.image}: the photo is {img.shape[1]}x{img.shape[0]}, its camera says "
                               f"{v.width}x{v.height}")
        key = (v.model, tuple(v.params))
        if key not in maps:
            maps[key] = _undistort_map(v)
        src = maps[key]
        rgbs.append(_remap(img, src, order=1))
        if masks and v.masks:
            c = {k: _remap(_load_coverage(p, img.shape[:2]), src, order=0) for k, p in v.masks.items()}
            covs.append(c)
        else:
            covs.append(None)
    return rgbs, covs


def _draw_points(pts: np.ndarray, edge: float, box: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Step 3: the initial points, up to POINTS_PER_VOXEL per carved voxel (jittered inside it,
    at most `max_points`), or `max_points` random points in the box when carving kept nothing."""
    rng = np.random.default_rng(seed)
    if len(pts) == 0:
        return rng.uniform(box[0], box[1], size=(max_points, 3))
    n = min(max_points, POINTS_PER_VOXEL * len(pts))  # a small plant gets fewer points
    idx = rng.choice(len(pts), size=n, replace=len(pts) < n)
    return pts[idx] + rng.uniform(-0.5, 0.5, size=(n, 3)) * edge


def _colour_points(pts: np.ndarray, frames: list[np.ndarray], Ks: np.ndarray, viewmats: np.ndarray,
                   n_views: int = 6) -> np.ndarray:
    """Each point's mean colour over up to `n_views` evenly spread views that see it (grey if none)."""
    acc = np.zeros((len(pts), 3))
    cnt = np.zeros(len(pts))
    for c in np.linspace(0, len(frames) - 1, min(n_views, len(frames))).astype(int):
        H, W = frames[c].shape[:2]
        cam = pts @ viewmats[c, :3, :3].T + viewmats[c, :3, 3]
        z = np.maximum(cam[:, 2], 1e-9)
        uv = cam[:, :2] / z[:, None] @ Ks[c, :2, :2].T + Ks[c, :2, 2]
        u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        ok = (cam[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        acc[ok] += frames[c][v[ok], u[ok]]
        cnt[ok] += 1
    out = np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], 128)
    return np.clip(out, 0, 255).astype(np.uint8)
