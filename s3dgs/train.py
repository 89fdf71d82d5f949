"""The S-3DGS training loop: RGB, depth-prior and confidence-gated semantic supervision.

Laid out as gsplat's trainer: :class:`Trainer` does the set-up (data and per-frame inputs,
Gaussians, optimisers, densification strategy, resume), :meth:`Trainer.train_step` is one
iteration and returns its losses, :meth:`Trainer.after_step` logs and checkpoints, and
:meth:`Trainer.finish` exports the model and renders the held-out views. Everything it wires
comes from elsewhere: data from ``s3dgs.scene``, Gaussians and densification from
``s3dgs.gaussians``, one render call per step from ``s3dgs.render`` (colour, semantics and depth
in one pass), losses from ``s3dgs.losses``, run folders and checkpoints from ``s3dgs.checkpoint``,
the configuration from ``s3dgs.config``. See docs/ARCHITECTURE.md.

    from s3dgs.train import train
    train(colmap_dir=..., images_dir=..., heatmap_dir=..., confidence_path=..., pcd_path=...,
          depth_dir=..., lambda_depth=0.1, lambda_sem=0.2, num_iterations=7000,
          warmup_iterations=4000, resolution_scale=1.0, out_dir="runs/plant")

or ``s3dgs train SCENE --out RUN``. Every ``log_every`` iterations it prints the integration guide's line

    Iter   100 | Loss: 0.045632 (RGB: 0.032145, Depth: 0.134872, Sem: 0.000000, lambda_sem: 0.000) | Gaussians: 15234 | ...

to the console and RUN/log.txt, and the same figures as JSON lines to RUN/metrics.jsonl. Loss
values stay tensors between log lines: no host-device sync per step.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import tyro

from s3dgs.atomic import atomic_write_text
from s3dgs.checkpoint import (
    check_frames,
    check_resume,
    check_resume_length,
    clear_run,
    holds_run,
    latest_checkpoint,
    load_latest_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    truncate_metrics,
)
from s3dgs.classes import stem_classes
from s3dgs.config import (
    TrainConfig,
    config_from_flat,
    config_to_dict,
    resolve_schedule,
    schedule_warnings,
)
from s3dgs.errors import S3dgsError, UsageError
from s3dgs.gaussians.model import init_params, render_params, save_ply
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
from s3dgs.options import opt
from s3dgs.scene.colmap import SceneError

__all__ = ["SceneInputs", "TrainCommand", "TrainConfig", "Trainer", "TrainingError", "latest_checkpoint",
           "run_training", "scale_invariant_depth_loss", "scene_scale", "train", "train_main"]

log = logging.getLogger("s3dgs")


class TrainingError(S3dgsError, RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good checkpoint stays."""


@dataclass
class SceneInputs:
    """Where the scene's parts are: the conventional layout under SCENE, or explicit paths."""

    scene: Annotated[Optional[Path], tyro.conf.Positional, tyro.conf.arg(
        metavar="SCENE", help_behavior_hint="(optional when --colmap-dir and --images-dir are given)")] = None
    """Scene folder: images/, sparse/0, and optionally heatmaps/, confidence.json, depths/, points3D.ply."""
    colmap_dir: Annotated[Optional[Path], opt("DIR", "SCENE/sparse/0")] = None
    """COLMAP model folder."""
    images_dir: Annotated[Optional[Path], opt("DIR", "SCENE/images")] = None
    """Frames."""
    heatmap_dir: Annotated[Optional[Path], opt("DIR", "SCENE/heatmaps")] = None
    """Skeleton heatmaps <stem>.npy [H, W, 4]."""
    confidence_path: Annotated[Optional[Path], opt("FILE", "SCENE/confidence.json")] = None
    """Per-frame class confidences (JSON)."""
    pcd_path: Annotated[Optional[Path], opt("FILE", "SCENE/points3D.ply, else the COLMAP points")] = None
    """Initial points (PLY)."""
    depth_dir: Annotated[Optional[Path], opt("DIR", "SCENE/depths")] = None
    """Depth priors <stem>.png (16-bit disparity)."""

    def resolve(self, no_depth: bool = False, no_semantics: bool = False) -> dict[str, Optional[Path]]:
        """The paths the run reads: explicit ones, else those of the layout that exist."""
        scene = Path(self.scene) if self.scene else None
        if scene is None and (self.colmap_dir is None or self.images_dir is None):
            raise UsageError("give a SCENE folder, or both --colmap-dir and --images-dir")
        if scene is not None and not scene.is_dir():
            raise SceneError(f"{scene}: scene folder does not exist")

        def pick(explicit, default, is_file=False, option=None):
            if explicit is not None:
                p = Path(explicit)
                if option is not None and not (p.is_file() if is_file else p.is_dir()):
                    what = "file" if is_file else "folder"
                    why = "does not exist" if not p.exists() else f"is not a {what}"
                    raise UsageError(f"{option} {p}: {why}; give the {what} that holds them, or leave the "
                                     "option out to use the scene's own")
                return p
            if scene is None:
                return None
            p = scene / default
            if p.exists() and (p.is_file() != is_file):  # not passed over in silence
                raise SceneError(f"{p}: is a {'folder' if is_file else 'file'}, where the scene layout has a "
                                 f"{'file' if is_file else 'folder'}; move it away or replace it")
            return p if (p.is_file() if is_file else p.is_dir()) else None

        paths = {
            "colmap_dir": Path(self.colmap_dir) if self.colmap_dir else scene,
            "images_dir": pick(self.images_dir, "images", option="--images-dir"),
            "heatmap_dir": None if no_semantics else pick(self.heatmap_dir, "heatmaps", option="--heatmap-dir"),
            "confidence_path": None if no_semantics else pick(self.confidence_path, "confidence.json", True,
                                                              option="--confidence-path"),
            "mask_dir": None if no_semantics else pick(None, "masks"),
            "classes_path": pick(None, "classes.json", True),
            "depth_dir": None if no_depth else pick(self.depth_dir, "depths", option="--depth-dir"),
            "pcd_path": pick(self.pcd_path, "points3D.ply", True),
        }
        if paths["images_dir"] is None:
            raise SceneError(f"{scene}/images: no images folder; pass --images-dir")
        return paths


