"""Exports of a trained run: renders of views, and one point cloud per semantic class.

`s3dgs export RUN --classes` writes RUN/classes/<class>.ply: the centres of the Gaussians whose
class probability passes a threshold (and that are opaque enough to be real), coloured by their
base colour, in the scene's COLMAP frame and units, for phenotyping measurements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Optional

import numpy as np
import torch
import tyro

from s3dgs.atomic import atomic_write_text
from s3dgs.classes import CLASSES, class_color
from s3dgs.config import load_run_config
from s3dgs.gaussians.model import load_ply, render_params, semantic_probs, sh_to_rgb
from s3dgs.options import opt


def _colormap(x: np.ndarray, name: str = "turbo") -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """[H, W] depth to a colour image (near = warm), robust 2-98% range over rendered pixels."""
    valid = np.isfinite(depth) & (depth > 0)
    if alpha is not None:
        valid &= alpha > 0.5
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    inv = np.where(valid, 1.0 / np.maximum(depth, 1e-9), 0)
    lo, hi = np.percentile(inv[valid], [2, 98])
    img = _colormap((inv - lo) / max(hi - lo, 1e-12))
    img[~valid] = 0
    return img


def semantic_overlay(image: np.ndarray, probs: np.ndarray, classes, threshold: float = 0.5,
                     table=None) -> np.ndarray:
    """Blend class colours over `image [H, W, 3]` uint8 where the top class probability > threshold.
    Colours from `table` (a `s3dgs.classes.ClassTable`, the run's) where it names the class, else
    from the built-in tables (`s3dgs.classes.class_color`)."""
    out = image.astype(np.float32).copy()
    top = probs.argmax(-1)
    on = probs.max(-1) > threshold
    for k, c in enumerate(classes):
        m = on & (top == k)
        out[m] = 0.35 * out[m] + 0.65 * np.array(class_color(c, table), np.float32)
    return out.clip(0, 255).astype(np.uint8)


def params_to_device(params, device) -> dict[str, torch.Tensor]:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v)).to(device)
            for k, v in params.items()}


@torch.no_grad()
def render_dataset(params, dataset, *, sh_degree: int | None = None, activation: str = "sigmoid",
                   background=(0.0, 0.0, 0.0), backend: str = "auto", render_semantics: bool = True,
                   device: str | torch.device | None = None) -> Iterator[tuple[dict, object]]:
    """Render every frame of `dataset` (no-grad path). Yields (item, RenderOutput) per frame."""
    dev = torch.device(device) if device else params["means"].device
    p = params_to_device(params, dev)
    bg = torch.tensor(background, dtype=torch.float32, device=dev)[None]
    for i in range(len(dataset)):
        item = dataset[i]
        r = render_params(p, item["viewmat"].to(dev)[None], item["K"].to(dev)[None], item["width"],
                          item["height"], sh_degree=sh_degree, semantics=activation if render_semantics else None,
                          render_depth=True, backgrounds=bg, backend=backend)
        yield item, r


def render_views(params, dataset, out_dir: str | Path, **kwargs) -> list[Path]:
    """Write <stem>_rgb.png, <stem>_gt.png, <stem>_depth.png (colour map) and <stem>_sem.png (class
    overlay) for every frame of `dataset` into `out_dir`. Returns the written paths."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    classes = getattr(dataset, "classes", CLASSES)
    table = getattr(dataset, "class_table", None)
    for item, r in render_dataset(params, dataset, **kwargs):
        stem = Path(item["name"]).stem
        rgb = (r.colors[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        gt = (item["image"].numpy() * 255).round().astype(np.uint8)
        alpha = r.alphas[0, ..., 0].cpu().numpy()
        files = {f"{stem}_rgb.png": rgb, f"{stem}_gt.png": gt,
                 f"{stem}_depth.png": depth_to_rgb(r.depths[0, ..., 0].cpu().numpy(), alpha)}
        if r.extras is not None:
            files[f"{stem}_sem.png"] = semantic_overlay(rgb, r.extras[0].cpu().numpy(), classes, table=table)
        for name, arr in files.items():
            Image.fromarray(arr).save(out_dir / name)
            written.append(out_dir / name)
    return written


def export_classes(ply_path: str | Path, out_dir: str | Path, *, threshold: float = 0.5,
                   min_opacity: float = 0.1, activation: str = "sigmoid") -> dict[str, int]:
    """One PLY point cloud per semantic class from a run's point_cloud.ply.

    A Gaussian belongs to class c when its class probability exceeds `threshold` and its opacity
    exceeds `min_opacity`. The classes are the PLY's ``sem_<name>`` fields, any table's names
    (tomato U..P, arabidopsis stem..leaf, a user table's). Returns {class: number of points}."""
    from s3dgs.scene.ply import write_points_ply

    params, classes = load_ply(ply_path)
    if "semantics" not in params:
        from s3dgs.scene.colmap import SceneError

        raise SceneError(f"{ply_path}: no sem_* fields, so no classes to export; was this run trained "
                         "by s3dgs with semantics?")
    probs = semantic_probs(params["semantics"], activation).numpy()
    opac = torch.sigmoid(params["opacities"]).numpy().reshape(-1)
    rgb = (sh_to_rgb(params["sh0"][:, 0]).clamp(0, 1).numpy() * 255).astype(np.uint8)
    means = params["means"].numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for k, c in enumerate(classes):
        m = (probs[:, k] > threshold) & (opac > min_opacity)
        write_points_ply(out_dir / f"{c}.ply", means[m], rgb[m])
        counts[c] = int(m.sum())
    atomic_write_text(out_dir / "counts.json", json.dumps(counts, indent=2))
    return counts


@dataclass
class ExportConfig:
    """Export a run's Gaussians."""

    run: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN")]]
    """Run folder holding point_cloud.ply."""
    classes: bool = True
    """Write one point cloud per semantic class into RUN/classes/."""
    threshold: Annotated[float, tyro.conf.arg(name="class-threshold")] = 0.5
    """Class probability a Gaussian needs to belong to a class."""
    min_opacity: float = 0.1
    """Opacity a Gaussian needs to be exported."""
    out: Annotated[Optional[Path], opt("DIR", "RUN/classes")] = None
    """Output folder of the per-class point clouds."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option."""
        from s3dgs import validate as V

        V.fraction("--class-threshold", self.threshold)
        V.fraction("--min-opacity", self.min_opacity)


def export_main(cfg: ExportConfig) -> int:
    from s3dgs.errors import WorkError

    cfg.validate()
    ply = Path(cfg.run) / "point_cloud.ply"
    if not ply.exists():
        from s3dgs.checkpoint import train_first_advice

        raise WorkError(f"{ply}: not found; {train_first_advice(cfg.run)}")
    activation = load_run_config(cfg.run)["train"].semantics.activation
    if cfg.classes:
        from s3dgs.runlock import run_lock

        out = cfg.out or Path(cfg.run) / "classes"
        from s3dgs.atomic import check_writable_folder

        check_writable_folder(out, "--out")
        with run_lock(cfg.run, "s3dgs export", create=False):  # no other command writes into RUN meanwhile
            counts = export_classes(ply, out, threshold=cfg.threshold, min_opacity=cfg.min_opacity,
                                    activation=activation)
        print(f"per-class point clouds in {out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return 0
