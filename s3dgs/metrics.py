"""Pure evaluation metrics: image, depth, semantic and geometry (issue 7, item 1).

Every function takes numpy arrays or torch tensors (converted to numpy on the host; these run
once per evaluation, not per training step) and returns Python floats / dicts, so results go
straight into ``metrics.json``. Conventions follow docs/ARCHITECTURE.md: images ``[H, W, 3]`` in [0, 1],
rendered depth is camera z, class ids in masks are ``0 = background, 1..K = U, N, D, P``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from s3dgs.classes import CLASSES
from s3dgs.losses import ssim as _ssim_torch

__all__ = [
    "CLASS_NAMES",
    "chamfer_distance",
    "chamfer_to_surface",
    "depth_metrics",
    "depth_metrics_global",
    "fit_global_scale",
    "floater_fraction",
    "psnr",
    "semantic_iou",
    "ssim",
    "stem_continuity",
]

CLASS_NAMES = CLASSES  # the one class table: s3dgs/classes.py


def _np(a, dtype=np.float64) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype) if dtype is not None else np.asarray(a)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def psnr(pred, gt, max_val: float = 1.0, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(max_val^2 / MSE)``.

    ``pred``, ``gt``: same shape, e.g. ``[H, W, 3]`` in [0, 1]. ``mask [H, W]`` (optional) limits
    the MSE to those pixels (all channels). Identical images give ``inf``.
    """
    p, g = _np(pred), _np(gt)
    if p.shape != g.shape:
        raise ValueError(f"psnr: shapes differ, {p.shape} vs {g.shape}")
    se = (p - g) ** 2
    if mask is not None:
        m = _np(mask, bool)
        se = se[m]
    mse = float(se.mean()) if se.size else float("nan")
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max_val**2 / mse))


def ssim(pred, gt) -> float:
    """Mean SSIM (11x11 Gaussian window, as 3DGS), via :func:`s3dgs.losses.ssim` in float32 (the
    fused kernel where it is built; float64 took 0.8 s per 400x300 view, and float32 differs from it
    by about 3e-8 on 400x300 images).

    ``pred``, ``gt``: ``[H, W, 3]`` or ``[C, H, W, 3]`` in [0, 1]. Identical images give 1.
    """
    p = torch.as_tensor(_np(pred), dtype=torch.float32)
    g = torch.as_tensor(_np(gt), dtype=torch.float32)
    with torch.no_grad():
        return float(_ssim_torch(p, g))


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------


def _valid_depth(p: np.ndarray, g: np.ndarray, m) -> np.ndarray:
    v = np.isfinite(p) & np.isfinite(g) & (p > 0) & (g > 0)
    if m is not None:
        v &= _np(m, bool).reshape(v.shape)
    return v


def fit_global_scale(preds: Sequence, gts: Sequence, masks: Sequence | None = None, method="median"):
    """One scale ``s`` with ``s * pred ~ gt``, fitted over all views together.

    SfM reconstructions have an arbitrary scale, so the rendered depth is rescaled once, with one
    factor for every held-out view (not per view: a per-view scale would hide depth errors that
    differ between views). ``preds``, ``gts``: sequences of ``[H, W]`` depth maps (camera z);
    ``masks``: matching ``[H, W]`` booleans or None. Pixels with non-finite or non-positive depth
    in either map are ignored.

    ``method="median"`` (default): the median of ``gt / pred`` over every valid pixel of every view
    (robust; the usual choice for monocular-depth evaluation). ``"lstsq"``: least squares without
    shift, ``sum(pred * gt) / sum(pred^2)``. Returns ``nan`` when no pixel is valid.
    """
    if masks is None:
        masks = [None] * len(preds)
    ratios, num, den = [], 0.0, 0.0
    for p, g, m in zip(preds, gts, masks, strict=True):
        p, g = _np(p), _np(g)
        v = _valid_depth(p, g, m)
        if method == "median":
            ratios.append(g[v] / p[v])
        elif method == "lstsq":
            num += float((p[v] * g[v]).sum())
            den += float((p[v] ** 2).sum())
        else:
            raise ValueError(f"method must be 'median' or 'lstsq', not {method!r}")
    if method == "median":
        r = np.concatenate(ratios) if ratios else np.zeros(0)
        return float(np.median(r)) if r.size else float("nan")
    return num / den if den > 0 else float("nan")