@dataclass
class TrainCommand:
    """Train semantic Gaussians on a scene: `s3dgs train SCENE --out RUN [options]`."""

    inputs: Annotated[SceneInputs, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneInputs)
    out: Annotated[Path, tyro.conf.arg(metavar="DIR")] = Path("runs/run")
    """Run folder: config.json, log.txt, metrics.jsonl, ckpts/, point_cloud.ply, renders/."""
    resume: tyro.conf.FlagCreatePairsOff[bool] = False
    """Continue the run in OUT from its latest readable checkpoint (same scene and model options)."""
    overwrite: tyro.conf.FlagCreatePairsOff[bool] = False
    """Replace the run in OUT (only the files a run writes are removed)."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        self.train.validate()


def scene_scale(camera_centers: np.ndarray) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean centre."""
    c = np.asarray(camera_centers)
    return float(np.linalg.norm(c - c.mean(0), axis=1).max() * 1.1) or 1.0


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


@dataclass
class FrameInputs:
    """What a training frame contributes beyond its dataset item, prepared once at set-up."""

    semantics: bool  # has a heatmap with a confident class
    depth: bool  # has a usable depth prior
    depth_conf: Optional[torch.Tensor] = None  # [H, W] per-pixel prior confidence, when a map exists
    sfm_scale_shift: Optional[tuple[float, float]] = None  # fixed prior alignment (--depth-alignment sfm)
    thin: Optional[torch.Tensor] = None  # [H, W] uint8 thin-structure map (--depth-thin), made on first use


