"""Dataset memory and load time: 300 frames of 1920x1088 with heatmaps and depth priors.

Generates the scene on the fly in a temporary folder (JPEG frames, float16 heatmaps, 16-bit depth
PNGs, a PINHOLE COLMAP model), then, in a fresh subprocess per mode so peak RSS is the loader's
own, builds `SceneDataset` and reads every item once. Prints JSON.

    python benchmarks/dataset.py [--frames 300] [--width 1920] [--height 1088]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_scene(root: Path, n: int, w: int, h: int) -> None:
    from PIL import Image

    from s3dgs.depth.io import save_depth_png, write_meta
    from s3dgs.scene.colmap import write_model

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "heatmaps").mkdir()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    names, vms = [], []
    conf = {}
    for i in range(n):
        name = f"frame_{i:05d}.jpg"
        names.append(name)
        a = 2 * np.pi * i / n
        vm = np.eye(4)
        c, s = np.cos(a), np.sin(a)
        vm[:3, :3] = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
        vm[2, 3] = 3.0
        vms.append(vm)
        base = (np.sin(xx / 50 + i) * 0.5 + 0.5)[..., None] * np.array([0.3, 0.8, 0.4], np.float32)
        img = (base * 255 + rng.integers(0, 20, (h, w, 1))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / name, quality=90)
        hm = np.exp(-((xx - w / 2 - 10 * i % w) ** 2) / 800.0)[..., None].repeat(4, -1)
        np.save(root / "heatmaps" / f"frame_{i:05d}.npy", hm.astype(np.float16))
        save_depth_png(root / "depths" / f"frame_{i:05d}.png", (yy / h + 0.1 * np.sin(xx / 30)) / 1.1)
        conf[f"frame_{i:05d}"] = {"U": 0.9, "N": 0.9, "D": 0.9, "P": 0.9}
    write_meta(root / "depths", {"kind": "disparity", "backend": "benchmark"})
    (root / "confidence.json").write_text(json.dumps(conf))
    K = np.array([[1500.0, 0, w / 2], [0, 1500.0, h / 2], [0, 0, 1]])
    write_model(root / "sparse" / "0", names, K, np.stack(vms), w, h, rng.normal(size=(1000, 3)))


def measure(scene: str, cache: str) -> dict:
    """Runs in a subprocess: build the dataset, touch every item, report time and peak RSS."""
    import torch

    from s3dgs.scene.dataset import SceneDataset

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ds = SceneDataset.from_dir(scene, cache=cache, verbose=False)
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    total = 0.0
    for i in range(len(ds)):
        it = ds[i]
        total += float(it["image"][0, 0, 0]) + float(it["heatmap"][0, 0, 0]) + float(it["depth"][0, 0])
    t_iter = time.perf_counter() - t1
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cache_bytes = sum(a.nbytes for d in ds._cache.values() for a in d.values())
    return {"cache_gb": round(cache_bytes / 1024**3, 3), "cache": ds.cache_mode, "frames": len(ds), "build_s": round(t_build, 2),
            "first_epoch_s": round(t_iter, 2), "s_per_item": round(t_iter / len(ds), 4),
            "peak_rss_gb": round(peak_kb / 1024**2, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1088)
    ap.add_argument("--memory-frames", type=int, default=60,
                    help="frames for the in-memory cache mode (its RSS grows per frame)")
    ap.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(measure(*args._measure)))
        return
    results = {"machine": "2-core CPU", "frames": args.frames, "size": f"{args.width}x{args.height}"}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_scene(Path(tmp) / "big", args.frames, args.width, args.height)
        make_scene(Path(tmp) / "small", args.memory_frames, args.width, args.height)
        results["generate_s"] = round(time.perf_counter() - t0, 1)
        for label, scene, cache in (("auto", "big", "auto"), ("memory", "small", "memory")):
            out = subprocess.run([sys.executable, __file__, "--_measure", str(Path(tmp) / scene), cache],
                                 capture_output=True, text=True, check=True)
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    mem = results["memory"]
    results["memory"]["cache_mb_per_frame"] = round(mem["cache_gb"] * 1024 / mem["frames"], 1)
    px = args.width * args.height
    results["float32_cache_gb_for_all_frames"] = round(args.frames * px * (3 + 4 + 1) * 4 / 1024**3, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
