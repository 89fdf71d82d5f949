"""COLMAP models through pycolmap: reading, writing, and the checks the rest of s3dgs relies on.

Everything COLMAP goes through pycolmap (the official binding), never a hand-written parser. This
module turns a `pycolmap.Reconstruction` into plain numpy arrays in the conventions of DESIGN.md:

- `viewmat [4, 4]` world-to-camera (COLMAP's `cam_from_world`), x right, y down, z forward;
- `K [3, 3]` in pixels, pixel centres at +0.5 (COLMAP's own convention);
- points `xyz [P, 3]` float64, `rgb [P, 3]` uint8, `error [P]` reprojection error in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s3dgs.errors import S3dgsError

# Camera models s3dgs renders directly; everything else must be undistorted first.
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


class SceneError(S3dgsError, ValueError):
    """An input file is missing or malformed. The message names the file and the fix."""


@dataclass
class ColmapView:
    """One registered image of a COLMAP model."""

    image_id: int
    name: str
    camera_id: int
    model: str
    width: int
    height: int
    K: np.ndarray  # [3, 3] float64
    viewmat: np.ndarray  # [4, 4] float64, world-to-camera
    params: np.ndarray = field(default_factory=lambda: np.zeros(0))  # raw COLMAP camera params

    @property
    def camera_center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


@dataclass
class ColmapModel:
    """A COLMAP model as arrays: views sorted by image name, and the sparse points."""

    path: Path
    views: list[ColmapView]
    xyz: np.ndarray  # [P, 3] float64
    rgb: np.ndarray  # [P, 3] uint8
    error: np.ndarray  # [P] float64 reprojection error (px); zeros when unknown

    def view_by_name(self, name: str) -> ColmapView:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)


def find_model_dir(path: str | Path) -> Path:
    """Resolve `path` to a folder holding cameras/images/points3D (.bin or .txt).

    Accepts the model folder itself, a `sparse/` folder (takes `sparse/0`), or a scene folder
    (takes `scene/sparse/0`, then `scene/sparse`).
    """
    path = Path(path)
    candidates = [path, path / "0", path / "sparse" / "0", path / "sparse"]
    for c in candidates:
        if any((c / f"cameras.{ext}").exists() for ext in ("bin", "txt")):
            return c
    if not path.exists():
        raise SceneError(f"{path}: COLMAP model folder does not exist. Pass the folder holding "
                         "cameras.bin/images.bin/points3D.bin (or .txt), e.g. scene/sparse/0.")
    raise SceneError(f"{path}: no COLMAP model found (looked for cameras.bin or cameras.txt in "
                     f"{', '.join(str(c) for c in candidates)}). Run `s3dgs prepare` to make one.")


def _intrinsics(cam) -> np.ndarray:
    K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
    return K


def read_model(path: str | Path, *, require_pinhole: bool = True) -> ColmapModel:
    """Read a COLMAP model (binary or text) with pycolmap.

    Args:
        path: model folder, `sparse/`, or scene folder (see `find_model_dir`).
        require_pinhole: refuse models with lens distortion, naming `s3dgs undistort`.

    Returns:
        ColmapModel with views sorted by image name.
    """
    import pycolmap

    model_dir = find_model_dir(path)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises a generic error on malformed files
        raise SceneError(f"{model_dir}: pycolmap could not read this COLMAP model ({exc}). "
                         "Check that cameras/images/points3D are complete and of one format.") from exc
    if rec.num_images() == 0 or rec.num_reg_images() == 0:
        raise SceneError(f"{model_dir}: the COLMAP model has no registered images. Re-run structure "
                         "from motion (`s3dgs prepare`) or point to another model folder.")

    views: list[ColmapView] = []
    for image_id, img in rec.images.items():
        if not img.has_pose:
            continue
        cam = rec.cameras[img.camera_id]
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        if require_pinhole and model not in PINHOLE_MODELS:
            raise SceneError(
                f"{model_dir}: camera {img.camera_id} uses the {model} model, which has lens distortion; "
                "s3dgs renders PINHOLE/SIMPLE_PINHOLE cameras only. Undistort the scene first:\n"
                "    s3dgs undistort SCENE OUT\n"
                "and train on OUT.")
        viewmat = np.eye(4)
        viewmat[:3, :4] = np.asarray(img.cam_from_world().matrix(), dtype=np.float64)
        views.append(ColmapView(
            image_id=int(image_id), name=img.name, camera_id=int(img.camera_id), model=model,
            width=int(cam.width), height=int(cam.height), K=_intrinsics(cam), viewmat=viewmat,
            params=np.asarray(cam.params, dtype=np.float64)))
    views.sort(key=lambda v: v.name)

    n = rec.num_points3D()
    xyz = np.zeros((n, 3), np.float64)
    rgb = np.zeros((n, 3), np.uint8)
    err = np.zeros(n, np.float64)
    for i, (_, p) in enumerate(sorted(rec.points3D.items(), key=lambda kv: kv[0])):
        xyz[i] = p.xyz
        rgb[i] = p.color
        err[i] = p.error if p.error >= 0 else 0.0
    return ColmapModel(path=model_dir, views=views, xyz=xyz, rgb=rgb, error=err)


def write_model(
    out_dir: str | Path,
    names: list[str],
    Ks: np.ndarray,
    viewmats: np.ndarray,
    width: int,
    height: int,
    xyz: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
    *,
    binary: bool = True,
    shared_camera: bool = True,
) -> Path:
    """Write a PINHOLE COLMAP model with pycolmap.

    Args:
        out_dir: model folder to create (e.g. scene/sparse/0).
        names: [C] image file names (relative to the images folder).
        Ks: [C, 3, 3] or [3, 3] intrinsics in pixels.
        viewmats: [C, 4, 4] world-to-camera.
        width, height: image size in pixels.
        xyz: [P, 3] points (optional), rgb: [P, 3] uint8 colours (optional).
        binary: write .bin (default) or .txt.
        shared_camera: one camera for all images when every K is the same.

    Points are written without tracks (like the fern model in shared/data).
    """
    import pycolmap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    C = len(names)
    Ks = np.asarray(Ks, np.float64)
    if Ks.ndim == 2:
        Ks = np.broadcast_to(Ks, (C, 3, 3))
    viewmats = np.asarray(viewmats, np.float64)
    same = shared_camera and (C == 0 or np.allclose(Ks, Ks[:1]))

    rec = pycolmap.Reconstruction()
    cam_ids = []
    for i in range(C if not same else min(C, 1)):
        K = Ks[i]
        cam = pycolmap.Camera(model="PINHOLE", width=int(width), height=int(height),
                              params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=i + 1)
        rec.add_camera_with_trivial_rig(cam)
        cam_ids.append(i + 1)
    for i, name in enumerate(names):
        cam_id = cam_ids[0] if same else cam_ids[i]
        img = pycolmap.Image(name=name, camera_id=cam_id, image_id=i + 1)
        pose = pycolmap.Rigid3d(viewmats[i, :3, :4])
        rec.add_image_with_trivial_frame(img, pose)
    if xyz is not None:
        xyz = np.asarray(xyz, np.float64)
        rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb, np.uint8)
        for p, c in zip(xyz, rgb):
            rec.add_point3D(p, pycolmap.Track(), c)
    if binary:
        rec.write_binary(str(out_dir))
    else:
        rec.write_text(str(out_dir))
    return out_dir
