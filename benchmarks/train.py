"""Training speed with and without depth supervision, in the same process, on the synthetic plant.

Both configurations train from the same initial points with the same seed; densification is off
so both render the same number of Gaussians and the difference is the depth term alone (one extra
channel in the one render pass, plus the loss). Prints JSON.

    python benchmarks/train.py [--scene DIR] [--iterations 200] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=None, help="scene folder (default: make the default plant)")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two configurations this often")
    ap.add_argument("--resolution-scale", type=float, default=1.0)
    args = ap.parse_args()

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
    out = {
        "machine": "2-core CPU", "threads": args.threads, "iterations": args.iterations,
        "scene": str(args.scene or "synthetic default (48 views, 320x240)"),
        "gaussians": gauss,
        "s_per_iter": {k: round(v, 4) for k, v in best.items()},
        "all_s_per_iter": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "depth_overhead_pct": round(100 * (best["rgb_sem_depth"] / best["rgb_sem"] - 1), 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
