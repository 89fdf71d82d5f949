"""transformers backend on a tiny random DepthAnythingForDepthEstimation (DINOv2 hidden 32, 4 layers)
saved with save_pretrained and loaded by path with HF_HUB_OFFLINE=1; resume, interruption, bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from s3dgs.cli import main as cli_main
from s3dgs.depth.backends import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthBackendError,
    TransformersBackend,
    processed_size,
)
from s3dgs.depth.generate import DepthError, generate_depth, verify_depths
from s3dgs.depth.io import check_depth_png, read_depth_info, read_meta

ROOT = Path(__file__).resolve().parents[1]
FAST = 70  # model input short side for the tests that are not about resizing (518 is slow on 2 cores)


def _tiny_model(constant: bool = False):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32],
                              head_hidden_size=8, reassemble_hidden_size=32)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    if constant:  # the head's last convolution outputs 0.5 everywhere
        with torch.no_grad():
            model.head.conv3.weight.zero_()
            model.head.conv3.bias.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_depth_anything")
    _tiny_model().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_constant(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_constant")
    _tiny_model(constant=True).save_pretrained(d)
    return d


def _write_images(folder: Path, sizes, ext: str = ".jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1) + rng.integers(0, 40, (h, w, 3))
        p = folder / f"frame_{i:04d}{ext}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


def test_input_size_must_be_multiple_of_14(tiny):
    with pytest.raises(DepthBackendError, match="multiple of 14"):
        TransformersBackend(str(tiny), device="cpu", input_size=500)


def test_processed_size():
    assert processed_size(1080, 1920) == (518, 924)
    assert processed_size(518, 518) == (518, 518)
    assert processed_size(1920, 1080) == (924, 518)
    h, w = processed_size(37, 100)
    assert h == 518 and w % 14 == 0 and abs(w / h - 100 / 37) < 0.02


def test_preprocess_normalisation_and_size(tiny):
    b = TransformersBackend(str(tiny), device="cpu")
    img = np.full((30, 50, 3), 128, np.uint8)
    x = b.preprocess([img, img])
    assert tuple(x.shape) == (2, 3, *processed_size(30, 50))
    expect = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert np.allclose(x[0].mean(dim=(1, 2)).numpy(), expect, atol=1e-4)


def test_generate_shapes_meta_and_reference(tiny, tmp_path):
    """Mixed sizes, batch 2: every map at its image's size, 16-bit, full range despite the
    near-zero output of random weights, and equal to an independent reference pipeline."""
    sizes = [(40, 56), (40, 56), (61, 47)]
    paths = _write_images(tmp_path / "images", sizes, ext=".png")
    s = generate_depth(tmp_path / "images", tmp_path / "depths", backend="transformers", model=str(tiny),
                       device="cpu", batch_size=2, progress=False)
    assert (s.generated, s.skipped, s.failed, s.backend) == (3, 0, {}, "transformers")
    meta = read_meta(tmp_path / "depths")
    assert meta["kind"] == "disparity" and meta["backend"] == "transformers" and meta["model"] == str(tiny)
    model = _tiny_model()
    for k, (p, (h, w)) in enumerate(zip(paths, sizes)):
        dst = tmp_path / "depths" / f"{p.stem}.png"
        assert check_depth_png(dst, (w, h)) is None
        with Image.open(dst) as im:
            assert im.mode.startswith("I;16") and im.size == (w, h)
            arr = np.asarray(im)
        assert arr.min() == 0 and arr.max() == 65535
        e = meta["images"][p.stem]
        assert 0 <= e["raw_min"] < e["raw_max"] < 1e-3  # random weights: tiny, yet normalised
        assert read_depth_info(dst)["raw_max"] == e["raw_max"]
        if k == 1:
            continue  # same size as the first; keep the test short
        # reference: PIL bicubic resize + ImageNet normalisation, model, bilinear back, min-max
        th, tw = processed_size(h, w)
        rgb = Image.open(p).convert("RGB").resize((tw, th), Image.BICUBIC)
        x = (torch.from_numpy(np.asarray(rgb, np.float32) / 255.0).permute(2, 0, 1)
             - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            d = model(pixel_values=x[None]).predicted_depth[:, None]
            d = torch.nn.functional.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        ref = ((d - d.min()) / (d.max() - d.min())).numpy()
        got = arr / 65535.0
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.98


def test_constant_output_fails_without_blank_map(tiny_constant, tmp_path, capsys):
    _write_images(tmp_path / "images", [(32, 32), (32, 32)])
    rc = cli_main(["depth", str(tmp_path / "images"), str(tmp_path / "depths"), "--depth-backend", "transformers",
                   "--model", str(tiny_constant), "--device", "cpu", "--no-progress",
                   "--input-size", str(FAST)])
    assert rc == 1
    out = capsys.readouterr().out
    assert "Failed: 2" in out and "constant" in out
    assert not list((tmp_path / "depths").glob("*.png"))


def test_missing_model_message(tmp_path):
    with pytest.raises(DepthBackendError, match="hf download") as ei:
        TransformersBackend(str(tmp_path / "no_such_model"), device="cpu")
    assert "--depth-backend gradio" in str(ei.value)
    with pytest.raises(DepthBackendError, match="HF_HUB_OFFLINE"):
        TransformersBackend("nobody-here/not-a-cached-model", device="cpu")


def test_cli_unreadable_image_verify_and_contact_sheet(tiny, tmp_path, capsys):
    _write_images(tmp_path / "scene" / "images", [(30, 40)] * 3)
    (tmp_path / "scene" / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    imgs, out = tmp_path / "scene" / "images", tmp_path / "scene" / "depths"
    rc = cli_main(["depth", str(imgs), str(out), "--model", str(tiny), "--no-progress", "--verify",
                   "--num-samples", "2", "--input-size", str(FAST)])  # auto backend: the local folder is available
    text = capsys.readouterr().out
    assert rc == 1
    assert "Successfully generated: 3" in text and "Failed: 1" in text and "broken.jpg" in text
    assert "cannot read image broken.jpg" in text
    assert not (out / "broken.png").exists()
    assert (out / "verify" / "contact_sheet.png").exists()
    (imgs / "broken.jpg").unlink()
    assert cli_main(["depth", "verify", str(out)]) == 0  # finds ../images itself
    assert "✓ All 3 depth maps valid" in capsys.readouterr().out
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(out / "frame_0001.png")
    assert cli_main(["depth", "verify", str(out)]) == 1
    assert "frame_0001.png: constant map" in capsys.readouterr().out


def test_resume_redoes_only_invalid_maps(tiny, tmp_path):
    _write_images(tmp_path / "images", [(30, 40)] * 5)
    out = tmp_path / "depths"
    kw = dict(backend="transformers", model=str(tiny), device="cpu", progress=False, input_size=FAST)
    assert generate_depth(tmp_path / "images", out, **kw).generated == 5
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    data = (out / "frame_0001.png").read_bytes()
    (out / "frame_0001.png").write_bytes(data[: len(data) // 2])           # truncated
    Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40)).save(out / "frame_0002.png")  # 8-bit
    (out / "meta.json").unlink()                                           # lost meta
    s = generate_depth(tmp_path / "images", out, **kw)
    assert (s.generated, s.skipped, s.redone, s.failed) == (2, 3, 2, {})
    for name in ("frame_0000.png", "frame_0003.png", "frame_0004.png"):
        assert (out / name).stat().st_mtime_ns == stamp[name]
    meta = read_meta(out)
    assert sorted(meta["images"]) == [f"frame_{i:04d}" for i in range(5)]
    assert all(e["raw_max"] > e["raw_min"] for e in meta["images"].values())  # rebuilt from the PNGs
    assert verify_depths(out, tmp_path / "images", log=lambda m: None).ok


def test_kill_midway_then_resume(tiny, tmp_path):
    """SIGKILL a running generation; the rerun leaves every map valid and redoes none."""
    n = 16
    _write_images(tmp_path / "images", [(24, 32)] * n)
    out = tmp_path / "depths"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "s3dgs.cli", "depth", str(tmp_path / "images"), str(out),
                             "--model", str(tiny), "--device", "cpu", "--no-progress",
                             "--input-size", str(FAST)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if len(list(out.glob("frame_*.png"))) >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("frame_*.png")}
    assert 3 <= len(done), "the run was killed before writing anything"
    for name in done:  # atomic writes: whatever exists is complete
        assert check_depth_png(out / name, (32, 24)) is None
    s = generate_depth(tmp_path / "images", out, backend="transformers", model=str(tiny), device="cpu",
                       progress=False, input_size=FAST)
    assert s.skipped == len(done) and s.generated == n - len(done) and not s.failed and s.redone == 0
    for name, stamp in done.items():
        assert (out / name).stat().st_mtime_ns == stamp
    assert not list(out.glob(".*.tmp")) and not (out / ".s3dgs-depth.lock").exists()
    assert verify_depths(out, tmp_path / "images", log=lambda m: None).ok
    assert len(read_meta(out)["images"]) == n


def test_invalid_map_removed_when_its_redo_fails(tiny_constant, tmp_path):
    _write_images(tmp_path / "images", [(20, 24)])
    out = tmp_path / "depths"
    out.mkdir()
    Image.fromarray(np.zeros((20, 24), np.uint16)).save(out / "frame_0000.png")  # constant: invalid
    s = generate_depth(tmp_path / "images", out, model=str(tiny_constant), device="cpu", progress=False,
                       input_size=FAST)
    assert s.redone == 1 and "frame_0000.jpg" in s.failed
    assert not (out / "frame_0000.png").exists()


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DepthError, match="no images"):
        generate_depth(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(DepthError, match="does not exist"):
        generate_depth(tmp_path / "missing", tmp_path / "out", progress=False)
    _write_images(tmp_path / "images", [(20, 20)])
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DepthError, match="cannot write to the output folder"):
        generate_depth(tmp_path / "images", tmp_path / "a_file" / "depths", progress=False)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "readonly"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(DepthError, match="cannot write to the output folder"):
                generate_depth(tmp_path / "images", ro, progress=False)
        finally:
            ro.chmod(0o700)
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "frame_0000.png")  # same stem as the .jpg
    with pytest.raises(DepthError, match="share the stem"):
        generate_depth(tmp_path / "images", tmp_path / "out", progress=False)


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["depth", str(tmp_path / "empty"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "no images" in capsys.readouterr().err
