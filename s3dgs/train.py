"""The S-3DGS training loop: RGB, depth-prior and confidence-gated semantic supervision.

Wiring only: data from `s3dgs.scene` (dataset), Gaussians from `s3dgs.gaussians` (parameters,
gsplat's DefaultStrategy with the opacity-reset fix), one render call per step from `s3dgs.render`
(colour, semantics and depth in one pass), losses from `s3dgs.losses`.

    from s3dgs.train import train
    train(colmap_dir=..., images_dir=..., heatmap_dir=..., confidence_path=..., pcd_path=...,
          depth_dir=..., lambda_depth=0.1, lambda_sem=0.2, num_iterations=7000,
          warmup_iterations=4000, resolution_scale=1.0, out_dir="runs/plant")

or `s3dgs train SCENE --out RUN`. Every `log_every` iterations it prints the seed's line

    Iter   100 | Loss: 0.045632 (RGB: 0.032145, Depth: 0.134872, Sem: 0.000000, lambda_sem: 0.000) | Gaussians: 15234 | ...

to the console and RUN/log.txt, and the same figures as JSON lines to RUN/metrics.jsonl. Loss
values are kept as tensors between log lines: no host-device sync per step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import tyro

from s3dgs.classes import stem_classes
from s3dgs.errors import S3dgsError
from s3dgs.gaussians.model import init_params, save_ply, semantic_probs
from s3dgs.gaussians.strategy import DefaultStrategy
from s3dgs.losses import (
    depth_prior_loss,
    depth_weight_schedule,
    fit_depth_scale_sfm,
    mark_unreliable_scales,
    rgb_loss,
    scale_invariant_depth_loss,
    semantic_loss,
    semantic_weight,
)
from s3dgs.scene.colmap import SceneError

__all__ = ["TrainConfig", "train", "train_main", "scale_invariant_depth_loss", "TrainingError"]

log = logging.getLogger("s3dgs")


class TrainingError(S3dgsError, RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good checkpoint stays."""