def _depth_stats(p: np.ndarray, g: np.ndarray) -> dict:
    if p.size == 0:
        return {"abs_rel": float("nan"), "rmse": float("nan"), "delta1": float("nan"), "n": 0}
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "n": int(p.size),
    }


def depth_metrics(pred, gt, mask=None, scale: float | None = None, method: str = "median") -> dict:
    """Depth errors of one view after scaling the prediction by ``scale``.

    ``pred [H, W]`` rendered depth, ``gt [H, W]`` true depth, ``mask [H, W]`` valid pixels (also
    drops non-finite and non-positive depths). ``scale``: the global factor from
    :func:`fit_global_scale` over all held-out views; ``None`` fits it on this view alone (same
    ``method``). With ``p = scale * pred``: ``abs_rel = mean(|p - gt| / gt)``,
    ``rmse = sqrt(mean((p - gt)^2))`` (in gt units), ``delta1 = share of max(p/gt, gt/p) < 1.25``.
    Returns ``{abs_rel, rmse, delta1, n, scale}``.
    """
    p, g = _np(pred), _np(gt)
    if scale is None:
        scale = fit_global_scale([p], [g], [mask], method=method)
    v = _valid_depth(p, g, mask)
    out = _depth_stats(scale * p[v], g[v])
    out["scale"] = float(scale)
    return out


def depth_metrics_global(preds: Sequence, gts: Sequence, masks=None, method: str = "median") -> dict:
    """Depth errors over several held-out views with ONE global scale.

    Fits :func:`fit_global_scale` over all views, then pools every valid pixel of every view
    (pixel-weighted means). Returns ``{abs_rel, rmse, delta1, n, scale, per_view: [dict, ...]}``.
    """
    if masks is None:
        masks = [None] * len(preds)
    s = fit_global_scale(preds, gts, masks, method=method)
    ps, gs, per_view = [], [], []
    for p, g, m in zip(preds, gts, masks, strict=True):
        p, g = _np(p), _np(g)
        v = _valid_depth(p, g, m)
        ps.append(s * p[v])
        gs.append(g[v])
        per_view.append(depth_metrics(p, g, m, scale=s))
    out = _depth_stats(np.concatenate(ps) if ps else np.zeros(0), np.concatenate(gs) if gs else np.zeros(0))
    out["scale"] = float(s)
    out["per_view"] = per_view
    return out


# --------------------------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------------------------


def semantic_iou(
    pred,
    gt_mask,
    threshold: float = 0.5,
    num_classes: int | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    mode: str = "argmax",
) -> dict:
    """Per-class IoU and mIoU of a rendered semantic map against a true class mask.

    ``gt_mask [H, W]``: integer ids, 0 = background, ``1..K`` = classes in ``class_names`` order
    (U, N, D, P). ``pred``: either a class map ``[H, W]`` of ids in the same convention, or
    per-class probabilities ``[H, W, K]`` (channel ``k`` = class ``k + 1``):

    - ``mode="argmax"`` (default): a pixel takes the class of its largest probability if that
      probability exceeds ``threshold``, else background;
    - ``mode="independent"``: each class is its own binary map ``prob_k > threshold`` (heatmaps
      are independent per class, so maps may overlap).

    IoU_k = |pred_k & gt_k| / |pred_k | gt_k|; a class absent from both prediction and truth has
    IoU ``nan`` and is left out of the mean. Returns
    ``{"iou": {name: float}, "miou": float, "per_class": [float, ...]}``.
    """
    g = _np(gt_mask, None).astype(np.int64)
    p = _np(pred, None)
    if p.ndim == g.ndim + 1:
        k = p.shape[-1]
        probs = p.astype(np.float64)
        if mode == "argmax":
            best = probs.argmax(-1)
            pmap = np.where(probs.max(-1) > threshold, best + 1, 0)
            pred_k = [pmap == c + 1 for c in range(k)]
        elif mode == "independent":
            pred_k = [probs[..., c] > threshold for c in range(k)]
        else:
            raise ValueError(f"mode must be 'argmax' or 'independent', not {mode!r}")
    elif p.ndim == g.ndim:
        pmap = p.astype(np.int64)
        k = num_classes or max(len(class_names), int(max(pmap.max(initial=0), g.max(initial=0))))
        pred_k = [pmap == c + 1 for c in range(k)]
    else:
        raise ValueError(f"semantic_iou: pred {p.shape} does not match gt_mask {g.shape}")
    if num_classes is not None:
        k = num_classes
        pred_k = pred_k[:k]
    ious = []
    for c in range(k):
        pk, gk = pred_k[c], g == c + 1
        union = np.logical_or(pk, gk).sum()
        ious.append(float(np.logical_and(pk, gk).sum() / union) if union else float("nan"))
    names = [class_names[c] if c < len(class_names) else str(c + 1) for c in range(k)]
    finite = [x for x in ious if not np.isnan(x)]
    return {
        "iou": dict(zip(names, ious, strict=True)),
        "miou": float(np.mean(finite)) if finite else float("nan"),
        "per_class": ious,
    }


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def floater_fraction(
    means,
    opacities,
    distance_fn: Callable[[np.ndarray], np.ndarray],
    tol: float,
    min_opacity: float = 0.0,
) -> dict:
    """Share of opacity-weighted Gaussians farther than ``tol`` from every true surface.

    ``means [N, 3]`` Gaussian centres (world units of the true geometry); ``opacities [N]``
    activated opacities in [0, 1]; ``distance_fn(points [M, 3]) -> [M]`` unsigned distance to the
    nearest true surface (the union of all surfaces). Gaussians with opacity below
    ``min_opacity`` are ignored. ``fraction = sum(o * [d > tol]) / sum(o)``; also reports the
    unweighted ``count_fraction``, ``n_floaters`` and ``n``. No Gaussians gives fraction 0.
    """
    x = _np(means).reshape(-1, 3)
    o = _np(opacities).reshape(-1)
    keep = o >= min_opacity
    x, o = x[keep], o[keep]
    if len(x) == 0:
        return {"fraction": 0.0, "count_fraction": 0.0, "n_floaters": 0, "n": 0}
    d = np.asarray(distance_fn(x), dtype=np.float64).reshape(-1)
    far = d > tol
    tot = o.sum()
    return {
        "fraction": float((o * far).sum() / tot) if tot > 0 else 0.0,
        "count_fraction": float(far.mean()),
        "n_floaters": int(far.sum()),
        "n": len(x),
    }


