"""Evaluate a trained run: images, depth, semantics, geometry and cost -> RUN/metrics.json.

    s3dgs eval RUN [--scene DIR]

    from s3dgs.evaluate import evaluate_run
    m = evaluate_run("runs/plant")      # dict, also written to RUN/metrics.json

Groups (each present only where the scene has what it needs; an absent group says why):

- ``images``: PSNR and SSIM of the rendered held-out views (the run's ``test_every`` split), per
  view and mean. LPIPS only when the ``lpips`` package and its backbone weights are already on this
  machine (nothing is ever downloaded); otherwise ``null`` with a note.
- ``depth``: where ``SCENE/gt/depth`` exists. Rendered (expected, alpha-normalised) depth against
  the true z-depth on the held-out views, after ONE global scale over all of them (median ratio;
  SfM scale is arbitrary). Pixels with rendered alpha <= 0.5 are left out. ``plant`` repeats the
  figures on the plant's pixels only (true mask != background), with the same scale.
- ``semantics``: where ``SCENE/gt/masks`` exists. Per-class IoU and mIoU of the rendered class
  maps (argmax of the class probabilities, background where the top one is <= 0.5), pooled over
  all held-out pixels; true leaf/fruit pixels count as background. Where ``SCENE/masks`` (class
  masks, any class table: `s3dgs.scene.dataset`) exist for held-out views, ``semantics.masks``
  scores the classes of the run's table against them with the same rule (unlabelled pixels, id
  255, left out): per-class IoU and mIoU; it is also the headline IoU when there is no
  ``gt/masks``.
- ``geometry``: where ``SCENE/gt/primitives.json`` exists (the synthetic plant). Gaussian centres
  are compared with the true surfaces in the scene's frame (metres). Tolerances are derived from
  the plant and written into the JSON (``tolerances``).
- ``cost``: from ``RUN/train_summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from s3dgs import metrics as M
from s3dgs.atomic import atomic_write_text
from s3dgs.classes import CLASSES, GT_LABELS, run_class_table
from s3dgs.config import load_run_config
from s3dgs.options import opt
from s3dgs.scene.dataset import resize_nearest

__all__ = ["EvalConfig", "eval_main", "evaluate_run", "format_table", "geometry_tolerances", "heatmap_iou", "mask_iou",
           "plant_region", "sample_plant_surface"]



# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _clean(x):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _class_ids(gmask: np.ndarray, classes) -> np.ndarray:
    """A true mask (``gt/masks`` ids, `s3dgs.GT_LABEL_NAMES`) as ids of ``classes`` (``k + 1`` for
    ``classes[k]``, 0 for everything else: background, leaf, fruit)."""
    out = np.zeros_like(gmask)
    for k, c in enumerate(classes):
        if c in GT_LABELS:
            out[gmask == GT_LABELS[c]] = k + 1
    return out


def heatmap_iou(scene_dir, stems, *, shape: tuple[int, int] | None = None, classes=None,
                threshold: float = 0.5) -> dict:
    """The scene's own training heatmaps scored as if they were a render of the held-out views.

    ``SCENE/heatmaps/<stem>.npy`` ``[H, W, 4]`` (channels U, N, D, P) against
    ``SCENE/gt/masks/<stem>.png``, with the rule of :func:`evaluate_run`'s semantics (argmax class
    where its value is above ``threshold``, pooled over the views, true leaf/fruit = background).
    The heatmaps are skeleton lines between detected keypoints, not masks; their IoU says how far
    the supervision itself agrees with the true class masks, the reference for a trained run's
    mIoU. ``shape (H, W)``: both resized (nearest) to the evaluated resolution; default the masks'.
    ``classes``: the run's class order (default `s3dgs.CLASSES`).

    Returns ``{"available": True, "iou": {class: float}, "miou", "n_views", "rule"}``, or
    ``{"available": False, "reason"}`` when a view lacks its heatmap or mask.
    """
    from PIL import Image

    classes = list(classes or CLASSES)
    scene = Path(scene_dir)
    order = [CLASSES.index(c) if c in CLASSES else None for c in classes]
    pred, gt = [], []
    for stem in stems:
        hp, mp = scene / "heatmaps" / f"{stem}.npy", scene / "gt" / "masks" / f"{stem}.png"
        if not (hp.exists() and mp.exists()):
            return {"available": False, "reason": f"{hp if not hp.exists() else mp} not found"}
        with Image.open(mp) as im:
            g = np.asarray(im, np.uint8)
        h = np.load(hp).astype(np.float32)
        H, W = shape or g.shape[:2]
        h = resize_nearest(h, H, W)
        h = np.stack([h[..., i] if i is not None else np.zeros((H, W), np.float32) for i in order], -1)
        pred.append(h.reshape(-1, len(classes)))
        gt.append(_class_ids(resize_nearest(g, H, W), classes).reshape(-1))
    if not pred:
        return {"available": False, "reason": "no views"}
    s = M.semantic_iou(np.concatenate(pred), np.concatenate(gt), threshold=threshold, class_names=classes)
    return {"available": True, "iou": s["iou"], "miou": s["miou"], "n_views": len(pred),
            "rule": "the scene's training heatmaps in place of the render, same views and rule: how far the "
                    "supervision (skeleton lines between keypoints) agrees with the true class masks"}


def mask_iou(probs: np.ndarray, target: np.ndarray, valid: np.ndarray, class_names, *,
             threshold: float = 0.5) -> dict:
    """Per-class IoU of rendered class probabilities against class masks, pooled over pixels.

    ``probs [P, K]`` rendered probabilities; ``target [P, K]`` 0/1 one-hot (or multi-hot: folder
    masks may overlap) truth; ``valid [P]`` labelled pixels (others left out). A pixel takes the
    class of its largest probability when that is above ``threshold`` (else background), the rule
    of `s3dgs.metrics.semantic_iou`. A class absent from prediction and truth is NaN and left out
    of the mean. Returns ``{"iou": {name: float}, "miou": float, "n_pixels": int}``.
    """
    valid = np.asarray(valid, bool)
    probs, target = np.asarray(probs)[valid], np.asarray(target)[valid] > 0
    top = probs.argmax(-1)
    on = probs.max(-1) > threshold
    ious = {}
    for k, c in enumerate(class_names):
        pk, gk = on & (top == k), target[:, k]
        union = np.logical_or(pk, gk).sum()
        ious[c] = float(np.logical_and(pk, gk).sum() / union) if union else float("nan")
    finite = [v for v in ious.values() if not math.isnan(v)]
    return {"iou": ious, "miou": float(np.mean(finite)) if finite else float("nan"), "n_pixels": int(valid.sum())}


def _lpips_model():
    """An LPIPS(alex) model when the package and its weights are already local, else (None, why)."""
    try:
        import lpips
    except ImportError:
        return None, "not available (the lpips package is not installed; nothing is downloaded)"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return None, f"not available (no AlexNet weights in {hub}; nothing is downloaded)"
    try:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False).eval(), "LPIPS(alex), local weights"
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - any failure means no LPIPS
        return None, f"not available ({exc})"


def _scene_of(run: Path, rc: dict, scene_dir) -> tuple[Path | None, dict]:
    """The scene folder and paths to evaluate against: ``scene_dir``, else the run's (``rc`` from
    s3dgs.config.load_run_config)."""
    paths = dict(rc["paths"])
    scene = Path(scene_dir) if scene_dir is not None else rc["scene"]
    if scene_dir is not None or not paths:
        if scene is None:
            raise FileNotFoundError(f"{run}/config.json names no scene; pass --scene DIR")
        if not scene.is_dir():
            raise FileNotFoundError(f"{scene}: scene folder not found; pass --scene DIR")
        paths = {"colmap_dir": str(scene), "images_dir": str(scene / "images")}
    elif not all(Path(paths[k]).exists() for k in ("colmap_dir", "images_dir") if paths.get(k)):
        gone = next(Path(paths[k]) for k in ("colmap_dir", "images_dir") if paths.get(k) and not Path(paths[k]).exists())
        raise FileNotFoundError(f"{gone}: the scene recorded in {run}/config.json is not there (moved or "
                                "deleted?); pass --scene DIR, the scene folder the run was trained on")
    return scene, paths


def geometry_tolerances(gt) -> dict:
    """Tolerances of the geometry metrics, derived from the true plant (metres).

    ``stem_radius`` = median radius over every stem centreline vertex, ``plant_size`` = diagonal of
    the stems' bounding box. Floater tolerance = max(3 x stem_radius, 1 % of plant_size); a stem
    sample is covered by a Gaussian within (local radius + 1 x stem_radius) of the centreline;
    a break is an interior uncovered run longer than 3 x the local radius.
    """
    radii = np.concatenate([np.broadcast_to(np.asarray(s["radius"], float).reshape(-1),
                                            (len(s["points"]),)) for s in gt.stems]) if gt.stems else np.zeros(1)
    pts = np.concatenate([np.asarray(s["points"], float).reshape(-1, 3) for s in gt.stems]) \
        if gt.stems else np.zeros((1, 3))
    r = float(np.median(radii)) if radii.size else 0.0
    size = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    return {
        "stem_radius_median_m": r,
        "plant_size_m": size,
        "floater_tol_m": max(3.0 * r, 0.01 * size),
        "floater_rule": "Gaussian farther than floater_tol_m from every true surface (plant, ground, "
                        "backdrop); fraction weighted by opacity",
        "stem_cover_tol_m": r,
        "stem_cover_rule": "centreline sample covered when a Gaussian of the stem's class with opacity "
                           ">= opaque_threshold lies within local radius + stem_cover_tol_m",
        "break_factor": 3.0,
        "break_rule": "interior uncovered run longer than break_factor x local radius",
    }


def plant_region(gt, tol: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box around the true plant (capsules, spheres, leaflets) grown by 10 % of the
    plant size on every side: ``(lo [3], hi [3])`` in metres."""
    tol = tol or geometry_tolerances(gt)
    pts = [gt.cap_a - gt.cap_r[:, None], gt.cap_a + gt.cap_r[:, None], gt.cap_b - gt.cap_r[:, None],
           gt.cap_b + gt.cap_r[:, None], gt.sph_c - gt.sph_r[:, None], gt.sph_c + gt.sph_r[:, None],
           gt.tris.reshape(-1, 3)]
    pts = np.concatenate([p.reshape(-1, 3) for p in pts if p.size])
    m = 0.1 * tol["plant_size_m"]
    return pts.min(0) - m, pts.max(0) + m


