"""gradio backend against a real local gradio server on 127.0.0.1, called through gradio_client
exactly as the Depth Anything V2 Space is (`/on_submit`, three outputs: image-slider pair, 8-bit
gray PNG, 16-bit raw PNG). One server for the module; a mode switch picks its behaviour."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gr = pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from s3dgs.depth.backends import DepthBackendError, GradioBackend, _retry_after
from s3dgs.depth.generate import DepthConfig, check_space, depth_main, generate_depth
from s3dgs.depth.io import load_depth_png, read_depth_info, read_meta

ROOT = Path(__file__).resolve().parents[1]
STATE = {"mode": "normal", "calls": 0}
_LOCK = threading.Lock()


def stand_in_disparity(image: np.ndarray, mode: str) -> np.ndarray:
    """A deterministic "model": brighter pixels and the right side are nearer (larger values)."""
    h, w = image.shape[:2]
    mean = image.astype(np.float64).mean(-1) / 255.0
    x = np.arange(w)[None, :] / max(w - 1, 1)
    if mode == "small":  # raw values too small: the uint16 cast keeps < 256 levels
        return mean * 12.0 + x * 8.0
    if mode == "constant":
        return np.full((h, w), 1234.5)
    return 300.0 + mean * 4000.0 + x * 2500.0


def _expected_raw16(image: np.ndarray, mode: str = "normal") -> np.ndarray:
    return stand_in_disparity(image, mode).astype(np.uint16)


def on_submit(image):
    """Stand-in with the Space's signature and outputs."""
    with _LOCK:
        STATE["calls"] += 1
        calls, mode = STATE["calls"], STATE["mode"]
    if mode == "flaky" and calls % 2 == 1:
        raise gr.Error("Rate limit reached: too many requests, please retry later")
    if mode == "fail_dark" and image.mean() < 40:
        raise gr.Error("internal error on this image")
    depth = stand_in_disparity(image, mode)
    lo, hi = depth.min(), depth.max()
    gray = ((depth - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(depth)).astype(np.uint8)
    raw = depth.astype(np.uint16)
    if mode == "resized":  # a server that answers at another resolution
        size = (image.shape[1] // 2, image.shape[0] // 2)
        gray = np.asarray(Image.fromarray(gray).resize(size))
        raw = np.asarray(Image.fromarray(raw).resize(size, Image.NEAREST))
    colored = np.stack([gray, 255 - gray, gray // 2], -1)
    g = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    Image.fromarray(gray).save(g.name)
    r = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    Image.fromarray(raw).save(r.name)
    return [(image, colored), g.name, r.name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio_tmp"))
    with gr.Blocks() as demo:
        inp = gr.Image(label="Input Image", type="numpy")
        slider = gr.ImageSlider(label="Depth Map with Slider View")
        btn = gr.Button("Compute Depth")
        gray_file = gr.File(label="Grayscale depth map")
        raw_file = gr.File(label="16-bit raw output (can be considered as disparity)")
        btn.click(on_submit, inputs=[inp], outputs=[slider, gray_file, raw_file])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            quiet=True, show_error=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture
def mode():
    def set_mode(m: str) -> None:
        with _LOCK:
            STATE["mode"], STATE["calls"] = m, 0
    set_mode("normal")
    yield set_mode
    set_mode("normal")


def _images(folder: Path, n: int = 3, dark: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        h, w = 36 + 2 * i, 48
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 5, y * 6, (x + y) * 2], -1) + rng.integers(0, 20, (h, w, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        if dark == i:
            img = (img // 16).astype(np.uint8)
        p = folder / f"frame_{i:04d}.png"  # PNG: the server sees exactly these pixels
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _run(imgs: Path, out: Path, url: str, **kw):
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return generate_depth(imgs, out, backend="gradio", space=url, progress=False, **kw)


def test_raw16_output_used_and_exact(tmp_path, space_url, mode, capsys):
    paths = _images(tmp_path / "images")
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert (s.generated, s.skipped, s.failed) == (3, 0, {})
    assert s.sources == {"raw16": 3}
    out = capsys.readouterr().out
    assert "✓ API connection successful!" in out and "Result type:" in out and "Result path:" in out
    meta = read_meta(tmp_path / "depths")
    assert meta["kind"] == "disparity" and meta["backend"] == "gradio" and meta["model"] == space_url
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        raw = _expected_raw16(img).astype(np.float64)
        got = load_depth_png(tmp_path / "depths" / f"{p.stem}.png")
        assert got.shape == img.shape[:2]
        expect = (raw - raw.min()) / (raw.max() - raw.min())
        assert np.abs(got - expect).max() <= 1.0 / 65535 + 1e-7
        e = meta["images"][p.stem]
        assert e["source"] == "raw16" and (e["raw_min"], e["raw_max"]) == (raw.min(), raw.max())
        assert read_depth_info(tmp_path / "depths" / f"{p.stem}.png")["raw_max"] == raw.max()
        # near = bright: the stand-in makes the right side nearer
        assert got[:, -1].mean() > got[:, 0].mean()
    # a rerun skips everything and calls nothing
    STATE["calls"] = 0
    s2 = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert (s2.generated, s2.skipped) == (0, 3) and STATE["calls"] == 0


def test_gray_output_when_raw_has_few_levels(tmp_path, space_url, mode):
    mode("small")
    _images(tmp_path / "images", n=2)
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert s.generated == 2 and s.sources == {"gray8": 2}
    e = read_meta(tmp_path / "depths")["images"]["frame_0000"]
    assert e["source"] == "gray8" and "8-bit gray" in e["note"]
    v = load_depth_png(tmp_path / "depths" / "frame_0000.png")
    assert v.min() == 0.0 and v.max() == 1.0


def test_retries_rate_limit(tmp_path, space_url, mode, capsys):
    mode("flaky")  # every other call is refused
    _images(tmp_path / "images", n=3)
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert s.generated == 3 and not s.failed
    assert STATE["calls"] == 6
    assert "Rate limit reached" in capsys.readouterr().out


def test_failed_image_listed_never_blank(tmp_path, space_url, mode, capsys):
    mode("fail_dark")
    _images(tmp_path / "images", n=3, dark=1)
    cfg = DepthConfig(images=tmp_path / "images", out=tmp_path / "depths", backend="gradio",
                      space=space_url, retries=1, backoff=0.01, progress=False)
    assert depth_main(cfg) == 1
    out = capsys.readouterr().out
    assert "Failed: 1" in out and "frame_0001.png" in out and "Successfully generated: 2" in out
    assert not (tmp_path / "depths" / "frame_0001.png").exists()
    meta = read_meta(tmp_path / "depths")
    assert "frame_0001.png" in meta["failed"] and "frame_0001" not in meta["images"]
    # the failed one is retried on the next run, the others are skipped
    mode("normal")
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert (s.generated, s.skipped, s.failed) == (1, 2, {})
    assert read_meta(tmp_path / "depths")["failed"] == {}


def test_constant_map_is_a_failure(tmp_path, space_url, mode):
    mode("constant")
    _images(tmp_path / "images", n=2)
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert s.generated == 0 and len(s.failed) == 2
    assert all("constant" in r for r in s.failed.values())
    assert not list((tmp_path / "depths").glob("*.png"))


def test_resized_answer_brought_back_to_input_size(tmp_path, space_url, mode):
    mode("resized")
    paths = _images(tmp_path / "images", n=1)
    s = _run(tmp_path / "images", tmp_path / "depths", space_url)
    assert s.generated == 1
    v = load_depth_png(tmp_path / "depths" / f"{paths[0].stem}.png")
    assert v.shape == np.asarray(Image.open(paths[0])).shape[:2]
    assert "resized from" in read_meta(tmp_path / "depths")["images"][paths[0].stem]["note"]


def test_unreachable_space_clear_message(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/"
    with pytest.raises(DepthBackendError, match="cannot reach") as ei:
        GradioBackend(url, retries=1, backoff=0.01, log=lambda m: None)
    assert "--depth-backend transformers" in str(ei.value)
    _images(tmp_path / "images", n=1)
    cfg = DepthConfig(images=tmp_path / "images", out=tmp_path / "depths", backend="gradio", space=url,
                      retries=0, progress=False)
    assert depth_main(cfg) == 1
    assert not list((tmp_path / "depths").glob("*.png"))


def test_retry_hint_parsing():
    assert _retry_after("You have exceeded your GPU quota. Try again in 0:01:05") == 65.0
    assert _retry_after("retry later") is None


def test_check_space_prints_seed_lines(space_url, mode, capsys):
    assert check_space(space_url, None, retries=1, backoff=0.01) == 0
    out = capsys.readouterr().out
    for line in ("Client ready!", "✓ API connection successful!", "Result type: <class 'tuple'>",
                 "Result path:", "16-bit raw PNG", "Depth used: the 16-bit raw output"):
        assert line in out


def test_seed_commands(tmp_path, space_url, mode):
    """The seed's two command lines, unchanged, against the local server."""
    _images(tmp_path / "images", n=3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "preprocess" / "generate_depth.py"),
                        str(tmp_path / "images"), str(tmp_path / "depths"), "--verify",
                        "--num_samples", "2", "--space", space_url],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("Found 3 images to process", "Setting up Depth Anything V2 client...", "Client ready!",
                 "Testing API connection...", "✓ API connection successful!",
                 "Processing complete!", "Successfully generated: 3", "Skipped (already exists): 0",
                 "Failed: 0", "✓ All 3 depth maps valid"):
        assert line in r.stdout, (line, r.stdout)
    assert "img/s" in r.stderr or "s/img" in r.stderr  # the progress bar
    assert (tmp_path / "depths" / "verify" / "contact_sheet.png").exists()

    img = tmp_path / "images" / "frame_0000.png"
    r = subprocess.run([sys.executable, str(ROOT / "preprocess" / "test_depth_api.py"), str(img),
                        "--space", space_url], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✓ API connection successful!" in r.stdout and "Result path:" in r.stdout
