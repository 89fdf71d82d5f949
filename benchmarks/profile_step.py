"""Where one training step goes: a per-part breakdown at three scales, for each CPU backend.

    .venv/bin/python benchmarks/profile_step.py [--scales demo,mid,large] [--backends native,torch]
        [--steps 10] [--threads 2] [--out bench_out/profile]

Scales (the issue's three, on the synthetic plant):

- ``demo``:  the default preset at half resolution (160x120), ~100k Gaussians (what the demo
  reached after 2,000 iterations);
- ``mid``:   the default preset at full resolution (320x240), ~25k Gaussians;
- ``large``: the plant rendered at 540x540 (48 views), ~20k Gaussians.

Each (scale, backend) runs in a fresh process (its own peak RSS), the backends alternating, with
the same thread count. The Gaussians are the scene's SfM points grown to the target count by
jittered copies (their sizes from the 3 nearest neighbours, as training initialises them), so the
breakdown does not depend on a long training run; densification runs (it is part of a step) but
refines only every 100 steps, so the count stays put. The trainer itself runs (``Trainer``,
``train_step``); its parts are timed by wrapping the functions it calls:

data (dataset item), projection, colour/SH features, tile binning, rasteriser forward, rasteriser
backward, the rest of the backward (projection, SH, losses), the RGB loss (L1 + SSIM), the depth
loss (with its per-view alignment), the semantic loss, Adam, densification (the strategy's hooks),
and the remainder ("other": Python bookkeeping, tensors moved, the log accumulation).

Prints JSON (and writes OUT/profile.json): seconds per step per part, the share of each, the
whole step, the Gaussian count, intersections, and the peak RSS per (scale, backend).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCALES = {
    "demo": {"synth": {"preset": "default"}, "resolution_scale": 0.5, "gaussians": 100_000},
    "mid": {"synth": {"preset": "default"}, "resolution_scale": 1.0, "gaussians": 25_000},
    "large": {"synth": {"preset": "default", "width": 540, "height": 540}, "resolution_scale": 1.0,
              "gaussians": 20_000},
}
PARTS = ("data", "projection", "sh_features", "tile_binning", "raster_forward", "raster_backward",
         "backward_other", "rgb_loss", "depth_loss", "semantic_loss", "adam", "densification", "other")


def make_scene(root: Path, name: str) -> Path:
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    kw = SCALES[name]["synth"]
    tag = "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
    scene = root / f"scene_{tag}"
    if not (scene / "gt" / "meta.json").exists():
        make_synthetic_scene(SynthConfig(out=scene, seed=0, progress=False, **kw))
    return scene


def grown_points(scene: Path, n: int, out: Path) -> Path:
    """A PLY of ``n`` points: the scene's SfM points plus jittered copies (0.3x their spacing)."""
    import numpy as np

    from s3dgs.gaussians.model import knn_mean_distance
    from s3dgs.scene.ply import read_points_ply, write_points_ply

    xyz, rgb = read_points_ply(scene / "points3D.ply")
    rng = np.random.default_rng(0)
    spacing = knn_mean_distance(xyz, 3)
    idx = rng.integers(0, len(xyz), n - len(xyz)) if n > len(xyz) else np.zeros(0, int)
    extra = xyz[idx] + rng.normal(size=(len(idx), 3)) * 0.3 * spacing[idx, None]
    path = out / f"points_{n}.ply"
    write_points_ply(path, np.concatenate([xyz, extra])[:n], np.concatenate([rgb, rgb[idx]])[:n])
    return path


class Timers:
    """Wall-clock seconds per part, with nesting: a part's time excludes the parts inside it."""

    def __init__(self):
        self.total = dict.fromkeys(PARTS, 0.0)
        self.stack: list[list] = []

    def wrap(self, part: str, fn):
        def timed(*a, **kw):
            self.stack.append([part, time.perf_counter(), 0.0])
            try:
                return fn(*a, **kw)
            finally:
                name, t0, inner = self.stack.pop()
                dt = time.perf_counter() - t0
                self.total[name] += dt - inner
                if self.stack:
                    self.stack[-1][2] += dt
        return timed