@dataclass
class TrainConfig:
    """Train semantic Gaussians on a scene (conventional layout, or explicit paths)."""

    scene: tyro.conf.Positional[Optional[Path]] = None
    """Scene folder: images/, sparse/0, optional heatmaps/, confidence.json, depths/, points3D.ply."""
    out: Path = Path("runs/run")
    """Run folder (config.json, log.txt, ckpts/, point_cloud.ply, renders/)."""
    colmap_dir: Optional[Path] = None
    """COLMAP model (overrides SCENE/sparse/0)."""
    images_dir: Optional[Path] = None
    """Frames (overrides SCENE/images)."""
    heatmap_dir: Optional[Path] = None
    """Skeleton heatmaps <stem>.npy [H, W, 4] (overrides SCENE/heatmaps)."""
    confidence_path: Optional[Path] = None
    """Per-frame class confidences (overrides SCENE/confidence.json)."""
    pcd_path: Optional[Path] = None
    """Initial points (PLY); default SCENE/points3D.ply, else the COLMAP points."""
    depth_dir: Optional[Path] = None
    """Depth priors <stem>.png (overrides SCENE/depths)."""
    no_depth: tyro.conf.FlagCreatePairsOff[bool] = False
    """Ignore depth priors even when present (RGB + semantics only)."""
    no_semantics: tyro.conf.FlagCreatePairsOff[bool] = False
    """Ignore heatmaps even when present."""
    resolution_scale: float = 1.0
    """Rescale frames, heatmaps, depth and intrinsics (e.g. 0.5)."""
    test_every: int = 8
    """Hold out every n-th frame (sorted by name) for evaluation; 0 trains on all frames."""

    num_iterations: int = 7000
    """Training iterations (one view per iteration)."""
    lambda_depth: float = 0.1
    """Weight of the depth-prior term."""
    depth_schedule: Literal["constant", "exp"] = "constant"
    """Depth weight over time: constant, or exponential decay to 1% (as 3DGS decays 1.0 -> 0.01)."""
    depth_loss: Literal["prior", "seed"] = "prior"
    """'prior': depth_prior_loss with the options below; 'seed': the seed's literal
    scale_invariant_depth_loss on rendered depth vs prior value."""
    depth_space: Literal["disparity", "depth"] = "disparity"
    """Space the rendered depth is compared in: disparity (1/z; Depth Anything V2 predicts
    affine-invariant inverse depth) or depth (the seed's literal formula)."""
    depth_alignment: Literal["per_view", "sfm"] = "per_view"
    """per_view: scale/shift fitted every step (the seed); sfm: fitted once per image against the
    projected COLMAP points (3DGS make_depth_scale); unreliable fits drop that image's depth."""
    depth_robust: bool = True
    """Robust (trimmed) alignment instead of plain least squares."""
    depth_multiscale: bool = False
    """Average the depth loss over full, half and quarter resolution."""
    depth_edge_aware: bool = False
    """Weight the depth loss by Sobel edges of the frame."""
    depth_confidence: bool = True
    """Use per-pixel confidence maps depths/<stem>.conf.png when present."""
    depth_stem_aware: bool = False
    """Trust the prior less where heatmaps show thin stems (monocular models blur them)."""
    stem_weight: float = 0.1
    """Depth-loss weight on stem pixels when depth_stem_aware is on."""

    lambda_sem: float = 0.2
    """Weight of the semantic term after the warm-up."""
    warmup_iterations: int = 4000
    """Iterations before the semantic term is switched on."""
    conf_threshold: float = 0.5
    """Classes with frame confidence at or below this are gated off."""
    fg_weight: float = 20.0
    """Weight of heatmap foreground pixels (target > 0.1) in the semantic MSE."""
    semantic_activation: Literal["sigmoid", "softmax"] = "sigmoid"
    """Per-class sigmoid (default; heatmaps are independent per class) or the original softmax."""
    lambda_ssim: float = 0.2
    """RGB loss = (1 - l) L1 + l (1 - SSIM); 0 gives the seed's L1."""

    sh_degree: int = 3
    """Maximum SH degree, raised by one every sh_degree_interval iterations."""
    sh_degree_interval: int = 1000
    init_opacity: float = 0.1
    init_scale: float = 1.0
    max_init_points: int = 200_000
    """Subsample the initial point cloud above this many points."""
    lr_means: float = 1.6e-4
    """Means learning rate, times the scene scale, decayed to 1% over the run."""
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_semantics: float = 1e-2

    densify: bool = True
    """gsplat DefaultStrategy densification (absgrad, AbsGS)."""
    grow_grad2d: float = 8e-4
    """Densification threshold; gsplat advises ~8e-4 with absgrad."""
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    prune_opa: float = 0.005

    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    backend: Literal["auto", "torch", "gsplat"] = "auto"
    device: str = "auto"
    """auto: CUDA when available, else CPU."""
    num_threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000
    """Checkpoint period (a final one is always written)."""
    resume: tyro.conf.FlagCreatePairsOff[bool] = False
    """Continue from the latest checkpoint in OUT."""
    max_nonfinite: int = 20
    """Stop after this many consecutive non-finite losses."""
    save_renders: bool = True
    """Write renders of the held-out views at the end."""
    progress: bool = True


# -----------------------------------------------------------------------------------------------
# set-up helpers
# -----------------------------------------------------------------------------------------------

