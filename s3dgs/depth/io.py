"""Depth-prior files: 16-bit PNGs of per-image normalised disparity, and depths/meta.json.

Format (DESIGN.md, the seed, and official 3DGS depth regularisation agree): one single-channel
16-bit PNG per image, same stem as the image, the prior normalised to [0, 1] per image and stored
as round(v * 65535). Near is bright (disparity) unless meta.json says `"kind": "depth"`.
Writes are atomic (temporary file in the same folder, then rename): an interrupted run never
leaves a half-written map behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

META_NAME = "meta.json"


class DepthFileError(ValueError):
    """A depth file is missing, unreadable or malformed; the message names the file and the fix."""


def normalise01(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max normalise finite values to [0, 1].

    Returns:
        (normalised [H, W] float32, raw min, raw max). A constant map gives zeros, not NaNs.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        raise DepthFileError("depth prediction has no finite value")
    lo, hi = float(v[finite].min()), float(v[finite].max())
    out = np.zeros_like(v, dtype=np.float32)
    if hi > lo:
        out = ((np.where(finite, v, lo) - lo) / (hi - lo)).astype(np.float32)
    return out, lo, hi


def _atomic_write(path: Path, write_fn) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_depth_png(path: str | Path, values01: np.ndarray) -> None:
    """Write `values01` [H, W] (in [0, 1]) as a 16-bit PNG, atomically."""
    v = np.clip(np.nan_to_num(np.asarray(values01, np.float64), nan=0.0), 0.0, 1.0)
    arr = np.round(v * 65535.0).astype(np.uint16)
    _atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def load_depth_png(path: str | Path) -> np.ndarray:
    """Read a depth-prior PNG into float32 [H, W] in [0, 1] (16-bit: /65535, 8-bit: /255)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DepthFileError(f"{path}: depth map not found") from None
    except Exception as exc:
        raise DepthFileError(f"{path}: unreadable PNG ({exc}); delete it and regenerate with "
                             "`s3dgs depth`") from exc
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == np.uint16 or arr.dtype == np.int32 or arr.max(initial=0) > 255:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    else:
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise DepthFileError(f"{path}: depth map holds NaN or inf; regenerate it with `s3dgs depth`")
    return out


def read_meta(depth_dir: str | Path) -> dict:
    """Read depths/meta.json; missing file means the conventional default (disparity)."""
    p = Path(depth_dir) / META_NAME
    if not p.exists():
        return {"kind": "disparity"}
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DepthFileError(f"{p}: malformed JSON ({exc}); fix or delete it (kind defaults to "
                             "disparity)") from exc
    if meta.get("kind", "disparity") not in ("disparity", "depth"):
        raise DepthFileError(f"{p}: \"kind\" must be \"disparity\" or \"depth\", got {meta.get('kind')!r}")
    meta.setdefault("kind", "disparity")
    return meta


def write_meta(depth_dir: str | Path, meta: dict) -> None:
    """Write depths/meta.json atomically."""
    p = Path(depth_dir) / META_NAME
    text = json.dumps(meta, indent=2, sort_keys=True)
    _atomic_write(p, lambda tmp: Path(tmp).write_text(text))