def instrument(trainer, timers: Timers) -> None:
    """Wrap the functions one training step calls (module attributes and instance methods)."""
    import s3dgs.render.api as api
    import s3dgs.render.native as native
    import s3dgs.render.raster as raster
    import s3dgs.train as T

    api.project_gaussians = timers.wrap("projection", api.project_gaussians)
    api.color_features = timers.wrap("sh_features", api.color_features)
    api.build_plan = timers.wrap("tile_binning", api.build_plan)
    native.bin_tiles = timers.wrap("tile_binning", native.bin_tiles)
    native._forward = timers.wrap("raster_forward", native._forward)
    raster.rasterize_forward = timers.wrap("raster_forward", raster.rasterize_forward)
    raster.rasterize_backward = timers.wrap("raster_backward", raster.rasterize_backward)
    bwd = native._NativeRasterize.backward
    native._NativeRasterize.backward = staticmethod(timers.wrap("raster_backward", bwd))
    T.rgb_loss = timers.wrap("rgb_loss", T.rgb_loss)
    T.semantic_loss = timers.wrap("semantic_loss", T.semantic_loss)
    trainer.depth_loss = timers.wrap("depth_loss", trainer.depth_loss)
    trainer._backward = timers.wrap("backward_other", trainer._backward)
    cls = type(trainer.ds)  # a fresh process per (scale, backend): patching the class is safe here
    cls.__getitem__ = timers.wrap("data", cls.__getitem__)
    for o in trainer.optimizers.values():
        o.step = timers.wrap("adam", o.step)
    if trainer.strategy is not None:
        s = trainer.strategy
        object.__setattr__(s, "step_pre_backward", timers.wrap("densification", s.step_pre_backward))
        object.__setattr__(s, "step_post_backward", timers.wrap("densification", s.step_post_backward))


def profile_one(scale: str, backend: str, steps: int, threads: int, root: Path) -> dict:
    """One (scale, backend) in this process: build, warm up, time ``steps`` training steps."""
    import resource

    import torch

    from s3dgs.config import config_from_flat
    from s3dgs.train import SceneInputs, Trainer

    torch.set_num_threads(threads)
    spec = SCALES[scale]
    scene = make_scene(root, scale)
    pcd = grown_points(scene, spec["gaussians"], root)
    cfg, _ = config_from_flat(num_iterations=7000, backend=backend, resolution_scale=spec["resolution_scale"],
                              progress=False, save_renders=False, num_threads=threads, sh_degree=3,
                              max_init_points=spec["gaussians"], sem_warmup_iterations=0,
                              log_every=10_000, ckpt_every=10_000)
    out = root / f"run_{scale}_{backend}"
    trainer = Trainer(cfg, SceneInputs(scene=scene, pcd_path=pcd), out, overwrite=True)
    step0 = 3001  # SH degree 3, semantics on; no refinement or opacity reset due in these steps
    for k in range(3):  # warm-up (the native kernel's first call loads it)
        trainer.train_step(step0 + k)
    timers = Timers()
    instrument(trainer, timers)
    step_fn = timers.wrap("other", trainer.train_step)
    n_isects = []
    t0 = time.perf_counter()
    for k in range(steps):
        step_fn(step0 + 3 + k)
    wall = (time.perf_counter() - t0) / steps
    from s3dgs.gaussians.model import render_params

    item = trainer.ds[0]
    with torch.no_grad():
        r = render_params(trainer.params, item["viewmat"][None], item["K"][None], item["width"], item["height"],
                          backend=backend)
        n_isects.append(int(r.meta["n_isects"]))
    per = {k: v / steps for k, v in timers.total.items()}
    return {"scale": scale, "backend": backend, "threads": threads, "steps": steps,
            "resolution": f"{item['width']}x{item['height']}", "gaussians": len(trainer.params["means"]),
            "intersections": n_isects[0], "s_per_step": wall,
            "parts_s": {k: round(v, 5) for k, v in per.items()},
            "parts_share": {k: round(v / wall, 4) for k, v in per.items()},
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="demo,mid,large")
    ap.add_argument("--backends", default="native,torch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_out/profile"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # scale:backend, run in this process
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.one:
        import s3dgs  # noqa: F401  (OMP_WAIT_POLICY before torch)

        scale, backend = a.one.split(":")
        print(json.dumps(profile_one(scale, backend, a.steps, a.threads, a.out)))
        return 0
    import s3dgs  # noqa: F401  (OMP_WAIT_POLICY before torch)

    for scale in a.scales.split(","):  # scenes and points built here, so no timed process pays for them
        grown_points(make_scene(a.out, scale), SCALES[scale]["gaussians"], a.out)
    rows = []
    for scale in a.scales.split(","):
        for backend in a.backends.split(","):
            cmd = [sys.executable, __file__, "--one", f"{scale}:{backend}", "--steps", str(a.steps),
                   "--threads", str(a.threads), "--out", str(a.out)]
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(res.stdout, res.stderr, file=sys.stderr)
                return 1
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["load_average"] = os.getloadavg()[0]
            rows.append(row)
            print(f"{scale} {backend}: {row['s_per_step']:.3f} s/step, {row['gaussians']} Gaussians",
                  file=sys.stderr, flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()}-core CPU",
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "rows": rows}
    by = {(r["scale"], r["backend"]): r for r in rows}
    result["speedup_native_vs_torch"] = {
        s: round(by[(s, "torch")]["s_per_step"] / by[(s, "native")]["s_per_step"], 2)
        for s in a.scales.split(",") if (s, "torch") in by and (s, "native") in by}
    (a.out / "profile.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
