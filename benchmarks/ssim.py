"""Speed of the colour loss's SSIM on a CPU, forward + backward: the torch code vs the fused kernel.

    .venv/bin/python benchmarks/ssim.py [--sizes 160x120,320x240,400x300,960x540] [--threads 1,2]
        [--repeats 9] [--dtype float32] [--out results.json]

For each image size (one RGB image, float32, channels last, as a training step's render) and
thread count, in one process: the torch reference (:func:`s3dgs.losses._ssim_reference`, autograd
through conv2d) and the fused native kernel (:func:`s3dgs.losses.ssim` on the native path) each
compute the mean SSIM of a rendered image that requires grad against a target, then its
backward. Repetitions alternate between the two, so a change of machine load hits both; the
speed-up is the median of the per-repetition ratios of fwd+bwd times. Reported per case: median
forward, backward and fwd+bwd seconds, fastest fwd+bwd, the speed-up, and the largest
differences between the two (mean SSIM, gradient relative to its largest entry).

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

import torch  # noqa: E402

from s3dgs.extension import native_available, native_unavailable_reason  # noqa: E402
from s3dgs.losses import _ssim_path, _ssim_reference, ssim  # noqa: E402


def _timed(fn, x, y):
    xr = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    v = fn(xr, y)
    t1 = time.perf_counter()
    v.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, v.detach(), xr.grad


def time_case(w: int, h: int, threads: int, repeats: int, dtype) -> dict:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(w * h)
    x = torch.rand(h, w, 3, generator=g, dtype=dtype)
    y = (x + 0.1 * torch.rand(h, w, 3, generator=g, dtype=dtype)).clamp(0, 1)  # a near render
    assert _ssim_path(x, y, 11) == "native"
    impls = {"torch": _ssim_reference, "fused": ssim}
    for fn in impls.values():  # warm-up (allocator, window caches)
        _timed(fn, x, y)
    rows = {k: [] for k in impls}
    outs = {}
    for _ in range(repeats):
        for k, fn in impls.items():
            f, b, v, gr = _timed(fn, x, y)
            rows[k].append((f, b, f + b))
            outs[k] = (v, gr)
    res = {"size": f"{w}x{h}", "threads": threads}
    for k, r in rows.items():
        res[k] = {
            "fwd_s": round(statistics.median(t[0] for t in r), 5),
            "bwd_s": round(statistics.median(t[1] for t in r), 5),
            "fwd_bwd_s": round(statistics.median(t[2] for t in r), 5),
            "fwd_bwd_min_s": round(min(t[2] for t in r), 5),
        }
    ratios = [a[2] / b[2] for a, b in zip(rows["torch"], rows["fused"])]
    res["speedup_fwd_bwd"] = round(statistics.median(ratios), 2)
    res["speedup_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    (vt, gt), (vf, gf) = outs["torch"], outs["fused"]
    res["max_abs_diff_mean"] = float((vt - vf).abs())
    res["max_grad_diff_rel"] = float((gt - gf).abs().max() / gt.abs().max())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="160x120,320x240,400x300,960x540")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not native_available():
        sys.exit(f"the native extension is unavailable: {native_unavailable_reason()}")
    dtype = getattr(torch, args.dtype)
    result = {
        "benchmark": "ssim fwd+bwd, torch reference vs fused native kernel",
        "command": " ".join([".venv/bin/python", "benchmarks/ssim.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "cases": [],
    }
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        for nt in (int(t) for t in args.threads.split(",")):
            result["cases"].append(time_case(w, h, nt, args.repeats, dtype))
            print(json.dumps(result["cases"][-1]), file=sys.stderr, flush=True)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
