"""Point-cloud PLY files (x, y, z, red, green, blue) through plyfile: scene/points3D.ply, and the
training's initial points (`initial_points`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s3dgs.atomic import atomic_write
from s3dgs.scene.colmap import SceneError


def write_points_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write points `xyz [P, 3]` with colours `rgb [P, 3]` uint8 (grey when None), binary PLY,
    atomically (s3dgs.atomic)."""
    from plyfile import PlyData, PlyElement

    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb, np.uint8).reshape(-1, 3)
    vert = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vert["x"], vert["y"], vert["z"] = xyz.T
    vert["red"], vert["green"], vert["blue"] = rgb.T
    atomic_write(path, lambda tmp: PlyData([PlyElement.describe(vert, "vertex")]).write(tmp))


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a point-cloud PLY: returns (xyz [P, 3] float64, rgb [P, 3] uint8; grey when absent).

    A missing, truncated or garbled file, one without x/y/z, or one holding NaN or inf coordinates
    raises SceneError naming the file and what to do."""
    from plyfile import PlyData

    path = Path(path)
    fix = "pass another --pcd-path, or delete it to start from the COLMAP model's points"
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    except FileNotFoundError:
        raise SceneError(f"{path}: point cloud not found; {fix}") from None
    except KeyError as exc:
        raise SceneError(f"{path}: PLY without a vertex element with x, y, z ({exc}); {fix}") from None
    except Exception as exc:  # plyfile: PlyHeaderParseError, PlyElementParseError (truncated), ...
        raise SceneError(f"{path}: unreadable PLY, truncated or damaged ({exc}); {fix}") from exc
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise SceneError(f"{path}: {int(bad.sum())} of {len(xyz)} points have NaN or infinite coordinates "
                         f"(first at vertex {int(np.argmax(bad))}); remove them, or {fix}")
    names = v.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


def initial_points(pcd_path: str | Path | None, model_xyz: np.ndarray | None, model_rgb: np.ndarray | None,
                   max_points: int, seed: int = 0, *, model_name: str = "the COLMAP model"
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """The points training starts from, and one line saying where they came from.

    Args:
        pcd_path: a point-cloud PLY (scene/points3D.ply), or None to use the model's points.
        model_xyz, model_rgb: the COLMAP model's points [P, 3] float and [P, 3] uint8 (or None).
        max_points: at most this many points are kept (a random subset with `seed`); <= 0 keeps all.
        model_name: how the note and errors name the model (e.g. its folder).

    Returns:
        (xyz [N, 3] float64, rgb [N, 3] uint8, note). The PLY is used when given and not empty; a PLY
        with 0 vertices falls back to the model's points (the note says so). N may be 0 when neither
        has points: the caller decides what to do then (the trainer adds random points).

    Raises:
        SceneError: the PLY is missing, truncated, garbled or holds NaN/inf (naming it); the
            model's points hold NaN/inf.
    """
    mxyz = np.zeros((0, 3)) if model_xyz is None else np.asarray(model_xyz, np.float64).reshape(-1, 3)
    mrgb = (np.full((len(mxyz), 3), 128, np.uint8) if model_rgb is None
            else np.asarray(model_rgb, np.uint8).reshape(-1, 3))
    if pcd_path is not None:
        xyz, rgb = read_points_ply(pcd_path)
        src = str(pcd_path)
        if len(xyz) == 0 and len(mxyz):
            xyz, rgb = mxyz, mrgb
            src = f"{model_name} ({pcd_path} has 0 vertices, so the model's points are used)"
    else:
        xyz, rgb, src = mxyz, mrgb, model_name
    if xyz is mxyz and len(mxyz):
        bad = ~np.isfinite(mxyz).all(axis=1)
        if bad.any():
            raise SceneError(f"{model_name}: {int(bad.sum())} of {len(mxyz)} 3D points have NaN or infinite "
                             "coordinates; re-run structure from motion or pass a clean --pcd-path")
    n_all = len(xyz)
    if n_all >= 2:
        extent = float(np.ptp(np.asarray(xyz, np.float64), axis=0).max())
        if not extent > 1e-9 * (1.0 + float(np.abs(xyz).max())):
            where = ", ".join(f"{v:.6g}" for v in np.asarray(xyz[0], np.float64))
            raise SceneError(f"{src}: all {n_all} points lie at one spot ({where}): the point cloud has "
                             "collapsed, and Gaussians started there cannot cover the scene. Re-run structure "
                             "from motion, or pass another --pcd-path")
    if max_points > 0 and n_all > max_points:
        sel = np.random.default_rng(seed).choice(n_all, max_points, replace=False)  # as the trainer did
        xyz, rgb = xyz[sel], rgb[sel]
        note = f"{max_points} initial points (a random subset of {n_all}) from {src}"
    else:
        note = f"{n_all} initial points from {src}"
    return xyz, rgb, note
