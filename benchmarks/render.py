"""Speed and memory of ``s3dgs.render`` (torch backend, CPU): prints one JSON object.

Cases (RGB from SH degree 3 + 4 semantic channels + depth, one camera):
  (a) 2k Gaussians at 128x128, (b) 20k at 256x256, (c) 100k at 480x270.
For each: median forward, backward and no-grad (forward only) wall seconds, the fastest
fwd+bwd, process CPU seconds, the same without the depth channel (runs interleaved; the
depth cost is the median time ratio over the pairs), and the peak RSS of a separate process running
that case's forward + backward. Targets from issue 4: (b) fwd+bwd <= 0.30 s, (c) fwd+bwd <= 1.5 s and
<= 1 GB peak RSS, depth costs <= 5% over colour + semantics.

Scene: Gaussians uniform in a 2 x 2 x 1 box 4 units in front of the camera (all in view),
log-normal scales sized so the projected footprint roughly tiles the image at that count
(median sigma ~0.6 x pixel spacing between Gaussians, a heavy tail of large ones), random
rotations, opacities uniform in [0.1, 0.9], so about 3..5 layers per pixel.

Usage: python benchmarks/render.py [--cases a,b,c] [--threads 2] [--repeats 5] [--absgrad]

On a CPU shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE: with the default (spinning)
policy, 2 OpenMP threads on an oversubscribed machine were measured 10-20x slower than 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

CASES = {"a": (2_000, 128, 128), "b": (20_000, 256, 256), "c": (100_000, 480, 270)}
TARGETS = {"b": {"fwd_bwd_s": 0.30}, "c": {"fwd_bwd_s": 1.5, "peak_rss_gb": 1.0}}


def make_scene(N: int, W: int, H: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = 1.1 * W
    depth = 4.0
    half_w = 0.5 * W / f * depth
    half_h = 0.5 * H / f * depth
    means = torch.rand(N, 3, generator=g) * 2 - 1
    means[:, 0] *= half_w
    means[:, 1] *= half_h
    means[:, 2] = means[:, 2] * 0.5 + depth
    spacing_px = math.sqrt(W * H / N)
    sigma_world = 0.6 * spacing_px * depth / f
    scales = torch.exp(torch.randn(N, 3, generator=g) * 0.6) * sigma_world
    quats = torch.randn(N, 4, generator=g)
    opac = torch.rand(N, generator=g) * 0.8 + 0.1
    sh = torch.randn(N, 16, 3, generator=g) * 0.1
    sh[:, 0] = torch.rand(N, 3, generator=g) * 2 - 1
    extra = torch.softmax(torch.randn(N, 4, generator=g), dim=-1)
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]])
    return {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": sh,
            "extra": extra, "viewmats": viewmat, "Ks": K, "width": W, "height": H}


def _call(s, depth=True, absgrad=False):
    from s3dgs.render import render

    return render(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"],
                  s["Ks"], s["width"], s["height"], sh_degree=3, extra=s["extra"],
                  render_depth=depth, backend="torch", absgrad=absgrad)


def _loss(out):
    loss = out.colors.square().mean() + out.extras.square().mean() + out.alphas.mean()
    if out.depths is not None:
        loss = loss + out.depths.mean()
    return loss


def _one_run(base, depth: bool, absgrad: bool):
    """(fwd wall, bwd wall, fwd+bwd CPU seconds, output) for one training-style call."""
    s = dict(base)
    for k in ("means", "quats", "scales", "opacities", "colors", "extra"):
        s[k] = base[k].clone().requires_grad_(True)
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = _call(s, depth=depth, absgrad=absgrad)
    loss = _loss(out)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    c2 = time.process_time()
    return t1 - t0, t2 - t1, c2 - c0, out


def _med(x):
    return round(statistics.median(x), 4)


def time_case(key: str, repeats: int, absgrad: bool):
    """Runs with and without depth are interleaved so that a change in machine load hits both."""
    N, W, H = CASES[key]
    base = make_scene(N, W, H)
    res = {"N": N, "width": W, "height": H}
    runs = {True: [], False: []}
    _one_run(base, True, absgrad)  # warm-up
    for _ in range(repeats):
        for depth in (True, False):
            f, b, c, out = _one_run(base, depth, absgrad)
            runs[depth].append((f, b, c))
            if depth:
                res["n_isects"] = out.meta["n_isects"]
                res["mean_alpha"] = round(float(out.alphas.mean()), 3)
    for depth, tag in ((True, ""), (False, "_nodepth")):
        f, b, c = zip(*runs[depth])
        fb = [x + y for x, y in zip(f, b)]
        res["fwd_s" + tag] = _med(f)
        res["bwd_s" + tag] = _med(b)
        res["fwd_bwd_s" + tag] = _med(fb)
        res["fwd_bwd_min_s" + tag] = round(min(fb), 4)
        res["fwd_bwd_cpu_s" + tag] = _med(c)
    ng, ngc = [], []
    for i in range(repeats + 1):
        c0 = time.process_time()
        t0 = time.perf_counter()
        with torch.no_grad():
            _call(base)
        if i:
            ng.append(time.perf_counter() - t0)
            ngc.append(time.process_time() - c0)
    res["nograd_s"] = _med(ng)
    res["nograd_cpu_s"] = _med(ngc)
    # depth cost: median over the interleaved (depth, no depth) pairs of the time ratio, so
    # that a change of machine load between pairs cancels out
    ratios = [(a[0] + a[1]) / (b[0] + b[1]) for a, b in zip(runs[True], runs[False])]
    res["depth_overhead"] = round(statistics.median(ratios) - 1.0, 4)
    res["depth_overhead_cpu"] = round(
        statistics.median([a[2] / b[2] for a, b in zip(runs[True], runs[False])]) - 1.0, 4
    )
    return res


def peak_rss_gb(key: str, threads: int, absgrad: bool) -> float:
    """Peak RSS of a fresh process that builds the scene and runs one forward + backward."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys, resource, torch; sys.path.insert(0, {here!r}); torch.set_num_threads({threads});"
        f"import render as b; s = b.make_scene(*b.CASES[{key!r}]);"
        "[s[k].requires_grad_(True) for k in ('means','quats','scales','opacities','colors','extra')];"
        f"b._loss(b._call(s, absgrad={absgrad!r})).backward();"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024**2, 3)  # KiB -> GiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--absgrad", action="store_true", help="also compute AbsGS gradients")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "render",
        "backend": "torch",
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "channels": "RGB (SH3) + 4 extra + depth",
        "absgrad": args.absgrad,
        "repeats": args.repeats,
        "cases": {},
    }
    for key in args.cases.split(","):
        r = time_case(key, args.repeats, args.absgrad)
        r["peak_rss_gb"] = peak_rss_gb(key, args.threads, args.absgrad)
        if key in TARGETS:
            r["targets"] = dict(TARGETS[key], depth_overhead=0.05)
            r["meets"] = {
                k: (r[k] <= v) for k, v in r["targets"].items()
            }
        result["cases"][key] = r
        print(json.dumps({key: r}), file=sys.stderr, flush=True)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
