"""Frames, poses and the S-3DGS inputs as a torch Dataset.

A scene is a COLMAP model (read by pycolmap, `s3dgs.scene.colmap`), its images, and optional
per-frame inputs: skeleton heatmaps (`heatmaps/<stem>.npy`, [H, W, K] in [0, 1]), per-class
confidences (`confidence.json`), class masks (`masks/`), and monocular depth priors
(`depths/<stem>.png`, 16-bit, with `depths/meta.json`). Optional inputs stay optional and are
reported once.

Classes follow a class table (`s3dgs.classes`: the scene's `classes.json`, else tomato). Class
masks come in two layouts, per frame:

- `masks/<image stem>.png`: one 8-bit id per pixel; 0 background (no class), k the k-th class of
  the table (1-based, channel order), 255 unlabelled (not supervised);
- `masks/<image stem>/<class name>.png`: one 8-bit PNG per class, nonzero = that class (a class
  without a file is absent from the frame; every pixel is labelled).

A mask becomes a one-hot target `[H, W, K]` with a validity map `[H, W]` (False where unlabelled),
and confidence 1 for every class unless `confidence.json` has an entry for the frame. A frame with
both a heatmap and a mask is supervised by the mask (said once in the log).

Memory: frames are kept as uint8 and heatmaps/depth as float16; when the whole cache would exceed
`cache_bytes` the dataset loads lazily from disk instead (see benchmarks/dataset.py). Every
file is checked when the dataset is built (headers only, so building is cheap; pixel checks when a
frame is loaded), and a bad file raises `SceneError` naming the file and the fix:

- a frame must have its camera's aspect ratio (another size of the same aspect rescales K);
- heatmaps, masks and depth maps must have their frame's aspect ratio (another size is resized;
  masks by nearest neighbour);
- masks must be 8-bit, hold ids up to K or 255, and name classes of the table (folder layout);
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
from s3dgs.classes import UNLABELLED, ClassTable, load_class_table, scene_class_table
from s3dgs.depth.io import (
    DepthFileError,
    depth_format_problem,
    depth_png_header,
    depth_values_problem,
    load_depth_png,
    read_meta,
)
from s3dgs.scene.colmap import ColmapModel, SceneError, read_model
from s3dgs.scene.frames import IMAGE_SUFFIXES  # the one list of frame files

log = logging.getLogger("s3dgs")


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
    heatmap_path: Path | None  # None also when a mask supervises the frame instead
    depth_path: Path | None
    confidence: np.ndarray  # [K] float32; zeros when the frame has no entry
    has_confidence: bool
    mask_path: Path | None = None  # masks/<stem>.png (ids) or masks/<stem>/ (one PNG per class)

    @property
    def semantic_source(self) -> str | None:
        """What supervises the frame's semantics: "mask", "heatmap" or None."""
        return "mask" if self.mask_path is not None else "heatmap" if self.heatmap_path is not None else None


MIN_TRAIN_SIDE = 8
"""The smallest image side (pixels) a frame may have after ``--resolution-scale``."""


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


def _image_size(path: Path, alpha: list[str] | None = None) -> tuple[int, int]:
    """(width, height) of the frame at ``path``; its name is appended to ``alpha`` when it has a
    transparency channel."""
    try:
        with Image.open(path) as im:
            size = im.size
            if alpha is not None and has_alpha(im):
                alpha.append(path.name)
    except FileNotFoundError:
        raise SceneError(f"{path}: image listed in the COLMAP model is missing on disk. Put the frame "
                         "there or point --images-dir at the folder that holds it.") from None
    except Exception as exc:
        raise SceneError(f"{path}: unreadable image ({exc}). Replace or re-extract the frame.") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise SceneError(f"{path}: the image is {size[0]}x{size[1]} pixels (empty). Replace or re-extract the frame.")
    return size


