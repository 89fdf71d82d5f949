"""Speed of the thin-structure map (``--depth-thin``) on a CPU: the numpy / scikit-image reference
vs the torch path.

    .venv/bin/python benchmarks/thin_map.py [--sizes 400x300,1920x1080] [--threads 1]
        [--repeats 3] [--widths 1,2,3,4,5,6] [--out results.json]

For each frame size (one RGB frame, float32, a textured background with thin bright and dark
lines), in one process and at the given torch thread count: :func:`s3dgs.thin.thin_structure_map_reference`
and :func:`s3dgs.thin.thin_structure_map_torch` (on the CPU). Repetitions alternate between the
two, so a change of machine load hits both; reported per size: median seconds per frame of each,
the median of the per-repetition ratios (reference / torch), and the largest difference between
the two maps. scipy's filters are single-threaded whatever ``--threads`` says.

Prints JSON (and writes it to --out): date, machine, torch version, load average at start and end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# before torch is imported, as s3dgs/__init__.py does (spinning OpenMP threads on a shared CPU)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from s3dgs.thin import thin_structure_map_reference, thin_structure_map_torch


def frame(w: int, h: int) -> np.ndarray:
    """``[h, w, 3]`` float32: a smooth textured background with 1-6 px bright and dark lines."""
    rng = np.random.default_rng(w * h)
    img = 0.4 + 0.05 * rng.standard_normal((h, w, 3)) + 0.1 * np.sin(np.arange(w) / 17.0)[None, :, None]
    for k, lw in enumerate(range(1, 7)):
        c = (k + 1) * w // 8
        img[:, c:c + lw] = 0.9 if k % 2 else 0.05
        r = (k + 1) * h // 8
        img[r:r + lw, :] = 0.05 if k % 2 else 0.9
    return np.clip(img, 0, 1).astype(np.float32)


def time_case(w: int, h: int, threads: int, repeats: int, widths: tuple[float, ...]) -> dict:
    torch.set_num_threads(threads)
    img = frame(w, h)
    x = torch.from_numpy(img)
    thin_structure_map_torch(x[:64, :64], widths)  # warm-up
    ref_s, fast_s, ratios = [], [], []
    diff = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = thin_structure_map_reference(img, widths)
        t1 = time.perf_counter()
        b = thin_structure_map_torch(x, widths).numpy()
        t2 = time.perf_counter()
        ref_s.append(t1 - t0)
        fast_s.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
        diff = max(diff, float(np.abs(a - b).max()))
    return {"size": f"{w}x{h}", "threads": threads, "repeats": repeats,
            "reference_s_per_frame": statistics.median(ref_s), "torch_s_per_frame": statistics.median(fast_s),
            "speedup": statistics.median(ratios), "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="400x300,1920x1080", help="WxH,WxH,...")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (scipy is single-threaded)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", default="1,2,3,4,5,6", help="line widths in pixels, as --depth-thin-max-width 6")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    widths = tuple(float(v) for v in args.widths.split(","))
    load0 = os.getloadavg()
    cases = [time_case(w, h, args.threads, args.repeats, widths) for w, h in sizes]
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "widths": widths,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "cases": cases}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out is not None:
        from s3dgs.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return out


if __name__ == "__main__":
    main()
