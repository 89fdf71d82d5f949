"""Skeleton heatmaps from per-frame keypoint detections (`s3dgs heatmaps KEYPOINTS_DIR OUT_SCENE`).

Input: one Roboflow-style JSON file per frame, ``<stem>.json``::

    {"image": {"width": W, "height": H},
     "predictions": [{"x": cx, "y": cy, "width": bw, "height": bh, "confidence": 0.9, "class": "node",
                      "keypoints": [{"class": "U", "x": .., "y": .., "confidence": 0.8}, ...]}, ...]}

The box ``x, y`` is its centre. Keypoint and box coordinates are continuous pixel coordinates in the
convention of docs/ARCHITECTURE.md (pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``, centre at +0.5),
which is what projecting with the scene's ``K`` gives.

Output per frame: ``heatmaps/<stem>.npy`` ``[H, W, 4]`` float16 in [0, 1], channels in the order of
`s3dgs.CLASSES` = (U, N, D, P), and one entry in ``confidence.json``.

Drawing, per prediction (keypoints under ``min_confidence`` are ignored everywhere):

- line U-N in channel U and line N-D in channel D, thickness ``max(min_px, 0.40 * box width)``;
- line N-P in channel P, thickness ``max(min_px, 0.15 * box height)``;
- a Gaussian hotspot (sigma ``hotspot_sigma`` px, peak 1) at each keypoint in its own channel;
- lines and hotspots of all predictions combine by maximum; each channel is then blurred
  (Gaussian, ``blur_sigma`` px) and divided by its maximum, so it spans [0, 1] (an empty channel
  stays 0).

A line of thickness ``T`` covers the pixels whose centre lies within ``T / 2`` of the segment.
Frame confidence per class is the highest confidence of that class's keypoints in the frame
(over all predictions, including those under the threshold), 0 when the class is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from s3dgs import CLASSES
from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.scene.colmap import SceneError
from s3dgs.scene.frames import IMAGE_SUFFIXES  # the one list of frame files

LINES = (("U", "N", "U", "width", 0.40), ("N", "D", "D", "width", 0.40), ("N", "P", "P", "height", 0.15))
"""(from, to, channel, box side, fraction): the skeleton segments of one detection."""


class KeypointFileError(SceneError):
    """A keypoint JSON file is malformed; the message names the file and what is wrong."""


def _num(value, path, what) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise KeypointFileError(f"{path}: {what} must be a number, got {value!r}") from None
    if not np.isfinite(v):
        raise KeypointFileError(f"{path}: {what} is not finite ({value!r})")
    return v


def parse_predictions(data, path: str | Path = "<keypoints>") -> list[dict]:
    """Validate Roboflow-style keypoint JSON and return clean predictions.

    Args:
        data: the decoded JSON (dict with "predictions", or the list of predictions itself).
        path: the file name, used in error messages.

    Returns:
        list of {"x", "y", "width", "height", "confidence", "class",
        "keypoints": [{"class", "x", "y", "confidence"}]} with floats and class names in CLASSES.
    """
    if isinstance(data, dict):
        if "predictions" not in data:
            raise KeypointFileError(f"{path}: no \"predictions\" list (expected Roboflow-style JSON: "
                                    "{\"predictions\": [{\"x\", \"y\", \"width\", \"height\", "
                                    "\"keypoints\": [...]}]})")
        preds = data["predictions"]
    else:
        preds = data
    if not isinstance(preds, list):
        raise KeypointFileError(f"{path}: \"predictions\" must be a list, got {type(preds).__name__}")
    out = []
    for i, p in enumerate(preds):
        where = f"prediction {i}"
        if not isinstance(p, dict):
            raise KeypointFileError(f"{path}: {where} must be an object, got {type(p).__name__}")
        box = {}
        for k in ("x", "y", "width", "height"):
            if k not in p:
                raise KeypointFileError(f"{path}: {where} has no box field \"{k}\"")
            box[k] = _num(p[k], path, f"{where} \"{k}\"")
        kps = p.get("keypoints", [])
        if not isinstance(kps, list):
            raise KeypointFileError(f"{path}: {where} \"keypoints\" must be a list")
        clean = []
        for j, kp in enumerate(kps):
            kw = f"{where} keypoint {j}"
            if not isinstance(kp, dict):
                raise KeypointFileError(f"{path}: {kw} must be an object")
            cls = kp.get("class", kp.get("class_name"))
            if cls not in CLASSES:
                raise KeypointFileError(f"{path}: {kw} has class {cls!r}; expected one of {CLASSES}")
            for k in ("x", "y"):
                if k not in kp:
                    raise KeypointFileError(f"{path}: {kw} has no \"{k}\"")
            clean.append({"class": cls, "x": _num(kp["x"], path, f"{kw} x"),
                          "y": _num(kp["y"], path, f"{kw} y"),
                          "confidence": _num(kp.get("confidence", 1.0), path, f"{kw} confidence")})
        out.append({**box, "confidence": _num(p.get("confidence", 1.0), path, f"{where} confidence"),
                    "class": p.get("class", ""), "keypoints": clean})
    return out


def read_keypoints(path: str | Path) -> tuple[list[dict], tuple[int, int] | None]:
    """Read one keypoint JSON file.

    Returns:
        (predictions as in `parse_predictions`, (width, height) from its "image" field or None).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeypointFileError(f"{path}: keypoint file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeypointFileError(f"{path}: malformed JSON ({exc}); fix or delete this keypoint file") from exc
    preds = parse_predictions(data, path)
    size = None
    if isinstance(data, dict) and isinstance(data.get("image"), dict):
        img = data["image"]
        if "width" in img and "height" in img:
            size = (int(_num(img["width"], path, "image width")), int(_num(img["height"], path, "image height")))
    return preds, size


def _draw_segment(chan: np.ndarray, p0, p1, thickness: float) -> None:
    """Set to 1 the pixels of `chan [H, W]` whose centre is within thickness/2 of segment p0-p1."""
    H, W = chan.shape
    r = thickness / 2.0
    x0, x1 = min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r
    y0, y1 = min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r
    j0, j1 = max(int(np.floor(x0 - 0.5)), 0), min(int(np.ceil(x1 - 0.5)) + 1, W)
    i0, i1 = max(int(np.floor(y0 - 0.5)), 0), min(int(np.ceil(y1 - 0.5)) + 1, H)
    if j0 >= j1 or i0 >= i1:
        return
    xs = np.arange(j0, j1, dtype=np.float64) + 0.5
    ys = np.arange(i0, i1, dtype=np.float64) + 0.5
    px, py = np.meshgrid(xs, ys)
    a = np.asarray(p0, np.float64)
    d = np.asarray(p1, np.float64) - a
    dd = float(d @ d)
    if dd > 0:
        t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / dd, 0.0, 1.0)
    else:
        t = np.zeros_like(px)
    dist2 = (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2
    sub = chan[i0:i1, j0:j1]
    sub[dist2 <= r * r] = 1.0


def _draw_hotspot(chan: np.ndarray, p, sigma: float) -> None:
    """Max-combine a Gaussian of peak 1 at continuous pixel position p into `chan [H, W]`."""
    H, W = chan.shape
    r = 4.0 * sigma
    j0, j1 = max(int(np.floor(p[0] - r)), 0), min(int(np.ceil(p[0] + r)) + 1, W)
    i0, i1 = max(int(np.floor(p[1] - r)), 0), min(int(np.ceil(p[1] + r)) + 1, H)
    if j0 >= j1 or i0 >= i1:
        return
    xs = np.arange(j0, j1, dtype=np.float64) + 0.5 - p[0]
    ys = np.arange(i0, i1, dtype=np.float64) + 0.5 - p[1]
    g = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0 * sigma * sigma))
    np.maximum(chan[i0:i1, j0:j1], g, out=chan[i0:i1, j0:j1])