def to_rgb8(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB. PIL's ``convert("RGB")`` clips 16-bit grey (modes I;16*, I) to 255,
    so a 16-bit grey frame would read as white: its values are scaled to 8 bits (``v / 257``)
    first. An alpha channel is dropped (the dataset says so once, :func:`has_alpha`)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        if im.mode == "I" and a.max(initial=0) > 65535:  # 32-bit integers: scale by their own range
            a = a * (255.0 / a.max())
        else:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB") if im.mode != "RGB" else im


def has_alpha(im: Image.Image) -> bool:
    """Whether ``im`` has a transparency channel (RGBA, LA, PA, or a palette with transparency)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


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
    """``{frame stem: [K] float32}``; NaN for a class the entry does not name (0 for a heatmap
    frame: gated off; 1 for a mask frame: a mask is certain of the classes it is not told about)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: confidence file not found. Make it with `s3dgs heatmaps` or pass "
                         "confidence_path=None (all classes gated off).")
    if path.is_dir():
        raise SceneError(f"{path}: is a folder, not the confidence file. confidence.json maps frame stems to "
                         "per-class confidences; make it with `s3dgs heatmaps`, or move the folder away.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path}: malformed JSON ({exc}). Expected "
                         '{"<frame stem>": {"U": 0.9, "N": 0.8, "D": 0.85, "P": 0.75}, ...}') from exc
    if not isinstance(raw, dict):
        raise SceneError(f"{path}: expected an object mapping frame stems to per-class confidences, got "
                         f"{type(raw).__name__}")
    out = {}
    unknown: dict[str, str] = {}  # class name -> first entry naming it
    for stem, entry in raw.items():
        if not isinstance(entry, dict):
            raise SceneError(f"{path}: entry {stem!r} must map classes to numbers, got {entry!r}")
        try:
            given = [float(entry[c]) for c in classes if c in entry]
            vals = np.array([float(entry[c]) if c in entry else np.nan for c in classes], np.float32)
        except (TypeError, ValueError) as exc:
            raise SceneError(f"{path}: entry {stem!r} holds a non-numeric confidence ({exc})") from exc
        if not np.isfinite(given).all():
            raise SceneError(f"{path}: entry {stem!r} holds NaN or inf")
        bad = [f"{c}={v:g}" for c, v in zip([c for c in classes if c in entry], given) if not 0.0 <= v <= 1.0]
        if bad:
            raise SceneError(f"{path}: entry {stem!r} holds confidences outside [0, 1] ({', '.join(bad)}); a "
                             "confidence is a probability. Regenerate the file with `s3dgs heatmaps`.")
        for c in entry:
            if c not in classes:
                unknown.setdefault(str(c), str(stem))
        out[Path(stem).stem] = vals
    if unknown:
        names = ", ".join(f"{c!r} (first in {s!r})" for c, s in list(unknown.items())[:5])
        warnings.warn(f"{path}: class name(s) {names} are not in the class table ({', '.join(classes)}); "
                      "those confidences are ignored. Check the spelling, or the scene's classes.json.",
                      stacklevel=3)
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


_MASK_FIX = ("Write masks/<image stem>.png with one 8-bit id per pixel (0 background, k = the k-th class "
             "of the table, 255 unlabelled), or masks/<image stem>/<class name>.png, one 8-bit PNG per class "
             "(nonzero = that class).")


