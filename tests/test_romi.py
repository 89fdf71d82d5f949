"""ROMI scans as input (s3dgs.scene.romi): a tiny scan in ROMI's layout, made here, and the two
scans of shared/data when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s3dgs.scene.romi import (
    carve,
    excess_green,
    is_romi_scan,
    prepare_romi,
    read_romi_scan,
    romi_class_mask,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (COLMAP: x right, y down, z forward) looking from centre at target,
    with world +z up."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def make_scan(root: Path, *, n: int = 8, size: tuple[int, int] = (120, 90), bars: int = 10,
              masks: bool = False, key: str = "colmap_camera", k1: float = 0.0, radius: float = 300.0,
              workspace: bool = True) -> dict:
    """A ROMI-layout scan: `n` views on a ring of `radius` (mm) around a green vertical stem (a
    cylinder of radius 4 from z=0 to 60 at x=y=0) with a red 'fruit' ball on top; black bars of
    `bars` px at both sides. Returns the truth (cameras)."""
    W, H = size
    f = 140.0
    (root / "images").mkdir(parents=True)
    (root / "metadata" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # surface samples: stem (class stem) and a ball (class fruit)
    t = rng.uniform(0, 2 * np.pi, 20000)
    stem = np.stack([4 * np.cos(t), 4 * np.sin(t), rng.uniform(0, 60, len(t))], 1)
    u = rng.normal(size=(6000, 3))
    ball = u / np.linalg.norm(u, axis=1, keepdims=True) * 8 + [0, 0, 68]
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        c = np.array([radius * np.cos(a), radius * np.sin(a), 40.0])
        R = _look_at(c, np.array([0, 0, 34.0]))
        tvec = -R @ c
        img = np.full((H, W, 3), 18, np.uint8)  # dark cloth
        cov = {"stem": np.zeros((H, W), np.uint8), "fruit": np.zeros((H, W), np.uint8)}
        for pts, col, cls in ((stem, (40, 170, 40), "stem"), (ball, (200, 40, 40), "fruit")):
            cam = pts @ R.T + tvec
            uv = cam[:, :2] / cam[:, 2:] * f + [W / 2, H / 2]
            ui, vi = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
            ok = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
            img[vi[ok], ui[ok]] = col
            cov[cls][vi[ok], ui[ok]] = 255
        img[:, :bars] = 0
        img[:, W - bars:] = 0
        stemname = f"{i:05d}"
        Image.fromarray(img).save(root / "images" / f"{stemname}_rgb.{'png' if masks else 'jpg'}", quality=98)
        if masks:
            for cls, m in cov.items():
                m[:, :bars] = 0
                m[:, W - bars:] = 0
                Image.fromarray(m).save(root / "images" / f"{stemname}_{cls}.png")
        camj = {"camera_model": {"model": "OPENCV", "width": W, "height": H,
                                 "params": [f, f, W / 2, H / 2, k1, k1, 0.0, 0.0]},
                "rotmat": R.tolist(), "tvec": tvec.tolist()}
        (root / "metadata" / "images" / f"{stemname}_rgb.json").write_text(
            json.dumps({"channel": "rgb", key: camj, "shot_id": stemname}))
        cams.append((c, R, tvec))
    box = {"x": [-30, 30], "y": [-30, 30], "z": [-5, 85]}
    (root / "metadata" / "images.json").write_text(json.dumps(
        {"workspace" if workspace else "bounding_box": box, "channels": ["rgb"]}))
    return {"cams": cams, "size": size, "f": f}


def test_is_romi_scan_and_read(tmp_path):
    scan = tmp_path / "scan"
    make_scan(scan, n=4)
    assert is_romi_scan(scan)
    assert not is_romi_scan(tmp_path)
    views, meta = read_romi_scan(scan)
    assert [v.stem for v in views] == ["00000", "00001", "00002", "00003"]
    assert "workspace" in meta
    assert views[0].model == "OPENCV" and views[0].params[0] == 140.0


def test_prepare_keeps_poses_crops_bars_and_carves(tmp_path):
    scan, out = tmp_path / "scan", tmp_path / "scene"
    truth = make_scan(scan, n=8, bars=10)
    s = prepare_romi(scan, out, progress=False, max_points=3000, max_voxels=200_000)
    assert s.frames_used == 8 and s.masks == 0
    assert s.crop[0] == 10 and s.crop[2] == 110  # the black bars, both sides
    assert (s.width, s.height) == (100, 90)
    assert s.ring_radius == pytest.approx(300.0, rel=1e-6)  # metric ring kept
    assert s.units == "mm" and json.loads((out / "units.json").read_text())["metres_per_unit"] == 0.001
    from s3dgs.scene.colmap import read_model

    m = read_model(out / "sparse" / "0")
    assert len(m.views) == 8
    v0 = m.views[0]
    K = v0.K
    assert K[0, 2] == pytest.approx(60.0 - 10.0) and K[0, 0] == pytest.approx(140.0)
    c_true = truth["cams"][0][0]
    assert np.allclose(v0.camera_center, c_true, atol=1e-6)
    # carved points lie on the plant: inside the stem's tube or the ball, not in the empty box
    from s3dgs.scene.ply import read_points_ply

    xyz, rgb = read_points_ply(out / "points3D.ply")
    r = np.linalg.norm(xyz[:, :2], axis=1)
    near = (r < 12) & (xyz[:, 2] > -6) & (xyz[:, 2] < 82)
    assert near.mean() > 0.95, near.mean()
    assert xyz[:, 2].max() > 60 and xyz[:, 2].min() < 8  # the whole stem, base to top
    assert (json.loads((out / "prepare.json").read_text()))["source"] == "romi scan"


def test_prepare_virtual_scan_masks_and_undistortion(tmp_path):
    scan, out = tmp_path / "scan", tmp_path / "scene"
    make_scan(scan, n=6, masks=True, key="camera", k1=0.05, workspace=False)
    s = prepare_romi(scan, out, progress=False, max_points=2000, max_voxels=100_000)
    assert s.masks == 6 and s.units == "model"
    assert json.loads((out / "classes.json").read_text()) == {"table": "arabidopsis"}
    ids = np.asarray(Image.open(out / "masks" / "00000.png"))
    img = np.asarray(Image.open(out / "images" / "00000.png"))
    assert ids.shape == img.shape[:2]
    assert set(np.unique(ids)) <= {0, 1, 3, 255}  # background, stem (1), fruit (3)
    assert (ids == 1).sum() > 50 and (ids == 3).sum() > 20
    # where the mask says stem, the frame is green; fruit, red
    assert img[ids == 1][:, 1].mean() > img[ids == 1][:, 0].mean() + 50
    assert img[ids == 3][:, 0].mean() > img[ids == 3][:, 1].mean() + 50
    assert json.loads((out / "units.json").read_text())["metres_per_unit"] is None


def test_undistortion_moves_pixels_as_the_camera_model(tmp_path):
    """With k1 > 0 a point far from the centre is imaged farther out; the undistorted frame puts
    it back where the pinhole camera projects it."""
    scan, out = tmp_path / "scan", tmp_path / "scene"
    make_scan(scan, n=4, masks=True, key="camera", k1=0.2, bars=0)
    prepare_romi(scan, out, progress=False, max_points=500, max_voxels=50_000, crop="none")
    ids_und = np.asarray(Image.open(out / "masks" / "00000.png"))
    raw = np.asarray(Image.open(scan / "images" / "00000_stem.png"))
    # the raw stem's top reaches higher (barrel distortion pushes outwards, k1 > 0) than the
    # undistorted one
    top_raw = np.flatnonzero((raw > 0).any(1))[0]
    top_und = np.flatnonzero((ids_und == 1).any(1))[0]
    assert top_und >= top_raw


def test_class_mask_from_coverages():
    stem = np.array([[0, 200, 30]], np.uint8)
    fruit = np.array([[0, 100, 0]], np.uint8)
    ids = romi_class_mask({"stem": stem, "fruit": fruit})
    assert ids.tolist() == [[0, 1, 255]]  # none, stem (highest), too little coverage


def test_carve_keeps_a_thin_pole():
    """A pole thinner than a voxel, seen by 8 views, survives; the empty box is carved away."""
    W = H = 64
    f = 80.0
    Ks, vms, sils = [], [], []
    pole = np.stack([np.zeros(200), np.zeros(200), np.linspace(0, 40, 200)], 1)
    for i in range(8):
        a = 2 * np.pi * i / 8
        c = np.array([100 * np.cos(a), 100 * np.sin(a), 20.0])
        R = _look_at(c, np.array([0, 0, 20.0]))
        vm = np.eye(4)
        vm[:3, :3], vm[:3, 3] = R, -R @ c
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
        cam = pole @ R.T + vm[:3, 3]
        uv = cam[:, :2] / cam[:, 2:] * f + W / 2
        sil = np.zeros((H, W), bool)
        sil[np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)] = True
        Ks.append(K)
        vms.append(vm)
        sils.append(sil)
    pts, edge, info = carve(sils, np.stack(Ks), np.stack(vms), np.array([[-20, -20, 0], [20, 20, 40.0]]),
                            max_voxels=60_000, tolerance=0)
    assert len(pts) > 0
    assert np.abs(pts[:, :2]).max() < 3 * edge
    assert pts[:, 2].max() - pts[:, 2].min() > 35


def test_excess_green():
    img = np.array([[[40, 170, 40], [200, 40, 40], [5, 5, 5]]], np.uint8)
    e = excess_green(img)
    assert e[0, 0] > 0.3 and e[0, 1] < 0 and e[0, 2] == -1


def test_errors_name_the_file(tmp_path):
    scan = tmp_path / "scan"
    make_scan(scan, n=3)
    bad = scan / "metadata" / "images" / "00001_rgb.json"
    bad.write_text("{not json")
    from s3dgs.scene.frames import PrepareError

    with pytest.raises(PrepareError, match="00001_rgb.json"):
        read_romi_scan(scan)
    bad.write_text(json.dumps({"channel": "rgb", "colmap_camera": {"camera_model": {}, "rotmat": 1, "tvec": 2}}))
    with pytest.raises(PrepareError, match="00001_rgb.json: malformed camera"):
        read_romi_scan(scan)
    (scan / "images" / "00002_rgb.jpg").unlink()
    bad.unlink()
    with pytest.raises(PrepareError, match="00002_rgb.json: its photo"):
        read_romi_scan(scan)


def test_prepare_cli_reads_a_scan(tmp_path, capsys):
    from s3dgs.cli import main

    scan, out = tmp_path / "scan", tmp_path / "scene"
    make_scan(scan, n=5)
    assert main(["prepare", str(scan), str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ROMI scan: known poses, no SfM" in text and "radius 300.0 mm" in text
    assert (out / "sparse" / "0").is_dir() and (out / "points3D.ply").is_file()
    # a second prepare into the same OUT refuses without --overwrite, naming it
    assert main(["prepare", str(scan), str(out), "--no-progress"]) != 0
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "romi_real_plant").is_dir(), reason="shared/data/romi_real_plant absent")
def test_real_scan_cameras():
    """The real scan's 60 calibrated cameras: a ring of 300 mm radius, OPENCV with a small k1."""
    views, meta = read_romi_scan(SHARED / "romi_real_plant")
    assert len(views) == 60 and views[0].model == "OPENCV"
    from s3dgs.scene.romi import _ring_radius

    centres = np.stack([-v.R.T @ v.t for v in views])
    assert _ring_radius(centres) == pytest.approx(300.0, rel=0.02)