def keypoints_to_heatmaps(
    predictions: list[dict],
    width: int,
    height: int,
    *,
    min_confidence: float = 0.5,
    hotspot_sigma: float = 20.0,
    blur_sigma: float = 2.0,
    min_px: float = 5.0,
    off_frame: list[str] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw the skeleton heatmaps of one frame.

    Args:
        predictions: detections (see `parse_predictions`; raw dicts are validated first).
        width, height: image size in pixels.
        min_confidence: keypoints below this confidence are ignored (not drawn).
        hotspot_sigma: sigma (px) of the Gaussian at each keypoint.
        blur_sigma: sigma (px) of the per-channel blur before normalising; 0 disables it.
        min_px: minimum line thickness (px).
        off_frame: when given, the classes whose confident keypoints all lie outside the image are
            appended to it.

    Returns:
        heatmap [H, W, 4] float32 in [0, 1] (channels = CLASSES), and the frame confidence per class
        {"U": .., "N": .., "D": .., "P": ..} (highest keypoint confidence, 0 when missing, and 0 for
        a class whose keypoints all lie outside the image: an empty channel would otherwise say
        "none of this class here" with the detector's confidence).
    """
    preds = parse_predictions(predictions)  # cheap; accepts already-clean predictions too
    H, W = int(height), int(width)
    heat = np.zeros((len(CLASSES), H, W), np.float32)
    conf = {c: 0.0 for c in CLASSES}
    confident: set[str] = set()
    for p in preds:
        kp = {}
        for k in p["keypoints"]:
            conf[k["class"]] = max(conf[k["class"]], float(k["confidence"]))
            if k["confidence"] >= min_confidence:
                confident.add(k["class"])
                # Two keypoints of one class in one detection: keep the more confident.
                if k["class"] not in kp or k["confidence"] > kp[k["class"]][2]:
                    kp[k["class"]] = (k["x"], k["y"], k["confidence"])
        for a, b, ch, side, frac in LINES:
            if a in kp and b in kp:
                thick = max(min_px, frac * abs(float(p[side])))
                _draw_segment(heat[CLASSES.index(ch)], kp[a][:2], kp[b][:2], thick)
        for c, (x, y, _) in kp.items():
            _draw_hotspot(heat[CLASSES.index(c)], (x, y), hotspot_sigma)
    for c in sorted(confident):
        if not heat[CLASSES.index(c)].any():  # every keypoint of the class fell outside the image
            conf[c] = 0.0
            if off_frame is not None:
                off_frame.append(c)
    if blur_sigma > 0:
        from scipy.ndimage import gaussian_filter

        for c in range(len(CLASSES)):
            if heat[c].any():
                heat[c] = gaussian_filter(heat[c], blur_sigma, mode="constant")
    for c in range(len(CLASSES)):
        m = float(heat[c].max())
        if m > 0:
            heat[c] /= m
    np.clip(heat, 0.0, 1.0, out=heat)
    return np.ascontiguousarray(heat.transpose(1, 2, 0)), conf


def _image_size(scene: Path, stem: str) -> tuple[int, int] | None:
    for ext in IMAGE_SUFFIXES:
        p = scene / "images" / f"{stem}{ext}"
        if p.exists():
            from PIL import Image

            with Image.open(p) as im:
                return im.size
    return None


def make_heatmaps(
    keypoints_dir: str | Path,
    out_scene: str | Path,
    *,
    size: tuple[int, int] | None = None,
    dtype=np.float16,
    progress: bool = True,
    **draw_kwargs,
) -> dict[str, dict[str, float]]:
    """Turn every ``<stem>.json`` in `keypoints_dir` into ``out_scene/heatmaps/<stem>.npy``.

    The image size comes from each file's "image" field, else `size` (width, height), else the
    frame ``out_scene/images/<stem>.*``. Writes ``out_scene/confidence.json``
    ({"<stem>": {"U": .., "N": .., "D": .., "P": ..}}) and returns that dict.
    `draw_kwargs` go to `keypoints_to_heatmaps`.
    """
    keypoints_dir, out_scene = Path(keypoints_dir), Path(out_scene)
    if not keypoints_dir.is_dir():
        raise KeypointFileError(f"{keypoints_dir}: keypoint folder does not exist (expected one "
                                "Roboflow-style <stem>.json per frame)")
    files = sorted(keypoints_dir.glob("*.json"))
    if not files:
        raise KeypointFileError(f"{keypoints_dir}: no *.json keypoint files found")
    out_dir = out_scene / "heatmaps"
    out_dir.mkdir(parents=True, exist_ok=True)
    confidences: dict[str, dict[str, float]] = {}
    outside: dict[str, list[str]] = {}  # frame stem -> classes whose keypoints all lie outside it
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="heatmaps", unit="frame", leave=False)
    for f in it:
        preds, fsize = read_keypoints(f)
        wh = fsize or size or _image_size(out_scene, f.stem)
        if wh is None:
            raise KeypointFileError(f"{f}: image size unknown; add \"image\": {{\"width\", \"height\"}} "
                                    f"to the file, put the frame in {out_scene / 'images'}, or pass a size")
        off: list[str] = []
        heat, conf = keypoints_to_heatmaps(preds, wh[0], wh[1], off_frame=off, **draw_kwargs)
        if off:
            outside[f.stem] = off
        arr = heat.astype(dtype)
        atomic_write(out_dir / f"{f.stem}.npy", lambda tmp, arr=arr: _save_npy(tmp, arr))
        confidences[f.stem] = {c: round(float(conf[c]), 6) for c in CLASSES}
    atomic_write_text(out_scene / "confidence.json", json.dumps(confidences, indent=1, sort_keys=True))
    if outside:
        import warnings

        few = "; ".join(f"{s}: {', '.join(c)}" for s, c in list(outside.items())[:3])
        warnings.warn(f"{keypoints_dir}: in {len(outside)} frame(s) every keypoint of a class lies outside the "
                      f"image ({few}{'; ...' if len(outside) > 3 else ''}); that class's confidence is set to 0 "
                      "there (not supervised). Check the keypoint coordinates and the files' \"image\" size.",
                      stacklevel=2)
    return confidences


def _save_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a bare name
        np.save(fh, arr)


@dataclass
class HeatmapConfig:
    """Keypoint JSON per frame -> skeleton heatmaps (heatmaps/<stem>.npy) and confidence.json."""

    keypoints_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="KEYPOINTS_DIR")]
    """Folder of Roboflow-style <stem>.json keypoint files, one per frame."""
    out_scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_SCENE")]
    """Scene folder to write heatmaps/ and confidence.json into."""
    min_confidence: float = 0.5
    """Keypoints under this confidence are ignored."""
    hotspot_sigma: float = 20.0
    """Sigma (px) of the Gaussian hotspot at each keypoint."""
    blur_sigma: float = 2.0
    """Sigma (px) of the per-channel blur before normalising to [0, 1]; 0 disables it."""
    min_px: float = 5.0
    """Minimum line thickness in pixels."""
    float32: bool = False
    """Write float32 heatmaps instead of float16."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option."""
        from s3dgs import validate as V

        V.fraction("--min-confidence", self.min_confidence)
        V.positive("--hotspot-sigma", self.hotspot_sigma)
        V.non_negative("--blur-sigma", self.blur_sigma)
        V.non_negative("--min-px", self.min_px)


def heatmaps_main(cfg: HeatmapConfig) -> int:
    from s3dgs.atomic import check_writable_folder

    cfg.validate()
    check_writable_folder(cfg.out_scene, "OUT_SCENE", files=("confidence.json",))
    conf = make_heatmaps(cfg.keypoints_dir, cfg.out_scene, dtype=np.float32 if cfg.float32 else np.float16,
                         min_confidence=cfg.min_confidence, hotspot_sigma=cfg.hotspot_sigma,
                         blur_sigma=cfg.blur_sigma, min_px=cfg.min_px)
    print(f"wrote {len(conf)} heatmaps to {Path(cfg.out_scene) / 'heatmaps'} and "
          f"{Path(cfg.out_scene) / 'confidence.json'}")
    return 0