def _resolve_paths(cfg: TrainConfig) -> dict:
    scene = Path(cfg.scene) if cfg.scene else None
    if scene is None and (cfg.colmap_dir is None or cfg.images_dir is None):
        raise SceneError("give a SCENE folder, or both --colmap-dir and --images-dir")
    if scene is not None and not scene.is_dir():
        raise SceneError(f"{scene}: scene folder does not exist")

    def pick(explicit, default, is_file=False):
        if explicit is not None:
            return Path(explicit)
        if scene is None:
            return None
        p = scene / default
        return p if (p.is_file() if is_file else p.is_dir()) else None

    paths = {
        "colmap_dir": Path(cfg.colmap_dir) if cfg.colmap_dir else scene,
        "images_dir": pick(cfg.images_dir, "images"),
        "heatmap_dir": None if cfg.no_semantics else pick(cfg.heatmap_dir, "heatmaps"),
        "confidence_path": None if cfg.no_semantics else pick(cfg.confidence_path, "confidence.json", True),
        "depth_dir": None if cfg.no_depth else pick(cfg.depth_dir, "depths"),
        "pcd_path": pick(cfg.pcd_path, "points3D.ply", True),
    }
    if paths["images_dir"] is None:
        raise SceneError(f"{scene}/images: no images folder; pass --images-dir")
    return paths


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def scene_scale(camera_centers: np.ndarray) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean centre."""
    c = np.asarray(camera_centers)
    return float(np.linalg.norm(c - c.mean(0), axis=1).max() * 1.1) or 1.0


def _make_optimizers(params: torch.nn.ParameterDict, cfg: TrainConfig, sscale: float) -> dict:
    lrs = {"means": cfg.lr_means * sscale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
           "semantics": cfg.lr_semantics}
    # One Adam per parameter: gsplat's strategies expect exactly one param group each.
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15)
            for k in params.keys()}


def _means_lr(cfg: TrainConfig, sscale: float, step: int) -> float:
    gamma = 0.01 ** (1.0 / max(cfg.num_iterations, 1))
    return cfg.lr_means * sscale * gamma ** step


def _sfm_fits(ds, xyz: np.ndarray) -> dict[int, dict]:
    """Per-frame fit of the depth prior to inverse SfM depth (3DGS make_depth_scale)."""
    fits = {}
    for i, f in enumerate(ds.frames):
        if f.depth_path is None:
            continue
        R, t = f.viewmat[:3, :3], f.viewmat[:3, 3]
        Xc = xyz @ R.T + t
        z = Xc[:, 2]
        front = z > 1e-6
        uvw = Xc[front] @ f.K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
        prior = ds[i]["depth"].numpy()
        fits[i] = fit_depth_scale_sfm(prior, uv, z[front], prior_kind=ds.depth_kind)
    return mark_unreliable_scales(fits)


# -----------------------------------------------------------------------------------------------
# checkpoints
# -----------------------------------------------------------------------------------------------

def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = sorted((Path(run) / "ckpts").glob("ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return ckpts[-1] if ckpts else None


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if st.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -----------------------------------------------------------------------------------------------
# the loop
# -----------------------------------------------------------------------------------------------

def seed_loss_ignored_options(cfg: TrainConfig) -> list[str]:
    """The depth options `cfg` sets that depth_loss="seed" (the seed's literal formula) ignores."""
    if cfg.depth_loss != "seed":
        return []
    return [n for n, on in (("--depth-alignment sfm", cfg.depth_alignment == "sfm"),
                            ("--depth-multiscale", cfg.depth_multiscale),
                            ("--depth-edge-aware", cfg.depth_edge_aware),
                            ("--depth-stem-aware", cfg.depth_stem_aware)) if on]


def run_training(cfg: TrainConfig) -> dict:
    """Train according to `cfg`; returns a summary dict (also written to RUN/train_summary.json)."""
    from s3dgs.render import render
    from s3dgs.scene.colmap import read_model
    from s3dgs.scene.dataset import SceneDataset
    from s3dgs.scene.ply import read_points_ply

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    paths = _resolve_paths(cfg)
    logfile = open(out / "log.txt", "a")
    jsonl = open(out / "metrics.jsonl", "a")

    def say(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg) if cfg.progress else print(msg)
        logfile.write(msg + "\n")
        logfile.flush()

    ds = SceneDataset(paths["colmap_dir"], paths["images_dir"], paths["heatmap_dir"],
                      paths["confidence_path"], paths["depth_dir"], resolution_scale=cfg.resolution_scale,
                      split="train" if cfg.test_every > 0 else "all", test_every=cfg.test_every)
    say(f"dataset: {ds.summary}")
    if len(ds) == 0:
        raise SceneError(f"{paths['colmap_dir']}: no training frames")
    K_cls = len(ds.classes)
    has_heat = [f.heatmap_path is not None and bool((f.confidence > cfg.conf_threshold).any())
                for f in ds.frames]
    has_depth = [f.depth_path is not None for f in ds.frames]
    use_sem = cfg.lambda_sem > 0 and any(has_heat)
    use_depth = cfg.lambda_depth > 0 and any(has_depth)
    if cfg.no_semantics:
        say("semantics: switched off (--no-semantics)")
    elif cfg.lambda_sem > 0 and not any(has_heat):
        say("semantics: no frame has a heatmap with a confident class; training without the semantic term")
    if cfg.no_depth:
        say("depth: switched off (--no-depth)")
    elif cfg.lambda_depth > 0 and not any(has_depth):
        where = paths["depth_dir"] or "no depths/ folder"
        say(f"depth: no frame has a depth prior ({where}); training without the depth term. "
            "Make priors with `s3dgs depth IMAGES SCENE/depths`.")

    # initial points
    model = read_model(paths["colmap_dir"])
    if paths["pcd_path"] is not None:
        xyz, rgb = read_points_ply(paths["pcd_path"])
        src = str(paths["pcd_path"])
    else:
        xyz, rgb, src = model.xyz, model.rgb, "COLMAP points3D"
    if len(xyz) > cfg.max_init_points:
        sel = np.random.default_rng(cfg.seed).choice(len(xyz), cfg.max_init_points, replace=False)
        xyz, rgb = xyz[sel], rgb[sel]
    sscale = scene_scale(ds.camera_centers())
    if len(xyz) < 100:
        say(f"points: only {len(xyz)} initial points in {src}; adding random points inside the camera "
            "hull so training can start")
        rng = np.random.default_rng(cfg.seed)
        c = ds.camera_centers().mean(0)
        extra = c + rng.uniform(-1, 1, (2000, 3)) * sscale * 0.5
        xyz = np.concatenate([xyz.reshape(-1, 3), extra])
        rgb = np.concatenate([rgb.reshape(-1, 3), rng.integers(0, 255, (2000, 3)).astype(np.uint8)])
    else:
        say(f"points: {len(xyz)} initial points from {src}; scene scale {sscale:.4g}")

    if use_depth and cfg.depth_loss == "seed":
        ignored = seed_loss_ignored_options(cfg)
        if ignored:
            say(f"depth: --depth-loss seed is the seed's literal formula and ignores {', '.join(ignored)}; "
                "for that formula with options use --depth-loss prior --depth-space depth --no-depth-robust")

    # depth alignment against SfM points, once per image
    sfm = {}
    if use_depth and cfg.depth_loss == "prior" and cfg.depth_alignment == "sfm":
        sfm = _sfm_fits(ds, model.xyz)
        bad = {ds.frames[i].name: f.get("reason", "") for i, f in sfm.items() if not f.get("ok")}
        for i, f in sfm.items():
            if not f.get("ok"):
                has_depth[i] = False
        say(f"depth: sfm alignment fitted for {len(sfm)} frames, {len(bad)} marked unreliable"
            + (": " + "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5]) if bad else ""))
        (out / "depth_alignment.json").write_text(json.dumps(
            {ds.frames[i].name: f for i, f in sfm.items()}, indent=1, default=float))
        use_depth = any(has_depth)

    # model, optimisers, strategy
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = init_params(xyz, rgb, sh_degree=cfg.sh_degree, num_classes=K_cls, init_opacity=cfg.init_opacity,
                         init_scale=cfg.init_scale, seed=cfg.seed,
                         init_semantic_logit=-3.0 if cfg.semantic_activation == "sigmoid" else 0.0).to(device)
    optimizers = _make_optimizers(params, cfg, sscale)
    strategy = DefaultStrategy(prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d,
                               refine_start_iter=cfg.refine_start_iter, refine_stop_iter=cfg.refine_stop_iter,
                               refine_every=cfg.refine_every, reset_every=cfg.reset_every, absgrad=True)
    strategy.check_sanity(params, optimizers)
    sstate = strategy.initialize_state(scene_scale=sscale)
    start = 0
    elapsed_before = 0.0

    ckpt_path = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt_path is None:
        say(f"resume: no checkpoint in {out / 'ckpts'}; starting from scratch")
    if ckpt_path is not None:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device)) for k, v in ck["params"].items()})
        optimizers = _make_optimizers(params, cfg, sscale)
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        sstate = ck["strategy_state"]
        start = ck["step"]
        elapsed_before = ck.get("elapsed_s", 0.0)
        _set_rng_state(ck["rng"], gen)
        say(f"resume: continuing from {ckpt_path.name} at iteration {start}")

    config_dict = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    config_dict["resolved_paths"] = {k: (str(v) if v else None) for k, v in paths.items()}
    (out / "config.json").write_text(json.dumps(config_dict, indent=2))

    bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)[None]
    n_frames = len(ds)
    # On resume the permutation in use and the generator state are restored, so the frame order
    # (and with it the whole run) continues exactly as an uninterrupted run would.
    perm = ck["perm"] if ckpt_path is not None else torch.randperm(n_frames, generator=gen)

    def save_ckpt(step: int) -> None:
        _atomic_torch_save({
            "step": step, "params": {k: v.detach() for k, v in params.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "strategy_state": sstate, "rng": _rng_state(gen), "perm": perm,
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            "config": config_dict,
        }, out / "ckpts" / f"ckpt_{step}.pt")

    acc = torch.zeros(5, device=device)  # loss, rgb, depth, sem, psnr
    acc_n = 0
    nonfinite = 0
    lam_sem_now = 0.0
    t_start = time.perf_counter()
    t_window = t_start
    pbar = None
    if cfg.progress:
        from tqdm import tqdm

        pbar = tqdm(total=cfg.num_iterations, initial=start, desc="train", dynamic_ncols=True)
    last_ok_ckpt = start
    step = start
    for step in range(start, cfg.num_iterations):
        pos = step % n_frames
        if pos == 0 and step > 0:
            perm = torch.randperm(n_frames, generator=gen)
        idx = int(perm[pos])
        item = ds[idx]
        image = item["image"].to(device)[None]
        H, W = image.shape[1:3]

        lam_sem_now = semantic_weight(step, cfg.warmup_iterations, cfg.lambda_sem) if use_sem else 0.0
        sem_on = lam_sem_now > 0 and has_heat[idx]
        lam_depth_now = depth_weight_schedule(step, cfg.num_iterations, cfg.lambda_depth, kind=cfg.depth_schedule) \
            if use_depth else 0.0
        depth_on = lam_depth_now > 0 and has_depth[idx]

        d = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
        colors = torch.cat([params["sh0"], params["shN"]], 1)[:, : (d + 1) ** 2]
        extra = semantic_probs(params["semantics"], cfg.semantic_activation) if sem_on else None
        r = render(params["means"], params["quats"], torch.exp(params["scales"]),
                   torch.sigmoid(params["opacities"]), colors, item["viewmat"].to(device)[None],
                   item["K"].to(device)[None], W, H, sh_degree=d, extra=extra, render_depth=depth_on,
                   backgrounds=bg, backend=cfg.backend, absgrad=True)
        if cfg.densify:
            strategy.step_pre_backward(params, optimizers, sstate, step, r.meta)

        l_rgb = rgb_loss(r.colors, image, cfg.lambda_ssim)
        loss = l_rgb
        l_depth = torch.zeros((), device=device)
        l_sem = torch.zeros((), device=device)
        if depth_on:
            prior = item["depth"].to(device)
            pred = r.depths[0, ..., 0]
            if cfg.depth_loss == "seed":
                l_depth = scale_invariant_depth_loss(pred, prior, mask=r.alphas[0, ..., 0] > 0.5)
            else:
                f = ds.frames[idx]
                conf_map = None
                if cfg.depth_confidence and f.depth_path is not None:
                    cpath = f.depth_path.with_name(f.depth_path.stem + ".conf.png")
                    if cpath.exists():
                        from s3dgs.depth.io import load_depth_png

                        conf_map = torch.from_numpy(load_depth_png(cpath)).to(device)
                        if conf_map.shape != pred.shape:
                            conf_map = torch.nn.functional.interpolate(
                                conf_map[None, None], size=pred.shape, mode="bilinear")[0, 0]
                stem_map = None
                if cfg.depth_stem_aware and item["has_heatmap"]:
                    hm = item["heatmap"].to(device)
                    stem_idx = stem_classes(ds.classes)
                    stem_map = hm[..., stem_idx].amax(-1)
                ss = None
                if cfg.depth_alignment == "sfm":
                    fit = sfm[idx]
                    ss = (fit["scale"], fit["shift"])
                l_depth = depth_prior_loss(
                    pred, prior, r.alphas[0, ..., 0], prior_kind=ds.depth_kind, space=cfg.depth_space,
                    alignment=cfg.depth_alignment, scale_shift=ss, robust=cfg.depth_robust,
                    multiscale=cfg.depth_multiscale, edge_image=image[0] if cfg.depth_edge_aware else None,
                    confidence=conf_map, stem_heatmap=stem_map, stem_weight=cfg.stem_weight)
            loss = loss + lam_depth_now * l_depth
        if sem_on:
            l_sem = semantic_loss(r.extras[0], item["heatmap"].to(device), item["confidence"].to(device),
                                  fg_weight=cfg.fg_weight, conf_threshold=cfg.conf_threshold)
            loss = loss + lam_sem_now * l_sem

        finite = torch.isfinite(loss)
        if device.type == "cpu" and not bool(finite):
            nonfinite += 1
            say(f"Iter {step + 1:5d} | non-finite loss ({float(loss.detach())}); step skipped")
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            if nonfinite >= cfg.max_nonfinite:
                raise TrainingError(
                    f"the loss was non-finite {nonfinite} times in a row (last at iteration {step + 1}); "
                    f"stopping. The last good checkpoint is {out / 'ckpts'}/ckpt_{last_ok_ckpt}.pt. "
                    "Lower the learning rates or lambda_depth, or check the inputs for NaN.")
            if pbar is not None:
                pbar.update(1)
            continue
        nonfinite = 0
        loss.backward()
        if device.type != "cpu":  # no host sync: a non-finite step zeroes its own gradients
            for p in params.values():
                if p.grad is not None:
                    p.grad.copy_(torch.where(finite, p.grad, torch.zeros_like(p.grad)))
        for k, o in optimizers.items():
            if k == "means":
                o.param_groups[0]["lr"] = _means_lr(cfg, sscale, step)
            o.step()
            o.zero_grad(set_to_none=True)
        if cfg.densify:
            strategy.step_post_backward(params, optimizers, sstate, step, r.meta, packed=False)

        with torch.no_grad():
            mse = ((r.colors.detach() - image) ** 2).mean()
            acc += torch.stack([loss.detach(), l_rgb.detach(), l_depth.detach(), l_sem.detach(),
                                -10.0 * torch.log10(mse.clamp_min(1e-10))])
        acc_n += 1
        if pbar is not None:
            pbar.update(1)

        it = step + 1
        if it % cfg.log_every == 0 or it == cfg.num_iterations:
            vals = (acc / max(acc_n, 1)).tolist()
            now = time.perf_counter()
            ips = acc_n / max(now - t_window, 1e-9)
            n_g = len(params["means"])
            line = (f"Iter {it:5d} | Loss: {vals[0]:.6f} (RGB: {vals[1]:.6f}, Depth: {vals[2]:.6f}, "
                    f"Sem: {vals[3]:.6f}, lambda_sem: {lam_sem_now:.3f}) | Gaussians: {n_g} | "
                    f"PSNR: {vals[4]:.2f} | {ips:.2f} it/s")
            say(line)
            jsonl.write(json.dumps({"iter": it, "loss": vals[0], "rgb": vals[1], "depth": vals[2],
                                    "sem": vals[3], "lambda_sem": lam_sem_now, "lambda_depth": lam_depth_now,
                                    "gaussians": n_g, "psnr": vals[4], "it_per_s": ips,
                                    "elapsed_s": elapsed_before + now - t_start}) + "\n")
            jsonl.flush()
            acc.zero_()
            acc_n = 0
            t_window = now
        if it % cfg.ckpt_every == 0 and it < cfg.num_iterations:
            save_ckpt(it)
            last_ok_ckpt = it
    if pbar is not None:
        pbar.close()

    final_step = cfg.num_iterations
    elapsed = elapsed_before + time.perf_counter() - t_start
    save_ckpt(final_step)
    save_ply(out / "point_cloud.ply", params, ds.classes)
    try:
        import resource

        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    except Exception:  # pragma: no cover - non-POSIX
        peak_rss = float("nan")
    summary = {
        "iterations": final_step, "train_time_s": elapsed,
        "it_per_s": (final_step - start) / max(time.perf_counter() - t_start, 1e-9),
        "gaussians": len(params["means"]), "n_opacity_resets": sstate.get("n_resets", 0),
        "peak_rss_gb": peak_rss, "device": str(device), "scene_scale": sscale,
        "depth_used": use_depth, "semantics_used": use_sem,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    say(f"done: {final_step} iterations in {elapsed:.1f} s, {summary['gaussians']} Gaussians -> "
        f"{out / 'point_cloud.ply'}")
    if cfg.save_renders and cfg.test_every > 0:
        try:
            from s3dgs.export import render_views

            test = SceneDataset(paths["colmap_dir"], paths["images_dir"], paths["heatmap_dir"],
                                paths["confidence_path"], paths["depth_dir"],
                                resolution_scale=cfg.resolution_scale, split="test",
                                test_every=cfg.test_every, verbose=False)
            render_views(params, test, out / "renders", sh_degree=cfg.sh_degree,
                         activation=cfg.semantic_activation, background=cfg.background, backend=cfg.backend)
        except ImportError:  # pragma: no cover
            pass
    logfile.close()
    jsonl.close()
    summary["run"] = str(out)
    summary["params"] = params
    return summary


def train(
    colmap_dir=None,
    images_dir=None,
    heatmap_dir=None,
    confidence_path=None,
    pcd_path=None,
    depth_dir=None,
    lambda_depth: float = 0.1,
    lambda_sem: float = 0.2,
    num_iterations: int = 7000,
    warmup_iterations: int = 4000,
    resolution_scale: float = 1.0,
    out_dir=None,
    **kwargs,
) -> dict:
    """The seed's entry point, keyword for keyword; any other `TrainConfig` field may be passed too
    (e.g. `scene=`, `depth_space=`, `log_every=`). Returns the summary dict of `run_training`
    (its "params" entry holds the trained Gaussians)."""
    if out_dir is not None:
        kwargs["out"] = Path(out_dir)
    kwargs.setdefault("out", Path("runs/run"))
    cfg = TrainConfig(colmap_dir=colmap_dir, images_dir=images_dir, heatmap_dir=heatmap_dir,
                      confidence_path=confidence_path, pcd_path=pcd_path, depth_dir=depth_dir,
                      lambda_depth=lambda_depth, lambda_sem=lambda_sem, num_iterations=num_iterations,
                      warmup_iterations=warmup_iterations, resolution_scale=resolution_scale, **kwargs)
    return run_training(cfg)


def train_main(cfg: TrainConfig) -> int:
    """CLI: `s3dgs train SCENE --out RUN`."""
    try:
        run_training(cfg)
    except (SceneError, TrainingError) as exc:
        log.error(f"s3dgs train: {exc}")
        return 1
    return 0