def sample_plant_surface(gt, n: int = 20000, seed: int = 0) -> np.ndarray:
    """About ``n`` points on the outer surface of the true plant: capsule sides, spheres, leaflet
    triangles, area-weighted; samples buried inside another primitive are dropped. ``[M, 3]``."""
    rng = np.random.default_rng(seed)
    a, b, r = gt.cap_a, gt.cap_b, gt.cap_r
    L = np.linalg.norm(b - a, axis=1)
    tri = gt.tris
    tri_area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) \
        if len(tri) else np.zeros(0)
    areas = np.concatenate([2 * np.pi * r * L, 4 * np.pi * gt.sph_r ** 2, tri_area])
    if areas.sum() <= 0:
        return np.zeros((0, 3))
    pick = rng.choice(len(areas), size=n, p=areas / areas.sum())
    nc, ns = len(r), len(gt.sph_r)
    out = []
    ci = pick[pick < nc]
    if len(ci):
        axis = (b[ci] - a[ci]) / np.maximum(L[ci], 1e-12)[:, None]
        helper = np.where(np.abs(axis[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        u = np.cross(axis, helper)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        v = np.cross(axis, u)
        t, th = rng.random(len(ci)), rng.uniform(0, 2 * np.pi, len(ci))
        out.append(a[ci] + t[:, None] * (b[ci] - a[ci])
                   + r[ci, None] * (np.cos(th)[:, None] * u + np.sin(th)[:, None] * v))
    si = pick[(pick >= nc) & (pick < nc + ns)] - nc
    if len(si):
        d = rng.normal(size=(len(si), 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        out.append(gt.sph_c[si] + gt.sph_r[si, None] * d)
    ti = pick[pick >= nc + ns] - nc - ns
    if len(ti):
        u, v = rng.random(len(ti)), rng.random(len(ti))
        flip = u + v > 1
        u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
        T = tri[ti]
        out.append(T[:, 0] + u[:, None] * (T[:, 1] - T[:, 0]) + v[:, None] * (T[:, 2] - T[:, 0]))
    pts = np.concatenate(out)
    return pts[gt.plant_distance(pts) < 1e-5]


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def evaluate_run(run_dir, scene_dir=None, *, test_every: int | None = None,
                 resolution_scale: float | None = None, backend: str = "auto",
                 opaque_threshold: float = 0.5, class_threshold: float = 0.5, max_views: int = 0,
                 device: str | None = None, write: bool = True, verbose: bool = False) -> dict:
    """Evaluate the run in ``run_dir`` (point_cloud.ply, config.json, train_summary.json).

    Args:
        scene_dir: scene folder (default: the run's config.json ``scene`` / resolved paths).
        test_every, resolution_scale: override the run's split and resolution.
        backend: renderer backend ("auto", "torch", "gsplat").
        opaque_threshold: opacity from which a Gaussian counts as opaque (stems, Chamfer).
        class_threshold: class probability a pixel / Gaussian needs to take that class.
        max_views: evaluate only the first n held-out views (0: all).
        write: write RUN/metrics.json.

    Returns:
        ``{"run", "scene", "views", "images", "depth", "semantics", "geometry", "cost",
        "eval_time_s"}``; groups without ground truth hold ``{"available": False, "reason"}``.
    """
    from s3dgs.export import render_dataset
    from s3dgs.gaussians.model import load_ply
    from s3dgs.scene.dataset import SceneDataset

    t0 = time.perf_counter()
    run = Path(run_dir)
    ply = run / "point_cloud.ply"
    if not ply.exists():
        from s3dgs.checkpoint import train_first_advice

        raise FileNotFoundError(f"{ply}: not found; {train_first_advice(run)}")
    rc = load_run_config(run)
    tc = rc["train"]
    scene, paths = _scene_of(run, rc, scene_dir)
    te = int(tc.data.test_every if test_every is None else test_every)
    rs = float(tc.data.resolution_scale if resolution_scale is None else resolution_scale)
    activation = tc.semantics.activation
    bg = tuple(tc.background)

    params, classes = load_ply(ply)
    # a run trained with --no-semantics has untrained logits: nothing to score
    has_sem = "semantics" in params and params["semantics"].shape[1] > 0 and not tc.data.no_semantics
    raw_cfg = json.loads((run / "config.json").read_text()) if rc["found"] else {}
    table = run_class_table(raw_cfg, classes)
    if table.names != tuple(classes):  # config.json and the PLY disagree: the PLY's names count
        table = run_class_table({}, classes)
    mask_dir = paths.get("mask_dir") or (scene / "masks" if scene is not None else None)
    mask_dir = Path(mask_dir) if mask_dir and Path(mask_dir).is_dir() and has_sem else None
    ds = SceneDataset(paths["colmap_dir"], paths["images_dir"], resolution_scale=rs,
                      split="test" if te > 0 else "all", test_every=te, verbose=False,
                      mask_dir=mask_dir, class_table=table if has_sem else None)
    if max_views > 0 and len(ds) > max_views:
        ds.frames = ds.frames[:max_views]

    gt_root = scene / "gt" if scene is not None else None
    gt_depth_dir = gt_root / "depth" if gt_root is not None and (gt_root / "depth").is_dir() else None
    gt_mask_dir = gt_root / "masks" if gt_root is not None and (gt_root / "masks").is_dir() else None

    lp, lp_note = _lpips_model()
    per_view, preds_d, gts_d, masks_d, plant_d = [], [], [], [], []
    sem_pred, sem_gt, sem_stems = [], [], []
    mk_pred, mk_tgt, mk_valid, mk_names = [], [], [], []
    for item, r in render_dataset(params, ds, sh_degree=tc.sh_degree if rc["found"] else None, activation=activation,
                                  background=bg, backend=backend, render_semantics=has_sem,
                                  device=device):
        stem = Path(item["name"]).stem
        img = r.colors[0].clamp(0, 1).cpu().numpy().astype(np.float64)
        tgt = item["image"].numpy().astype(np.float64)
        row = {"name": item["name"], "psnr": M.psnr(img, tgt), "ssim": M.ssim(img, tgt)}
        if lp is not None:
            with torch.no_grad():
                f = lambda x: torch.from_numpy(x).float().permute(2, 0, 1)[None] * 2 - 1
                row["lpips"] = float(lp(f(img), f(tgt)))
        per_view.append(row)
        H, W = img.shape[:2]
        gmask = None
        if gt_mask_dir is not None and (gt_mask_dir / f"{stem}.png").exists():
            from PIL import Image

            with Image.open(gt_mask_dir / f"{stem}.png") as im:
                gmask = resize_nearest(np.asarray(im, np.uint8), H, W)
        if gt_depth_dir is not None and (gt_depth_dir / f"{stem}.npy").exists():
            gd = resize_nearest(np.load(gt_depth_dir / f"{stem}.npy").astype(np.float64), H, W)
            preds_d.append(r.depths[0, ..., 0].cpu().numpy().astype(np.float64))
            gts_d.append(gd)
            alpha_ok = r.alphas[0, ..., 0].cpu().numpy() > 0.5
            masks_d.append(alpha_ok)
            plant_d.append(alpha_ok & (gmask > 0) & (gmask < 255) if gmask is not None else None)
        if has_sem and item.get("semantic_source") == "mask" and r.extras is not None:
            mk_pred.append(r.extras[0].cpu().numpy().reshape(-1, len(classes)))
            mk_tgt.append(item["heatmap"].numpy().reshape(-1, len(classes)).astype(np.uint8))
            mk_valid.append(item["semantic_valid"].numpy().reshape(-1))
            mk_names.append(item["name"])
        if has_sem and gmask is not None and r.extras is not None:
            sem_pred.append(r.extras[0].cpu().numpy().reshape(-1, len(classes)))
            sem_gt.append(_class_ids(gmask, classes).reshape(-1))
            sem_stems.append(stem)

    def mean(key):
        vals = [v[key] for v in per_view if key in v and math.isfinite(v[key])]
        return float(np.mean(vals)) if vals else float("nan")

    out: dict = {"run": str(run), "scene": str(scene) if scene is not None else None,
                 "views": {"split": "test" if te > 0 else "all", "test_every": te,
                           "resolution_scale": rs, "n": len(per_view),
                           "names": [v["name"] for v in per_view]}}
    out["images"] = {"psnr": mean("psnr"), "ssim": mean("ssim"),
                     "lpips": mean("lpips") if lp is not None else None, "lpips_note": lp_note,
                     "per_view": per_view}

    # depth
    if preds_d:
        d = M.depth_metrics_global(preds_d, gts_d, masks_d)
        dep = {"available": True, "abs_rel": d["abs_rel"], "rmse_m": d["rmse"], "delta1": d["delta1"],
               "scale": d["scale"], "n_pixels": d["n"],
               "valid_fraction": float(sum(m.sum() for m in masks_d) / sum(m.size for m in masks_d)),
               "rule": "one global median scale over all held-out views; pixels with alpha > 0.5",
               "per_view": [{"name": per_view[i]["name"], **{k: v for k, v in pv.items() if k != "scale"}}
                            for i, pv in enumerate(d["per_view"])]}
        if any(m is not None for m in plant_d):
            ps = [M.depth_metrics(p, g, m, scale=d["scale"]) for p, g, m in zip(preds_d, gts_d, plant_d)
                  if m is not None and m.any()]
            n = sum(x["n"] for x in ps)
            if n:
                dep["plant"] = {k: float(sum(x[k] * x["n"] for x in ps) / n) for k in ("abs_rel", "delta1")}
                dep["plant"]["rmse_m"] = float(np.sqrt(sum(x["rmse"] ** 2 * x["n"] for x in ps) / n))
                dep["plant"]["n_pixels"] = n
        out["depth"] = dep
    else:
        out["depth"] = {"available": False, "reason": "scene has no gt/depth for the held-out views"}

    # semantics
    masks_block = None
    if mk_pred:
        mi = mask_iou(np.concatenate(mk_pred), np.concatenate(mk_tgt), np.concatenate(mk_valid), classes,
                      threshold=class_threshold)
        masks_block = {"available": True, "table": table.name, "iou": mi["iou"], "miou": mi["miou"],
                       "n_views": len(mk_names), "n_pixels": mi["n_pixels"], "views": mk_names,
                       "rule": f"SCENE/masks of the held-out views, classes of the run's {table.name!r} table: "
                               f"argmax class where its probability > {class_threshold}, pooled over "
                               "labelled pixels (id 255 left out); a class absent from prediction and "
                               "truth is null and left out of mIoU"}
    elif has_sem:
        masks_block = {"available": False, "reason": "no SCENE/masks for the held-out views"
                       if mask_dir is not None else "scene has no masks/ folder"}
    if sem_gt:
        s = M.semantic_iou(np.concatenate(sem_pred), np.concatenate(sem_gt), threshold=class_threshold,
                           class_names=classes)
        out["semantics"] = {"available": True, "iou": s["iou"], "miou": s["miou"],
                            "rule": f"argmax class where its probability > {class_threshold}, pooled "
                                    "over held-out pixels; true leaf/fruit = background; a class absent "
                                    "from prediction and truth is null and left out of mIoU",
                            "heatmaps": heatmap_iou(scene, sem_stems, shape=(H, W), classes=classes,
                                                    threshold=class_threshold),
                            "source": "gt/masks", "masks": masks_block}
    elif masks_block is not None and masks_block["available"]:
        out["semantics"] = {"available": True, "source": "scene/masks", "iou": masks_block["iou"],
                            "miou": masks_block["miou"], "rule": masks_block["rule"], "masks": masks_block}
    else:
        why = ("the run was trained without semantics (--no-semantics)" if tc.data.no_semantics else
               "the run has no semantic logits" if not has_sem else "scene has no gt/masks")
        out["semantics"] = {"available": False, "reason": why}

    # geometry
    if gt_root is not None and (gt_root / "primitives.json").exists() and (gt_root / "stems.json").exists():
        out["geometry"] = _geometry(scene, params, classes, activation, opaque_threshold, class_threshold)
    else:
        out["geometry"] = {"available": False, "reason": "scene has no gt/primitives.json (synthetic only)"}

    # cost
    ts = run / "train_summary.json"
    if ts.exists():
        s = json.loads(ts.read_text())
        out["cost"] = {"available": True, "train_time_s": s.get("train_time_s"),
                       "iterations": s.get("iterations"), "it_per_s": s.get("it_per_s"),
                       "gaussians": s.get("gaussians", len(params["means"])),
                       "peak_rss_gb": s.get("peak_rss_gb"), "peak_cuda_gb": s.get("peak_cuda_gb"),
                       "device": s.get("device")}
    else:
        out["cost"] = {"available": False, "reason": f"{ts} not found",
                       "gaussians": len(params["means"])}
    out["eval_time_s"] = time.perf_counter() - t0
    out = _clean(out)
    if write:
        atomic_write_text(run / "metrics.json", json.dumps(out, indent=2))
    if verbose:
        print(format_table(out))
    return out


def _geometry(scene: Path, params: dict, classes, activation: str, opaque_threshold: float,
              class_threshold: float) -> dict:
    from s3dgs.gaussians.model import semantic_probs
    from s3dgs.scene.groundtruth import load_ground_truth

    gt = load_ground_truth(scene)
    tol = geometry_tolerances(gt)
    tol["opaque_threshold"] = opaque_threshold
    tol["class_threshold"] = class_threshold
    means = params["means"].numpy().astype(np.float64)
    opac = torch.sigmoid(params["opacities"].reshape(-1)).numpy().astype(np.float64)
    if "semantics" in params and params["semantics"].shape[1] > 0:
        probs = semantic_probs(params["semantics"], activation).numpy()
        cls = np.where(probs.max(1) > class_threshold, probs.argmax(1), -1)
    else:
        cls = np.full(len(means), -1)
    lo, hi = plant_region(gt, tol)
    tol["plant_region_m"] = {"min": lo.tolist(), "max": hi.tolist(),
                             "rule": "bounding box of the true plant grown by 10 % of plant_size on every "
                                     "side; floaters and Chamfer count the Gaussians inside it (the "
                                     "backdrop, metres behind the plant, is not what the prior is for)"}
    inside = np.all((means >= lo) & (means <= hi), axis=1)
    fl = M.floater_fraction(means[inside], opac[inside], gt.distance_to_surface, tol["floater_tol_m"])
    fl_all = M.floater_fraction(means, opac, gt.distance_to_surface, tol["floater_tol_m"])
    stem_kw = {"tol": tol["stem_cover_tol_m"], "min_opacity": opaque_threshold,
               "break_factor": tol["break_factor"]}
    names = tuple(classes) or M.CLASS_NAMES
    # right-class coverage on the stems of a trained class; any-class coverage on every thin stem
    # (petioles, leaf tissue in the ground truth, included)
    st = M.stem_continuity([s for s in gt.stems if s["class"] in names], means, cls, opac, class_names=names,
                           **stem_kw)
    any_cls = M.stem_continuity([{**s, "class": None} for s in gt.stems], means, np.zeros(len(means)), opac,
                                **stem_kw)
    opaque = means[(opac >= opaque_threshold) & inside]
    samples = sample_plant_surface(gt)
    ch = M.chamfer_to_surface(opaque, gt.distance_to_surface, samples)
    per_class: dict = {}
    for s in st["stems"]:
        k = s["class"]  # stem_continuity reports the class as its index into the class names
        c = per_class.setdefault(names[k] if isinstance(k, (int, np.integer)) and 0 <= k < len(names) else str(k),
                                 [0.0, 0.0])
        c[0] += s["covered_length"]
        c[1] += s["length"]
    return {
        "available": True,
        "frame": "scene coordinates = ground-truth world frame (metres)",
        "tolerances": tol,
        "floaters": {"fraction": fl["fraction"], "count_fraction": fl["count_fraction"],
                     "n_floaters": fl["n_floaters"], "n": fl["n"], "region": "plant region"},
        "floaters_all": {"fraction": fl_all["fraction"], "count_fraction": fl_all["count_fraction"],
                         "n_floaters": fl_all["n_floaters"], "n": fl_all["n"], "region": "whole scene"},
        "stems": {"covered_fraction": st["covered_fraction"], "breaks": st["breaks"],
                  "n_stems": st["n_stems"], "n_broken_stems": st["n_broken_stems"],
                  "covered_fraction_by_class": {k: v[0] / v[1] if v[1] > 0 else None
                                                for k, v in per_class.items()}},
        "stems_any_class": {"covered_fraction": any_cls["covered_fraction"], "breaks": any_cls["breaks"],
                            "n_broken_stems": any_cls["n_broken_stems"]},
        "chamfer": {"accuracy_m": ch["accuracy"], "completeness_m": ch["completeness"],
                    "chamfer_m": ch["chamfer"], "n_opaque": len(opaque),
                    "n_surface_samples": len(samples),
                    "rule": "accuracy: mean distance of opaque Gaussian centres in the plant region to "
                            "the nearest true "
                            "surface (plant, ground, backdrop); completeness: mean distance of points "
                            "sampled on the plant's outer surface (hidden ones included) to the "
                            "nearest opaque centre; chamfer = mean of the two"},
    }


# --------------------------------------------------------------------------------------------
# table and CLI
# --------------------------------------------------------------------------------------------


def headline(m: dict) -> dict:
    """The headline figures of a metrics dict (`evaluate_run`'s result or RUN/metrics.json), flat:
    psnr, ssim, lpips, depth_abs_rel, depth_delta1, plant_abs_rel, miou, floaters, stem_cover,
    stem_breaks (any class), stem_cover_class, chamfer_mm, gaussians, train_time_s, it_per_s,
    held_out_views. A figure whose group has no ground truth is None."""
    g, d, s, c, im = m["geometry"], m["depth"], m["semantics"], m["cost"], m["images"]
    geo = g.get("available", False)
    chamfer = g["chamfer"]["chamfer_m"] if geo else None
    return {
        "psnr": im["psnr"], "ssim": im["ssim"], "lpips": im.get("lpips"),
        "depth_abs_rel": d.get("abs_rel"), "depth_delta1": d.get("delta1"),
        "plant_abs_rel": (d.get("plant") or {}).get("abs_rel"),
        "miou": s.get("miou"),
        "floaters": g["floaters"]["fraction"] if geo else None,
        "stem_cover": g["stems_any_class"]["covered_fraction"] if geo else None,
        "stem_breaks": g["stems_any_class"]["breaks"] if geo else None,
        "stem_cover_class": g["stems"]["covered_fraction"] if geo else None,
        "chamfer_mm": 1000 * chamfer if chamfer is not None else None,
        "gaussians": c.get("gaussians"), "train_time_s": c.get("train_time_s"), "it_per_s": c.get("it_per_s"),
        "held_out_views": (m.get("views") or {}).get("n"),
    }


def _f(x, fmt="{:.4f}"):
    return "n/a" if x is None else fmt.format(x)


def format_table(m: dict) -> str:
    """A plain-text table of the headline figures of a metrics dict."""
    v = m["views"]
    views = f"{v['n']} held out ({v['split']}, every {v['test_every']}, scale {v['resolution_scale']})"
    rows = [("views", views)]
    im = m["images"]
    rows += [("PSNR (dB)", _f(im["psnr"], "{:.2f}")), ("SSIM", _f(im["ssim"])),
             ("LPIPS", _f(im["lpips"]) if im["lpips"] is not None else im["lpips_note"])]
    d = m["depth"]
    if d.get("available"):
        rows += [("depth AbsRel", _f(d["abs_rel"])), ("depth RMSE (m)", _f(d["rmse_m"])),
                 ("depth delta<1.25", _f(d["delta1"]))]
        if "plant" in d:
            rows += [("plant depth AbsRel", _f(d["plant"]["abs_rel"])),
                     ("plant depth delta<1.25", _f(d["plant"]["delta1"]))]
    else:
        rows.append(("depth", d["reason"]))
    s = m["semantics"]
    if s.get("available"):
        rows += [(f"IoU {k}", _f(v, "{:.3f}")) for k, v in s["iou"].items()]
        rows.append(("mIoU", _f(s["miou"], "{:.3f}")))
        if (s.get("heatmaps") or {}).get("available"):
            rows.append(("mIoU of the training heatmaps", _f(s["heatmaps"]["miou"], "{:.3f}")))
        mk = s.get("masks") or {}
        if mk.get("available") and s.get("source") != "scene/masks":
            rows += [(f"IoU {k} (scene masks)", _f(v, "{:.3f}")) for k, v in mk["iou"].items()]
            rows.append(("mIoU (scene masks)", _f(mk["miou"], "{:.3f}")))
    else:
        rows.append(("semantics", s["reason"]))
    g = m["geometry"]
    if g.get("available"):
        rows += [("floaters (plant region)", _f(g["floaters"]["fraction"], "{:.3f}")),
                 ("floaters (whole scene)", _f(g["floaters_all"]["fraction"], "{:.3f}")),
                 ("stem covered (right class)", _f(g["stems"]["covered_fraction"], "{:.3f}")),
                 ("stem breaks (right class)", str(g["stems"]["breaks"])),
                 ("stem covered (any class)", _f(g["stems_any_class"]["covered_fraction"], "{:.3f}")),
                 ("stem breaks (any class)", str(g["stems_any_class"]["breaks"])),
                 ("Chamfer (mm)", _f(None if g["chamfer"]["chamfer_m"] is None
                                     else 1000 * g["chamfer"]["chamfer_m"], "{:.2f}"))]
    else:
        rows.append(("geometry", g["reason"]))
    c = m["cost"]
    rows += [("train time (s)", _f(c.get("train_time_s"), "{:.1f}")), ("it/s", _f(c.get("it_per_s"), "{:.2f}")),
             ("Gaussians", str(c.get("gaussians"))), ("peak RSS (GB)", _f(c.get("peak_rss_gb"), "{:.2f}"))]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


@dataclass
class EvalConfig:
    """Evaluate a trained run on its held-out views."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (point_cloud.ply, config.json, train_summary.json)."""
    scene: Annotated[Path | None, opt("DIR", "the scene recorded in RUN/config.json")] = None
    """Scene folder to evaluate against."""
    test_every: Annotated[int | None, opt("INT", "the run's")] = None
    """Held-out split: every n-th frame (0: every frame)."""
    resolution_scale: Annotated[float | None, opt("FLOAT", "the run's")] = None
    """Render resolution factor."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Renderer backend."""
    opaque_threshold: Annotated[float, tyro.conf.arg(name="min-opacity")] = 0.5
    """Opacity from which a Gaussian counts as opaque (stem coverage, Chamfer)."""
    class_threshold: float = 0.5
    """Class probability a pixel or Gaussian needs to take that class."""
    max_views: int = 0
    """Evaluate only the first n held-out views (0: all)."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option (unset ones pass)."""
        from s3dgs import validate as V

        V.non_negative("--test-every", self.test_every)
        V.in_range("--resolution-scale", self.resolution_scale, 0, 8, lo_open=True)
        V.fraction("--min-opacity", self.opaque_threshold)
        V.fraction("--class-threshold", self.class_threshold)
        V.non_negative("--max-views", self.max_views)


def eval_main(cfg: EvalConfig) -> int:
    from s3dgs.errors import WorkError
    from s3dgs.runlock import run_lock

    cfg.validate()
    if Path(cfg.run).is_dir():  # RUN/metrics.json must be writable before minutes of evaluation
        from s3dgs.atomic import check_writable_folder

        check_writable_folder(cfg.run, "RUN", files=("metrics.json",))
    try:
        with run_lock(cfg.run, "s3dgs eval", create=False):  # no other command writes into RUN meanwhile
            m = evaluate_run(cfg.run, cfg.scene, test_every=cfg.test_every,
                             resolution_scale=cfg.resolution_scale, backend=cfg.backend,
                             opaque_threshold=cfg.opaque_threshold, class_threshold=cfg.class_threshold,
                             max_views=cfg.max_views)
    except FileNotFoundError as exc:
        raise WorkError(str(exc)) from None
    print(format_table(m))
    print(f"-> {Path(cfg.run) / 'metrics.json'}")
    return 0
