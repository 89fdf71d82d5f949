"""The HTML report: built from a small fake run folder; opened in headless Chromium when present."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s3dgs.report import write_report
from s3dgs.scene.ply import write_points_ply


def _fake_run(tmp_path: Path) -> tuple[Path, Path]:
    run, scene = tmp_path / "run", tmp_path / "scene"
    (run / "renders").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in ("frame_0000", "frame_0008"):
        for suffix in ("gt", "rgb", "depth", "sem"):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
                run / "renders" / f"{stem}_{suffix}.png")
    with open(run / "metrics.jsonl", "w") as f:
        for it in range(10, 110, 10):
            f.write(json.dumps({"iter": it, "loss": 1.0 / it, "rgb": 0.5 / it, "depth": 0.2 / it, "sem": 0.0,
                                "lambda_sem": 0.0, "gaussians": 100 + it, "psnr": 10 + it / 10,
                                "it_per_s": 5.0, "elapsed_s": it / 5}) + "\n")
        f.write('{"iter": 11')  # a line cut by an interruption is ignored
    (run / "metrics.json").write_text(json.dumps({
        "images": {"psnr": 23.4567, "ssim": 0.8123},
        "depth": {"abs_rel": 0.051},
        "semantics": {"iou": {"U": 0.5, "N": 0.25}},
        "cost": {"train_time_s": 12.5}}))
    (run / "config.json").write_text(json.dumps({"num_iterations": 100, "lambda_depth": 0.1,
                                                 "scene": str(scene)}))
    (run / "train_summary.json").write_text(json.dumps({"iterations": 100, "gaussians": 200}))
    (run / "classes").mkdir()
    for c in ("U", "N", "D", "P"):
        write_points_ply(run / "classes" / f"{c}.ply", rng.normal(size=(50, 3)).astype(np.float32),
                         rng.integers(0, 255, (50, 3), dtype=np.uint8))
    (scene / "depths").mkdir(parents=True)
    (scene / "depths" / "meta.json").write_text(json.dumps({"simulated": True, "kind": "disparity"}))
    Image.fromarray((rng.random((24, 32)) * 65535).astype(np.uint16)).save(scene / "depths" / "frame_0000.png")
    return run, scene


def test_report_embeds_images_and_tables(tmp_path):
    run, scene = _fake_run(tmp_path)
    path = write_report(run, scene)
    assert path == run / "report.html"
    text = path.read_text()
    # images embedded: curves + 2 views x 4 renders + depth prior + point clouds
    assert text.count("data:image/png;base64,") >= 1 + 8 + 1 + 1
    # nothing loaded from elsewhere, no script
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    assert "<script" not in text.lower()
    # metrics table (generic groups and nested keys), config, summary
    for s in ("images", "psnr", "23.46", "ssim", "iou.U", "semantics", "cost", "lambda_depth",
              "frame_0008", "simulated Depth Anything V2 stand-in"):
        assert s in text, s
    assert "Per-class point clouds" in text


def test_report_on_empty_run(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    text = write_report(run).read_text()
    assert "No metrics.jsonl" in text and "No metrics.json" in text


def _chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    run, scene = _fake_run(tmp_path)
    path = write_report(run, scene)
    profile = tmp_path / "profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "s3dgs report" in dom and "Training curves" in dom and "23.46" in dom
    assert dom.count("data:image/png;base64,") >= 11
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', dom)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    errors = [ln for ln in res.stderr.splitlines()
              if "Uncaught" in ln or ("CONSOLE" in ln and ("ERROR" in ln or "error" in ln))
              or "Failed to load resource" in ln or "Not allowed to load" in ln]
    assert not errors, "\n".join(errors)
