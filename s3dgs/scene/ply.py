"""Point-cloud PLY files (x, y, z, red, green, blue) through plyfile: scene/points3D.ply."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s3dgs.scene.colmap import SceneError


def write_points_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write points `xyz [P, 3]` with colours `rgb [P, 3]` uint8 (grey when None), binary PLY."""
    from plyfile import PlyData, PlyElement

    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb, np.uint8).reshape(-1, 3)
    vert = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vert["x"], vert["y"], vert["z"] = xyz.T
    vert["red"], vert["green"], vert["blue"] = rgb.T
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vert, "vertex")]).write(str(path))


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a point-cloud PLY: returns (xyz [P, 3] float64, rgb [P, 3] uint8; grey when absent)."""
    from plyfile import PlyData

    path = Path(path)
    try:
        v = PlyData.read(str(path))["vertex"]
    except FileNotFoundError:
        raise SceneError(f"{path}: point cloud not found") from None
    except Exception as exc:
        raise SceneError(f"{path}: unreadable PLY ({exc}); pass another --pcd-path or delete it to "
                         "use the COLMAP points") from exc
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    names = v.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb
