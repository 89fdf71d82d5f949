"""Training speed, measured in one run: the depth term's overhead, and the CPU backends side by side.

Two modes; both print JSON.

``--mode depth`` (the default): with and without depth supervision, in the same process, on the
synthetic plant. Both configurations train from the same initial points with the same seed;
densification is off so both render the same number of Gaussians and the difference is the depth
term alone (one extra channel in the one render pass, plus the loss).

    python benchmarks/train.py [--scene DIR] [--iterations 200] [--threads 2] [--repeats 2]

``--mode backends``: seconds per iteration of ``train(...)`` with each CPU backend (``native``, the
C++/OpenMP kernels, and ``torch``, the reference) at the three scales of
``benchmarks/profile_step.py`` (demo: 160x120 with 100k Gaussians; mid: 320x240 with 25k; large:
540x540 with 20k; the Gaussians are the SfM points grown to that count), densification off so the
count stays put, colour + semantics + depth, SH degree 3. Every (scale, backend, repeat) trains in a
fresh process with the same thread count, the backends alternating. In that process a throw-away
2-iteration run loads the kernels, then a ``--warmup``-iteration run and a longer one train from
the same points: their wall-time difference over the extra iterations is the s/iteration (set-up,
export and the first calls' costs cancel out).

    python benchmarks/train.py --mode backends [--scales demo,mid,large] [--iterations 40]
        [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def depth_overhead(args) -> dict:
    import torch

    import s3dgs  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads OpenMP)
    from s3dgs.train import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        scene = args.scene
        if scene is None:
            from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

            scene = Path(tmp) / "plant"
            make_synthetic_scene(SynthConfig(out=scene, preset="default", seed=0, progress=False))
        runs: dict[str, list[float]] = {"rgb_sem": [], "rgb_sem_depth": []}
        gauss = {}
        for rep in range(args.repeats):
            for name, no_depth in (("rgb_sem", True), ("rgb_sem_depth", False)):
                res = train(scene=scene, out_dir=Path(tmp) / f"{name}_{rep}", num_iterations=args.iterations,
                            warmup_iterations=0, no_depth=no_depth, strategy="none", progress=False,
                            save_renders=False, log_every=args.iterations, ckpt_every=10**9,
                            resolution_scale=args.resolution_scale, num_threads=args.threads)
                runs[name].append(1.0 / res["it_per_s"])  # timed inside the loop, set-up excluded
                gauss[name] = res["gaussians"]
    best = {k: min(v) for k, v in runs.items()}
    return {
        "mode": "depth", "machine": "2-core CPU", "threads": args.threads, "iterations": args.iterations,
        "scene": str(args.scene or "synthetic default (48 views, 320x240)"),
        "gaussians": gauss,
        "s_per_iter": {k: round(v, 4) for k, v in best.items()},
        "all_s_per_iter": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "depth_overhead_pct": round(100 * (best["rgb_sem_depth"] / best["rgb_sem"] - 1), 1),
    }


def train_one(scale: str, backend: str, args) -> dict:
    """One training run in this process; s/iteration after ``args.warmup`` iterations."""
    import torch

    import s3dgs  # noqa: F401
    from profile_step import SCALES, grown_points, make_scene
    from s3dgs.train import train

    torch.set_num_threads(args.threads)
    spec = SCALES[scale]
    scene = make_scene(args.out, scale)
    pcd = grown_points(scene, spec["gaussians"], args.out)
    marks: list[float] = []

    def timed(n: int) -> dict:
        return train(scene=scene, pcd_path=pcd, out_dir=args.out / f"train_{scale}_{backend}_{n}", num_iterations=n,
                     backend=backend, resolution_scale=spec["resolution_scale"], max_init_points=spec["gaussians"],
                     warmup_iterations=0, sh_degree=3, sh_degree_interval=1, strategy="none", progress=False,
                     save_renders=False, log_every=10**9, ckpt_every=10**9, num_threads=args.threads,
                     overwrite=True)

    # a throw-away run loads the kernels and warms the caches; then a short and a long run: their
    # difference is the cost of the extra iterations alone (set-up and the final export cancel out)
    timed(2)
    for n in (args.warmup, args.warmup + args.iterations):
        t0 = time.perf_counter()
        res = timed(n)
        marks.append(time.perf_counter() - t0)
    return {"scale": scale, "backend": backend, "gaussians": res["gaussians"],
            "s_per_iter": (marks[1] - marks[0]) / args.iterations}


def backends(args) -> dict:
    from profile_step import SCALES, grown_points, make_scene

    for scale in args.scales.split(","):  # built here, so no timed process pays for them (its peak RSS)
        grown_points(make_scene(args.out, scale), SCALES[scale]["gaussians"], args.out)
    rows: dict[tuple[str, str], list[float]] = {}
    gauss = {}
    for rep in range(args.repeats):
        for scale in args.scales.split(","):
            for backend in (("native", "torch") if rep % 2 == 0 else ("torch", "native")):
                cmd = [sys.executable, __file__, "--one", f"{scale}:{backend}", "--iterations", str(args.iterations),
                       "--warmup", str(args.warmup), "--threads", str(args.threads), "--out", str(args.out)]
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    sys.exit(f"{scale}/{backend} failed:\n{res.stdout}\n{res.stderr}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                rows.setdefault((scale, backend), []).append(r["s_per_iter"])
                gauss[scale] = r["gaussians"]
                print(f"{scale} {backend} repeat {rep}: {r['s_per_iter']:.3f} s/it", file=sys.stderr)
    out = {"mode": "backends", "threads": args.threads, "iterations": args.iterations, "warmup": args.warmup,
           "repeats": args.repeats, "command": " ".join(["python"] + sys.argv), "load_avg": os.getloadavg(),
           "scales": {}}
    for scale in args.scales.split(","):
        nat, tor = rows[(scale, "native")], rows[(scale, "torch")]
        out["scales"][scale] = {
            "gaussians": gauss[scale],
            "native_s_per_iter": [round(x, 4) for x in nat], "torch_s_per_iter": [round(x, 4) for x in tor],
            "speedup_best": round(min(tor) / min(nat), 2),
            "speedup_per_repeat": [round(t / n, 2) for t, n in zip(tor, nat)],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("depth", "backends"), default="depth")
    ap.add_argument("--scene", type=Path, default=None, help="depth mode: scene folder (default: make the default plant)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="iterations timed (default: 200 in depth mode, 40 in backends mode)")
    ap.add_argument("--warmup", type=int, default=5, help="backends mode: iterations of the short run subtracted")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the configurations this often")
    ap.add_argument("--resolution-scale", type=float, default=1.0, help="depth mode: resolution scale")
    ap.add_argument("--scales", default="demo,mid,large", help="backends mode: scales of benchmarks/profile_step.py")
    ap.add_argument("--out", type=Path, default=Path("bench_out/train_backends"),
                    help="backends mode: scenes and runs (reused)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # scale:backend, in this process
    args = ap.parse_args()
    if args.iterations is None:
        args.iterations = 200 if args.mode == "depth" else 40
    if args.one:
        args.out.mkdir(parents=True, exist_ok=True)
        scale, backend = args.one.split(":")
        print(json.dumps(train_one(scale, backend, args)))
        return
    if args.mode == "depth":
        print(json.dumps(depth_overhead(args), indent=2))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(backends(args), indent=2))


if __name__ == "__main__":
    main()
