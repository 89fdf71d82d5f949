"""Bad inputs and nonsense options, as a reliability tester tries them: each gives one clear message
naming the option or the file that is actually wrong (or works), with the right exit status, and
loses nothing already written. Bad inputs are made from a copy of the tiny synthetic scene."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s3dgs.cli import main
from s3dgs.scene.colmap import SceneError

# ---------------------------------------------------------------------------------------------
# helpers


def _copy(tiny_scene: Path, tmp_path: Path, name: str = "scene") -> Path:
    dst = tmp_path / name
    shutil.copytree(tiny_scene, dst, ignore=shutil.ignore_patterns("gt", "preview.png", "keypoints"))
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _err(capsys) -> str:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return cap.err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _usual_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# ---------------------------------------------------------------------------------------------
# options: nonsense is refused at once, naming the option (exit status 2), writing nothing


@pytest.mark.parametrize("args,text", [
    (["--views", "0"], "--views must be at least 2, got 0"),
    (["--width", "0"], "--width must be at least 16, got 0"),
    (["--image-noise", "-0.1"], "--image-noise must be at least 0, got -0.1"),
    (["--kp-miss", "nan"], "--kp-miss must be a finite number, got nan"),
    (["--outlier-fraction", "1.5"], "--outlier-fraction must be between 0 and 1, got 1.5"),
    (["--ring-radius", "0"], "--ring-radius must be greater than 0, got 0"),
])
def test_synth_nonsense_options(tmp_path, capsys, args, text):
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--preset", "tiny", *args]) == 2
    err = _err(capsys)
    assert f"s3dgs synth: error: {text}" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,text", [
    (["depth", "IMAGES", "OUT", "--retries", "-3"], "--retries must be at least 0, got -3"),
    (["depth", "IMAGES", "OUT", "--backoff", "inf"], "--backoff must be a finite number"),
    (["depth", "IMAGES", "OUT", "--input-size", "500"], "--input-size must be a multiple of 14"),
    (["depth", "IMAGES", "OUT", "--batch-size", "-1"], "--batch-size must be at least 0"),
    (["depth", "IMAGES", "OUT", "--device", "gpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
    (["depth", "verify", "DEPTHS", "--num-samples", "-2"], "--num-samples must be at least 0, got -2"),
    (["prepare", "IN", "OUT", "--fps", "0"], "--fps must be greater than 0, got 0"),
    (["prepare", "IN", "OUT", "--min-registered", "1.5"], "--min-registered must be between 0 and 1"),
    (["prepare", "IN", "OUT", "--overlap", "0"], "--overlap must be at least 1, got 0"),
    (["prepare", "IN", "OUT", "--camera-model", "FISH"], "--camera-model 'FISH' is not a COLMAP camera model"),
    (["heatmaps", "KP", "OUT", "--min-confidence", "2"], "--min-confidence must be between 0 and 1, got 2"),
    (["heatmaps", "KP", "OUT", "--hotspot-sigma", "0"], "--hotspot-sigma must be greater than 0, got 0"),
    (["export", "RUN", "--class-threshold", "nan"], "--class-threshold must be a finite number, got nan"),
    (["export", "RUN", "--min-opacity", "-1"], "--min-opacity must be between 0 and 1, got -1"),
    (["eval", "RUN", "--max-views", "-1"], "--max-views must be at least 0, got -1"),
    (["eval", "RUN", "--resolution-scale", "0"], "--resolution-scale must be in (0, 8], got 0"),
])
def test_nonsense_options_of_every_command(tmp_path, capsys, argv, text):
    places = {"IMAGES", "OUT", "DEPTHS", "IN", "KP", "RUN"}
    argv = [str(tmp_path / a) if a in places else a for a in argv]
    assert main(argv) == 2
    err = _err(capsys)
    assert "error: " + text in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_validate_helpers():
    from s3dgs import validate as V
    from s3dgs.errors import UsageError

    assert V.positive("--x", 3) == 3 and V.positive("--x", None) is None  # unset options pass
    assert V.flag("ring_radius") == "--ring-radius"
    for call, text in [(lambda: V.positive("--x", 0), "greater than 0"),
                       (lambda: V.in_range("--x", 2, 0, 1), "between 0 and 1, got 2"),
                       (lambda: V.in_range("--x", 0, 0, 1, lo_open=True), "in (0, 1]"),
                       (lambda: V.one_of("--x", "c", ("a", "b")), "one of a, b"),
                       (lambda: V.integer("--x", 1.5), "whole number"),
                       (lambda: V.finite("--x", float("-inf")), "finite"),
                       (lambda: V.at_least("--x", "abc", 1), "must be a number")]:
        with pytest.raises(UsageError, match=None) as ei:
            call()
        assert text in str(ei.value) and str(ei.value).startswith("--x ")
        assert ei.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# point clouds


def _ply_with_nan(path: Path) -> None:
    from s3dgs.scene.ply import read_points_ply, write_points_ply

    xyz, rgb = read_points_ply(path)
    xyz[5] = np.nan
    write_points_ply(path, xyz, rgb)


def test_points_ply_with_nan_named_by_train(tiny_scene, tmp_path, capsys):
    from s3dgs.scene.ply import initial_points

    scene = _copy(tiny_scene, tmp_path)
    _ply_with_nan(scene / "points3D.ply")
    with pytest.raises(SceneError, match=r"points3D.ply: 1 of \d+ points have NaN"):
        initial_points(scene / "points3D.ply", None, None, 1000)
    before = _snapshot(scene)
    assert main(["train", str(scene), "--out", str(tmp_path / "run"), "--num-iterations", "5"]) == 1
    err = _err(capsys)
    assert f"{scene / 'points3D.ply'}: 1 of" in err and "NaN" in err
    assert _snapshot(scene) == before


def _fake_run(run: Path, n: int = 50) -> Path:
    import torch

    from s3dgs.gaussians.model import init_params, save_ply

    rng = np.random.default_rng(0)
    params = init_params(rng.normal(size=(n, 3)), rng.integers(0, 255, (n, 3)), sh_degree=1)
    with torch.no_grad():
        params["semantics"][: n // 2] = 4.0
        params["opacities"][:] = 2.0
    save_ply(run / "point_cloud.ply", params)
    return run / "point_cloud.ply"


def test_eval_and_export_on_truncated_point_cloud(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    ply = _fake_run(run)
    assert main(["export", str(run)]) == 0  # the intact file exports
    capsys.readouterr()
    before = _snapshot(run / "classes")
    data = ply.read_bytes()
    ply.write_bytes(data[: len(data) // 2])
    assert main(["export", str(run)]) == 1
    err = _err(capsys)
    assert f"s3dgs export: error: {ply}: unreadable Gaussian PLY, truncated" in err
    assert "--resume" in err  # what to do
    assert _snapshot(run / "classes") == before  # the earlier export is kept
    assert main(["eval", str(run), "--scene", str(tiny_scene)]) == 1
    err = _err(capsys)
    assert f"s3dgs eval: error: {ply}: unreadable Gaussian PLY, truncated" in err
    assert not (run / "metrics.json").exists()


def test_initial_points_fall_back_to_the_model_when_the_ply_is_empty(tiny_scene, tmp_path):
    from s3dgs.scene.colmap import read_model
    from s3dgs.scene.ply import initial_points, write_points_ply

    model = read_model(tiny_scene)
    empty = tmp_path / "points3D.ply"
    write_points_ply(empty, np.zeros((0, 3)))
    xyz, rgb, note = initial_points(empty, model.xyz, model.rgb, max_points=100000, seed=0)
    assert len(xyz) == len(model.xyz) > 0 and np.array_equal(xyz, model.xyz)
    assert "0 vertices" in note and "model's points are used" in note
    # subsampled above max_points, reproducibly
    a, _, note2 = initial_points(tiny_scene / "points3D.ply", None, None, max_points=100, seed=3)
    b, _, _ = initial_points(tiny_scene / "points3D.ply", None, None, max_points=100, seed=3)
    assert len(a) == 100 and np.array_equal(a, b) and "random subset" in note2
    # neither has points: empty, said so by the count
    xyz, _, note3 = initial_points(empty, None, None, max_points=100)
    assert len(xyz) == 0 and note3.startswith("0 initial points")


# ---------------------------------------------------------------------------------------------
# depth maps, heatmaps and frames


def test_weak_depth_maps_refused_unless_allowed(tiny_scene, tmp_path, capsys):
    from s3dgs.depth.io import save_depth_png
    from s3dgs.scene.dataset import SceneDataset

    scene = _copy(tiny_scene, tmp_path)
    eight = scene / "depths" / "view_003.png"
    arr = np.asarray(Image.open(eight), np.float64) / 65535
    Image.fromarray((arr * 255).astype(np.uint8)).save(eight)  # an 8-bit map, same content
    with pytest.raises(SceneError, match="view_003.png: depth map is not a 16-bit single-channel PNG "
                                         r"\(8-bit mode L\)") as ei:
        SceneDataset.from_dir(scene, verbose=False)
    assert "--allow-weak-depth" in str(ei.value) and "s3dgs depth verify" in str(ei.value)
    ds = SceneDataset.from_dir(scene, verbose=False, allow_weak_depth=True)
    assert ds[3]["depth"].shape == (120, 160)

    eight.unlink()
    save_depth_png(scene / "depths" / "view_005.png", np.zeros((120, 160)))  # constant 0
    with pytest.raises(SceneError, match="view_005.png: depth map is constant map"):
        SceneDataset.from_dir(scene, verbose=False, cache="memory")
    ds = SceneDataset.from_dir(scene, verbose=False, cache="none")  # lazy: refused when loaded
    with pytest.raises(SceneError, match="view_005.png"):
        ds[[f.stem for f in ds.frames].index("view_005")]
    # `s3dgs depth verify` flags the same map with the same check, and train refuses it
    assert main(["depth", "verify", str(scene / "depths")]) == 1
    assert "view_005.png: constant map" in capsys.readouterr().out
    assert main(["train", str(scene), "--out", str(tmp_path / "run"), "--num-iterations", "5"]) == 1
    err = _err(capsys)
    assert "view_005.png: depth map is constant map" in err and "--allow-weak-depth" in err


def test_depth_map_of_another_aspect_is_an_error(tiny_scene, tmp_path):
    from s3dgs.depth.io import save_depth_png
    from s3dgs.scene.dataset import SceneDataset

    scene = _copy(tiny_scene, tmp_path)
    save_depth_png(scene / "depths" / "view_002.png", np.random.default_rng(0).random((120, 120)))
    with pytest.raises(SceneError, match="view_002.png: depth map is 120x120 but image view_002.png is "
                                         "160x120, another aspect ratio"):
        SceneDataset.from_dir(scene, verbose=False)
    # another size of the same aspect is resized, as models predict at their own resolution
    save_depth_png(scene / "depths" / "view_002.png", np.random.default_rng(0).random((60, 80)))
    with pytest.warns(UserWarning, match="resizing depth maps"):
        ds = SceneDataset.from_dir(scene, verbose=False)
    assert ds[2]["depth"].shape == (120, 160)


def test_heatmap_in_0_255_is_an_error(tiny_scene, tmp_path):
    from s3dgs.scene.dataset import SceneDataset

    scene = _copy(tiny_scene, tmp_path)
    hm = scene / "heatmaps" / "view_004.npy"
    np.save(hm, (np.load(hm).astype(np.float32) * 255).astype(np.float16))
    with pytest.raises(SceneError, match=r"view_004.npy: heatmap values span \[0, 255\]; heatmaps must "
                                         r"lie in \[0, 1\] \(this looks like 0..255: divide by 255\)"):
        SceneDataset.from_dir(scene, verbose=False)


def test_frame_of_another_size_than_its_camera_with_heatmaps(tiny_scene, tmp_path):
    from s3dgs.scene.dataset import SceneDataset

    scene = _copy(tiny_scene, tmp_path)
    img = scene / "images" / "view_001.png"
    # the same aspect, half size: works, K and the heatmap follow the frame
    Image.open(img).resize((80, 60), Image.Resampling.LANCZOS).save(img)
    ds = SceneDataset.from_dir(scene, verbose=False)
    item = ds[1]
    assert item["image"].shape == (60, 80, 3) and item["heatmap"].shape == (60, 80, 4)
    assert float(item["K"][0, 0]) == pytest.approx(float(ds[0]["K"][0, 0]) / 2)
    # another aspect: the frame is named, not its (correct) heatmap
    Image.open(img).resize((100, 60)).save(img)
    with pytest.raises(SceneError) as ei:
        SceneDataset.from_dir(scene, verbose=False)
    msg = str(ei.value)
    assert msg.startswith(f"{img}: image is 100x60 but its COLMAP camera") and "another aspect" in msg
    assert ".npy" not in msg


@pytest.mark.parametrize("cut", ["half", "one byte", "empty"])
def test_truncated_cameras_bin_is_named(tiny_scene, tmp_path, capsys, cut):
    from s3dgs.scene.colmap import read_model

    scene = _copy(tiny_scene, tmp_path)
    cams = scene / "sparse" / "0" / "cameras.bin"
    data = cams.read_bytes()
    cams.write_bytes({"half": data[: len(data) // 2], "one byte": data[:-1], "empty": b""}[cut])
    with pytest.raises(SceneError, match=r"cameras.bin: damaged COLMAP file \(truncated") as ei:
        read_model(scene)
    assert "images.bin" not in str(ei.value)
    assert main(["undistort", str(scene), str(tmp_path / "out")]) == 1
    err = _err(capsys)
    assert f"{cams}: damaged COLMAP file (truncated" in err
    assert not (tmp_path / "out").exists()


def test_truncated_points3d_bin_is_named_not_hung(tiny_scene, tmp_path):
    from s3dgs.scene.colmap import read_model

    scene = _copy(tiny_scene, tmp_path)
    pts = scene / "sparse" / "0" / "points3D.bin"
    pts.write_bytes(pts.read_bytes()[:-1])  # pycolmap itself hangs on this one
    t0 = time.perf_counter()
    with pytest.raises(SceneError, match=r"points3D.bin: damaged COLMAP file \(truncated"):
        read_model(scene)
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------------
# undistort on an OPENCV capture


def _opencv_capture(root: Path, n_points: int = 40, k1: float = -0.45) -> np.ndarray:
    """An OPENCV-model scene of white frames, 3D points with tracks. Returns the points [P, 3]."""
    from s3dgs.scene.colmap import import_pycolmap

    pycolmap = import_pycolmap()
    w, h = 240, 180
    cam = pycolmap.Camera(model="OPENCV", width=w, height=h, params=[200.0, 205.0, 121.0, 88.0, k1, 0.15, 0.001,
                                                                     -0.001], camera_id=1)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(cam)
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-0.6, 0.6, (n_points, 2)), rng.uniform(3, 4, n_points)]
    (root / "images").mkdir(parents=True)
    for i in range(3):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([0.05 * (i - 1), 0.0, 0.0]))
        uv = cam.img_from_cam(xyz + pose.translation)
        Image.fromarray(np.full((h, w, 3), 255, np.uint8)).save(root / "images" / f"v{i}.png")
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"v{i}.png", keypoints=uv, camera_id=1,
                                                        image_id=i + 1), pose)
    for j, p in enumerate(xyz):
        track = pycolmap.Track([pycolmap.TrackElement(i + 1, j) for i in range(3)])
        rec.add_point3D(p, track, np.array([200, 100, 50], np.uint8))
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(root / "sparse" / "0"))
    return xyz


def test_undistort_keeps_the_points_and_crops(tmp_path, capsys):
    from s3dgs.scene.colmap import read_model
    from s3dgs.scene.ply import read_points_ply

    src = tmp_path / "capture"
    xyz = _opencv_capture(src)
    out = tmp_path / "pinhole"
    assert main(["undistort", str(src), str(out)]) == 0
    assert "40 points of the input model" in capsys.readouterr().out
    model = read_model(out)
    np.testing.assert_allclose(np.sort(model.xyz, 0), np.sort(xyz, 0), atol=1e-9)  # not moved
    ply_xyz, _ = read_points_ply(out / "points3D.ply")
    np.testing.assert_allclose(np.sort(ply_xyz, 0), np.sort(xyz, 0), atol=1e-5)
    cropped = np.asarray(Image.open(out / "images" / "v0.png").convert("L"))
    assert cropped.shape == (model.views[0].height, model.views[0].width)
    assert cropped.min() >= 250  # no black border, not even the half-pixel edge
    # the points still project where the 2D observations are, after the crop
    from s3dgs.scene.colmap import import_pycolmap

    rec = import_pycolmap().Reconstruction(str(out / "sparse" / "0"))
    for v in model.views:
        cam = xyz @ v.viewmat[:3, :3].T + v.viewmat[:3, 3]
        uv = (cam @ v.K.T)[:, :2] / cam[:, 2:3]
        kp = np.array([p.xy for p in rec.images[v.image_id].points2D])
        np.testing.assert_allclose(kp, uv, atol=1e-3)
    # --no-crop keeps every source pixel: a larger frame with black borders
    full = tmp_path / "full"
    assert main(["undistort", str(src), str(full), "--no-crop"]) == 0
    whole = np.asarray(Image.open(full / "images" / "v0.png").convert("L"))
    assert whole.shape[0] > cropped.shape[0] and whole.shape[1] > cropped.shape[1]
    assert (whole < 20).mean() > 0.05


def test_undistort_model_without_points_takes_the_scene_ply(tmp_path, capsys):
    from s3dgs.scene.colmap import import_pycolmap, read_model
    from s3dgs.scene.ply import read_points_ply, write_points_ply

    src = tmp_path / "capture"
    _opencv_capture(src)
    rec = import_pycolmap().Reconstruction(str(src / "sparse" / "0"))
    for pid in list(rec.point3D_ids()):
        rec.delete_point3D(pid)
    rec.write_binary(str(src / "sparse" / "0"))
    pts = np.random.default_rng(1).normal(size=(25, 3))
    write_points_ply(src / "points3D.ply", pts)
    assert main(["undistort", str(src), str(tmp_path / "out")]) == 0
    assert f"25 points from {src / 'points3D.ply'}" in capsys.readouterr().out
    assert len(read_model(tmp_path / "out").xyz) == 25
    np.testing.assert_allclose(read_points_ply(tmp_path / "out" / "points3D.ply")[0], pts, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the tiny demo, depth offline, permissions


@pytest.mark.slow
def test_demo_tiny_preset_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--preset", "tiny", "--num-iterations", "20", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out[-3000:] + cap.err[-3000:]
    assert (out / "run" / "report.html").is_file() and "report:" in cap.out


def test_depth_offline_without_a_cached_model_fails_at_once(tmp_path, capsys, monkeypatch):
    from s3dgs.depth.backends import model_availability

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "depth-anything/Depth-Anything-V2-Small-hf"
    if model_availability(model)[0]:
        pytest.skip("the model is in this machine's Hugging Face cache")
    imgs = tmp_path / "images"
    imgs.mkdir()
    Image.new("RGB", (32, 24), (90, 120, 30)).save(imgs / "a.png")
    out = tmp_path / "depths"
    out.mkdir()
    (out / "keep.txt").write_text("written before")
    for extra in ([], ["--depth-backend", "gradio"]):
        t0 = time.perf_counter()
        assert main(["depth", str(imgs), str(out), "--no-progress", *extra]) == 1
        cap = capsys.readouterr()
        assert time.perf_counter() - t0 < 20
        text = cap.out + cap.err
        assert "retry" not in text  # an offline-mode error is not retried
        assert "hf download depth-anything/Depth-Anything-V2-Small-hf" in text
        assert "--model /local/folder" in text
    assert (out / "keep.txt").read_text() == "written before" and not list(out.glob("*.png"))


def test_outputs_get_the_usual_permissions(tiny_scene, tmp_path):
    from s3dgs.depth.io import save_depth_png, write_meta
    from s3dgs.scene.heatmaps import make_heatmaps
    from s3dgs.scene.ply import write_points_ply

    usual = _usual_mode()
    save_depth_png(tmp_path / "depths" / "a.png", np.random.default_rng(0).random((12, 16)))
    write_meta(tmp_path / "depths", {"kind": "disparity"})
    write_points_ply(tmp_path / "points3D.ply", np.zeros((3, 3)))
    make_heatmaps(tiny_scene / "keypoints", tmp_path / "scene", progress=False)
    files = [tmp_path / "depths" / "a.png", tmp_path / "depths" / "meta.json", tmp_path / "points3D.ply",
             tmp_path / "scene" / "confidence.json", tmp_path / "scene" / "heatmaps" / "view_000.npy"]
    assert {str(f): oct(_mode(f)) for f in files} == {str(f): oct(usual) for f in files}
    assert not list(tmp_path.rglob("*.tmp"))
    assert np.load(files[-1]).shape == (120, 160, 4)
