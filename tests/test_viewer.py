"""The interactive splat view (s3dgs/viewer.py): encoding, page, `s3dgs view`, and the page in a real
headless Chromium with software WebGL (skipped without chromium or without the fetched library)."""

import base64
import gzip
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from s3dgs.gaussians.model import save_ply
from s3dgs.headless import find_chromium
from s3dgs.viewer import encode_gaussians, robust_extent, viewer_lib_dir, viewer_lib_present, write_view

CLASSES = ("U", "N", "D", "P")


def toy_plant(n: int = 3000, seed: int = 0) -> dict:
    """A small plant of Gaussians, z up, metres: a stem (D below 0.15 m, U above) with two nodes (N),
    a peduncle (P) sideways at 0.2 m, leaves (no class) and 20 far strays."""
    rng = np.random.default_rng(seed)
    parts = {"stem": int(n * 0.35), "N": int(n * 0.1), "P": int(n * 0.15)}
    parts["leaf"] = n - sum(parts.values()) - 20
    pts, sem, rgb = [], [], []
    z = rng.uniform(0, 0.3, parts["stem"])
    pts.append(np.stack([rng.normal(0, 0.004, len(z)), rng.normal(0, 0.004, len(z)), z], 1))
    sem.append(np.where(z[:, None] > 0.15, [6, -6, -6, -6], [-6, -6, 6, -6]))
    rgb.append(np.tile([0.3, 0.6, 0.2], (len(z), 1)))
    k = parts["N"]
    c = np.array([[0, 0, 0.1], [0, 0, 0.2]])[rng.integers(0, 2, k)]
    pts.append(c + rng.normal(0, 0.006, (k, 3)))
    sem.append(np.tile([-6, 6, -6, -6], (k, 1)))
    rgb.append(np.tile([0.4, 0.5, 0.2], (k, 1)))
    k = parts["P"]
    t = rng.uniform(0, 1, k)[:, None]
    pts.append(np.array([0, 0, 0.2]) + t * np.array([0.08, 0.0, 0.03]) + rng.normal(0, 0.003, (k, 3)))
    sem.append(np.tile([-6, -6, -6, 6], (k, 1)))
    rgb.append(np.tile([0.35, 0.55, 0.2], (k, 1)))
    k = parts["leaf"]
    pts.append(np.array([-0.06, 0.0, 0.25]) + rng.normal(0, [0.03, 0.03, 0.01], (k, 3)))
    sem.append(np.full((k, 4), -6.0))
    rgb.append(np.tile([0.2, 0.7, 0.25], (k, 1)))
    pts.append(rng.uniform(-2, 2, (20, 3)))
    sem.append(np.full((20, 4), -6.0))
    rgb.append(np.tile([0.5, 0.5, 0.5], (20, 1)))
    X = np.concatenate(pts).astype(np.float32)
    N = len(X)
    return {"means": torch.from_numpy(X), "scales": torch.full((N, 3), float(np.log(0.004))),
            "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1),
            "opacities": torch.full((N,), 3.0),
            "sh0": torch.from_numpy(((np.concatenate(rgb) - 0.5) / 0.28209479177387814).astype(np.float32))[:, None],
            "shN": torch.zeros((N, 0, 3)),
            "semantics": torch.from_numpy(np.concatenate(sem).astype(np.float32))}


def make_run(tmp_path: Path, n: int = 3000) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save_ply(run / "point_cloud.ply", toy_plant(n), CLASSES)
    (run / "config.json").write_text(json.dumps({"classes": list(CLASSES)}))
    (run / "phenotypes.json").write_text(json.dumps({
        "units": "m", "metres_per_unit": 1.0, "up": [0, 0, 1], "method": "classes",
        "plant": {"plant_height": 0.3, "stem_length": 0.3, "node_count": 2, "peduncle_count": 1,
                  "stem_diameter_median": 0.008},
        "stem": {"centreline_model": [[0, 0, z] for z in np.linspace(0, 0.3, 12).tolist()],
                 "base_model": [0, 0, 0], "base_height_model": 0.0},
        "nodes": [{"index": 1, "position_model": [0, 0, 0.1], "height": 0.1, "confidence": 0.9, "peduncles": 0},
                  {"index": 2, "position_model": [0, 0, 0.2], "height": 0.2, "confidence": 0.9, "peduncles": 1}],
        "internodes": [], "peduncles": [], "notes": []}))
    return run