def _resample_polyline(points: np.ndarray, radius: np.ndarray, step_frac: float = 0.25):
    """Sample a centreline at spacing <= step_frac * local radius. Returns sample points,
    radii and the arc length each sample stands for (midpoint rule; sums to the length)."""
    pts, rad = [points[:1]], [radius[:1]]
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        seg = float(np.linalg.norm(b - a))
        r_min = max(min(radius[i], radius[i + 1]), 1e-12)
        n = max(1, int(np.ceil(seg / (step_frac * r_min))))
        n = min(n, 100_000)
        t = np.arange(1, n + 1) / n
        pts.append(a + t[:, None] * (b - a))
        rad.append(radius[i] + t * (radius[i + 1] - radius[i]))
    p = np.concatenate(pts)
    r = np.concatenate(rad)
    if len(p) == 1:
        return p, r, np.zeros(1)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    w = np.zeros(len(p))
    w[:-1] += seg / 2
    w[1:] += seg / 2
    return p, r, w


def stem_continuity(
    stems: Sequence[dict],
    means,
    classes,
    opacities,
    tol: float,
    min_opacity: float = 0.5,
    break_factor: float = 3.0,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict:
    """How much of each true stem centreline is covered by Gaussians of the right class.

    ``stems``: list of ``{"class": id or name, "points": [K, 3], "radius": [K] or scalar}``
    (polyline centrelines in world units). The stem's class is compared with ``classes [N]``, the
    per-Gaussian class id (argmax, ``-1`` for none); a name is turned into its 0-based index in
    ``class_names`` (the argmax convention: U = 0, ..., P = 3); ``None`` accepts any class >= 0.
    ``means [N, 3]``, ``opacities [N]``: Gaussians with opacity < ``min_opacity`` are ignored.

    The centreline is resampled at a quarter of the local radius. A sample is covered when a
    Gaussian of the stem's class lies within ``radius + tol`` of it (cKDTree, one tree per class).
    ``covered_fraction`` = covered arc length / stem length. A *break* is an interior run of
    uncovered samples (covered parts on both sides) whose arc length exceeds ``break_factor``
    times the mean radius along the run; uncovered runs at the two ends are not breaks (the stem
    is truncated there, not broken) and are reported as ``uncovered_end_length``.

    Returns ``{"stems": [{covered_fraction, length, covered_length, breaks, gaps: [lengths],
    uncovered_end_length, class}], "covered_fraction" (length-weighted over all stems),
    "breaks" (total), "n_stems", "n_broken_stems"}``.
    """
    x = _np(means).reshape(-1, 3)
    cls = _np(classes, None).reshape(-1).astype(np.int64)
    o = _np(opacities).reshape(-1)
    keep = o >= min_opacity
    x, cls = x[keep], cls[keep]
    trees: dict = {}

    def tree_for(c):
        if c not in trees:
            sel = cls >= 0 if c is None else cls == c
            trees[c] = cKDTree(x[sel]) if sel.any() else None
        return trees[c]

    results = []
    tot_len = tot_cov = 0.0
    for stem in stems:
        c = stem.get("class")
        if isinstance(c, str):
            c = list(class_names).index(c)
        elif c is not None:
            c = int(c)
        pts = _np(stem["points"]).reshape(-1, 3)
        rad = np.broadcast_to(_np(stem["radius"]).reshape(-1), (len(pts),)).astype(np.float64)
        sp, sr, sw = _resample_polyline(pts, rad)
        tree = tree_for(c)
        if tree is None:
            covered = np.zeros(len(sp), bool)
        else:
            d, _ = tree.query(sp, k=1)
            covered = d <= sr + tol
        length = float(sw.sum())
        cov_len = float(sw[covered].sum())
        gaps, end_len = [], 0.0
        # runs of uncovered samples
        idx = np.flatnonzero(~covered)
        if idx.size:
            splits = np.flatnonzero(np.diff(idx) > 1) + 1
            for run in np.split(idx, splits):
                run_len = float(sw[run].sum())
                if run[0] == 0 or run[-1] == len(sp) - 1:
                    end_len += run_len
                elif run_len > break_factor * float(sr[run].mean()):
                    gaps.append(run_len)
        results.append(
            {
                "class": c,
                "length": length,
                "covered_length": cov_len,
                "covered_fraction": cov_len / length if length > 0 else float("nan"),
                "breaks": len(gaps),
                "gaps": gaps,
                "uncovered_end_length": end_len,
            }
        )
        tot_len += length
        tot_cov += cov_len
    return {
        "stems": results,
        "covered_fraction": tot_cov / tot_len if tot_len > 0 else float("nan"),
        "breaks": int(sum(r["breaks"] for r in results)),
        "n_stems": len(results),
        "n_broken_stems": int(sum(r["breaks"] > 0 for r in results)),
    }


def chamfer_distance(points_a, points_b) -> dict:
    """Symmetric Chamfer distance between two point sets (cKDTree nearest neighbours).

    ``points_a [N, 3]``, ``points_b [M, 3]``. ``a_to_b`` = mean distance from each point of a to
    its nearest point of b (accuracy when a is the reconstruction), ``b_to_a`` likewise
    (completeness), ``chamfer = (a_to_b + b_to_a) / 2`` (mean of the two, not squared distances).
    An empty set gives ``nan``.
    """
    a = _np(points_a).reshape(-1, 3)
    b = _np(points_b).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        nan = float("nan")
        return {"a_to_b": nan, "b_to_a": nan, "chamfer": nan}
    ab = float(cKDTree(b).query(a, k=1)[0].mean())
    ba = float(cKDTree(a).query(b, k=1)[0].mean())
    return {"a_to_b": ab, "b_to_a": ba, "chamfer": 0.5 * (ab + ba)}


def chamfer_to_surface(
    points,
    distance_fn: Callable[[np.ndarray], np.ndarray],
    surface_samples=None,
) -> dict:
    """Chamfer-style distance between points (e.g. opaque Gaussian centres) and a true surface.

    ``accuracy`` = mean ``distance_fn(points)`` (exact point-to-surface distance). When
    ``surface_samples [M, 3]`` (points sampled on the true surface) are given, ``completeness`` =
    mean distance from them to the nearest point, and ``chamfer = (accuracy + completeness) / 2``;
    otherwise ``chamfer = accuracy``.
    """
    p = _np(points).reshape(-1, 3)
    nan = float("nan")
    acc = float(np.mean(np.asarray(distance_fn(p), dtype=np.float64))) if len(p) else nan
    out = {"accuracy": acc, "completeness": nan, "chamfer": acc}
    if surface_samples is not None:
        s = _np(surface_samples).reshape(-1, 3)
        if len(p) and len(s):
            comp = float(cKDTree(p).query(s, k=1)[0].mean())
            out["completeness"] = comp
            out["chamfer"] = 0.5 * (acc + comp)
        else:
            out["chamfer"] = nan
    return out