@pytest.mark.slow
def test_run_chain_on_a_tiny_scan_measures_organs_from_geometry(tmp_path):
    """`s3dgs run SCAN OUT` on a ROMI-layout scan: known poses (no SfM), training, eval, export, the
    geometry phenotypes (no classes) in metres (the scan is in millimetres), the report."""
    from s3dgs import pipeline as P

    scan = tmp_path / "scan"
    make_scan(scan, n=8, size=(96, 72), bars=6)
    tc = P.TrainConfig(progress=False, num_iterations=150)
    tc.sh_degree = 0
    tc.densify.reset_every = 10_000  # no opacity reset in so short a run: the plant turns opaque
    cfg = P.RunConfig(input=scan, out=tmp_path / "out", depth_backend="none", stages=P.StageOptions(train=tc))
    res = P.run_pipeline(cfg, say=lambda m: None)
    run = Path(res["run"])
    prep = json.loads((tmp_path / "out" / "scene" / "prepare.json").read_text())
    assert prep["source"] == "romi scan" and prep["frames_used"] == 8
    ph = json.loads((run / "phenotypes.json").read_text())
    assert ph["method"] == "geometry" and ph["units"] == "m"
    # the carved stem is 60 mm tall (plus the fruit ball): the geometry sees a plant of that order
    assert 0.03 < ph["plant"]["plant_height"] < 0.12
    assert (run / "report.html").is_file()
