"""Speed and memory of ``s3dgs.render`` on a CPU, per backend (``torch`` and ``native``): prints JSON.

Cases (RGB from SH degree 3 + 4 semantic channels + depth, one camera):
  (a) 2k Gaussians at 128x128, (b) 20k at 256x256, (c) 100k at 480x270.
For each case and backend: median forward, backward and fwd+bwd wall seconds of a training-style
call (``render`` + a loss over every output + ``backward``), the fastest fwd+bwd, process CPU
seconds, the no-grad forward, the same without the depth channel (depth cost = median time ratio
of interleaved pairs), the rasteriser alone (projection and SH done once beforehand), projection +
colour features alone (forward + backward of what feeds the rasteriser: the fused C++ kernel of
``s3dgs.render.native_project`` for the native backend, ``project_gaussians`` + ``color_features``
+ the depth channel in torch for the torch backend), for the native backend the time of each of
its rasteriser's ops, and the peak RSS of a fresh process running that case's forward + backward
with that backend. Runs of the backends alternate, so that a change of machine load hits both;
the speed-ups are medians of per-repetition ratios.

Targets: issue 4 (torch backend): (b) fwd+bwd <= 0.30 s, (c) <= 1.5 s and <= 1 GB peak RSS, depth
<= 5% over colour + semantics. Issue 11 (native backend): (c) fwd+bwd at least 8x faster than the
torch backend with 2 threads, peak RSS no higher.

Scene: Gaussians uniform in a 2 x 2 x 1 box 4 units in front of the camera (all in view),
log-normal scales sized so the projected footprint roughly tiles the image at that count
(median sigma ~0.6 x pixel spacing between Gaussians, a heavy tail of large ones), random
rotations, opacities uniform in [0.1, 0.9], so about 3..5 layers per pixel.

Usage: python benchmarks/render.py [--cases a,b,c] [--backends torch,native] [--threads 2]
       [--repeats 5] [--absgrad] [--out results.json] [--markdown results.md]

OMP_WAIT_POLICY defaults to PASSIVE here (an explicit value in the environment wins): with the
default (spinning) policy, 2 OpenMP threads on an oversubscribed machine were measured 10-20x
slower than 1.
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
from pathlib import Path

# before torch is imported, as s3dgs/__init__.py does (spinning OpenMP threads on a shared CPU)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

CASES = {"a": (2_000, 128, 128), "b": (20_000, 256, 256), "c": (100_000, 480, 270)}
TARGETS = {"b": {"fwd_bwd_s": 0.30}, "c": {"fwd_bwd_s": 1.5, "peak_rss_gb": 1.0}}
NATIVE_SPEEDUP_TARGET = {"c": 8.0}
PARAMS = ("means", "quats", "scales", "opacities", "colors", "extra")


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


def _call(s, backend="torch", depth=True, absgrad=False):
    from s3dgs.render import render

    return render(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"],
                  s["Ks"], s["width"], s["height"], sh_degree=3, extra=s["extra"],
                  render_depth=depth, backend=backend, absgrad=absgrad)


def _loss(out):
    loss = out.colors.square().mean() + out.extras.square().mean() + out.alphas.mean()
    if out.depths is not None:
        loss = loss + out.depths.mean()
    return loss


def _one_run(base, backend: str, depth: bool, absgrad: bool):
    """(fwd wall, bwd wall, fwd+bwd CPU seconds, output) for one training-style call."""
    s = dict(base)
    for k in PARAMS:
        s[k] = base[k].clone().requires_grad_(True)
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = _call(s, backend, depth=depth, absgrad=absgrad)
    if out.meta["backend"] != backend:
        raise RuntimeError(f"backend {backend!r} fell back to {out.meta['backend']!r}")
    loss = _loss(out)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    c2 = time.process_time()
    return t1 - t0, t2 - t1, c2 - c0, out


def _raster_inputs(base):
    """Projection, features and a fixed upstream gradient, computed once: what the rasteriser of
    each backend is given in a render of this scene."""
    from s3dgs.render.projection import project_gaussians
    from s3dgs.render.types import color_features

    with torch.no_grad():
        p = project_gaussians(base["means"], base["quats"], base["scales"], base["opacities"],
                              base["viewmats"], base["Ks"], base["width"], base["height"])
        feats = color_features(base["means"], base["colors"], base["viewmats"], 3, base["extra"])
        feats = torch.cat([feats, p.depths[..., None]], -1).contiguous()
    return p, feats


def _project_run(base, backend: str):
    """(fwd wall, bwd wall) of projection + colour features (+ depth channel) alone, with a fixed
    upstream gradient on every output the rasteriser reads."""
    s = {k: base[k].clone().requires_grad_(True) for k in PARAMS}
    W, H = base["width"], base["height"]
    t0 = time.perf_counter()
    if backend == "native":
        from s3dgs.render.native_project import project_native

        p = project_native(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], base["viewmats"],
                           base["Ks"], W, H, sh_degree=3, extra=s["extra"], render_depth=True)
        outs = [p.means2d, p.conics, p.opacities, p.feats]
    else:
        from s3dgs.render.projection import project_gaussians
        from s3dgs.render.types import color_features

        p = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], base["viewmats"], base["Ks"], W, H)
        feats = color_features(s["means"], s["colors"], base["viewmats"], 3, s["extra"])
        feats = torch.cat([feats, p.depths[..., None]], -1).contiguous()
        outs = [p.means2d, p.conics, p.opacities, feats]
    t1 = time.perf_counter()
    torch.autograd.backward(outs, [torch.full_like(o, 0.01) for o in outs])
    return t1 - t0, time.perf_counter() - t1


def _raster_run(p, feats, W, H, backend: str, absgrad: bool):
    """(fwd wall, bwd wall) of the rasteriser alone, binning included."""
    ins = [t.detach().clone().requires_grad_(True) for t in (p.means2d, p.conics, p.opacities, feats)]
    t0 = time.perf_counter()
    if backend == "native":
        from s3dgs.render.native import rasterize_native

        img, alpha, _ = rasterize_native(*ins, p.radii, p.depths, W, H, 8, absgrad=absgrad)
    else:
        from s3dgs.render import api
        from s3dgs.render.raster import build_plan, chunk_budget, rasterize

        budget = api.DEFAULT_BUDGET or chunk_budget()
        plan = build_plan(ins[0], p.radii, p.depths, W, H, 8, budget, conics=p.conics, opacities=p.opacities)
        img, alpha = rasterize(*ins, plan, absgrad=absgrad)
    loss = img.square().mean() + alpha.mean()
    t1 = time.perf_counter()
    loss.backward()
    return t1 - t0, time.perf_counter() - t1


def native_phases(p, feats, W, H, repeats: int, absgrad: bool) -> dict:
    """Median wall seconds of each native op on this case: binning, the per-Gaussian table, the
    forward tiles, the backward tiles, and the per-Gaussian reduction of the backward."""
    from s3dgs.render.native import bin_tiles

    ops = torch.ops.s3dgs_native
    nt = torch.get_num_threads()
    m2, con, op = p.means2d.contiguous(), p.conics.contiguous(), p.opacities.contiguous()
    C, N = op.shape
    g = torch.Generator().manual_seed(0)
    v_img = torch.randn(C, H, W, feats.shape[-1], generator=g)
    v_alpha = torch.randn(C, H, W, 1, generator=g)
    rec: dict[str, list] = {k: [] for k in ("bin", "table", "forward", "backward", "reduce")}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        rec[name].append(time.perf_counter() - t0)
        return out

    for _ in range(repeats + 1):
        plan = timed("bin", lambda: bin_tiles(m2, p.radii, p.depths, con, op, W, H, 8))
        tab = timed("table", lambda: ops.make_table(m2, con, op, feats, plan.table_ids, W, H, nt))
        _, _, tfin, last = timed("forward", lambda: ops.rasterize_fwd(tab, plan.tile_offsets, plan.isect_ids, C, W, H, 8, nt))
        part = timed("backward", lambda: ops.rasterize_bwd(tab, plan.tile_offsets, plan.isect_ids, tfin, last,
                                                            v_img, v_alpha, W, H, 8, nt))
        timed("reduce", lambda: ops.reduce_grads(part, plan.vis_ids, plan.gauss_offsets, plan.gauss_isects, C, N,
                                                 absgrad, nt))
    return {k: _med(v[1:]) for k, v in rec.items()}


def _med(x):
    return round(statistics.median(x), 4)


def time_case(key: str, backends: list[str], repeats: int, absgrad: bool):
    """Every repetition runs each backend with and without depth, interleaved."""
    N, W, H = CASES[key]
    base = make_scene(N, W, H)
    res = {"N": N, "width": W, "height": H}
    runs = {(b, d): [] for b in backends for d in (True, False)}
    for b in backends:
        _one_run(base, b, True, absgrad)  # warm-up (and, for native, the build)
    for _ in range(repeats):
        for b in backends:
            for depth in (True, False):
                f, bw, c, out = _one_run(base, b, depth, absgrad)
                runs[(b, depth)].append((f, bw, c))
                if depth:
                    res.setdefault(b, {})["n_isects"] = out.meta["n_isects"]
                    res[b]["mean_alpha"] = round(float(out.alphas.detach().mean()), 3)
    for b in backends:
        r = res[b]
        for depth, tag in ((True, ""), (False, "_nodepth")):
            f, bw, c = zip(*runs[(b, depth)])
            fb = [x + y for x, y in zip(f, bw)]
            r["fwd_s" + tag] = _med(f)
            r["bwd_s" + tag] = _med(bw)
            r["fwd_bwd_s" + tag] = _med(fb)
            r["fwd_bwd_min_s" + tag] = round(min(fb), 4)
            r["fwd_bwd_cpu_s" + tag] = _med(c)
        pairs = list(zip(runs[(b, True)], runs[(b, False)]))
        r["depth_overhead"] = round(statistics.median([(x[0] + x[1]) / (y[0] + y[1]) for x, y in pairs]) - 1, 4)
        r["depth_overhead_cpu"] = round(statistics.median([x[2] / y[2] for x, y in pairs]) - 1, 4)
        ng, ngc = [], []
        for i in range(repeats + 1):
            c0 = time.process_time()
            t0 = time.perf_counter()
            with torch.no_grad():
                _call(base, b)
            if i:
                ng.append(time.perf_counter() - t0)
                ngc.append(time.process_time() - c0)
        r["nograd_s"] = _med(ng)
        r["nograd_cpu_s"] = _med(ngc)
    # the rasteriser alone, backends interleaved
    p, feats = _raster_inputs(base)
    rr = {b: [] for b in backends}
    for b in backends:
        _raster_run(p, feats, W, H, b, absgrad)
    for _ in range(repeats):
        for b in backends:
            rr[b].append(_raster_run(p, feats, W, H, b, absgrad))
    for b in backends:
        f, bw = zip(*rr[b])
        res[b]["raster_fwd_s"] = _med(f)
        res[b]["raster_bwd_s"] = _med(bw)
        res[b]["raster_fwd_bwd_s"] = _med([x + y for x, y in rr[b]])
    # projection + colour features alone, backends interleaved
    pr = {b: [] for b in backends}
    for b in backends:
        _project_run(base, b)
    for _ in range(repeats):
        for b in backends:
            pr[b].append(_project_run(base, b))
    for b in backends:
        f, bw = zip(*pr[b])
        res[b]["project_fwd_s"] = _med(f)
        res[b]["project_bwd_s"] = _med(bw)
        res[b]["project_fwd_bwd_s"] = _med([x + y for x, y in pr[b]])
    if "native" in backends:
        res["native"]["phases_s"] = native_phases(p, feats, W, H, repeats, absgrad)
    if "torch" in backends and "native" in backends:
        t, n = runs[("torch", True)], runs[("native", True)]
        res["speedup_native_fwd_bwd"] = round(statistics.median([(x[0] + x[1]) / (y[0] + y[1]) for x, y in zip(t, n)]), 2)
        res["speedup_native_fwd_bwd_cpu"] = round(statistics.median([x[2] / y[2] for x, y in zip(t, n)]), 2)
        res["speedup_native_raster_only"] = round(statistics.median([sum(x) / sum(y) for x, y in zip(rr["torch"], rr["native"])]), 2)
        res["speedup_native_project_only"] = round(statistics.median([sum(x) / sum(y) for x, y in zip(pr["torch"], pr["native"])]), 2)
    return res


def peak_rss_gb(key: str, backend: str, threads: int, absgrad: bool) -> float:
    """Peak RSS of a fresh process that builds the scene and runs one forward + backward."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys, resource, torch; sys.path.insert(0, {here!r}); torch.set_num_threads({threads});"
        f"import render as b; s = b.make_scene(*b.CASES[{key!r}]);"
        "[s[k].requires_grad_(True) for k in b.PARAMS];"
        f"b._loss(b._call(s, {backend!r}, absgrad={absgrad!r})).backward();"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024**2, 3)  # KiB -> GiB