def _png_header(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception as exc:
        raise SceneError(f"{path}: unreadable class mask ({exc}). {_MASK_FIX}") from exc


def _check_mask_png(path: Path, image: Path, size: tuple[int, int]) -> None:
    """Header checks of one mask PNG: 8-bit, the frame's aspect ratio."""
    mode, msize = _png_header(path)
    if mode not in ("L", "P", "1"):
        raise SceneError(f"{path}: class mask has PIL mode {mode!r}, not 8-bit (L or P). {_MASK_FIX}")
    if not _same_aspect(msize, size):
        raise SceneError(f"{path}: class mask is {msize[0]}x{msize[1]} but image {image.name} is "
                         f"{size[0]}x{size[1]}, another aspect ratio. Make the masks from these frames "
                         "(a mask of the same aspect ratio at another size is resized).")


def _find_mask(mask_dir: Path, stem: str, table: ClassTable, image: Path, size: tuple[int, int]) -> Path | None:
    """The frame's mask (``<stem>.png`` or ``<stem>/``) after the header checks, or None."""
    ids, folder = mask_dir / f"{stem}.png", mask_dir / stem
    if ids.is_file() and folder.is_dir():
        raise SceneError(f"{mask_dir}: frame {stem} has both {ids.name} and {folder.name}/; keep one "
                         "layout per frame.")
    if ids.is_file():
        _check_mask_png(ids, image, size)
        return ids
    if folder.is_dir():
        files = sorted(folder.glob("*.png"))
        unknown = [f.name for f in files if f.stem not in table.names]
        if unknown:
            raise SceneError(f"{folder}: {', '.join(unknown)} name(s) no class of the {table.name!r} table "
                             f"({', '.join(table.names)}). Rename the files <class name>.png, or choose "
                             "the scene's table in SCENE/classes.json or with --class-table.")
        for f in files:
            _check_mask_png(f, image, size)
        return folder
    return None


def resize_nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W, ...]``, sampling at pixel centres (masks: no new ids)."""
    H, W = a.shape[:2]
    if (H, W) == (h, w):
        return a
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return a[ys][:, xs]


def load_mask(path: str | Path, table: ClassTable, height: int | None = None,
              width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A frame's class mask as ``(target [H, W, K] uint8 0/1, valid [H, W] bool)``.

    ``path``: ``<stem>.png`` (ids: 0 background, k = class k of ``table``, 255 unlabelled -> not
    valid) or a folder ``<stem>/`` of ``<class name>.png`` (nonzero = that class; every pixel valid;
    a class may be missing, all its files must have one size). ``height, width``: resize (nearest)
    to this size. Raises SceneError naming the file for ids above K other than 255 or unknown
    class files.
    """
    path = Path(path)
    k = len(table)
    try:
        if path.is_dir():
            planes, size = {}, None
            for f in sorted(path.glob("*.png")):
                if f.stem not in table.names:
                    raise SceneError(f"{f}: names no class of the {table.name!r} table "
                                     f"({', '.join(table.names)}). {_MASK_FIX}")
                with Image.open(f) as im:
                    a = np.asarray(im)
                if a.ndim != 2:
                    raise SceneError(f"{f}: class mask must be one 8-bit channel, got shape {a.shape}. {_MASK_FIX}")
                if size is not None and a.shape != size:
                    raise SceneError(f"{f}: is {a.shape[1]}x{a.shape[0]} but the other class files of "
                                     f"{path.name}/ are {size[1]}x{size[0]}; give every class file one size.")
                size = a.shape
                planes[f.stem] = a != 0
            if size is None:
                size = (height, width) if height and width else (1, 1)
            target = np.stack([planes.get(c, np.zeros(size, bool)) for c in table.names], -1).astype(np.uint8)
            valid = np.ones(size, bool)
        else:
            with Image.open(path) as im:
                ids = np.asarray(im)
            if ids.ndim != 2:
                raise SceneError(f"{path}: class mask must be one 8-bit channel, got shape {ids.shape}. "
                                 f"{_MASK_FIX}")
            bad = (ids > k) & (ids != UNLABELLED)
            if bad.any():
                found = sorted(int(v) for v in np.unique(ids[bad]))
                raise SceneError(f"{path}: class mask holds id(s) {', '.join(map(str, found[:8]))} but the "
                                 f"{table.name!r} table has {k} classes ({', '.join(table.names)}: ids 1-{k}; "
                                 "0 background, 255 unlabelled). Fix the mask or choose the scene's table in "
                                 "SCENE/classes.json or with --class-table.")
            valid = ids != UNLABELLED
            target = (ids[..., None] == np.arange(1, k + 1, dtype=ids.dtype)).astype(np.uint8)
    except SceneError:
        raise
    except Exception as exc:
        raise SceneError(f"{path}: unreadable class mask ({exc}). {_MASK_FIX}") from exc
    if height and width and target.shape[:2] != (height, width):
        target = resize_nearest(target, height, width)
        valid = resize_nearest(valid, height, width)
    return np.ascontiguousarray(target), np.ascontiguousarray(valid)


