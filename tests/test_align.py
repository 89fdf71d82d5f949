"""Aligning a structure-from-motion scene to a reference with true poses."""

import json

import numpy as np
import pytest

from s3dgs.scene.align import align_to_reference
from s3dgs.scene.colmap import SceneError, read_model, write_model
from s3dgs.scene.ply import read_points_ply, write_points_ply


def _look_at(c):
    z = -c / np.linalg.norm(c)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    vm = np.eye(4)
    vm[:3, :3] = np.stack([x, y, z])
    vm[:3, 3] = -vm[:3, :3] @ c
    return vm


def test_align_recovers_known_similarity(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"v{i}.png" for i in range(8)]
    centres = [np.array([2 * np.cos(a), 2 * np.sin(a), 0.5 + 0.1 * i]) for i, a in
               enumerate(np.linspace(0, 6, 8))]
    vms = np.stack([_look_at(c) for c in centres])
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    pts = rng.normal(size=(40, 3)) * 0.3
    write_model(tmp_path / "ref" / "sparse" / "0", names, K, vms, 100, 80, pts)
    # The "SfM" scene: the same cameras and points in another frame (scale 3, rotated, shifted).
    s, t = 3.0, np.array([1.0, -2.0, 5.0])
    a = 0.7
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    new_vms = []
    for vm in vms:  # X_new = s R X + t  =>  viewmat_new = viewmat * inv(sim), translation scaled
        Rc, tc = vm[:3, :3], vm[:3, 3]
        v = np.eye(4)
        v[:3, :3] = Rc @ R.T
        v[:3, 3] = s * tc - Rc @ R.T @ t
        new_vms.append(v)
    pts_new = s * pts @ R.T + t
    write_model(tmp_path / "sfm" / "sparse" / "0", names, K, np.stack(new_vms), 100, 80, pts_new)
    write_points_ply(tmp_path / "sfm" / "points3D.ply", pts_new)
    res = align_to_reference(tmp_path / "sfm", tmp_path / "ref")
    assert res["matched_cameras"] == 8 and abs(res["scale"] - 1 / s) < 1e-6
    assert res["centre_error_max"] < 1e-6
    m = read_model(tmp_path / "sfm")
    np.testing.assert_allclose(np.stack([v.viewmat for v in m.views]), vms, atol=1e-6)
    np.testing.assert_allclose(m.xyz, pts, atol=1e-6)
    xyz, _ = read_points_ply(tmp_path / "sfm" / "points3D.ply")
    np.testing.assert_allclose(xyz, pts, atol=1e-5)
    assert json.loads((tmp_path / "sfm" / "alignment.json").read_text())["matched_cameras"] == 8


def test_align_needs_shared_images(tmp_path):
    K = np.eye(3)
    vms = np.stack([_look_at(np.array([1.0, 0, 0]) * (i + 1)) for i in range(3)])
    write_model(tmp_path / "a" / "sparse" / "0", ["a0", "a1", "a2"], K, vms, 10, 10)
    write_model(tmp_path / "b" / "sparse" / "0", ["b0", "b1", "b2"], K, vms, 10, 10)
    with pytest.raises(SceneError, match="only 0 of its images"):
        align_to_reference(tmp_path / "a", tmp_path / "b")