def markdown(result: dict) -> str:
    """The figures as a markdown table (one row per case and backend)."""
    lines = [
        f"Renderer, {result['threads']} thread(s), absgrad={result['absgrad']}, {result['date']}, "
        f"load average {result['load_avg_1m_at_start']} -> {result['load_avg_1m_at_end']} (1 min), "
        f"{result['machine']}, torch {result['torch']}.",
        "",
        "| case | backend | fwd s | bwd s | fwd+bwd s (median) | fwd+bwd s (min) | fwd+bwd CPU s | no-grad s "
        "| raster only fwd+bwd s | proj+SH only fwd+bwd s | depth cost | peak RSS GB | isects |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in result["cases"].items():
        name = f"({key}) {r['N'] // 1000}k @ {r['width']}x{r['height']}"
        for b in result["backends"]:
            x = r[b]
            lines.append(
                f"| {name} | {b} | {x['fwd_s']:.3f} | {x['bwd_s']:.3f} | **{x['fwd_bwd_s']:.3f}** | "
                f"{x['fwd_bwd_min_s']:.3f} | {x['fwd_bwd_cpu_s']:.3f} | {x['nograd_s']:.3f} | "
                f"{x['raster_fwd_bwd_s']:.3f} | {x['project_fwd_bwd_s']:.3f} | {x['depth_overhead']:+.1%} | "
                f"{x['peak_rss_gb']:.2f} | "
                f"{x['n_isects']} |"
            )
    if "native" in result["backends"]:
        lines += ["", "Native rasteriser phases (median wall ms; raster-only fwd+bwd above includes them):", "",
                  "| case | bin | table | forward | backward | reduce |", "|---|---|---|---|---|---|"]
        for key, r in result["cases"].items():
            ph = r["native"]["phases_s"]
            lines.append(f"| ({key}) | " + " | ".join(f"{1e3 * ph[k]:.1f}" for k in
                                                    ("bin", "table", "forward", "backward", "reduce")) + " |")
    if all("speedup_native_fwd_bwd" in r for r in result["cases"].values()):
        lines += ["", "| case | native speed-up, fwd+bwd (wall) | (CPU) | rasteriser alone (wall) "
                  "| projection + SH alone (wall) |", "|---|---|---|---|---|"]
        for key, r in result["cases"].items():
            lines.append(f"| ({key}) | {r['speedup_native_fwd_bwd']}x | {r['speedup_native_fwd_bwd_cpu']}x | "
                         f"{r['speedup_native_raster_only']}x | {r['speedup_native_project_only']}x |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--backends", default="torch,native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--absgrad", action="store_true", help="also compute AbsGS gradients")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--markdown", type=Path, help="also write a markdown table here")
    args = ap.parse_args()
    backends = args.backends.split(",")
    torch.set_num_threads(args.threads)
    if "native" in backends:
        from s3dgs.render.native import native_available, native_unavailable_reason

        if not native_available():
            sys.exit(f"the native backend is unavailable: {native_unavailable_reason()}")
    result = {
        "benchmark": "render",
        "backends": backends,
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
        r = time_case(key, backends, args.repeats, args.absgrad)
        for b in backends:
            r[b]["peak_rss_gb"] = peak_rss_gb(key, b, args.threads, args.absgrad)
        if key in TARGETS and "torch" in backends:
            r["torch"]["targets"] = dict(TARGETS[key], depth_overhead=0.05)
            r["torch"]["meets"] = {k: (r["torch"][k] <= v) for k, v in r["torch"]["targets"].items()}
        if key in NATIVE_SPEEDUP_TARGET and "speedup_native_fwd_bwd" in r:
            r["native"]["targets"] = {"speedup_fwd_bwd": NATIVE_SPEEDUP_TARGET[key],
                                      "peak_rss_gb_at_most_torch": r["torch"]["peak_rss_gb"]}
            r["native"]["meets"] = {
                "speedup_fwd_bwd": r["speedup_native_fwd_bwd"] >= NATIVE_SPEEDUP_TARGET[key],
                "peak_rss_gb_at_most_torch": r["native"]["peak_rss_gb"] <= r["torch"]["peak_rss_gb"],
            }
        result["cases"][key] = r
        print(json.dumps({key: r}), file=sys.stderr, flush=True)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    from s3dgs.atomic import atomic_write

    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))
    if args.markdown:
        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(markdown(result)))


if __name__ == "__main__":
    main()