class SceneDataset(torch.utils.data.Dataset):
    """One COLMAP scene with optional heatmaps, confidences and depth priors.

    Items are dicts:
        image [H, W, 3] float32 in [0, 1]; heatmap [H, W, K] float32: the semantic target, the
        heatmap or the one-hot class mask (zeros when absent); semantic_valid [H, W] bool (False on
        unlabelled mask pixels); semantic_source "mask", "heatmap" or "" (none);
        confidence [K] float32 (zeros when absent: the frame's classes are gated off; ones for a
        mask frame without an entry); has_heatmap bool (a heatmap is the target), has_mask bool;
        depth [H, W] float32 (only when the frame has one) and depth_kind str;
        viewmat [4, 4] float32 world-to-camera; K [3, 3] float32; width, height; image_id; name; index.

    Args:
        colmap_dir: COLMAP model (binary or text; scene, sparse/ or sparse/0 accepted).
        images_dir: folder of the frames named in the model.
        heatmap_dir, confidence_path, depth_dir: optional S-3DGS inputs.
        mask_dir: optional class masks (see the module docstring); they take precedence over
            heatmaps for a frame that has both.
        resolution_scale: rescales images, heatmaps, depth and K consistently (e.g. 0.5).
        split: "all", "train" or "test"; test_every: every n-th frame (sorted by name) held out.
        classes: heatmap channel order (when no ``class_table`` is given).
        class_table: a `s3dgs.classes.ClassTable`, a built-in name or a JSON file; sets ``classes``.
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
        mask_dir: str | Path | None = None,
        class_table: ClassTable | str | Path | None = None,
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
        if class_table is not None:
            self.class_table = load_class_table(class_table)
            classes = self.class_table.names
        else:
            from s3dgs.classes import run_class_table

            self.class_table = run_class_table({}, tuple(classes))
        self.classes = tuple(classes)
        self.mask_dir = Path(mask_dir) if mask_dir else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise SceneError(f"{self.mask_dir}: class mask folder does not exist. Point mask_dir at the "
                             "folder holding <image stem>.png masks, or leave it out.")
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
        missing_hm = missing_depth = missing_conf = n_masks = 0
        both: list[str] = []
        alpha_frames: list[str] = []
        rescaled_note = False
        for idx in keep:
            v = self.model.views[idx]
            path = _find_image(self.images_dir, v.name)
            w0, h0 = _image_size(path, alpha_frames)
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
            if min(W, H) < MIN_TRAIN_SIDE:
                from s3dgs.errors import UsageError

                raise UsageError(f"--resolution-scale {self.resolution_scale:g} makes {path.name} ({w0}x{h0}) "
                                 f"{W}x{H} pixels, below the smallest size of {MIN_TRAIN_SIDE} pixels a side; use "
                                 f"--resolution-scale {MIN_TRAIN_SIDE / min(w0, h0):.3g} or more.")
            K[0] *= W / w0
            K[1] *= H / h0
            stem = Path(v.name).stem
            hm = mp = None
            if self.mask_dir is not None:
                mp = _find_mask(self.mask_dir, stem, self.class_table, path, (w0, h0))
                n_masks += mp is not None
            if self.heatmap_dir is not None:
                cand = self.heatmap_dir / f"{stem}.npy"
                if cand.exists() and mp is not None:
                    both.append(stem)  # the mask takes precedence; the heatmap is not read
                elif cand.exists():
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
                c, has_c = np.nan_to_num(conf[stem], nan=1.0 if mp is not None else 0.0), True
            elif mp is not None:  # a mask is certain of every class unless confidence.json says otherwise
                c, has_c = np.ones(len(self.classes), np.float32), False
            else:
                c, has_c = np.zeros(len(self.classes), np.float32), False
                if confidence_path is not None:
                    missing_conf += 1
            frames.append(Frame(index=len(frames), image_id=v.image_id, name=v.name, stem=stem,
                                image_path=path, width=W, height=H, K=K, viewmat=v.viewmat.copy(),
                                heatmap_path=hm, depth_path=dp, confidence=c, has_confidence=has_c,
                                mask_path=mp))
        self.frames = frames
        self._warned_depth_resize = False
        if alpha_frames and verbose:
            warnings.warn(f"{len(alpha_frames)} frame(s) in {self.images_dir} have an alpha channel ("
                          f"{', '.join(alpha_frames[:3])}{', ...' if len(alpha_frames) > 3 else ''}); it is "
                          "dropped: s3dgs trains on the colour as stored, transparent pixels included. "
                          "Composite the frames on a background first if the transparency matters.",
                          stacklevel=2)

        n = len(frames)
        per_frame = sum(f.width * f.height * (3 + 2 * len(self.classes) * (f.heatmap_path is not None)
                                              + (len(self.classes) + 1) * (f.mask_path is not None)
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
            "masks": n_masks, "classes": self.class_table.name,
            "resolution": f"{frames[0].width}x{frames[0].height}" if frames else "-",
        }
        if verbose and n:
            parts = [f"{n} frames ({split}, {self.summary['resolution']})"]
            parts.append(f"heatmaps {self.summary['heatmaps']}/{n}" if self.heatmap_dir else "no heatmaps")
            if self.mask_dir is not None:
                parts.append(f"class masks {n_masks}/{n} ({self.class_table.name} classes: "
                             f"{', '.join(self.classes)})")
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
        if both and verbose:
            log.info("dataset: %d frame(s) have both a heatmap and a class mask (%s%s); the masks are used "
                     "(masks take precedence)", len(both), ", ".join(both[:3]), ", ..." if len(both) > 3 else "")
        self.both_heatmap_and_mask = both
        if cache == "memory":
            for i in range(n):
                self._cache[i] = self._load_compact(i)

    @classmethod
    def from_dir(cls, scene: str | Path, **kwargs) -> SceneDataset:
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
        if "mask_dir" not in kwargs and (scene / "masks").is_dir():
            kwargs["mask_dir"] = scene / "masks"
        if "class_table" not in kwargs and "classes" not in kwargs:
            kwargs["class_table"] = scene_class_table(scene)
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
                im = to_rgb8(im)
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
        if f.mask_path is not None:
            out["mask"], out["mask_valid"] = load_mask(f.mask_path, self.class_table, f.height, f.width)
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
            "has_heatmap": f.heatmap_path is not None, "has_mask": f.mask_path is not None,
            "semantic_source": f.semantic_source or "",
            "viewmat": torch.from_numpy(f.viewmat.astype(np.float32)),
            "K": torch.from_numpy(f.K.astype(np.float32)),
            "width": f.width, "height": f.height,
            "image_id": f.image_id, "name": f.name, "index": i,
        }
        if "mask" in data:
            item["heatmap"] = torch.from_numpy(data["mask"].astype(np.float32))
            item["semantic_valid"] = torch.from_numpy(data["mask_valid"].copy())
        elif "heatmap" in data:
            item["heatmap"] = torch.from_numpy(data["heatmap"].astype(np.float32))
        else:
            item["heatmap"] = torch.zeros(f.height, f.width, len(self.classes))
        if "semantic_valid" not in item:
            item["semantic_valid"] = torch.ones(f.height, f.width, dtype=torch.bool)
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