def test_robust_extent_ignores_strays():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.05, (2000, 3)), rng.uniform(5, 6, (10, 3))])
    e = robust_extent(X, np.ones(len(X)))
    assert e["size"] < 0.5 and e["strays"] >= 10
    assert np.allclose(e["centre"], 0, atol=0.02)


def test_encoding_round_trip():
    p = toy_plant(2000)
    m = encode_gaussians(p, CLASSES)
    raw = gzip.decompress(base64.b64decode(m["data"]))
    n = m["n"]
    assert len(raw) == m["raw_bytes"] == 18 * n
    pos = np.frombuffer(raw[:6 * n], "<u2").reshape(3, n).T
    lo, hi = np.array(m["lo"]), np.array(m["hi"])
    X = lo + pos / 65535 * (hi - lo)
    assert np.abs(X - p["means"].numpy()).max() <= (hi - lo).max() / 65535 + 1e-6
    cls = np.frombuffer(raw[-n:], np.uint8)
    # classes: top class above 0.5, else "other" (index K)
    want = np.where(p["semantics"].numpy().max(1) > 0, p["semantics"].numpy().argmax(1), 4)
    assert (cls == want).all()
    assert sum(m["class_counts"]) == n and m["class_counts"][4] > 0
    sub = encode_gaussians(p, CLASSES, max_gaussians=500)
    assert sub["n"] == 500 and sub["subsampled_from"] == 2000


def test_view_page_without_library_says_so(tmp_path, monkeypatch):
    run = make_run(tmp_path, 500)
    monkeypatch.setenv("S3DGS_VIEWER_LIB", str(tmp_path / "nolib"))
    path = write_view(run)
    text = path.read_text()
    assert "No interactive view" in text and "make viewer-lib" in text and "<script" not in text


def test_view_command_errors_and_writes(tmp_path, monkeypatch, capsys):
    from s3dgs.cli import main

    monkeypatch.setenv("S3DGS_VIEWER_LIB", str(tmp_path / "nolib"))
    assert main(["view", str(tmp_path / "missing"), "--no-open", "--no-fetch"]) == 2
    assert "run folder does not exist" in capsys.readouterr().err
    run = make_run(tmp_path, 300)
    assert main(["view", str(run), "--no-open", "--no-fetch"]) == 0
    assert (run / "view.html").is_file()


needs_browser = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install chromium)")
needs_lib = pytest.mark.skipif(not viewer_lib_present(), reason=f"viewer library not fetched into {viewer_lib_dir()} "
                                                                "(make viewer-lib)")


def _region_mean(png: bytes, box) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return a[max(0, y0):y1, max(0, x0):x1].reshape(-1, 3).mean(0)


@needs_browser
@needs_lib
def test_viewer_in_headless_chromium(tmp_path):
    from s3dgs.headless import Chromium

    run = make_run(tmp_path, 3000)
    path = write_view(run)
    with Chromium(640, 480) as b:
        b.open(path.as_uri())
        b.wait_for("window.__s3dgs && (window.__s3dgs.ready || window.__s3dgs.error)", timeout=40)
        assert b.eval("window.__s3dgs.error") is None
        assert b.eval("window.__s3dgs.groups") == ["U", "N", "D", "P", "other"]
        def frame():  # a few frames after a change: the splats are re-sorted asynchronously (a worker)
            f0 = b.eval("window.__s3dgs.frames")
            b.wait_for(f"window.__s3dgs.frames >= {f0 + 4}", timeout=20, poll=0.05)
            time.sleep(0.2)
            return b.screenshot()

        b.eval("window.__s3dgs.set.overlay(false)")
        shot0 = frame()
        bg = np.array([0x1b, 0x1f, 0x1b], float)
        # not blank: the stem's middle is drawn
        x, y = b.eval("window.__s3dgs.project([0, 0, 0.07])")
        stem_box = (x - 4, y - 4, x + 4, y + 4)
        assert np.abs(_region_mean(shot0, stem_box) - bg).sum() > 40
        # the peduncle's (class P) pixels change when P is hidden; the stem's stay
        px, py = b.eval("window.__s3dgs.project([0.05, 0, 0.219])")
        p_box = (px - 4, py - 4, px + 4, py + 4)

        b.eval("window.__s3dgs.set.hide('P', true)")
        shot1 = frame()
        assert np.abs(_region_mean(shot1, p_box) - _region_mean(shot0, p_box)).sum() > 30
        assert np.abs(_region_mean(shot1, stem_box) - _region_mean(shot0, stem_box)).sum() < 15
        b.eval("window.__s3dgs.set.hide('P', false)")
        # class colours: the stem's U pixels turn to U's colour
        b.eval("window.__s3dgs.set.classColours(true)")
        x2, y2 = b.eval("window.__s3dgs.project([0, 0, 0.26])")
        shot2 = frame()
        u_box = (x2 - 3, y2 - 3, x2 + 3, y2 + 3)
        assert np.abs(_region_mean(shot2, u_box) - _region_mean(shot0, u_box)).sum() > 30
        b.eval("window.__s3dgs.set.classColours(false)")
        # the overlay: node 2's marker appears
        nx, ny = b.eval("window.__s3dgs.project([0, 0, 0.2])")
        n_box = (nx - 2, ny - 2, nx + 3, ny + 3)
        off = frame()
        b.eval("window.__s3dgs.set.overlay(true)")
        on = frame()
        assert np.abs(_region_mean(on, n_box) - _region_mean(off, n_box)).sum() > 30
        labels = b.eval("[...document.querySelectorAll('.s3v-lab')].map(d => d.textContent + ':' + d.style.display)")
        assert labels == ["1:", "2:"]
        # the opacity cut above every Gaussian's opacity empties the picture
        b.eval("window.__s3dgs.set.overlay(false)")
        b.eval("window.__s3dgs.set.cut(1)")
        cut = frame()
        assert np.abs(_region_mean(cut, stem_box) - bg).sum() < 20
        assert not b.errors, b.errors


