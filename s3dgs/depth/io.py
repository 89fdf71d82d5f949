"""Depth-prior files: 16-bit PNGs of per-image normalised disparity, and depths/meta.json.

Format (docs/ARCHITECTURE.md, the original integration guide, and official 3DGS depth regularisation agree): one single-channel
16-bit PNG per image, same stem as the image, the prior normalised to [0, 1] per image and stored
as round(v * 65535). Near is bright (disparity) unless meta.json says `"kind": "depth"`.
Writes are atomic (s3dgs.atomic: temporary file in the same folder, then rename, usual 0644-style
permissions): an interrupted run never leaves a half-written map behind.

What makes a map usable is decided in one place, `depth_format_problem` and `depth_values_problem`
(through `check_depth_png`): `s3dgs depth verify` reports it, and the training dataset refuses such
maps (8-bit, constant) unless it is told to accept weak maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.errors import S3dgsError

META_NAME = "meta.json"
PNG_INFO_KEY = "s3dgs-depth"


class DepthFileError(S3dgsError, ValueError):
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


def save_depth_png(path: str | Path, values01: np.ndarray, *, info: dict | None = None,
                   compress_level: int = 6) -> None:
    """Write `values01` [H, W] (in [0, 1]) as a 16-bit PNG, atomically.

    A uint16 array is written as is. `info` (JSON-able) goes into a PNG text chunk (key
    `s3dgs-depth`), which readers of plain 16-bit PNGs (OpenCV, official 3DGS) ignore; it makes each
    map self-describing so meta.json can be rebuilt after an interrupted run.
    """
    arr = np.asarray(values01)
    if arr.dtype != np.uint16:
        v = np.clip(np.nan_to_num(arr.astype(np.float64), nan=0.0), 0.0, 1.0)
        arr = np.round(v * 65535.0).astype(np.uint16)
    pnginfo = None
    if info is not None:
        pnginfo = PngInfo()
        pnginfo.add_text(PNG_INFO_KEY, json.dumps(info, sort_keys=True))
    atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(
        tmp, format="PNG", pnginfo=pnginfo, compress_level=compress_level))


def encode_disparity(raw: np.ndarray, rel_eps: float = 1e-6) -> tuple[np.ndarray, float, float]:
    """Raw prediction [H, W] -> (uint16 [H, W] = round((raw - min) / (max - min) * 65535), min, max).

    Raises DepthFileError when the prediction has no finite value or is constant: a range at or
    below `rel_eps` times its magnitude is float rounding, not signal. Tiny but real ranges (random
    weights give ~1e-7) are kept: the normalisation is relative. NaN/inf pixels become 0.
    """
    v = np.asarray(raw)
    v = v.astype(np.float32 if v.dtype.itemsize <= 4 else np.float64, copy=False)
    finite = np.isfinite(v)
    all_finite = bool(finite.all())
    if not all_finite and not finite.any():
        raise DepthFileError("prediction has no finite value")
    lo = float(v.min() if all_finite else v[finite].min())
    hi = float(v.max() if all_finite else v[finite].max())
    if not hi - lo > rel_eps * max(abs(lo), abs(hi)) or hi == lo:
        raise DepthFileError(f"prediction is constant (all values {lo:.6g}); nothing to normalise "
                             "(broken model weights, or a blank input image?)")
    scale = 65535.0 / (hi - lo)
    if scale > 1e30:  # float32 would overflow
        v = v.astype(np.float64)
    out = (v - lo) * scale + 0.5
    if not all_finite:
        out = np.where(finite, out, 0.0)
    return np.clip(out, 0, 65535).astype(np.uint16), lo, hi


def read_depth_info(path: str | Path) -> dict | None:
    """The `s3dgs-depth` text chunk written by `save_depth_png(info=...)`, or None."""
    try:
        with Image.open(path) as im:
            text = im.info.get(PNG_INFO_KEY)
    except Exception:
        return None
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def depth_format_problem(mode: str, ndim: int = 2) -> str | None:
    """Why a PNG of PIL mode `mode` is not a depth map s3dgs trusts (None when it is): 16-bit single
    channel only. An 8-bit map holds 256 levels, too coarse for a depth prior (steps of 0.4 % of
    the range, visible as terraces in the loss)."""
    if mode not in SIXTEEN_BIT_MODES or ndim != 2:
        if mode.endswith(";16"):  # PIL reads 16-bit colour as 8 bits: `png_mode` names it
            return f"not a 16-bit single-channel PNG (16-bit colour, {mode[:-3]}: three channels, not one)"
        bits = "8-bit " if mode in ("L", "P", "RGB", "RGBA", "LA", "1") else ""
        return f"not a 16-bit single-channel PNG ({bits}mode {mode})"
    return None


def depth_values_problem(values: np.ndarray) -> str | None:
    """Why decoded depth values carry no signal (None when they do): a constant map."""
    arr = np.asarray(values)
    if arr.size == 0 or arr.min() == arr.max():
        return "constant map"
    return None


def check_depth_png(path: str | Path, size: tuple[int, int] | None = None) -> str | None:
    """Why `path` is not a valid depth map, or None when it is.

    Valid: readable to the end, single-channel 16-bit, `size` = (width, height) when given,
    and not constant (`depth_format_problem`, `depth_values_problem`).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        with Image.open(path) as im:
            mode, got = im.mode, im.size
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    problem = depth_format_problem(png_mode(path, mode), arr.ndim)
    if problem:
        return problem
    if size is not None and tuple(got) != tuple(size):
        return f"size {got[0]}x{got[1]} differs from the image's {size[0]}x{size[1]}"
    return depth_values_problem(arr)


def png_mode(path: str | Path, mode: str) -> str:
    """PIL's ``mode`` of the image at ``path``, with ``";16"`` appended for a 16-bit colour PNG (RGB,
    RGBA, LA), which PIL reads as 8 bits and names like an 8-bit one. Reads the PNG header's bit
    depth (byte 24 of the file), which PIL does not expose."""
    if mode not in ("RGB", "RGBA", "LA"):
        return mode
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return mode
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16:
        return mode + ";16"
    return mode


def depth_png_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) of a depth PNG from its header, without decoding the pixels
    (mode per :func:`png_mode`: ``"RGB;16"`` for 16-bit colour)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return png_mode(path, im.mode), im.size
    except FileNotFoundError:
        raise DepthFileError(f"{path}: depth map not found") from None
    except Exception as exc:
        raise DepthFileError(f"{path}: unreadable PNG ({exc}); delete it and regenerate with "
                             "`s3dgs depth`") from exc


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
    atomic_write_text(Path(depth_dir) / META_NAME, json.dumps(meta, indent=2, sort_keys=True))