class Trainer:
    """One training run. ``Trainer(cfg, inputs, out)`` sets everything up (and resumes); then
    ``train_step(step)`` for each iteration, ``after_step`` for logs and checkpoints, ``finish()``."""

    DEVICE_SIDE_NONFINITE: bool | None = None
    """None: the non-finite check syncs with the host on a CPU and is counted on the device
    elsewhere (checked once per log window); True/False forces one (tests run the device path on a
    CPU)."""

    def __init__(self, cfg: TrainConfig, inputs: SceneInputs, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False):
        cfg.validate()
        # ``options``: the configuration as given (None for "auto"), never changed; ``cfg``: the
        # resolved copy every step reads (s3dgs.config.resolve_schedule)
        self.options = cfg
        cfg, self.schedule_scaled = resolve_schedule(cfg)
        self.cfg, self.inputs, self.out = cfg, inputs, Path(out)
        self.device = cfg.resolved_device()
        self._open_run_folder(resume, overwrite)
        for path, (old, new) in self.schedule_scaled.items():
            self.say(f"schedule: {path} {old} -> {new} for a {cfg.num_iterations}-iteration run "
                     "(auto; set the option to choose, --no-scale-schedule keeps the guide's values)")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self._load_data()
        for w in schedule_warnings(cfg, semantics_present=self.use_sem):
            self.say(f"warning: {w}")
        self._init_model()
        self.start, self.elapsed_before = 0, 0.0
        if resume:
            self._resume()
        self._start_writing()
        self.acc = torch.zeros(5, device=self.device)  # loss, rgb, depth, sem, psnr
        self.acc_n = 0
        self.nonfinite = 0
        # on an accelerator the non-finite check must not sync every step: the streak of non-finite
        # losses is kept on the device and checked once per log window (s3dgs.train._backward)
        self.host_nonfinite_check = (self.device.type == "cpu" if self.DEVICE_SIDE_NONFINITE is None
                                     else not self.DEVICE_SIDE_NONFINITE)
        self.nf_streak: torch.Tensor | None = None
        self.nf_worst: torch.Tensor | None = None
        self.nf_window: torch.Tensor | None = None
        self.last_ok_ckpt = self.start
        self.t_start = self.t_window = time.perf_counter()
        self.pbar = None
        if cfg.progress:
            from tqdm import tqdm

            self.pbar = tqdm(total=cfg.num_iterations, initial=self.start, desc="train", dynamic_ncols=True)

    # -- set-up -------------------------------------------------------------------------------

    def _open_run_folder(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a folder")
        if holds_run(out) and not resume:
            if not overwrite:
                raise UsageError(f"--out {out} holds another run (config.json, ckpts/ or point_cloud.ply); "
                                 "pass --resume to continue it, --overwrite to replace it, or choose "
                                 "another --out")
            removed = clear_run(out)
            log.info("train: --overwrite removed %s from %s", ", ".join(removed), out)
        for p in remove_stale_temporaries(out):
            log.info("train: removed %s, left by a checkpoint write that was interrupted", p)
        self._logfile = self._jsonl = None
        self._pending: list[str] = []  # lines said before the run folder is written to

    def _start_writing(self) -> None:
        """Open RUN/log.txt and RUN/metrics.jsonl once the run is known to be this one (after the
        resume checks), so a refused start leaves the folder exactly as it was."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._logfile = open(self.out / "log.txt", "a")  # noqa: SIM115 - closed in finish()
        self._jsonl = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115
        self._logfile.write("".join(line + "\n" for line in self._pending))
        self._logfile.flush()
        atomic_write_text(self.out / "config.json", json.dumps(self.config_dict, indent=2))
        if getattr(self, "_sfm_record", None) is not None:
            atomic_write_text(self.out / "depth_alignment.json", json.dumps(self._sfm_record, indent=1, default=float))

    def say(self, msg: str) -> None:
        """A line to the console (above the progress bar) and RUN/log.txt."""
        from tqdm import tqdm

        tqdm.write(msg) if self.cfg.progress else print(msg)
        if self._logfile is None:
            self._pending.append(msg)
            return
        self._logfile.write(msg + "\n")
        self._logfile.flush()

    def _load_data(self) -> None:
        from s3dgs.scene.colmap import read_model
        from s3dgs.scene.dataset import SceneDataset

        cfg = self.cfg
        self.paths = self.inputs.resolve(cfg.data.no_depth, cfg.data.no_semantics)
        p = self.paths
        from s3dgs.classes import load_class_table

        self.class_table = load_class_table(cfg.data.class_table or p.get("classes_path"))
        self.dataset_args = dict(colmap_dir=p["colmap_dir"], images_dir=p["images_dir"],
                                 mask_dir=p.get("mask_dir"), class_table=self.class_table,
                                 heatmap_dir=p["heatmap_dir"], confidence_path=p["confidence_path"],
                                 depth_dir=p["depth_dir"], resolution_scale=cfg.data.resolution_scale,
                                 test_every=cfg.data.test_every, allow_weak_depth=cfg.data.allow_weak_depth)
        ds = SceneDataset(**self.dataset_args, split="train" if cfg.data.test_every > 0 else "all")
        self.say(f"dataset: {ds.summary}")
        if len(ds) == 0:
            n_all, te = len(ds.model.views), cfg.data.test_every
            raise UsageError(f"{p['colmap_dir']}: no training frames: the model holds {n_all} image(s) and "
                             f"--test-every {te} holds out the first image of every {te}, so all "
                             f"{n_all} go to the test split. Use --test-every 0 to train on every image "
                             "(nothing held out), or give more images.")
        self.ds = ds
        self.model = read_model(p["colmap_dir"])
        self.stem_idx = stem_classes(ds.classes, self.class_table)
        if ds.both_heatmap_and_mask:
            self.say(f"semantics: {len(ds.both_heatmap_and_mask)} frame(s) have both a heatmap and a class mask; "
                     "the class masks are used (masks take precedence)")
        frames = []
        for f in ds.frames:
            sem = f.semantic_source is not None and bool((f.confidence > cfg.semantics.conf_threshold).any())
            frames.append(FrameInputs(semantics=sem, depth=f.depth_path is not None,
                                      depth_conf=self._depth_conf(f)))
        self.frames = frames
        self.use_sem = cfg.semantics.weight > 0 and any(fr.semantics for fr in frames)
        self.use_depth = cfg.depth.weight > 0 and any(fr.depth for fr in frames)
        self._report_terms()
        if self.use_depth and cfg.depth.loss == "prior" and cfg.depth.alignment == "sfm":
            self._fit_sfm_alignment()

    def _depth_conf(self, f) -> Optional[torch.Tensor]:
        """The frame's per-pixel prior confidence map (depths/<stem>.conf.png), at training size."""
        if not self.cfg.depth.confidence or f.depth_path is None:
            return None
        cpath = f.depth_path.with_name(f.depth_path.stem + ".conf.png")
        if not cpath.exists():
            return None
        from s3dgs.depth.io import load_depth_png

        conf = torch.from_numpy(load_depth_png(cpath)).float()
        if tuple(conf.shape) != (f.height, f.width):
            conf = torch.nn.functional.interpolate(conf[None, None], size=(f.height, f.width),
                                                   mode="bilinear")[0, 0]
        return conf.to(self.device)

    def _report_terms(self) -> None:
        cfg, p = self.cfg, self.paths
        if cfg.data.no_semantics:
            self.say("semantics: switched off (--no-semantics)")
        elif cfg.semantics.weight > 0 and not self.use_sem:
            self.say("semantics: no frame has a heatmap with a confident class (nor a class mask); training "
                     "without the semantic term")
        if cfg.data.no_depth:
            self.say("depth: switched off (--no-depth)")
        elif cfg.depth.weight > 0 and not self.use_depth:
            self.say(f"depth: no frame has a depth prior ({p['depth_dir'] or 'no depths/ folder'}); training "
                     "without the depth term. Make priors with `s3dgs depth IMAGES SCENE/depths`.")
        if self.use_depth and cfg.depth.ignored_by_seed_loss():
            self.say(f"depth: --depth-loss {cfg.depth.loss} is the integration guide's original formula and ignores "
                     f"{', '.join(cfg.depth.ignored_by_seed_loss())}; for that formula with options use "
                     "--depth-loss prior --depth-space depth --no-depth-robust")

    def _fit_sfm_alignment(self) -> None:
        """3DGS make_depth_scale: each prior fitted once to the inverse depth of the SfM points."""
        ds, xyz = self.ds, self.model.xyz
        fits = {}
        for i, f in enumerate(ds.frames):
            if f.depth_path is None:
                continue
            Xc = xyz @ f.viewmat[:3, :3].T + f.viewmat[:3, 3]
            front = Xc[:, 2] > 1e-6
            uvw = Xc[front] @ f.K.T
            fits[i] = fit_depth_scale_sfm(ds[i]["depth"].numpy(), uvw[:, :2] / uvw[:, 2:3], Xc[front, 2],
                                          prior_kind=ds.depth_kind)
        fits = mark_unreliable_scales(fits)
        bad = {ds.frames[i].name: fit.get("reason", "") for i, fit in fits.items() if not fit.get("ok")}
        for i, fit in fits.items():
            fr = self.frames[i]
            fr.depth = bool(fit.get("ok"))
            fr.sfm_scale_shift = (fit["scale"], fit["shift"]) if fit.get("ok") else None
        self.say(f"depth: sfm alignment fitted for {len(fits)} frames, {len(bad)} marked unreliable"
                 + (": " + "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5]) if bad else ""))
        self._sfm_record = {ds.frames[i].name: fit for i, fit in fits.items()}  # written with the run
        self.use_depth = any(fr.depth for fr in self.frames)

    def _init_model(self) -> None:
        cfg = self.cfg
        xyz, rgb, note = self._initial_points()
        self.sscale = scene_scale(self.ds.camera_centers())
        self.say(f"points: {note}; scene scale {self.sscale:.4g}")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        init_logit = -3.0 if cfg.semantics.activation == "sigmoid" else 0.0
        if cfg.strategy == "mcmc" and self.options.init_opacity is None:
            self.say(f"mcmc: initial opacity {cfg.init_opacity} (set --init-opacity to choose another)")
        self.params = init_params(xyz, rgb, sh_degree=cfg.sh_degree, num_classes=len(self.ds.classes),
                                  init_opacity=cfg.init_opacity, init_scale=cfg.init_scale, seed=cfg.seed,
                                  init_semantic_logit=init_logit).to(self.device)
        self.optimizers = self._make_optimizers()
        # the strategy is the configuration's own dataclass (gsplat style), used as it is
        self.strategy = {"default": cfg.densify, "mcmc": cfg.mcmc, "none": None}[cfg.strategy]
        if self.strategy is not None:
            self.strategy.check_sanity(self.params, self.optimizers)
            self.sstate = self.strategy.initialize_state(scene_scale=self.sscale)
        else:
            self.sstate = {}
        self.perm = torch.randperm(len(self.ds), generator=self.gen)
        self.depth_fits: dict[int, tuple] = {}  # frame -> prior alignment last fitted (floater pruning)
        if self.strategy is not None and self.strategy.prune_floaters and not self.use_depth:
            raise UsageError("--prune-floaters needs depth priors: this scene has none (or --no-depth); "
                             "make them with `s3dgs depth`, or switch floater pruning off")
        self.bg = torch.tensor(cfg.background, dtype=torch.float32, device=self.device)[None]
        self.config_dict = {"scene": str(self.inputs.scene) if self.inputs.scene else None,
                            "out": str(self.out), "classes": list(self.ds.classes),
                            "class_table": self.class_table.to_dict(),
                            "resolved_paths": {k: (str(v) if v else None) for k, v in self.paths.items()},
                            # the auto schedule values scaled to this run: the guide's value and this run's
                            "schedule_scaled": {k: {"default": o, "resolved": n}
                                                for k, (o, n) in self.schedule_scaled.items()},
                            # what the run used (every auto value resolved) and what the user set
                            # (None: auto), e.g. warmup_iterations 4000 in both when set, or 571 / None
                            "train": config_to_dict(cfg),
                            "options": config_to_dict(self.options)}

    def _initial_points(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(xyz, rgb, a sentence saying where they came from)."""
        from s3dgs.scene.ply import initial_points

        cfg, model, pcd = self.cfg, self.model, self.paths["pcd_path"]
        xyz, rgb, note = initial_points(pcd, model.xyz, model.rgb, cfg.max_init_points, cfg.seed,
                                        model_name=str(self.paths["colmap_dir"]))
        if len(xyz) < 100:
            rng = np.random.default_rng(cfg.seed)
            c = self.ds.camera_centers()
            extra = c.mean(0) + rng.uniform(-1, 1, (2000, 3)) * scene_scale(c) * 0.5
            xyz = np.concatenate([np.asarray(xyz).reshape(-1, 3), extra])
            rgb = np.concatenate([np.asarray(rgb).reshape(-1, 3), rng.integers(0, 255, (2000, 3)).astype(np.uint8)])
            note += "; too few to start from, 2000 random points added inside the camera hull"
        return xyz, rgb, note

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.cfg.lr
        lrs = {"means": lr.means * self.sscale, "scales": lr.scales, "quats": lr.quats,
               "opacities": lr.opacities, "sh0": lr.sh0, "shN": lr.shN, "semantics": lr.semantics}
        # One Adam per parameter: gsplat's strategies expect exactly one param group each. The fused
        # kernel (one pass over each tensor) is the same update, 3x faster on a CPU than the default
        # per-op one (profile in BENCHMARKS.md).
        return {k: torch.optim.Adam([{"params": self.params[k], "lr": lrs[k], "name": k}], eps=1e-15, fused=True)
                for k in self.params}

    def _resume(self) -> None:
        ck, path = load_latest_checkpoint(self.out, self.device, say=self.say)
        if ck is None:
            self.say(f"resume: no readable checkpoint in {self.out / 'ckpts'}; starting from scratch")
            truncate_metrics(self.out / "metrics.jsonl", 0)
            return
        if isinstance(ck.get("config"), dict) and "train" in ck["config"]:
            check_resume(ck["config"], self.config_dict, path)
        check_frames(ck.get("frames"), [f.name for f in self.ds.frames], path, len(ck["perm"]))
        check_resume_length(ck["step"], self.cfg.num_iterations, path)
        truncate_metrics(self.out / "metrics.jsonl", ck["step"])  # rows after it are logged again
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.to(self.device)) for k, v in ck["params"].items()})
        self.optimizers = self._make_optimizers()
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        self.sstate = ck["strategy_state"]
        self.start = ck["step"]
        self.elapsed_before = ck.get("elapsed_s", 0.0)
        self.perm = ck["perm"]
        _set_rng_state(ck["rng"], self.gen)
        self.say(f"resume: continuing from {path.name} at iteration {self.start}")

    # -- one iteration ------------------------------------------------------------------------

    def means_lr(self, step: int) -> float:
        """Means learning rate at ``step``: exponential decay to 1 % over the run."""
        cfg = self.cfg
        return cfg.lr.means * self.sscale * (0.01 ** (1.0 / cfg.num_iterations)) ** step

    def next_frame(self, step: int) -> int:
        """The training frame of ``step``: a new random permutation every pass over the frames."""
        n = len(self.ds)
        if step % n == 0 and step > 0:
            self.perm = torch.randperm(n, generator=self.gen)
        return int(self.perm[step % n])

    def train_step(self, step: int) -> dict[str, torch.Tensor] | None:
        """Render one training view, compute the losses, step the optimisers and the strategy.

        Returns the losses (0-d tensors ``loss, rgb, depth, sem, psnr``) and the weights in effect,
        or None when the loss was not finite and the step was skipped."""
        cfg, dev, params = self.cfg, self.device, self.params
        idx = self.next_frame(step)
        item, fr = self.ds[idx], self.frames[idx]
        image = item["image"].to(dev)[None]
        H, W = image.shape[1:3]
        lam_sem = semantic_weight(step, cfg.semantics.warmup_iterations, cfg.semantics.weight) \
            if self.use_sem else 0.0
        lam_depth = depth_weight_schedule(step, cfg.num_iterations, cfg.depth.weight, kind=cfg.depth.schedule) \
            if self.use_depth else 0.0
        sem_on, depth_on = lam_sem > 0 and fr.semantics, lam_depth > 0 and fr.depth

        r = render_params(params, item["viewmat"].to(dev)[None], item["K"].to(dev)[None], W, H,
                          sh_degree=min(step // cfg.sh_degree_interval, cfg.sh_degree),
                          semantics=cfg.semantics.activation if sem_on else None, render_depth=depth_on,
                          backgrounds=self.bg, backend=cfg.backend, absgrad=True)
        if self.strategy is not None:
            self._strategy_inputs(r.meta, item)
            self.strategy.step_pre_backward(params, self.optimizers, self.sstate, step, r.meta)

        l_rgb = rgb_loss(r.colors, image, cfg.lambda_ssim)
        zero = torch.zeros((), device=dev)
        l_depth = self.depth_loss(r, item, fr, image, idx) if depth_on else zero
        l_sem = zero
        if sem_on:
            is_mask = item["semantic_source"] == "mask"
            l_sem = semantic_loss(r.extras[0], item["heatmap"].to(dev), item["confidence"].to(dev),
                                  fg_weight=cfg.semantics.mask_fg_weight if is_mask else cfg.semantics.fg_weight,
                                  conf_threshold=cfg.semantics.conf_threshold,
                                  valid=item["semantic_valid"].to(dev) if is_mask else None)
        loss = l_rgb + lam_depth * l_depth + lam_sem * l_sem
        if self.strategy_kind == "mcmc":
            loss = loss + self.mcmc_regularisation()
        if not self._backward(loss, step):
            return None
        for k, o in self.optimizers.items():
            if k == "means":
                o.param_groups[0]["lr"] = self.means_lr(step)
            o.step()
            o.zero_grad(set_to_none=True)
        if self.strategy is not None:
            kw = {"lr": self.means_lr(step)} if self.strategy_kind == "mcmc" else {"packed": False}
            self.strategy.step_post_backward(params, self.optimizers, self.sstate, step, r.meta, **kw)
        with torch.no_grad():
            mse = ((r.colors.detach() - image) ** 2).mean()
            psnr = -10.0 * torch.log10(mse.clamp_min(1e-10))
        return {"loss": loss.detach(), "rgb": l_rgb.detach(), "depth": l_depth.detach(), "sem": l_sem.detach(),
                "psnr": psnr, "lambda_sem": lam_sem, "lambda_depth": lam_depth}

    @property
    def strategy_kind(self) -> str:
        return self.cfg.strategy

    def mcmc_regularisation(self) -> torch.Tensor:
        """MCMC's opacity and scale regularisers (scales relative to the scene scale)."""
        from s3dgs.gaussians.mcmc import mcmc_regularization

        return mcmc_regularization(self.params, scene_scale=self.sscale)

    def stem_map(self, item: dict) -> torch.Tensor | None:
        """``[H, W]`` the strongest stem channel (tomato U, D, P) of a frame's heatmap or mask, or None."""
        if not item["semantic_source"] or not self.stem_idx:
            return None
        return item["heatmap"].to(self.device)[..., self.stem_idx].amax(-1)

    def thin_map(self, item: dict, fr: FrameInputs) -> torch.Tensor:
        """``[H, W]`` the frame's thin-structure map (s3dgs/thin.py, --depth-thin): computed from the
        frame on its first use and kept (uint8, on the host), never per step."""
        if fr.thin is None:
            from s3dgs.thin import thin_structure_map

            m = thin_structure_map(item["image"].to(self.device), self.cfg.depth.thin_widths)  # torch path
            fr.thin = (m * 255.0 + 0.5).to(torch.uint8).cpu()
        return fr.thin.to(self.device, non_blocking=True).float().div_(255.0)

    def depth_loss(self, r, item: dict, fr: FrameInputs, image: torch.Tensor, idx: int) -> torch.Tensor:
        """The depth-prior term of one view (the options of cfg.depth decide which inputs count).
        With floater pruning on, the alignment fitted here is kept for the frame's depth view."""
        dc = self.cfg.depth
        prior = item["depth"].to(self.device)
        pred, alpha = r.depths[0, ..., 0], r.alphas[0, ..., 0]
        if dc.original_formula:
            return scale_invariant_depth_loss(pred, prior, mask=alpha > 0.5)
        keep_fit = self.strategy is not None and self.strategy.prune_floaters
        out = depth_prior_loss(pred, prior, alpha, config=dc, prior_kind=self.ds.depth_kind,
                               scale_shift=fr.sfm_scale_shift, edge_image=image[0], confidence=fr.depth_conf,
                               stem_heatmap=self.stem_map(item) if (dc.stem_aware or dc.stem_one_sided) else None,
                               thin_map=self.thin_map(item, fr) if dc.thin != "off" else None,
                               return_info=keep_fit)
        if not keep_fit:
            return out
        loss, info = out
        self.depth_fits[idx] = (info["scale"].detach(), info["shift"].detach())
        return loss

    def _strategy_inputs(self, meta: dict, item: dict) -> None:
        """What the stem pieces of the strategy read from ``meta``: the frame's stem pixels
        (stem-aware densification) and the depth views (floater pruning, built only when due)."""
        s = self.strategy
        if getattr(s, "grow_grad2d_stem", None) is not None:
            stem = self.stem_map(item)
            if stem is not None:
                meta["stem_mask"] = (stem > 0.5)[None]
        if s.prune_floaters:
            meta["floater_views"] = self.floater_views

    def floater_views(self) -> list:
        """One depth view per training frame whose prior alignment is known: the prior mapped to
        metric depth, with stem pixels invalid (monocular priors blur thin stems into the backdrop,
        so a stem Gaussian would sit "in front" of that surface in every view)."""
        from s3dgs.gaussians.floaters import DepthView, prior_to_depth

        dc, views = self.cfg.depth, []
        for i, fr in enumerate(self.frames):
            fit = fr.sfm_scale_shift if dc.alignment == "sfm" else self.depth_fits.get(i)
            if not fr.depth or fit is None:
                continue
            item = self.ds[i]
            depth, valid = prior_to_depth(item["depth"].to(self.device), *fit,
                                          mapping="sfm" if dc.alignment == "sfm" else "per_view",
                                          space=dc.space, prior_kind=self.ds.depth_kind)
            stem = self.stem_map(item)
            if stem is not None:
                valid = valid & ~(stem > 0.1)
            views.append(DepthView(item["viewmat"].to(self.device), item["K"].to(self.device),
                                   depth.to(self.device), valid))
        return views

    def _backward(self, loss: torch.Tensor, step: int) -> bool:
        """Backward, or skip a non-finite loss (True when the step goes on)."""
        finite = torch.isfinite(loss)
        if self.host_nonfinite_check and not bool(finite):
            self.nonfinite += 1
            self.say(f"Iter {step + 1:5d} | non-finite loss ({float(loss.detach())}); step skipped")
            for o in self.optimizers.values():
                o.zero_grad(set_to_none=True)
            if self.nonfinite >= self.cfg.max_nonfinite:
                raise TrainingError(
                    f"the loss was non-finite {self.nonfinite} times in a row (last at iteration {step + 1}); "
                    f"stopping. The last good checkpoint is {self.out / 'ckpts'}/ckpt_{self.last_ok_ckpt}.pt. "
                    "Lower the learning rates or --lambda-depth, or check the inputs for NaN.")
            return False
        self.nonfinite = 0
        loss.backward()
        if not self.host_nonfinite_check:
            # no host sync: a non-finite step zeroes its own gradients (Adam's momentum still moves
            # the parameters a little), and its streak is counted on the device for the log window
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.copy_(torch.where(finite, p.grad, torch.zeros_like(p.grad)))
            bad = (~finite).to(torch.int32)
            self.nf_streak = bad if self.nf_streak is None else (self.nf_streak + bad) * bad
            self.nf_worst = self.nf_streak.clone() if self.nf_worst is None else torch.maximum(self.nf_worst,
                                                                                                self.nf_streak)
            self.nf_window = bad if self.nf_window is None else self.nf_window + bad
        return True

    def _check_device_nonfinite(self, it: int) -> None:
        """Once per log window on an accelerator: say how many steps had a non-finite loss, and stop
        when --max-nonfinite of them came in a row (the device-side counterpart of the CPU check)."""
        if self.nf_window is None:
            return
        n_window, worst = int(self.nf_window), int(self.nf_worst)
        self.nf_window.zero_()
        self.nf_worst = self.nf_streak.clone()
        if n_window:
            self.say(f"Iter {it:5d} | {n_window} step(s) with a non-finite loss in this window; their gradients "
                     "were zeroed")
        if worst >= self.cfg.max_nonfinite:
            raise TrainingError(
                f"the loss was non-finite {worst} times in a row (seen at iteration {it}); stopping. The last "
                f"good checkpoint is {self.out / 'ckpts'}/ckpt_{self.last_ok_ckpt}.pt. Lower the learning "
                "rates or --lambda-depth, or check the inputs for NaN.")

    # -- logging, checkpoints -----------------------------------------------------------------

    def after_step(self, step: int, losses: dict | None) -> None:
        """Accumulate the step's losses; write the log line and checkpoint when due."""
        cfg = self.cfg
        if self.pbar is not None:
            self.pbar.update(1)
        if losses is None:
            return
        self.acc += torch.stack([losses[k] for k in ("loss", "rgb", "depth", "sem", "psnr")])
        self.acc_n += 1
        it = step + 1
        if it % cfg.log_every == 0 or it == cfg.num_iterations:
            self._check_device_nonfinite(it)
            self._log_window(it, losses)
        if it % cfg.ckpt_every == 0 and it < cfg.num_iterations:
            self.save_checkpoint(it)
            self.last_ok_ckpt = it

    def _log_window(self, it: int, losses: dict) -> None:
        vals = (self.acc / max(self.acc_n, 1)).tolist()
        now = time.perf_counter()
        ips = self.acc_n / max(now - self.t_window, 1e-9)
        n_g = len(self.params["means"])
        self.say(f"Iter {it:5d} | Loss: {vals[0]:.6f} (RGB: {vals[1]:.6f}, Depth: {vals[2]:.6f}, "
                 f"Sem: {vals[3]:.6f}, lambda_sem: {losses['lambda_sem']:.3f}) | Gaussians: {n_g} | "
                 f"PSNR: {vals[4]:.2f} | {ips:.2f} it/s")
        self._jsonl.write(json.dumps({
            "iter": it, "loss": vals[0], "rgb": vals[1], "depth": vals[2], "sem": vals[3],
            "lambda_sem": losses["lambda_sem"], "lambda_depth": losses["lambda_depth"], "gaussians": n_g,
            "psnr": vals[4], "it_per_s": ips, "elapsed_s": self.elapsed_before + now - self.t_start}) + "\n")
        self._jsonl.flush()
        self.acc.zero_()
        self.acc_n = 0
        self.t_window = now

    def save_checkpoint(self, step: int) -> Path:
        return save_checkpoint({
            "step": step, "params": {k: v.detach() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": self.sstate, "rng": _rng_state(self.gen), "perm": self.perm,
            "frames": [f.name for f in self.ds.frames],  # what perm indexes: --resume checks them
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.t_start,
            "config": self.config_dict,
        }, self.out, step, keep=self.cfg.keep_checkpoints)

    # -- the end ------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Final checkpoint, PLY, summary, renders of the held-out views; returns the summary."""
        import resource

        cfg, out = self.cfg, self.out
        if self.pbar is not None:
            self.pbar.close()
        elapsed = self.elapsed_before + time.perf_counter() - self.t_start
        self.save_checkpoint(cfg.num_iterations)
        save_ply(out / "point_cloud.ply", self.params, self.ds.classes)
        summary = {
            "iterations": cfg.num_iterations, "train_time_s": elapsed,
            "it_per_s": (cfg.num_iterations - self.start) / max(time.perf_counter() - self.t_start, 1e-9),
            "gaussians": len(self.params["means"]), "n_opacity_resets": self.sstate.get("n_resets", 0),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "device": str(self.device), "scene_scale": self.sscale,
            "depth_used": self.use_depth, "semantics_used": self.use_sem,
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3 if self.device.type == "cuda" else None,
        }
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
        self.say(f"done: {cfg.num_iterations} iterations in {elapsed:.1f} s, {summary['gaussians']} Gaussians -> "
                 f"{out / 'point_cloud.ply'}")
        if cfg.save_renders and cfg.data.test_every > 0:
            from s3dgs.export import render_views
            from s3dgs.scene.dataset import SceneDataset

            test = SceneDataset(**self.dataset_args, split="test", verbose=False)
            render_views(self.params, test, out / "renders", sh_degree=cfg.sh_degree,
                         activation=cfg.semantics.activation, background=cfg.background, backend=cfg.backend)
        self._logfile.close()
        self._jsonl.close()
        summary["run"] = str(out)
        summary["params"] = self.params
        return summary


def run_training(cfg: TrainConfig, inputs: SceneInputs, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> dict:
    """Train according to ``cfg`` (its auto values resolved for the run, ``cfg`` itself unchanged)
    on ``inputs`` into the run folder ``out``; returns the summary (also RUN/train_summary.json;
    its "params" entry holds the trained Gaussians)."""
    from s3dgs.atomic import check_writable_folder
    from s3dgs.runlock import run_lock

    check_writable_folder(out, "--out", files=("config.json", "point_cloud.ply", "train_summary.json"))
    with run_lock(out, "s3dgs train"):  # one command per run folder at a time (s3dgs/runlock.py)
        trainer = Trainer(cfg, inputs, out, resume=resume, overwrite=overwrite)
        for step in range(trainer.start, cfg.num_iterations):
            trainer.after_step(step, trainer.train_step(step))
        return trainer.finish()


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
    warmup_iterations: int | None = None,
    resolution_scale: float = 1.0,
    out_dir=None,
    **kwargs,
) -> dict:
    """The integration guide's entry point, keyword for keyword. Any other option may be passed by its flat name
    (the command-line name with ``_``: ``scene=``, ``depth_space=``, ``log_every=``,
    ``refine_every=`` ...), and ``resume=`` / ``overwrite=``. A schedule value passed here is kept as
    given (the integration guide's ``warmup_iterations=4000`` stays 4000 even in a short run); those not passed
    are auto, scaled to a short run (s3dgs.config). Returns :func:`run_training`'s summary."""
    inputs = SceneInputs(scene=kwargs.pop("scene", None), colmap_dir=colmap_dir, images_dir=images_dir, heatmap_dir=heatmap_dir,
                         confidence_path=confidence_path, pcd_path=pcd_path, depth_dir=depth_dir)
    out = Path(out_dir if out_dir is not None else kwargs.pop("out", "runs/run"))
    kwargs.pop("out", None)
    resume, overwrite = bool(kwargs.pop("resume", False)), bool(kwargs.pop("overwrite", False))
    if warmup_iterations is not None:
        kwargs["warmup_iterations"] = warmup_iterations
    cfg, _ = config_from_flat(lambda_depth=lambda_depth, lambda_sem=lambda_sem, num_iterations=num_iterations,
                              resolution_scale=resolution_scale, **kwargs)
    return run_training(cfg, inputs, out, resume=resume, overwrite=overwrite)


def train_main(cmd: TrainCommand) -> int:
    """CLI: `s3dgs train SCENE --out RUN`. Errors reach s3dgs.cli.main as S3dgsError."""
    cmd.validate()
    from s3dgs.config import check_strategy_options

    check_strategy_options(cmd.train, getattr(cmd, "cli_given", frozenset()))
    run_training(cmd.train, cmd.inputs, cmd.out, resume=cmd.resume, overwrite=cmd.overwrite)
    return 0