def test_report_has_view_framed_picture_and_truth(tmp_path, monkeypatch):
    from s3dgs.report import write_report
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    monkeypatch.setenv("S3DGS_VIEWER_LIB", str(tmp_path / "nolib"))  # the library-less fallback note
    scene = tmp_path / "scene"
    make_synthetic_scene(SynthConfig(out=scene, preset="tiny"))
    run = make_run(tmp_path, 2000)
    text = write_report(run, scene).read_text()
    assert 'id="view3d"' in text and "No interactive view" in text and "make viewer-lib" in text
    # the phenotype picture is framed on the plant; the strays are counted, not drawn
    m = re.search(r"framed on the plant[^<]*; (\d+) stray Gaussians outside it are not drawn", text)
    assert m and 10 <= int(m.group(1)) <= 30
    # measured traits beside the true ones: 2 nodes found of the synthetic plant's 4, in red
    assert "measured against the synthetic plant" in text
    row = re.search(r'<tr style="color:#c00[^>]*><td>nodes</td>.*?</tr>', text)
    assert row and "found 2 of 4" in row.group(0)


@needs_browser
@needs_lib
def test_report_view_in_headless_chromium_and_without_webgl(tmp_path):
    from s3dgs.headless import Chromium
    from s3dgs.report import write_report

    run = make_run(tmp_path, 1500)
    path = write_report(run)
    text = path.read_text()
    assert not re.search(r'(src|href)="(https?:|//)', text)  # nothing loaded from elsewhere
    with Chromium(800, 600) as b:
        b.open(path.as_uri())
        b.wait_for("window.__s3dgs && (window.__s3dgs.ready || window.__s3dgs.error)", timeout=40)
        assert b.eval("window.__s3dgs.error") is None
        assert b.eval("document.getElementById('s3v-fallback').style.display") == "none"
        assert b.eval("document.querySelectorAll('section').length") >= 7
        assert not b.errors, b.errors
    with Chromium(800, 600, args=("--disable-3d-apis",)) as b:  # no WebGL: the page says so
        b.open(path.as_uri())
        b.wait_for("window.__s3dgs && window.__s3dgs.error", timeout=20)
        fb = b.eval("document.getElementById('s3v-fallback').textContent")
        assert "No WebGL2" in fb and "static pictures" in fb
        assert b.eval("document.getElementById('s3v').style.display") == "none"


def test_report_of_a_scene_aligned_to_a_synthetic_reference_shows_the_truth(tmp_path, monkeypatch):
    """`s3dgs demo` trains on an SfM scene aligned to the synthetic plant (alignment.json): the
    report takes the reference's ground truth."""
    import json as _json

    from s3dgs.report import write_report
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    monkeypatch.setenv("S3DGS_VIEWER_LIB", str(tmp_path / "nolib"))
    ref = tmp_path / "synthetic"
    make_synthetic_scene(SynthConfig(out=ref, preset="tiny"))
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "alignment.json").write_text(_json.dumps({"reference": str(ref)}))
    run = make_run(tmp_path, 2000)
    text = write_report(run, scene).read_text()
    assert "measured against the synthetic plant" in text and "found 2 of 4" in text
