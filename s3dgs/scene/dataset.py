"""Frames, poses and the S-3DGS inputs as a torch Dataset.

A scene is a COLMAP model (read by pycolmap, `s3dgs.scene.colmap`), its images, and optional
per-frame inputs: skeleton heatmaps (`heatmaps/<stem>.npy`, [H, W, K] in [0, 1]), per-class
confidences (`confidence.json`), and monocular depth priors (`depths/<stem>.png`, 16-bit, with
`depths/meta.json`). Optional inputs stay optional and are reported once.

Memory: frames are kept as uint8 and heatmaps/depth as float16; when the whole cache would exceed
`cache_bytes` the dataset loads lazily from disk instead (see benchmarks/dataset.py). Every
file is checked when the dataset is built (headers only, so building is cheap; pixel checks when a
frame is loaded), and a bad file raises `SceneError` naming the file and the fix:

- a frame must have its camera's aspect ratio (another size of the same aspect rescales K);
- heatmaps and depth maps must have their frame's aspect ratio (another size is resized);
- heatmaps must hold values in [0, 1] (a map in 0..255 is refused, not clipped);
- depth maps must be 16-bit and not constant, the check of `s3dgs depth verify`
  (`s3dgs.depth.io.depth_format_problem` / `depth_values_problem`), unless the dataset is built
  with `allow_weak_depth=True`.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s3dgs import CLASSES
from s3dgs.depth.io import (
    DepthFileError,
    depth_format_problem,
    depth_png_header,
    depth_values_problem,
    load_depth_png,
    read_meta,
)
from s3dgs.scene.colmap import ColmapModel, SceneError, read_model

log = logging.getLogger("s3dgs")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


@dataclass
class Frame:
    """Static description of one frame (everything but the pixels)."""

    index: int
    image_id: int
    name: str
    stem: str
    image_path: Path
    width: int  # after resolution_scale
    height: int
    K: np.ndarray  # [3, 3] float64, after resolution_scale
    viewmat: np.ndarray  # [4, 4] float64 world-to-camera
    heatmap_path: Path | None
    depth_path: Path | None
    confidence: np.ndarray  # [K] float32; zeros when the frame has no entry
    has_confidence: bool


def split_indices(names: list[str], test_every: int = 8) -> tuple[list[int], list[int]]:
    """Train/test split over names sorted alphabetically: every `test_every`-th (index 0, 8, 16, ...)
    is held out, as 3DGS, gsplat and nerfstudio do. `test_every <= 0` keeps everything for training.

    Returns:
        (train indices, test indices) into the sorted order.
    """
    order = sorted(range(len(names)), key=lambda i: names[i])
    if test_every <= 0:
        return order, []
    test = [i for r, i in enumerate(order) if r % test_every == 0]
    train = [i for r, i in enumerate(order) if r % test_every != 0]
    return train, test


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise SceneError(f"{path}: image listed in the COLMAP model is missing on disk. Put the frame "
                         "there or point --images-dir at the folder that holds it.") from None
    except Exception as exc:
        raise SceneError(f"{path}: unreadable image ({exc}). Replace or re-extract the frame.") from exc


def _find_image(images_dir: Path, name: str) -> Path:
    p = images_dir / name
    if p.exists():
        return p
    # Same stem, another extension (frames re-encoded after SfM).
    for suf in IMAGE_SUFFIXES:
        q = (images_dir / name).with_suffix(suf)
        if q.exists():
            return q
    return p  # _image_size raises the clear error


def _read_confidence(path: Path | None, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: confidence file not found. Make it with `s3dgs heatmaps` or pass "
                         "confidence_path=None (all classes gated off).")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path}: malformed JSON ({exc}). Expected "
                         '{"<frame stem>": {"U": 0.9, "N": 0.8, "D": 0.85, "P": 0.75}, ...}') from exc
    if not isinstance(raw, dict):
        raise SceneError(f"{path}: expected an object mapping frame stems to per-class confidences, got "
                         f"{type(raw).__name__}")
    out = {}
    for stem, entry in raw.items():
        if not isinstance(entry, dict):
            raise SceneError(f"{path}: entry {stem!r} must map classes to numbers, got {entry!r}")
        try:
            vals = np.array([float(entry.get(c, 0.0)) for c in classes], np.float32)
        except (TypeError, ValueError) as exc:
            raise SceneError(f"{path}: entry {stem!r} holds a non-numeric confidence ({exc})") from exc
        if not np.isfinite(vals).all():
            raise SceneError(f"{path}: entry {stem!r} holds NaN or inf")
        out[Path(stem).stem] = vals
    return out


def _same_aspect(a: tuple[int, int], b: tuple[int, int], tol: float = 0.01) -> bool:
    """Whether sizes a and b = (width, height) have one aspect ratio (to `tol`, relative)."""
    sx, sy = a[0] / b[0], a[1] / b[1]
    return abs(sx - sy) <= tol * max(sx, sy)


def _weak_depth_message(path: Path, problem: str) -> str:
    return (f"{path}: depth map is {problem}. A weak prior (8-bit: 256 levels; constant: no signal) "
            f"would mislead the depth loss. Regenerate it with `s3dgs depth IMAGES {path.parent}` "
            f"(16-bit maps), check the folder with `s3dgs depth verify {path.parent}`, or accept weak "
            "maps with --allow-weak-depth.")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r")
        return arr.shape, arr.dtype
    except Exception as exc:
        raise SceneError(f"{path}: unreadable heatmap ({exc}). Regenerate it with `s3dgs heatmaps`.") from exc


class SceneDataset(torch.utils.data.Dataset):
    """One COLMAP scene with optional heatmaps, confidences and depth priors.

    Items are dicts:
        image [H, W, 3] float32 in [0, 1]; heatmap [H, W, K] float32 (zeros when absent);
        confidence [K] float32 (zeros when absent: the frame's classes are gated off);
        has_heatmap bool; depth [H, W] float32 (only when the frame has one) and depth_kind str;
        viewmat [4, 4] float32 world-to-camera; K [3, 3] float32; width, height; image_id; name; index.

    Args:
        colmap_dir: COLMAP model (binary or text; scene, sparse/ or sparse/0 accepted).
        images_dir: folder of the frames named in the model.
        heatmap_dir, confidence_path, depth_dir: optional S-3DGS inputs.
        resolution_scale: rescales images, heatmaps, depth and K consistently (e.g. 0.5).
        split: "all", "train" or "test"; test_every: every n-th frame (sorted by name) held out.
        classes: heatmap channel order.
        cache: "auto" (keep compact arrays in memory when they fit `cache_bytes`), "memory" or "none".
        allow_weak_depth: accept 8-bit and constant depth maps (refused by default, as
            `s3dgs depth verify` flags them).
    """

    def __init__(
        self,
        colmap_dir: str | Path,
        images_dir: str | Path,
        heatmap_dir: str | Path | None = None,
        confidence_path: str | Path | None = None,
        depth_dir: str | Path | None = None,
        *,
        resolution_scale: float = 1.0,
        split: str = "all",
        test_every: int = 8,
        classes: tuple[str, ...] = CLASSES,
        cache: str = "auto",
        cache_bytes: int = 2 * 1024**3,
        verbose: bool = True,
        allow_weak_depth: bool = False,
    ):
        if split not in ("all", "train", "test"):
            raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
        if not resolution_scale > 0:
            raise ValueError(f"resolution_scale must be > 0, got {resolution_scale}")
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise SceneError(f"{self.images_dir}: images folder does not exist.")
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir else None
        self.depth_dir = Path(depth_dir) if depth_dir else None
        self.classes = tuple(classes)
        self.resolution_scale = float(resolution_scale)
        self.allow_weak_depth = bool(allow_weak_depth)
        self.model: ColmapModel = read_model(colmap_dir)
        self.depth_meta = read_meta(self.depth_dir) if self.depth_dir and self.depth_dir.is_dir() else {}
        self.depth_kind = self.depth_meta.get("kind", "disparity")
        conf = _read_confidence(Path(confidence_path) if confidence_path else None, self.classes)

        names = [v.name for v in self.model.views]
        train_idx, test_idx = split_indices(names, test_every)
        keep = {"all": sorted(range(len(names)), key=lambda i: names[i]),
                "train": train_idx, "test": test_idx}[split]
        self.split = split

        frames: list[Frame] = []
        missing_hm = missing_depth = missing_conf = 0
        rescaled_note = False
        for idx in keep:
            v = self.model.views[idx]
            path = _find_image(self.images_dir, v.name)
            w0, h0 = _image_size(path)
            K = v.K.copy()
            if (w0, h0) != (v.width, v.height):
                sx, sy = w0 / v.width, h0 / v.height
                if not _same_aspect((w0, h0), (v.width, v.height)):
                    raise SceneError(f"{path}: image is {w0}x{h0} but its COLMAP camera "
                                     f"{v.camera_id} ({self.model.path}) is {v.width}x{v.height}, another "
                                     "aspect ratio. Use the frames the model was made from.")
                K[0] *= sx
                K[1] *= sy
                rescaled_note = True
            W = max(1, round(w0 * self.resolution_scale))
            H = max(1, round(h0 * self.resolution_scale))
            K[0] *= W / w0
            K[1] *= H / h0
            stem = Path(v.name).stem
            hm = None
            if self.heatmap_dir is not None:
                cand = self.heatmap_dir / f"{stem}.npy"
                if cand.exists():
                    shape, _ = _npy_header(cand)
                    if len(shape) != 3 or shape[2] != len(self.classes):
                        raise SceneError(f"{cand}: heatmap has shape {shape}, expected [H, W, "
                                         f"{len(self.classes)}] (channels {', '.join(self.classes)}). "
                                         "Regenerate it with `s3dgs heatmaps`.")
                    if not _same_aspect((shape[1], shape[0]), (w0, h0)):
                        raise SceneError(f"{cand}: heatmap is {shape[1]}x{shape[0]} but image {path.name} "
                                         f"is {w0}x{h0}, another aspect ratio. Regenerate heatmaps from "
                                         "keypoints of these frames.")
                    hm = cand  # another size of the same aspect is resized to the frame
                else:
                    missing_hm += 1
            dp = None
            if self.depth_dir is not None:
                cand = self.depth_dir / f"{stem}.png"
                if cand.exists():
                    try:
                        mode, dsize = depth_png_header(cand)
                    except DepthFileError as exc:
                        raise SceneError(str(exc)) from exc
                    problem = depth_format_problem(mode)
                    if problem and not self.allow_weak_depth:
                        raise SceneError(_weak_depth_message(cand, problem))
                    if not _same_aspect(dsize, (w0, h0)):
                        raise SceneError(f"{cand}: depth map is {dsize[0]}x{dsize[1]} but image "
                                         f"{path.name} is {w0}x{h0}, another aspect ratio. Regenerate it "
                                         f"from these frames: `s3dgs depth IMAGES {self.depth_dir}`.")
                    dp = cand
                else:
                    missing_depth += 1
            if stem in conf:
                c, has_c = conf[stem], True
            else:
                c, has_c = np.zeros(len(self.classes), np.float32), False
                if confidence_path is not None:
                    missing_conf += 1
            frames.append(Frame(index=len(frames), image_id=v.image_id, name=v.name, stem=stem,
                                image_path=path, width=W, height=H, K=K, viewmat=v.viewmat.copy(),
                                heatmap_path=hm, depth_path=dp, confidence=c, has_confidence=has_c))
        self.frames = frames
        self._warned_depth_resize = False

        n = len(frames)
        per_frame = sum(f.width * f.height * (3 + 2 * len(self.classes) * (f.heatmap_path is not None)
                                              + 2 * (f.depth_path is not None)) for f in frames)
        if cache == "auto":
            cache = "memory" if per_frame <= cache_bytes else "none"
        if cache not in ("memory", "none"):
            raise ValueError(f"cache must be 'auto', 'memory' or 'none', got {cache!r}")
        self.cache_mode = cache
        self._cache: dict[int, dict] = {}

        self.summary = {
            "frames": n, "split": split, "heatmaps": n - missing_hm if self.heatmap_dir else 0,
            "depth": n - missing_depth if self.depth_dir else 0, "depth_kind": self.depth_kind,
            "confidence": n - missing_conf if confidence_path else 0, "cache": cache,
            "resolution": f"{frames[0].width}x{frames[0].height}" if frames else "-",
        }
        if verbose and n:
            parts = [f"{n} frames ({split}, {self.summary['resolution']})"]
            parts.append(f"heatmaps {self.summary['heatmaps']}/{n}" if self.heatmap_dir else "no heatmaps")
            parts.append(f"depth {self.summary['depth']}/{n} ({self.depth_kind})" if self.depth_dir
                         else "no depth priors")
            if confidence_path:
                parts.append(f"confidence {self.summary['confidence']}/{n}")
            msg = "dataset: " + ", ".join(parts)
            if missing_hm or missing_depth or missing_conf:
                msg += " (frames without an input go unsupervised by that term"
                msg += "; a missing confidence entry gates that frame's classes off)" if missing_conf else ")"
            if rescaled_note:
                msg += "; images differ in size from the COLMAP cameras, K rescaled to match"
            log.info(msg)
        if cache == "memory":
            for i in range(n):
                self._cache[i] = self._load_compact(i)

    @classmethod
    def from_dir(cls, scene: str | Path, **kwargs) -> "SceneDataset":
        """Build from the conventional layout: scene/{images, sparse/0, heatmaps, confidence.json, depths}.
        Explicit keyword arguments override the conventional paths."""
        scene = Path(scene)
        if not scene.is_dir():
            raise SceneError(f"{scene}: scene folder does not exist.")
        kwargs.setdefault("colmap_dir", scene)
        kwargs.setdefault("images_dir", scene / "images")
        if "heatmap_dir" not in kwargs and (scene / "heatmaps").is_dir():
            kwargs["heatmap_dir"] = scene / "heatmaps"
        if "confidence_path" not in kwargs and (scene / "confidence.json").exists():
            kwargs["confidence_path"] = scene / "confidence.json"
        if "depth_dir" not in kwargs and (scene / "depths").is_dir():
            kwargs["depth_dir"] = scene / "depths"
        ds = cls(**kwargs)
        ds.scene_dir = scene
        return ds

    def __len__(self) -> int:
        return len(self.frames)

    # -- loading ------------------------------------------------------------------------------
    def _load_compact(self, i: int) -> dict:
        """Pixels of frame i in compact form: image uint8 [H,W,3], heatmap/depth float16."""
        f = self.frames[i]
        try:
            with Image.open(f.image_path) as im:
                im = im.convert("RGB")
                if im.size != (f.width, f.height):
                    im = im.resize((f.width, f.height), Image.Resampling.LANCZOS)
                img = np.asarray(im, dtype=np.uint8).copy()
        except Exception as exc:
            raise SceneError(f"{f.image_path}: unreadable image ({exc}). Replace or re-extract it.") from exc
        out = {"image": img}
        if f.heatmap_path is not None:
            hm = np.load(f.heatmap_path, mmap_mode="r")
            hm = np.asarray(hm, dtype=np.float32)
            if not np.isfinite(hm).all():
                raise SceneError(f"{f.heatmap_path}: heatmap holds NaN or inf. Regenerate it with "
                                 "`s3dgs heatmaps`.")
            lo, hi = float(hm.min(initial=0.0)), float(hm.max(initial=0.0))
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise SceneError(f"{f.heatmap_path}: heatmap values span [{lo:.4g}, {hi:.4g}]; heatmaps "
                                 "must lie in [0, 1]" + (" (this looks like 0..255: divide by 255)"
                                                         if hi > 1.5 and hi <= 255 and lo >= 0 else "")
                                 + ". Regenerate it with `s3dgs heatmaps`.")
            if hm.shape[:2] != (f.height, f.width):
                hm = _resize(hm, f.height, f.width)
            out["heatmap"] = np.clip(hm, 0.0, 1.0).astype(np.float16)
        if f.depth_path is not None:
            try:
                d = load_depth_png(f.depth_path)
            except DepthFileError as exc:
                raise SceneError(str(exc)) from exc
            problem = depth_values_problem(d)
            if problem and not self.allow_weak_depth:
                raise SceneError(_weak_depth_message(f.depth_path, problem))
            if d.shape != (f.height, f.width):
                h0, w0 = d.shape
                scaled = (round(w0 * self.resolution_scale), round(h0 * self.resolution_scale))
                if scaled != (f.width, f.height) and not self._warned_depth_resize:
                    warnings.warn(f"{f.depth_path}: depth map is {w0}x{h0}, frame is "
                                  f"{f.width}x{f.height} after scaling; resizing depth maps to the frames "
                                  "(monocular models often predict at another resolution). "
                                  "This warning is shown once.", stacklevel=2)
                    self._warned_depth_resize = True
                d = _resize(d[..., None], f.height, f.width)[..., 0]
            out["depth"] = d.astype(np.float16)
        return out

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        f = self.frames[i]
        data = self._cache.get(i) or self._load_compact(i)
        item = {
            "image": torch.from_numpy(data["image"]).float().div_(255.0),
            "confidence": torch.from_numpy(f.confidence.copy()),
            "has_heatmap": f.heatmap_path is not None,
            "viewmat": torch.from_numpy(f.viewmat.astype(np.float32)),
            "K": torch.from_numpy(f.K.astype(np.float32)),
            "width": f.width, "height": f.height,
            "image_id": f.image_id, "name": f.name, "index": i,
        }
        if "heatmap" in data:
            item["heatmap"] = torch.from_numpy(data["heatmap"].astype(np.float32))
        else:
            item["heatmap"] = torch.zeros(f.height, f.width, len(self.classes))
        if "depth" in data:
            item["depth"] = torch.from_numpy(data["depth"].astype(np.float32))
            item["depth_kind"] = self.depth_kind
        return item

    # -- conveniences -------------------------------------------------------------------------
    @property
    def viewmats(self) -> torch.Tensor:
        """[C, 4, 4] float32 world-to-camera of every frame."""
        return torch.from_numpy(np.stack([f.viewmat for f in self.frames]).astype(np.float32))

    @property
    def Ks(self) -> torch.Tensor:
        """[C, 3, 3] float32 intrinsics of every frame (after resolution_scale)."""
        return torch.from_numpy(np.stack([f.K for f in self.frames]).astype(np.float32))

    def camera_centers(self) -> np.ndarray:
        """[C, 3] camera centres in world coordinates."""
        return np.stack([-f.viewmat[:3, :3].T @ f.viewmat[:3, 3] for f in self.frames])


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of [H, W, C] float arrays (area-averaging when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]
    mode = "area" if h < arr.shape[0] and w < arr.shape[1] else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(t, size=(h, w), mode=mode, **kw)[0].permute(1, 2, 0).numpy()


def collate(items: list[dict]) -> dict:
    """Stack items into a batch. Depth is stacked when every item has one; otherwise missing maps
    are NaN and `has_depth [B]` says which are real (NaN pixels are ignored by the depth losses)."""
    out: dict = {}
    keys = set().union(*(it.keys() for it in items))
    for k in keys:
        vals = [it.get(k) for it in items]
        if k == "depth":
            ref = next(v for v in vals if v is not None)
            vals = [v if v is not None else torch.full_like(ref, float("nan")) for v in vals]
        if k == "depth_kind":
            out[k] = next(v for v in vals if v is not None)
            continue
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], (bool, int, float)):
            out[k] = torch.tensor(vals)
        else:
            out[k] = vals
    out["has_depth"] = torch.tensor(["depth" in it for it in items])
    return out
