"""Scene reading: COLMAP round trips, the seed API, optional inputs, and clear errors on bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s3dgs.dataset import TomatoDataset, create_dataloader
from s3dgs.depth.io import save_depth_png, write_meta
from s3dgs.scene.colmap import SceneError, read_model, write_model
from s3dgs.scene.dataset import SceneDataset, split_indices

W, H = 40, 30


def _look_at(center, target=(0, 0, 0)):
    z = np.asarray(target, float) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, -1, 0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    vm = np.eye(4)
    vm[:3, :3] = R
    vm[:3, 3] = -R @ center
    return vm


def make_scene(root: Path, n=10, binary=True, heatmaps=True, depth=True, conf=True) -> Path:
    rng = np.random.default_rng(0)
    names = [f"frame_{i:03d}.png" for i in range(n)]
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    vms = np.stack([_look_at(np.array([3 * np.cos(a), -0.5, 3 * np.sin(a)])) for a in angles])
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    pts = rng.normal(size=(30, 3))
    write_model(root / "sparse" / "0", names, K, vms, W, H, pts, rng.integers(0, 255, (30, 3)),
                binary=binary)
    (root / "images").mkdir(parents=True)
    (root / "heatmaps").mkdir()
    confidence = {}
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / name)
        stem = Path(name).stem
        if heatmaps:
            np.save(root / "heatmaps" / f"{stem}.npy", rng.random((H, W, 4)).astype(np.float16))
        if depth:
            save_depth_png(root / "depths" / f"{stem}.png", rng.random((H, W)))
        confidence[stem] = {"U": 0.9, "N": 0.8, "D": 0.4, "P": 0.7}
    if depth:
        write_meta(root / "depths", {"kind": "disparity", "backend": "test"})
    if conf:
        (root / "confidence.json").write_text(json.dumps(confidence))
    return root


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_round_trip(tmp_path, binary):
    rng = np.random.default_rng(1)
    names = ["b.png", "a.png", "c.png"]
    vms = np.stack([_look_at(np.array([2.0, -1.0, 3.0 + i])) for i in range(3)])
    Ks = np.stack([np.array([[60.0 + i, 0, 20], [0, 61.0, 15], [0, 0, 1]]) for i in range(3)])
    pts = rng.normal(size=(25, 3))
    cols = rng.integers(0, 255, (25, 3)).astype(np.uint8)
    write_model(tmp_path / "m", names, Ks, vms, W, H, pts, cols, binary=binary)
    ext = "bin" if binary else "txt"
    assert (tmp_path / "m" / f"cameras.{ext}").exists()
    m = read_model(tmp_path / "m")
    assert [v.name for v in m.views] == ["a.png", "b.png", "c.png"]  # sorted by name
    order = [1, 0, 2]
    np.testing.assert_allclose(np.stack([v.viewmat for v in m.views]), vms[order], atol=1e-12)
    np.testing.assert_allclose(np.stack([v.K for v in m.views]), Ks[order], atol=1e-12)
    np.testing.assert_allclose(m.xyz, pts, atol=1e-12)
    np.testing.assert_array_equal(m.rgb, cols)
    assert all(v.model == "PINHOLE" and (v.width, v.height) == (W, H) for v in m.views)


def test_distorted_model_refused_with_undistort_hint(tmp_path):
    import pycolmap

    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="OPENCV", width=W, height=H,
                          params=[50, 50, 20, 15, 0.1, 0.01, 0, 0], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d(np.eye(4)[:3]))
    (tmp_path / "m").mkdir()
    rec.write_binary(str(tmp_path / "m"))
    with pytest.raises(SceneError, match="s3dgs undistort SCENE OUT"):
        read_model(tmp_path / "m")


def test_scene_dataset_items_and_split(tmp_path):
    scene = make_scene(tmp_path / "s", n=10)
    ds = SceneDataset.from_dir(scene)
    assert len(ds) == 10 and ds.cache_mode == "memory"
    it = ds[0]
    assert it["image"].shape == (H, W, 3) and it["image"].dtype == torch.float32
    assert 0.0 <= it["image"].min() and it["image"].max() <= 1.0
    assert it["heatmap"].shape == (H, W, 4) and it["has_heatmap"]
    assert it["depth"].shape == (H, W) and it["depth_kind"] == "disparity"
    np.testing.assert_allclose(it["confidence"].numpy(), [0.9, 0.8, 0.4, 0.7])
    assert it["viewmat"].shape == (4, 4) and it["K"].shape == (3, 3)
    # Stored compactly: uint8 frames, float16 heatmaps/depth.
    assert ds._cache[0]["image"].dtype == np.uint8 and ds._cache[0]["heatmap"].dtype == np.float16
    # Every 8th frame (sorted by name) is held out: frames 0 and 8.
    test = SceneDataset.from_dir(scene, split="test")
    train = SceneDataset.from_dir(scene, split="train")
    assert [f.name for f in test.frames] == ["frame_000.png", "frame_008.png"]
    assert len(train) == 8 and not {f.name for f in train.frames} & {f.name for f in test.frames}
    assert split_indices(["c", "a", "b"], test_every=0) == ([1, 2, 0], [])


def test_resolution_scale_is_consistent(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    full = SceneDataset.from_dir(scene)
    half = SceneDataset.from_dir(scene, resolution_scale=0.5)
    a, b = full[1], half[1]
    assert b["image"].shape == (H // 2, W // 2, 3)
    assert b["heatmap"].shape == (H // 2, W // 2, 4) and b["depth"].shape == (H // 2, W // 2)
    np.testing.assert_allclose(b["K"][:2].numpy(), a["K"][:2].numpy() * 0.5, rtol=1e-6)
    # A world point projects to the same relative image position at both scales.
    X = torch.tensor([0.1, 0.2, 0.05, 1.0])
    def proj(it):
        x = it["K"] @ (it["viewmat"] @ X)[:3]
        return (x[:2] / x[2]) / torch.tensor([it["width"], it["height"]])
    torch.testing.assert_close(proj(a), proj(b), atol=1e-5, rtol=0)


def test_seed_api_create_dataloader(tmp_path):
    scene = make_scene(tmp_path / "s", n=9)
    dl = create_dataloader(colmap_dir=scene / "sparse" / "0", images_dir=scene / "images",
                           heatmap_dir=scene / "heatmaps", confidence_path=scene / "confidence.json",
                           depth_dir=scene / "depths", batch_size=2, shuffle=False)
    assert isinstance(dl.dataset, TomatoDataset) and len(dl.dataset) == 7  # frame_000 and frame_008 held out
    batch = next(iter(dl))
    assert batch["image"].shape == (2, H, W, 3) and batch["depth"].shape == (2, H, W)
    assert batch["heatmap"].shape == (2, H, W, 4) and batch["has_depth"].all()
    # Depth stays optional.
    dl2 = create_dataloader(scene / "sparse" / "0", scene / "images", None, None, batch_size=1)
    b2 = next(iter(dl2))
    assert "depth" not in b2 and not b2["has_heatmap"].any() and (b2["confidence"] == 0).all()


def test_optional_inputs_missing_per_frame(tmp_path, caplog):
    scene = make_scene(tmp_path / "s", n=4)
    (scene / "heatmaps" / "frame_001.npy").unlink()
    (scene / "depths" / "frame_002.png").unlink()
    conf = json.loads((scene / "confidence.json").read_text())
    del conf["frame_003"]
    (scene / "confidence.json").write_text(json.dumps(conf))
    with caplog.at_level("INFO", logger="s3dgs"):
        ds = SceneDataset.from_dir(scene)
    assert "heatmaps 3/4" in caplog.text and "depth 3/4" in caplog.text and "confidence 3/4" in caplog.text
    assert not ds[1]["has_heatmap"] and float(ds[1]["heatmap"].abs().sum()) == 0
    assert "depth" not in ds[2] and "depth" in ds[1]
    assert float(ds[3]["confidence"].abs().sum()) == 0


def test_fern_loads_through_both_apis(fern_dir):
    ds = SceneDataset.from_dir(fern_dir, resolution_scale=0.5)
    assert len(ds) == 20
    it = ds[0]
    assert it["image"].shape == (372, 496, 3) and it["name"] == "IMG_4026.jpg"
    assert abs(float(it["K"][0, 0]) - 815.13158322 / 2) < 1e-3
    dl = create_dataloader(fern_dir / "sparse" / "0", fern_dir / "images", None, None,
                           resolution_scale=0.25, shuffle=False)
    assert len(dl.dataset) == 17
    b = next(iter(dl))
    assert b["image"].shape == (1, 186, 248, 3)
    # The SfM points project in front of the cameras.
    m = read_model(fern_dir)
    Xc = (b["viewmat"][0, :3, :3].double() @ torch.from_numpy(m.xyz).T).T + b["viewmat"][0, :3, 3].double()
    assert (Xc[:, 2] > 0).float().mean() > 0.95


# -- bad inputs: one clear error naming the file ---------------------------------------------------

def test_missing_image(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    (scene / "images" / "frame_001.png").unlink()
    with pytest.raises(SceneError, match=r"frame_001\.png.*missing on disk"):
        SceneDataset.from_dir(scene)


def test_heatmap_wrong_size_or_channels(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    np.save(scene / "heatmaps" / "frame_001.npy", np.zeros((H, W, 3), np.float32))
    with pytest.raises(SceneError, match=r"frame_001\.npy.*shape"):
        SceneDataset.from_dir(scene)
    np.save(scene / "heatmaps" / "frame_001.npy", np.zeros((H + 2, W, 4), np.float32))
    with pytest.raises(SceneError, match=r"frame_001\.npy.*is 40x32"):
        SceneDataset.from_dir(scene)


def test_nan_in_heatmap_and_depth(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    hm = np.zeros((H, W, 4), np.float32)
    hm[3, 3, 1] = np.nan
    np.save(scene / "heatmaps" / "frame_002.npy", hm)
    with pytest.raises(SceneError, match=r"frame_002\.npy.*NaN"):
        SceneDataset.from_dir(scene)
    scene2 = make_scene(tmp_path / "s2", n=3)
    # A 16-bit PNG cannot hold NaN; for depth maps the realistic failure is an unreadable file.
    (scene2 / "depths" / "frame_001.png").write_bytes(b"not a png")
    with pytest.raises(SceneError, match=r"frame_001\.png.*unreadable"):
        SceneDataset.from_dir(scene2)


def test_malformed_confidence(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    (scene / "confidence.json").write_text("{not json")
    with pytest.raises(SceneError, match=r"confidence\.json.*malformed JSON"):
        SceneDataset.from_dir(scene)
    (scene / "confidence.json").write_text(json.dumps({"frame_000": {"U": "high"}}))
    with pytest.raises(SceneError, match="non-numeric"):
        SceneDataset.from_dir(scene)


def test_empty_model(tmp_path):
    scene = make_scene(tmp_path / "s", n=2)
    write_model(scene / "sparse" / "0", [], np.eye(3), np.zeros((0, 4, 4)), W, H)
    with pytest.raises(SceneError, match="no registered images"):
        SceneDataset.from_dir(scene)


def test_missing_model_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SceneError, match="no COLMAP model found"):
        SceneDataset.from_dir(tmp_path)


def test_depth_of_other_size_resized_with_one_warning(tmp_path):
    scene = make_scene(tmp_path / "s", n=3)
    for i in range(3):
        save_depth_png(scene / "depths" / f"frame_{i:03d}.png", np.random.rand(H * 2, W * 2))  # same aspect
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = SceneDataset.from_dir(scene)
        _ = [ds[i] for i in range(3)]
    msgs = [str(w.message) for w in rec if "depth map is" in str(w.message)]
    assert len(msgs) == 1 and "frame_000.png" in msgs[0]
    assert ds[0]["depth"].shape == (H, W)
