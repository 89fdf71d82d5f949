"""`s3dgs prepare` and `s3dgs undistort`: structure from motion on rendered frames and a video made
from them, undistortion checked by reprojection, and the bad inputs' messages.

The frames come from a small textured scene (a box on a ground plane) ray-cast with numpy from known
poses, so the recovered cameras can be compared with the true ones after a similarity alignment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from s3dgs.scene.colmap import SceneError, read_model
from s3dgs.scene.frames import write_video

pycolmap = pytest.importorskip("pycolmap")

W, H = 256, 192


# ---------------------------------------------------------------------------------------------
# a small textured scene, rendered from known poses


def _texture(rng, size=256):
    tex = np.zeros((size, size, 3))
    for s in (4, 16, 64):
        tex += zoom(rng.random((s, s, 3)), (size / s, size / s, 1), order=1)[:size, :size] / 3
    yy, xx = np.mgrid[:size, :size]
    for _ in range(60):
        cx, cy, r = rng.random() * size, rng.random() * size, 2 + rng.random() * 10
        tex[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3)
    return np.clip(tex, 0, 1)


def _rects(rng):
    """Ground plane and a box, as (origin, u, v, texture): points origin + a u + b v, a, b in [0, 1]."""
    s, h = 0.6, 1.2
    quads = [
        ([-3, -3, 0], [6, 0, 0], [0, 6, 0]),
        ([-s, -s, 0], [2 * s, 0, 0], [0, 0, h]),
        ([-s, -s, 0], [0, 2 * s, 0], [0, 0, h]),
        ([s, -s, 0], [0, 2 * s, 0], [0, 0, h]),
        ([-s, s, 0], [2 * s, 0, 0], [0, 0, h]),
        ([-s, -s, h], [2 * s, 0, 0], [0, 2 * s, 0]),
    ]
    return [tuple(np.array(q, float) for q in quad) + (_texture(rng),) for quad in quads]


def _look_at(c, target):
    z = target - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    V = np.eye(4)
    V[:3, :3], V[:3, 3] = R, -R @ c
    return V


def _render(rects, K, V, ss=2):
    ys, xs = np.mgrid[: H * ss, : W * ss]
    px, py = (xs + 0.5) / ss, (ys + 0.5) / ss
    d = np.stack([(px - K[0, 2]) / K[0, 0], (py - K[1, 2]) / K[1, 1], np.ones_like(px)], -1) @ V[:3, :3]
    c = -V[:3, :3].T @ V[:3, 3]
    best = np.full(px.shape, np.inf)
    img = np.full(px.shape + (3,), 0.5)
    for o, u, v, tex in rects:
        n = np.cross(u, v)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((o - c) @ n) / (d @ n)
        p = c + t[..., None] * d - o
        a, b = p @ u / (u @ u), p @ v / (v @ v)
        hit = (t > 1e-6) & (t < best) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        coords = [b[hit] * (tex.shape[0] - 1), a[hit] * (tex.shape[1] - 1)]
        img[hit] = np.stack([map_coordinates(tex[..., k], coords, order=1) for k in range(3)], -1)
        best[hit] = t[hit]
    return (img.reshape(H, ss, W, ss, 3).mean((1, 3)) * 255 + 0.5).astype(np.uint8)


def render_scene(out: Path, n: int, seed: int = 0, arc: float = 0.75, name="frame_{:04d}.png"):
    """Render `n` frames on an orbit arc into `out`; returns {name: true camera centre [3]}."""
    rng = np.random.default_rng(seed)
    rects = _rects(rng)
    K = np.array([[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1.0]])
    out.mkdir(parents=True, exist_ok=True)
    centres = {}
    for i in range(n):
        a = 2 * np.pi * arc * i / n
        c = np.array([3.5 * np.cos(a), 3.5 * np.sin(a), 1.8 + 0.2 * np.sin(3 * a)])
        Image.fromarray(_render(rects, K, _look_at(c, np.array([0, 0, 0.5])))).save(out / name.format(i))
        centres[name.format(i)] = c
    return centres


def centre_error(scene: Path, true_centres: dict[str, np.ndarray]) -> tuple[float, float, int]:
    """Camera-centre errors after a similarity alignment (pycolmap.estimate_sim3d), relative to the
    spread of the true centres: (largest, median, number of frames compared)."""
    model = read_model(scene)
    names = [v.name for v in model.views if v.name in true_centres]
    src = np.array([model.view_by_name(n).camera_center for n in names])
    tgt = np.array([true_centres[n] for n in names])
    sim = pycolmap.estimate_sim3d(src, tgt)
    assert sim is not None
    aligned = src @ (sim.scale * sim.rotation.matrix()).T + sim.translation
    spread = np.linalg.norm(tgt - tgt.mean(0), axis=1).max()
    err = np.linalg.norm(aligned - tgt, axis=1) / spread
    return float(err.max()), float(np.median(err)), len(names)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    return d, render_scene(d, 16)


# ---------------------------------------------------------------------------------------------
# prepare


def test_prepare_folder_recovers_true_cameras(frames, tmp_path):
    from s3dgs.scene.prepare import prepare_scene

    src, centres = frames
    out = tmp_path / "scene"
    summary = prepare_scene(src, out, progress=False)
    assert summary.matcher == "exhaustive"
    assert summary.registered >= 15 and summary.frames_used == 16
    assert summary.mean_reprojection_error < 1.0
    assert summary.points > 500
    model = read_model(out)  # PINHOLE, readable
    assert all(v.model in ("PINHOLE", "SIMPLE_PINHOLE") for v in model.views)
    assert sorted(p.name for p in (out / "images").iterdir()) == [v.name for v in model.views]
    assert (out / "points3D.ply").exists()
    assert json.loads((out / "prepare.json").read_text())["registered"] == summary.registered
    err, med, n = centre_error(out, centres)
    assert n == summary.registered
    assert err < 0.01 and med < 0.005, (err, med)

    # an existing scene is kept unless --overwrite
    from s3dgs.scene.prepare import PrepareError

    with pytest.raises(PrepareError, match="--overwrite"):
        prepare_scene(src, out, progress=False)


def test_prepare_video_sequential_drops_blurred(frames, tmp_path):
    from s3dgs.scene.prepare import prepare_scene

    src, centres = frames
    names = sorted(centres)
    video = tmp_path / "orbit.mp4"
    # each frame followed by a blurred copy: at 8 fps, every 1/4 s window holds one of each
    sharp = [np.asarray(Image.open(src / n)) for n in names]
    blurry = [gaussian_filter(img, (2, 2, 0)) for img in sharp]
    write_video(video, [x for pair in zip(sharp, blurry) for x in pair], fps=8)

    out = tmp_path / "scene"
    summary = prepare_scene(video, out, fps=4, candidates=2, matcher="sequential", progress=False)
    assert summary.source == "video" and summary.matcher == "sequential"
    assert summary.frames_used == 16
    assert summary.registered >= 14
    # the sharp copy of each pair was kept
    for w in range(16):
        kept = np.asarray(Image.open(out / "colmap" / "frames" / f"frame_{w:05d}.jpg"), np.float32)
        assert np.abs(kept - sharp[w]).mean() < np.abs(kept - blurry[w]).mean()
    video_centres = {f"frame_{i:05d}.jpg": centres[n] for i, n in enumerate(names)}
    err, med, n = centre_error(out, video_centres)
    assert n == summary.registered
    assert err < 0.02 and med < 0.01, (err, med)


def test_prepare_disconnected_and_too_few_registered(tmp_path):
    from s3dgs.scene.prepare import TooFewRegisteredError, prepare_scene

    # two differently textured scenes (two models that cannot be joined) and frames matching nothing
    src = tmp_path / "mixed"
    render_scene(src, 8, seed=0, arc=0.4, name="a_{:04d}.png")
    render_scene(src, 6, seed=5, arc=0.3, name="b_{:04d}.png")
    rng = np.random.default_rng(1)
    for i in range(3):
        noise = gaussian_filter(rng.random((H, W, 3)), (1, 1, 0))
        Image.fromarray((noise * 255).astype(np.uint8)).save(src / f"c_{i:04d}.png")
    out = tmp_path / "scene"
    with pytest.raises(TooFewRegisteredError, match="best model was kept") as info:
        prepare_scene(src, out, min_registered=0.6, blur_threshold=0, progress=False)
    summary = info.value.summary
    assert summary.models == [8, 6]
    assert summary.registered == 8 and summary.frames_used == 17
    assert any("2 disconnected models" in w for w in summary.warnings)
    assert all(not n.startswith("a_") for n in summary.unregistered)
    model = read_model(out)  # the best model is kept as a scene
    assert [v.name for v in model.views] == [f"a_{i:04d}.png" for i in range(8)]


def test_prepare_bad_inputs(tmp_path, capsys):
    from s3dgs.cli import main
    from s3dgs.errors import UsageError
    from s3dgs.scene.prepare import PrepareError, prepare_scene

    with pytest.raises(PrepareError, match="no such file or folder"):
        prepare_scene(tmp_path / "missing.mp4", tmp_path / "o1", progress=False)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(PrepareError, match="could not be read as a video"):
        prepare_scene(bad, tmp_path / "o2", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    with pytest.raises(PrepareError, match="no images found"):
        prepare_scene(empty, tmp_path / "o3", progress=False)
    bad_png = tmp_path / "badpng"
    bad_png.mkdir()
    (bad_png / "0001.png").write_bytes(b"not a png")
    with pytest.raises(PrepareError, match="0001.png: unreadable image"):
        prepare_scene(bad_png, tmp_path / "o4", progress=False)
    with pytest.raises(UsageError, match="not a COLMAP camera model"):
        prepare_scene(empty, tmp_path / "o5", camera_model="NOPE", progress=False)
    # through the command line: a message and exit status 1, no traceback
    assert main(["prepare", str(bad), str(tmp_path / "o6"), "--no-progress"]) == 1
    assert "could not be read as a video" in capsys.readouterr().err


def test_sharpest_per_window_and_blur():
    from s3dgs.scene.frames import blurred, sharpest_per_window, sharpness

    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    soft = gaussian_filter(img, (2, 2, 0))
    assert sharpness(img) > 5 * sharpness(soft)
    times = np.arange(8) / 8.0  # 8 fps, keep 2 fps -> windows of 4 frames
    scores = np.array([1, 5, 2, 0, 3, 1, 9, 2], float)
    assert sharpest_per_window(times, scores, 2.0) == [1, 6]
    assert blurred({"a": 10, "b": 11, "c": 1, "d": 9}, 0.3) == ["c"]
    assert blurred({"a": 10, "b": 11, "c": 1}, 0) == []


# ---------------------------------------------------------------------------------------------
# prepare on the synthetic plant (the frames `make demo` sends through prepare)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """A small synthetic plant: 24 views of 320x240 on one ring (about 10 s to render)."""
    synth = pytest.importorskip("s3dgs.scene.synth")
    root = tmp_path_factory.mktemp("plant") / "synth"
    synth.make_synthetic_scene(synth.SynthConfig(out=root, preset="tiny", views=24, width=320,
                                                 height=240, rings=1))
    true = read_model(root)  # the true poses
    return root, {v.name: v.camera_center for v in true.views}


def test_prepare_synthetic_plant_frames(plant, tmp_path):
    from s3dgs.scene.prepare import prepare_scene

    root, centres = plant
    summary = prepare_scene(root, tmp_path / "scene", progress=False)  # a scene folder: uses root/images
    assert summary.frames_used == 24 and summary.matcher == "exhaustive"
    assert summary.registered >= 22, summary.text()
    err, med, n = centre_error(tmp_path / "scene", centres)
    assert n == summary.registered
    assert err < 0.04 and med < 0.015, (err, med)


def test_prepare_synthetic_plant_video(plant, tmp_path):
    from s3dgs.scene.prepare import prepare_scene

    root, centres = plant
    names = sorted(centres)
    video = tmp_path / "plant.mp4"
    write_video(video, [np.asarray(Image.open(root / "images" / n).convert("RGB")) for n in names], fps=8)
    summary = prepare_scene(video, tmp_path / "scene", fps=8, candidates=1, progress=False)
    assert summary.source == "video" and summary.matcher == "exhaustive"  # a small set
    assert summary.frames_used == 24
    assert summary.registered >= 22, summary.text()
    err, med, n = centre_error(tmp_path / "scene", {f"frame_{i:05d}.jpg": centres[m]
                                                    for i, m in enumerate(names)})
    assert n == summary.registered
    assert err < 0.05 and med < 0.02, (err, med)


# ---------------------------------------------------------------------------------------------
# undistort


def _distorted_scene(root: Path, model_name: str, params: list[float]):
    """A scene with a distorted camera: 3 views of 3D points drawn as small Gaussian dots at their
    distorted projections. Returns the 3D points [P, 3]."""
    rng = np.random.default_rng(3)
    w, h = 240, 180
    cam = pycolmap.Camera(model=model_name, width=w, height=h, params=params, camera_id=1)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(cam)
    # points on a grid in front of the cameras (spread over the image, dots far apart)
    gx, gy = np.meshgrid(np.linspace(-0.9, 0.9, 7), np.linspace(-0.65, 0.65, 5))
    xyz = np.stack([gx.ravel(), gy.ravel(), 3.0 + 0.3 * rng.random(gx.size)], 1)
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[:h, :w] + 0.5  # pixel centres at +0.5
    obs = []
    for i in range(3):
        angle = (i - 1) * 0.05
        R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        t = np.array([0.1 * (i - 1), 0.02 * i, 0.0])
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)
        uv = cam.img_from_cam((xyz @ R.T) + t)
        img = np.zeros((h, w), np.float64)
        for u, v in uv:
            img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.2**2))
        Image.fromarray((np.clip(img, 0, 1) * 250).astype(np.uint8)).convert("RGB").save(
            root / "images" / f"view_{i}.png")
        im = pycolmap.Image(name=f"view_{i}.png", keypoints=uv, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pose)
        obs.append(uv)
    for j, p in enumerate(xyz):
        track = pycolmap.Track([pycolmap.TrackElement(i + 1, j) for i in range(3)])
        rec.add_point3D(p, track, np.array([200, 100, 50], np.uint8))
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(root / "sparse" / "0"))
    return xyz


def _dot_centroid(img: np.ndarray, u: float, v: float, r: int = 4) -> np.ndarray:
    """Intensity-weighted centre of the dot near (u, v), in pixel coordinates (centres at +0.5)."""
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    ys, xs = np.mgrid[y0 - r: y0 + r + 1, x0 - r: x0 + r + 1]
    wgt = img[ys, xs].astype(np.float64)
    wgt = np.clip(wgt - 10, 0, None)
    return np.array([(wgt * (xs + 0.5)).sum() / wgt.sum(), (wgt * (ys + 0.5)).sum() / wgt.sum()])


@pytest.mark.parametrize("model_name,params", [
    ("OPENCV", [200.0, 205.0, 121.0, 88.0, -0.25, 0.08, 0.002, -0.001]),
    ("SIMPLE_RADIAL", [200.0, 120.0, 90.0, 0.15]),
])
def test_undistort_reprojects_points(tmp_path, model_name, params):
    from s3dgs.cli import main

    src, out = tmp_path / "distorted", tmp_path / "pinhole"
    xyz = _distorted_scene(src, model_name, params)
    with pytest.raises(SceneError, match="s3dgs undistort SCENE OUT"):
        read_model(src)
    assert main(["undistort", str(src), str(out)]) == 0

    model = read_model(out)  # PINHOLE now
    assert [v.name for v in model.views] == ["view_0.png", "view_1.png", "view_2.png"]
    assert model.views[0].model == "PINHOLE" and len(model.xyz) == len(xyz)
    assert (out / "points3D.ply").exists()
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    checked = 0
    for v in model.views:
        img = np.asarray(Image.open(out / "images" / v.name).convert("L"))
        assert img.shape == (v.height, v.width)
        cam_pts = xyz @ v.viewmat[:3, :3].T + v.viewmat[:3, 3]
        uv = (cam_pts @ v.K.T)[:, :2] / cam_pts[:, 2:3]
        # the model's 2D observations are the undistorted positions of the points
        im = rec.images[v.image_id]
        kp = np.array([p.xy for p in im.points2D])
        np.testing.assert_allclose(kp, uv, atol=1e-3)
        # and the dots in the undistorted image are where the PINHOLE model projects the points
        for u, vv in uv:
            if 6 <= u <= v.width - 6 and 6 <= vv <= v.height - 6:
                c = _dot_centroid(img, u, vv)
                assert np.hypot(c[0] - u, c[1] - vv) < 0.2, (v.name, u, vv, c)
                checked += 1
    assert checked >= 60


def test_undistort_bad_inputs(tmp_path):
    from s3dgs.scene.prepare import undistort_scene

    src = tmp_path / "distorted"
    _distorted_scene(src, "SIMPLE_RADIAL", [200.0, 120.0, 90.0, 0.1])
    with pytest.raises(SceneError, match="not the input itself"):
        undistort_scene(src, src, progress=False)
    with pytest.raises(SceneError, match="no COLMAP model found"):
        undistort_scene(tmp_path / "distorted" / "images", tmp_path / "o1", progress=False)
    (src / "images" / "view_1.png").unlink()
    with pytest.raises(SceneError, match="missing, e.g. view_1.png"):
        undistort_scene(src, tmp_path / "o2", progress=False)
    out = tmp_path / "o3"
    (out / "sparse").mkdir(parents=True)
    with pytest.raises(SceneError, match="--overwrite"):
        undistort_scene(src, out, progress=False)
