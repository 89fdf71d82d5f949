"""Tiled depth inference: a prior that resolves more than one pass at the network's input size.

Depth Anything V2 sees a frame resized so its short side is 518 px; structures a few pixels wide at
that size (thin stems of a 1080p frame) are blurred into what lies behind them. Run on overlapping
crops, each resized to 518 px on its own, the network sees them larger. Each crop's prediction is
relative disparity with its own unknown scale and shift, so it is aligned (least squares in
disparity, one trimmed refit) to the full-frame prediction over the crop, and the crops are
blended with weights that ramp smoothly (squared sine) across the overlaps, so that seams do not
show. The merged map is in the full-frame prediction's units.

Pure numpy: used by `s3dgs depth --tiles` (generate.py, around any backend's predict function) and
by the simulated prior of `s3dgs synth --prior-tiles` (scene/synth.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["DEFAULT_OVERLAP", "auto_tiles", "merge_tiles", "predict_tiled", "tile_grid"]

DEFAULT_OVERLAP = 0.25
NETWORK_SHORT_SIDE = 518


def auto_tiles(height: int, width: int, short: int = NETWORK_SHORT_SIDE,
               overlap: float = DEFAULT_OVERLAP) -> int:
    """Tiles per side so that a tile's short side is at most ``short`` frame pixels, i.e. the
    network (short side ``short``) sees the frame at its native resolution or larger. 1 when the
    frame's short side is at most ``short``. Tiles keep the frame's aspect (see :func:`tile_grid`)."""
    s = min(height, width)
    if s <= short:
        return 1
    return max(1, math.ceil((s / short - overlap) / (1.0 - overlap) - 1e-9))


def _axis(length: int, n: int, overlap: float) -> list[tuple[int, int]]:
    if n <= 1:
        return [(0, length)]
    size = int(math.ceil(length / (n - (n - 1) * overlap)))
    size = min(size, length)
    starts = np.round(np.linspace(0, length - size, n)).astype(int)
    return [(int(a), int(a) + size) for a in starts]


def tile_grid(height: int, width: int, n: int, overlap: float = DEFAULT_OVERLAP) -> list[tuple[int, int, int, int]]:
    """``n`` x ``n`` overlapping tiles ``(y0, y1, x0, x1)`` covering an ``height`` x ``width`` frame.

    Tiles have the frame's aspect: along each axis ``n`` tiles of ``ceil(L / (n - (n - 1) overlap))``
    pixels, spread evenly from one border to the other, so neighbours overlap by about ``overlap``
    of a tile. ``n = 1`` is the whole frame."""
    if n < 1:
        raise ValueError(f"tile_grid: n must be >= 1 (got {n})")
    if not 0.0 < overlap < 1.0 and n > 1:
        raise ValueError(f"tile_grid: overlap must be in (0, 1) (got {overlap})")
    return [(y0, y1, x0, x1) for (y0, y1) in _axis(height, n, overlap) for (x0, x1) in _axis(width, n, overlap)]


def _ramp(length: int, lo_ramp: int, hi_ramp: int) -> np.ndarray:
    """1-D weight ``[length]``: 1 inside, ``sin^2`` ramps over the first ``lo_ramp`` and last
    ``hi_ramp`` pixels (two facing ramps over one overlap sum to 1)."""
    w = np.ones(length)
    if lo_ramp > 0:
        d = np.arange(lo_ramp)
        w[:lo_ramp] = np.sin(0.5 * np.pi * (d + 0.5) / lo_ramp) ** 2
    if hi_ramp > 0:
        d = np.arange(hi_ramp)[::-1]
        w[length - hi_ramp:] *= np.sin(0.5 * np.pi * (d + 0.5) / hi_ramp) ** 2
    return w


def _axis_weights(spans: list[tuple[int, int]]) -> list[np.ndarray]:
    out = []
    for k, (a, b) in enumerate(spans):
        lo_ramp = max(0, spans[k - 1][1] - a) if k > 0 else 0
        hi_ramp = max(0, b - spans[k + 1][0]) if k + 1 < len(spans) else 0
        out.append(_ramp(b - a, min(lo_ramp, b - a), min(hi_ramp, b - a)))
    return out


def _align(pred: np.ndarray, ref: np.ndarray, robust_k: float = 2.5) -> tuple[float, float, bool]:
    """``s * pred + t ~ ref`` over finite pixels: a median / mean-absolute-deviation start, then two
    least-squares refits on the pixels within ``robust_k`` robust sigmas (a thin structure the
    reference blurred is an outlier, not a reason to tilt the fit). Returns ``(s, t, ok)``; ``ok`` False when ``pred`` has no spread or ``s <= 0``."""
    p, g = pred.reshape(-1).astype(np.float64), ref.reshape(-1).astype(np.float64)
    m = np.isfinite(p) & np.isfinite(g)
    p, g = p[m], g[m]
    if p.size < 3:
        return 0.0, 0.0, False

    def fit(pp, gg):
        pc = pp - pp.mean()
        var = float((pc * pc).sum())
        if var <= 1e-20 * max(1.0, float((pp * pp).sum())):
            return None
        s_ = float((pc * (gg - gg.mean())).sum() / var)
        return s_, float(gg.mean() - s_ * pp.mean())

    st = fit(p, g)
    if st is None:
        return 0.0, 0.0, False
    # a robust start (3DGS's median / mean-absolute-deviation match): a thin line's few pixels of
    # high leverage tilt least squares, not medians
    mp, mg = np.median(p), np.median(g)
    dp, dg = np.mean(np.abs(p - mp)), np.mean(np.abs(g - mg))
    if dp > 1e-12 * max(1.0, abs(mp)):
        s0 = np.sign(st[0]) * dg / dp if st[0] != 0 else dg / dp
        st = (float(s0), float(mg - s0 * mp))
    for _ in range(2):
        r = np.abs(st[0] * p + st[1] - g)
        keep = r <= robust_k * 1.4826 * np.median(r) + 1e-12 * (np.abs(g).mean() + 1e-12)
        if keep.sum() < 3:
            break
        st = fit(p[keep], g[keep]) or st
    return st[0], st[1], bool(st[0] > 0)


def merge_tiles(full: np.ndarray, tiles: list[tuple[tuple[int, int, int, int], np.ndarray]],
                ) -> tuple[np.ndarray, dict]:
    """Merge tile predictions into one map in the units of ``full``.

    ``full [H, W]`` the whole-frame prediction (disparity); ``tiles``: ``((y0, y1, x0, x1), pred)``
    with ``pred [y1 - y0, x1 - x0]`` the prediction of that crop, each with its own scale and shift.
    Each tile is aligned to ``full`` over the tile (:func:`_align`); a tile that cannot be aligned
    (no spread, or a scale <= 0) is replaced by ``full`` over its extent. Weights: separable ``sin^2``
    ramps over each overlap with the neighbouring tile, 1 elsewhere and along the frame's border;
    for tiles from :func:`tile_grid` they sum to 1 everywhere. Returns ``(merged [H, W] float64,
    info)`` with ``info = {"tiles": n, "replaced": k, "scales": [...]}``.
    """
    full = np.asarray(full, dtype=np.float64)
    H, W = full.shape
    ys = sorted({(t[0][0], t[0][1]) for t in tiles})
    xs = sorted({(t[0][2], t[0][3]) for t in tiles})
    wy = dict(zip(ys, _axis_weights(ys)))
    wx = dict(zip(xs, _axis_weights(xs)))
    acc = np.zeros((H, W))
    wsum = np.zeros((H, W))
    replaced, scales = 0, []
    for (y0, y1, x0, x1), pred in tiles:
        pred = np.asarray(pred, dtype=np.float64)
        if pred.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"merge_tiles: tile {(y0, y1, x0, x1)} has a prediction of shape {pred.shape}")
        ref = full[y0:y1, x0:x1]
        s, t, ok = _align(pred, ref)
        if ok:
            aligned = s * pred + t
            scales.append(s)
        else:
            aligned = ref
            replaced += 1
        w = wy[(y0, y1)][:, None] * wx[(x0, x1)][None, :]
        acc[y0:y1, x0:x1] += w * aligned
        wsum[y0:y1, x0:x1] += w
    covered = wsum > 0
    out = np.where(covered, acc / np.where(covered, wsum, 1.0), full)
    return out, {"tiles": len(tiles), "replaced": replaced, "scales": scales}


def predict_tiled(predict: Callable[[list[np.ndarray]], list[np.ndarray]], rgb: np.ndarray, n: int,
                  overlap: float = DEFAULT_OVERLAP, full: np.ndarray | None = None,
                  batch_size: int = 1) -> tuple[np.ndarray, dict]:
    """Tiled prediction around any backend's predict function:
    ``predict([image [h, w, 3], ...]) -> [disparity [h, w], ...]`` (images of one size; the
    backend resizes each crop to its own input size, so a crop is seen larger than in the whole
    frame). ``n`` tiles per side (:func:`tile_grid`; the crops share one size), sent
    ``batch_size`` at a time; ``full`` the whole-frame prediction when already made (else
    ``predict([rgb])[0]``). ``n = 1`` returns the whole-frame prediction. Returns
    ``(merged [H, W], info)`` as :func:`merge_tiles`."""
    H, W = rgb.shape[:2]
    if full is None:
        full = predict([rgb])[0]
    full = np.asarray(full, dtype=np.float64)
    if n <= 1:
        return full, {"tiles": 1, "replaced": 0, "scales": []}
    boxes = tile_grid(H, W, n, overlap)
    preds: list[np.ndarray] = []
    bs = max(1, int(batch_size))
    for k in range(0, len(boxes), bs):
        crops = [np.ascontiguousarray(rgb[y0:y1, x0:x1]) for (y0, y1, x0, x1) in boxes[k:k + bs]]
        preds.extend(np.asarray(p, dtype=np.float64) for p in predict(crops))
    return merge_tiles(full, list(zip(boxes, preds)))
