"""COLMAP models through pycolmap: reading, writing, and the checks the rest of s3dgs relies on.

Everything COLMAP goes through pycolmap (the official binding), never a hand-written parser. This
module turns a `pycolmap.Reconstruction` into plain numpy arrays in the conventions of docs/ARCHITECTURE.md:

- `viewmat [4, 4]` world-to-camera (COLMAP's `cam_from_world`), x right, y down, z forward;
- `K [3, 3]` in pixels, pixel centres at +0.5 (COLMAP's own convention);
- points `xyz [P, 3]` float64, `rgb [P, 3]` uint8, `error [P]` reprojection error in pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s3dgs.errors import SceneError  # defined at the bottom of the import table; re-exported here

# Camera models s3dgs renders directly; everything else must be undistorted first.
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


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


def import_pycolmap():
    """pycolmap, imported after PIL's image core: imported first, pycolmap's bundled zlib makes a
    later PIL PNG save abort the process ("free(): invalid pointer" in deflateEnd)."""
    import PIL.Image  # noqa: F401
    import pycolmap

    return pycolmap


@functools.lru_cache(maxsize=None)
def _num_params(model_id: int) -> int | None:
    pycolmap = import_pycolmap()

    try:
        mid = pycolmap.CameraModelId(model_id)
        make = getattr(pycolmap.Camera, "create_from_model_id", None) or pycolmap.Camera.create
        return len(make(1, mid, 1.0, 1, 1).params)
    except Exception:
        return None


class _Reader:
    """Bounds-checked reads from a binary COLMAP file: a short read names the file as truncated."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def take(self, fmt: str, what: str) -> tuple:
        import struct

        n = struct.calcsize(fmt)
        if self.pos + n > len(self.data):
            raise _Broken(f"truncated: the file ends ({len(self.data)} bytes) inside {what}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise _Broken(f"truncated: the file ends ({len(self.data)} bytes) inside {what}")
        self.pos += n

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _Broken(f"{len(self.data) - self.pos} bytes of garbage after the last record")


class _Broken(Exception):
    pass


def _walk_cameras(r: _Reader) -> set[int]:
    (n,) = r.take("<Q", "the camera count")
    if n > len(r.data):
        raise _Broken(f"declares {n} cameras in {len(r.data)} bytes")
    ids = set()
    for k in range(n):
        cam_id, model_id, w, h = r.take("<IiQQ", f"camera {k + 1} of {n}")
        m = _num_params(model_id)
        if m is None:
            raise _Broken(f"camera {cam_id} has an unknown model id {model_id}")
        params = r.take(f"<{m}d", f"the parameters of camera {cam_id}")
        if not (0 < w < 1 << 20 and 0 < h < 1 << 20) or not np.all(np.isfinite(params)):
            raise _Broken(f"camera {cam_id} is {w}x{h} with parameters {list(params)}")
        ids.add(cam_id)
    r.end()
    return ids


def _walk_images(r: _Reader, camera_ids: set[int] | None) -> None:
    (n,) = r.take("<Q", "the image count")
    if n > len(r.data):
        raise _Broken(f"declares {n} images in {len(r.data)} bytes")
    for k in range(n):
        image_id, *_pose, cam_id = r.take("<I7dI", f"image {k + 1} of {n}")
        if not np.linalg.norm(_pose[:4]) > 1e-8:  # pycolmap turns it into "no rotation" silently
            raise _Broken(f"image {image_id} has a zero rotation quaternion (QW QX QY QZ = {list(_pose[:4])})")
        end = r.data.find(b"\0", r.pos)
        if end < 0:
            raise _Broken(f"truncated: the file ends inside the name of image {image_id}")
        r.pos = end + 1
        (m,) = r.take("<Q", f"the point count of image {image_id}")
        r.skip(24 * m, f"the 2D points of image {image_id}")
        if camera_ids is not None and cam_id not in camera_ids:
            raise _Broken(f"image {image_id} uses camera {cam_id}, which cameras.bin does not hold")
    r.end()


def _walk_points(r: _Reader) -> None:
    import struct

    (n,) = r.take("<Q", "the point count")
    if n > len(r.data):
        raise _Broken(f"declares {n} points in {len(r.data)} bytes")
    data, pos, size = r.data, r.pos, len(r.data)
    unpack = struct.Struct("<Q").unpack_from
    for k in range(n):  # id, xyz, rgb, error (43 bytes), track length, track (8 bytes each)
        if pos + 51 > size:
            raise _Broken(f"truncated: the file ends ({size} bytes) inside point {k + 1} of {n}")
        pos += 51 + 8 * unpack(data, pos + 43)[0]
        if pos > size:
            raise _Broken(f"truncated: the file ends ({size} bytes) inside the track of point {k + 1} of {n}")
    r.pos = pos
    r.end()


def binary_model_problem(model_dir: str | Path, *, points: bool = True) -> tuple[Path, str] | None:
    """(file, what is wrong) for the first damaged file of a binary COLMAP model, or None.

    pycolmap reads a truncated cameras.bin without complaint (garbage intrinsics) and reports a
    damaged file through whatever it trips over next (a missing camera "of the images", a rig,
    std::bad_alloc), so s3dgs walks the record layout of cameras.bin, images.bin and (when
    `points`) points3D.bin itself to name the file that is actually wrong.
    """
    model_dir = Path(model_dir)
    cam_ids = None
    for name in ("cameras.bin", "images.bin") + (("points3D.bin",) if points else ()):
        path = model_dir / name
        if not path.exists():
            continue
        try:
            r = _Reader(path)
            if name == "cameras.bin":
                cam_ids = _walk_cameras(r)
            elif name == "images.bin":
                _walk_images(r, cam_ids)
            else:
                _walk_points(r)
        except _Broken as exc:
            return path, str(exc)
        except OSError as exc:
            return path, f"unreadable ({exc})"
    return None


def text_model_problem(model_dir: str | Path) -> tuple[Path, str] | None:
    """(file, what is wrong) for the first problem of a text COLMAP model that pycolmap accepts
    silently or reports through an unrelated object, or None. pycolmap reads a zero rotation
    quaternion as no rotation, a truncated images.txt as fewer images, and an image whose camera is
    missing as "Rig with ID N does not exist"; this check reads only what it needs for that (camera
    ids and sizes, the declared image count, each image line's fields), the model itself is still
    read by pycolmap."""
    model_dir = Path(model_dir)
    cams_path, imgs_path = model_dir / "cameras.txt", model_dir / "images.txt"
    if not (cams_path.is_file() and imgs_path.is_file()):
        return None
    fix = "; fix the file or re-run structure from motion (`s3dgs prepare`)"
    cam_ids: set[int] = set()
    for n, line in enumerate(cams_path.read_text(errors="replace").splitlines(), 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        try:
            cam_ids.add(int(tok[0]))
            w, h = int(tok[2]), int(tok[3])
        except (IndexError, ValueError):
            return cams_path, f"line {n} is not CAMERA_ID MODEL WIDTH HEIGHT PARAMS ({line[:80]!r}){fix}"
        if w <= 0 or h <= 0:
            return cams_path, f"line {n}: camera {tok[0]} is {w}x{h} pixels; width and height must be positive{fix}"
    lines = imgs_path.read_text(errors="replace").splitlines()
    declared = None
    found, i = 0, 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("# Number of images:"):
            try:
                declared = int(line.split(":")[1].split(",")[0])
            except (IndexError, ValueError):
                pass
        if not line or line.startswith("#"):
            i += 1
            continue
        tok = line.split()
        if len(tok) < 10:
            return imgs_path, (f"line {i + 1} has {len(tok)} fields, not the 10 of IMAGE_ID QW QX QY QZ TX TY "
                               f"TZ CAMERA_ID NAME: the file is truncated or malformed{fix}")
        try:
            quat = [float(t) for t in tok[1:5]]
            cam = int(tok[8])
        except ValueError:
            return imgs_path, f"line {i + 1}: the pose or camera id of image {tok[-1]} is not a number{fix}"
        if not np.linalg.norm(quat) > 1e-8:
            return imgs_path, (f"line {i + 1}: image {tok[9]} has a zero rotation quaternion (QW QX QY QZ = "
                               f"{' '.join(tok[1:5])}){fix}")
        if cam not in cam_ids:
            return imgs_path, (f"line {i + 1}: image {tok[9]} uses camera {cam}, which {cams_path.name} does not "
                               f"hold (cameras: {', '.join(map(str, sorted(cam_ids))) or 'none'}){fix}")
        found += 1
        i += 2  # the image's line of 2D points follows, possibly empty
    if declared is not None and found < declared:
        return imgs_path, (f"the header declares {declared} images but the file holds {found}: it is truncated. "
                           "Copy it again from where the model was made, or re-run structure from motion "
                           "(`s3dgs prepare`)")
    return None


def _model_error(model_dir: Path, exc: Exception | None) -> SceneError:
    bad = binary_model_problem(model_dir)
    if bad is not None:
        path, why = bad
        return SceneError(f"{path}: damaged COLMAP file ({why}). Copy it again from where the model "
                          "was made, or re-run structure from motion (`s3dgs prepare`).")
    return SceneError(f"{model_dir}: pycolmap could not read this COLMAP model ({exc}). "
                      "Check that cameras/images/points3D are complete and of one format.")


def load_reconstruction(model_dir: str | Path):
    """`pycolmap.Reconstruction` of a model folder; a damaged file raises SceneError naming it.

    pycolmap reads a truncated cameras.bin silently and hangs on some truncated points3D.bin, so
    the binary files are walked first (`binary_model_problem`; about 0.1 s per 100k points).
    """
    pycolmap = import_pycolmap()

    model_dir = Path(model_dir)
    if binary_model_problem(model_dir) is not None:
        raise _model_error(model_dir, None)
    bad = text_model_problem(model_dir)
    if bad is not None:
        raise SceneError(f"{bad[0]}: {bad[1]}.")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises a generic error on malformed files
        raise _model_error(model_dir, exc) from exc


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

    model_dir = find_model_dir(path)
    rec = load_reconstruction(model_dir)
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
    _check_views(model_dir, views)

    n = rec.num_points3D()
    xyz = np.zeros((n, 3), np.float64)
    rgb = np.zeros((n, 3), np.uint8)
    err = np.zeros(n, np.float64)
    for i, (_, p) in enumerate(sorted(rec.points3D.items(), key=lambda kv: kv[0])):
        xyz[i] = p.xyz
        rgb[i] = p.color
        err[i] = p.error if p.error >= 0 else 0.0
    return ColmapModel(path=model_dir, views=views, xyz=xyz, rgb=rgb, error=err)


def _check_views(model_dir: Path, views: list[ColmapView]) -> None:
    """Refuse what pycolmap accepts but no camera can be: a zero size, a focal length that is not
    positive, two images of one name (their frames, depths and heatmaps would be one file)."""
    fix = "Fix the model (cameras.txt / images.txt) or re-run structure from motion (`s3dgs prepare`)."
    seen: dict[str, int] = {}
    for v in views:
        if v.width <= 0 or v.height <= 0:
            raise SceneError(f"{model_dir}: camera {v.camera_id} (of image {v.name}) is {v.width}x{v.height} "
                             f"pixels; width and height must be positive. {fix}")
        fx, fy = float(v.K[0, 0]), float(v.K[1, 1])
        if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
            raise SceneError(f"{model_dir}: camera {v.camera_id} (of image {v.name}) has focal length "
                             f"fx={fx:g}, fy={fy:g} pixels; a focal length must be positive. {fix}")
        if v.name in seen:
            a, b = sorted((seen[v.name], v.image_id))
            raise SceneError(f"{model_dir}: images {a} and {b} have the same name "
                             f"{v.name!r}; every image needs its own frame. {fix}")
        seen[v.name] = v.image_id


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
    pycolmap = import_pycolmap()

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
