"""The interactive view's page size and time to first frame in headless Chromium with software
WebGL (SwiftShader), for a demo-sized model (issue 24).

    .venv/bin/python benchmarks/viewer.py OUT --run RUN [--gaussians 250000] [--screenshot docs/viewer.png]

1. OUT/run: RUN's point_cloud.ply resampled to ``--gaussians`` (a random subset when it has more;
   when it has fewer, every Gaussian plus copies of random ones moved by a normal offset of their
   own scale, so the plant's shape and classes stay), with RUN's config.json and phenotypes.json.
2. `s3dgs.viewer.write_view` writes OUT/run/view.html (timed), its size in MB.
3. Chromium (headless, SwiftShader) opens it from the file ``--repeats`` times: the wall time from
   the navigation to the page's first frame with splats on the canvas (`window.__s3dgs.ready`) and
   the page's own figure (performance.now at the first drawn frame), median over the repeats.
4. ``--screenshot``: a PNG of the view (quantised to 256 colours, so it stays small).

Prints one JSON object (also OUT/viewer_benchmark.json).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def resample_run(src: Path, dst: Path, n: int, seed: int = 0) -> int:
    import torch

    from s3dgs.gaussians.model import load_ply, save_ply

    params, classes = load_ply(src / "point_cloud.ply")
    m = len(params["means"])
    n = m if n <= 0 else n  # 0: the run's own Gaussians, as they are
    rng = np.random.default_rng(seed)
    if m >= n:
        idx = np.sort(rng.choice(m, n, replace=False))
    else:
        idx = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    out = {k: v[torch.from_numpy(idx)].clone() for k, v in params.items()}
    if m < n:
        extra = slice(m, n)
        sig = torch.exp(out["scales"][extra]).mean(1, keepdim=True)
        out["means"][extra] += torch.from_numpy(rng.normal(0, 1, (n - m, 3)).astype(np.float32)) * sig
    dst.mkdir(parents=True, exist_ok=True)
    save_ply(dst / "point_cloud.ply", out, classes)
    for name in ("config.json", "phenotypes.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--run", type=Path, default=Path("demo_out/run"), help="a trained run folder (point_cloud.ply)")
    ap.add_argument("--gaussians", type=int, default=250_000,
                    help="resample the run to this many Gaussians (0: the run's own, as they are)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--class-colours", action="store_true", help="the screenshot in class colours")
    ap.add_argument("--hide", action="append", default=[], help="a class hidden in the screenshot (repeatable)")
    ap.add_argument("--zoom", type=float, default=1.0, help="the screenshot's zoom over the page's framing")
    ap.add_argument("--no-overlay", action="store_true", help="the screenshot without the phenotype overlay")
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=600)
    a = ap.parse_args(argv)

    from s3dgs.headless import Chromium, find_chromium
    from s3dgs.viewer import SPARK_VERSION, THREE_VERSION, fetch_viewer_lib, write_view

    if not (a.run / "point_cloud.ply").is_file():
        print(f"{a.run}: no point_cloud.ply; give a trained run with --run (e.g. `make demo` writes demo_out/run)",
              file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    fetch_viewer_lib(quiet=True)
    run = a.out / "run"
    source_n = resample_run(a.run, run, a.gaussians)
    t = time.perf_counter()
    page = write_view(run).resolve()
    build_s = time.perf_counter() - t
    walls, pages = [], []
    for k in range(a.repeats):
        with Chromium(a.width, a.height) as b:
            t = time.perf_counter()
            b.call("Page.navigate", {"url": page.as_uri()}, session=True)
            b.wait_for("window.__s3dgs && (window.__s3dgs.ready || window.__s3dgs.error)", timeout=120, poll=0.05)
            walls.append(time.perf_counter() - t)
            err = b.eval("window.__s3dgs.error")
            if err:
                print(f"the page failed: {err}", file=sys.stderr)
                return 1
            pages.append(b.eval("window.__s3dgs.firstFrameMs") / 1000)
            if k == 0 and a.screenshot is not None:
                import io

                from PIL import Image

                if a.class_colours:
                    b.eval("window.__s3dgs.set.classColours(true)")
                for name in a.hide:
                    b.eval(f"window.__s3dgs.set.hide({json.dumps(name)}, true)")
                b.eval(f"window.__s3dgs.zoom({a.zoom})")
                if a.no_overlay:
                    b.eval("window.__s3dgs.set.overlay(false)")
                f0 = b.eval("window.__s3dgs.frames")
                b.wait_for(f"window.__s3dgs.frames >= {f0 + 10}", timeout=120)  # software WebGL: slow frames
                time.sleep(3)
                png = b.screenshot()
                im = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
                a.screenshot.parent.mkdir(parents=True, exist_ok=True)
                im.save(a.screenshot, optimize=True)
            errors = list(b.errors)
    import subprocess

    chromium_version = subprocess.run([find_chromium(), "--version"], capture_output=True, text=True).stdout.strip()
    res = {"date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
           "browser": chromium_version + " headless, SwiftShader (software WebGL2)",
           "library": f"@sparkjsdev/spark {SPARK_VERSION}, three {THREE_VERSION}",
           "source_run": str(a.run), "source_gaussians": source_n, "gaussians": a.gaussians if a.gaussians > 0 else source_n,
           "page_mb": round(page.stat().st_size / 1e6, 2), "page_build_s": round(build_s, 2),
           "first_frame_wall_s_median": round(statistics.median(walls), 2), "first_frame_wall_s": [round(w, 2) for w in walls],
           "first_frame_page_s_median": round(statistics.median(pages), 2),
           "console_errors": errors, "screenshot": str(a.screenshot) if a.screenshot else None,
           "command": "benchmarks/viewer.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if a.screenshot is not None:
        res["screenshot_kb"] = round(a.screenshot.stat().st_size / 1e3, 1)
    text = json.dumps(res, indent=2)
    (a.out / "viewer_benchmark.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
