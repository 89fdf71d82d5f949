"""`s3dgs prepare` (video or frames -> scene) and `s3dgs undistort` (any COLMAP model -> PINHOLE).

prepare, stage by stage (each with a progress bar), everything through pycolmap:

1. frames: a video is sampled at `--fps` (sharpest frame per window, blurred frames dropped); a
   folder of frames is used as it is (scaled down when larger than `--max-size`);
2. SIFT features (one shared camera, SIMPLE_RADIAL by default, when all frames share a size);
3. matching: exhaustive (all pairs) for small sets (up to `--exhaustive-max` frames), else
   sequential (each frame with its next `--overlap` and the frames 2, 4, 8, ... ahead, plus all
   pairs of every `--overlap`-th frame to close loops);
4. incremental mapping; the model with most registered frames is kept, others are reported;
5. undistortion to PINHOLE into the scene layout of docs/ARCHITECTURE.md: OUT/images, OUT/sparse/0,
   OUT/points3D.ply. The SfM work (database, extracted frames, every model found) stays in
   OUT/colmap/, and OUT/prepare.json holds the summary.

A ROMI scan folder (photos with their calibrated cameras) skips all of this: `s3dgs.scene.romi`
reads it with its known poses (undistorted, black bars cropped, metric), its organ masks as class
masks, and initial points by space carving.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from s3dgs.atomic import atomic_write, atomic_write_text
from s3dgs.options import opt
from s3dgs.scene.colmap import (
    PINHOLE_MODELS,
    SceneError,
    find_model_dir,
    import_pycolmap,
    load_reconstruction,
    read_model,
)
from s3dgs.scene.frames import FrameSet, PrepareError, folder_frames, video_frames
from s3dgs.scene.ply import read_points_ply, write_points_ply
from s3dgs.scene.romi import RomiSummary

__all__ = [
    "PrepareConfig",
    "PrepareError",
    "PrepareSummary",
    "TooFewRegisteredError",
    "UndistortConfig",
    "prepare_main",
    "prepare_scene",
    "undistort_main",
    "undistort_scene",
]

Matcher = Literal["auto", "sequential", "exhaustive"]


class TooFewRegisteredError(PrepareError):
    """Structure from motion registered too few frames. The best model was still written to the
    scene; `summary` describes it."""

    def __init__(self, message: str, summary: PrepareSummary):
        super().__init__(message)
        self.summary = summary


@dataclass
class PrepareSummary:
    """What `prepare_scene` did; also written to OUT/prepare.json."""

    scene: str
    source: str  # "video" or "folder"
    frames_total: int  # decoded video frames / images in the folder
    frames_used: int  # frames given to structure from motion
    frames_blurred: int  # frames dropped as blurred
    registered: int  # frames in the kept model
    models: list[int]  # registered frames per model found, largest first
    mean_reprojection_error: float  # pixels, kept model
    points: int  # 3D points of the kept model
    mean_track_length: float
    camera_model: str  # of the SfM model before undistortion
    matcher: str
    width: int  # undistorted image size (first camera)
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    warnings: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"scene            {self.scene}",
            (f"frames           {self.frames_used} used of {self.frames_total} "
             f"({self.source}; {self.frames_blurred} dropped as blurred)"),
            f"registered       {self.registered} / {self.frames_used}"
            + (f"   (models found: {self.models})" if len(self.models) > 1 else ""),
            f"reprojection     {self.mean_reprojection_error:.3f} px mean",
            f"points           {self.points} (mean track length {self.mean_track_length:.2f})",
            f"camera           {self.camera_model} -> PINHOLE {self.width}x{self.height}; matcher: {self.matcher}",
            "time             " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class PrepareConfig:
    """Video or folder of frames -> scene directory (images, sparse/0 PINHOLE, points3D.ply)."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT")]
    """A video file (mp4, mov, ...), a folder of frames (jpg/png), or a ROMI scan folder (images/ and
    metadata/images/*.json with each photo's camera: read with its known poses, no structure from
    motion)."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Scene directory to write (images/, sparse/0/, points3D.ply, prepare.json, colmap/)."""
    fps: float = 2.0
    """Frames per second to keep from a video (the sharpest frame of each 1/fps window)."""
    candidates: int = 3
    """Video frames decoded per kept frame; the sharpest of them is kept."""
    max_frames: int = 300
    """At most this many frames from a video (the rate is lowered to fit)."""
    blur_threshold: float = 0.2
    """Drop frames whose sharpness (variance of Laplacian) is under this times the median; 0 keeps all."""
    max_size: int = 1600
    """Longer image side for structure from motion and the scene, in pixels; 0 keeps the size."""
    matcher: Matcher = "auto"
    """Feature matching: sequential (frames in order: video frames, or a folder sorted by name),
    exhaustive (all pairs), or auto (exhaustive up to --exhaustive-max frames, else sequential)."""
    exhaustive_max: int = 50
    """Most frames matched exhaustively under --matcher auto (all pairs grow as N^2: 50 frames are
    1225 pairs); more frames are taken as ordered and matched sequentially."""
    overlap: int = 10
    """Sequential matching: each frame is matched with this many next frames (plus 2, 4, 8, ...
    ahead), and every overlap-th frame with all the others of those, to close loops."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model for structure from motion (SIMPLE_RADIAL, OPENCV, PINHOLE, ...)."""
    max_features: int = 8192
    """SIFT features per frame."""
    min_registered: float = 0.5
    """Fail (after keeping the best model) when fewer than this fraction of the frames register."""
    relax: bool = True
    """When too few frames register, map again with relaxed thresholds (fewer inliers per frame) and
    keep the better result."""
    seed: int = 0
    """Random seed for structure from motion (repeatable runs)."""
    num_threads: int = -1
    """CPU threads for pycolmap (-1: all)."""
    overwrite: bool = False
    """Replace an existing scene in OUT."""
    progress: bool = True
    """Progress bars (--no-progress turns them off)."""
    verbose: bool = False
    """Show pycolmap's own log."""
    units: Literal["auto", "mm", "cm", "m", "model"] = "auto"
    """ROMI scans: the unit of the scan's poses. auto: mm for a real scan (ROMI's scanner is
    calibrated in millimetres), model for a virtual scan (its mesh's units)."""
    crop: Literal["auto", "none"] = "auto"
    """ROMI scans: auto crops the rows and columns at the borders that are black in every photo (the
    camera's black bars); none keeps the whole photo."""
    exg_threshold: float = 0.1
    """ROMI scans without masks: the plant's silhouette for space carving is excess green (2g - r - b
    on chromatic coordinates) above this (ROMI's own plant segmentation)."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option."""
        from s3dgs import validate as V

        V.in_range("--exg-threshold", self.exg_threshold, -1.0, 2.0)
        V.positive("--fps", self.fps)
        V.at_least("--candidates", self.candidates, 1)
        V.at_least("--max-frames", self.max_frames, 3, hint="structure from motion needs 3 views")
        V.non_negative("--blur-threshold", self.blur_threshold)
        if self.max_size != 0:
            V.at_least("--max-size", self.max_size, 64, hint="0 keeps the frames' size")
        V.non_negative("--exhaustive-max", self.exhaustive_max)
        V.at_least("--overlap", self.overlap, 1)
        V.at_least("--max-features", self.max_features, 64)
        V.fraction("--min-registered", self.min_registered)
        V.non_negative("--seed", self.seed)
        if self.num_threads != -1:
            V.at_least("--num-threads", self.num_threads, 1, hint="-1 uses all cores")
        pycolmap = import_pycolmap()
        known = [m for m in pycolmap.CameraModelId.__members__ if m not in ("INVALID", "EQUIRECTANGULAR")]
        if self.camera_model not in known:
            from s3dgs.errors import UsageError

            raise UsageError(f"--camera-model {self.camera_model!r} is not a COLMAP camera model; use one "
                             f"of {', '.join(known)}.")


@dataclass
class UndistortConfig:
    """Undistort a COLMAP scene with any camera model into a new PINHOLE scene directory."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """Scene directory (with images/ and sparse/0/) or a COLMAP model folder."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """New scene directory to write (images/, sparse/0/, points3D.ply)."""
    images: Annotated[Path | None, opt("DIR", "SCENE/images")] = None
    """Images folder of the distorted scene."""
    crop: bool = True
    """Crop each frame to the picture area every pixel has a source for (as COLMAP's undistorter
    does, plus the half-pixel edge where interpolation blends in black); --no-crop keeps every
    source pixel, with black borders where the undistorted frame has none."""
    overwrite: bool = False
    """Replace an existing scene in OUT."""
    verbose: bool = False
    """Show pycolmap's own log."""

    def validate(self) -> None:
        """Nothing numeric to check; here so every command's config has one."""


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _pycolmap_log(verbose: bool):
    pycolmap = import_pycolmap()

    old = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = 2  # errors only; the progress bars say what happens
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _check_out(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    out_r = out.resolve()
    for p in inputs:
        if out_r == p.resolve():
            raise PrepareError(f"{out}: OUT must be a new directory, not the input itself.")
    existing = [p for p in ("images", "sparse") if (out / p).exists()]
    if existing and not overwrite:
        raise PrepareError(f"{out}: already holds a scene ({', '.join(existing)}). Pass --overwrite to "
                           "replace it, or choose another OUT.")


def _source_mask(und_cam, dist_cam) -> np.ndarray:
    """[H, W] bool over the undistorted camera's pixels: True where the pixel centre's source in the
    distorted image lies at least half a pixel inside it (bilinear sampling there reads no
    blank pixel). Uses pycolmap's own projection of both camera models."""
    H, W = int(und_cam.height), int(und_cam.width)
    ys, xs = np.mgrid[:H, :W] + 0.5
    norm = und_cam.cam_from_img(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64))
    src = dist_cam.img_from_cam(np.concatenate([norm, np.ones((len(norm), 1))], 1))
    ok = np.isfinite(src).all(1)
    ok &= (src[:, 0] >= 0.5) & (src[:, 0] <= dist_cam.width - 0.5)
    ok &= (src[:, 1] >= 0.5) & (src[:, 1] <= dist_cam.height - 0.5)
    return ok.reshape(H, W)


def _valid_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): a large axis-aligned box of True pixels, found by trimming, one row or
    column at a time, the edge with most False pixels."""
    y0, x0 = 0, 0
    y1, x1 = mask.shape
    while y1 - y0 > 1 and x1 - x0 > 1:
        sub = mask[y0:y1, x0:x1]
        if sub.all():
            break
        bad = [(~sub[0]).sum(), (~sub[-1]).sum(), (~sub[:, 0]).sum(), (~sub[:, -1]).sum()]
        k = int(np.argmax(bad))
        y0, y1, x0, x1 = y0 + (k == 0), y1 - (k == 1), x0 + (k == 2), x1 - (k == 3)
    return x0, y0, x1, y1


def _crop_to_sources(rec, rec_in, image_dir: Path) -> float:
    """Trim from every undistorted camera of `rec` the border pixels without a full source in the
    distorted image (`rec_in`'s camera of the same id), cropping its images in `image_dir` and
    shifting its principal point and 2D points. Returns the largest fraction of pixels removed."""
    from PIL import Image

    worst = 0.0
    for cam_id, cam in rec.cameras.items():
        src = rec_in.cameras[cam_id]
        if src.model.name in PINHOLE_MODELS:
            continue
        x0, y0, x1, y1 = _valid_box(_source_mask(cam, src))
        if (x0, y0, x1, y1) == (0, 0, cam.width, cam.height):
            continue
        worst = max(worst, 1.0 - (x1 - x0) * (y1 - y0) / (cam.width * cam.height))
        params = np.array(cam.params, np.float64)
        params[2] -= x0
        params[3] -= y0
        cam.width, cam.height, cam.params = x1 - x0, y1 - y0, params
        for img in rec.images.values():
            if img.camera_id != cam_id:
                continue
            path = image_dir / img.name
            with Image.open(path) as im:
                fmt = im.format
                cropped = im.crop((x0, y0, x1, y1))
            kw = {"quality": 95} if fmt == "JPEG" else {}
            atomic_write(path, lambda tmp, c=cropped, f=fmt, kw=kw: c.save(tmp, format=f, **kw))
            for p in img.points2D:
                p.xy = p.xy - np.array([x0, y0], np.float64)
    return worst


def _carry_points(rec, rec_in, scene_ply: Path | None) -> str:
    """Give the undistorted model `rec` the 3D points of the distorted model `rec_in` (undistortion
    does not move them), with their tracks, when the undistorter dropped any; when the input model
    has none, the scene's points3D.ply. Returns where the points came from."""
    n_in = rec_in.num_points3D()
    if n_in and rec.num_points3D() != n_in:
        for pid in list(rec.point3D_ids()):
            rec.delete_point3D(pid)
        pycolmap = import_pycolmap()
        for pid, p in rec_in.points3D.items():
            track = pycolmap.Track()
            for el in p.track.elements:
                if rec.exists_image(el.image_id) and el.point2D_idx < rec.images[el.image_id].num_points2D():
                    track.add_element(el.image_id, el.point2D_idx)
            rec.add_point3D_with_id(pid, p.xyz, track, p.color)
        return f"{n_in} points carried over from the input model"
    if n_in:
        return f"{n_in} points of the input model"
    if scene_ply is not None and scene_ply.is_file():
        xyz, rgb = read_points_ply(scene_ply)
        if len(xyz):
            pycolmap = import_pycolmap()
            for x, c in zip(xyz, rgb):
                rec.add_point3D(x, pycolmap.Track(), c)
            return f"{len(xyz)} points from {scene_ply} (the input model has none)"
    return "no points (neither the model nor a points3D.ply has any): training will start from random points"


def _undistort_into(model_dir: Path, image_dir: Path, out: Path, *, progress: bool = True, crop: bool = True,
                    scene_ply: Path | None = None) -> dict:
    """pycolmap.undistort_images into the scene layout: out/images, out/sparse/0, out/points3D.ply.

    crop: COLMAP's crop to the picture area every output pixel has a source for (blank_pixels 0),
    then border pixels whose source lies within half a pixel of the distorted image's edge (where
    bilinear sampling blends in black) are trimmed too. Without crop every source pixel is kept
    (blank_pixels 1): black borders where the undistorted frame has no source.
    The input model's 3D points are carried over (see `_carry_points`). Returns what was done."""
    from tqdm import tqdm

    pycolmap = import_pycolmap()
    rec_in = load_reconstruction(model_dir)
    tmp = out / ".undistort_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    opts = pycolmap.UndistortCameraOptions()
    opts.blank_pixels = 0.0 if crop else 1.0
    with tqdm(total=1, desc="undistort", disable=not progress) as bar:
        try:
            pycolmap.undistort_images(str(tmp), str(model_dir), str(image_dir), output_type="COLMAP",
                                      copy_policy=pycolmap.FileCopyType.copy, jpeg_quality=95,
                                      undistort_options=opts)
        except Exception as exc:
            raise SceneError(f"{model_dir}: pycolmap could not undistort the images in {image_dir} "
                             f"({exc}). Check that every image of the model is there and readable.") from exc
        bar.update(1)
    if not (tmp / "sparse").is_dir() or not (tmp / "images").is_dir():
        raise SceneError(f"{model_dir}: undistortion wrote no model/images (see pycolmap's log with "
                         f"--verbose); check the images in {image_dir} are readable.")
    rec = pycolmap.Reconstruction(str(tmp / "sparse"))
    trimmed = _crop_to_sources(rec, rec_in, tmp / "images") if crop else 0.0
    points_note = _carry_points(rec, rec_in, scene_ply)
    rec.write_binary(str(tmp / "sparse"))
    for sub in ("images", "sparse"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (tmp / "images").rename(out / "images")
    (out / "sparse").mkdir()
    (tmp / "sparse").rename(out / "sparse" / "0")
    shutil.rmtree(tmp)
    model = read_model(out / "sparse" / "0", require_pinhole=True)
    write_points_ply(out / "points3D.ply", model.xyz, model.rgb)
    return {"sparse": out / "sparse" / "0", "points": len(model.xyz), "points_note": points_note,
            "crop": crop, "trimmed": trimmed}


def _image_dir_for(scene: Path, model_dir: Path) -> Path:
    for c in (scene / "images", model_dir.parent / "images", model_dir.parent.parent / "images"):
        if c.is_dir():
            return c
    raise SceneError(f"{scene}: no images/ folder found next to the model {model_dir}. Pass --images DIR.")


# ----------------------------------------------------------------------------------------------
# undistort


def undistort_scene(scene: str | Path, out: str | Path, *, images: str | Path | None = None,
                    crop: bool = True, overwrite: bool = False, progress: bool = True,
                    verbose: bool = False) -> dict:
    """Undistort a COLMAP scene (any camera model) into a PINHOLE scene directory.

    Args:
        scene: scene directory (images/ + sparse/0) or a COLMAP model folder.
        out: new scene directory: out/images, out/sparse/0 (PINHOLE), out/points3D.ply.
        images: images folder when not scene/images.
        crop: crop to the picture area with a source for every pixel (see `_undistort_into`).

    The model's 3D points go into out/sparse/0 and out/points3D.ply (undistortion does not move
    them); a model without points takes SCENE/points3D.ply's.

    Returns:
        dict with the camera models before, images and points written (and where the points came
        from), the image size after, and the largest share of pixels the crop trimmed.
    """
    scene, out = Path(scene), Path(out)
    model_dir = find_model_dir(scene)
    image_dir = Path(images) if images is not None else _image_dir_for(scene, model_dir)
    if not image_dir.is_dir():
        raise SceneError(f"{image_dir}: images folder does not exist. Pass --images DIR.")
    _check_out(out, overwrite, [scene, image_dir])
    rec = load_reconstruction(model_dir)
    if rec.num_reg_images() == 0:
        raise SceneError(f"{model_dir}: the COLMAP model has no registered images; nothing to undistort.")
    names = [rec.images[i].name for i in rec.reg_image_ids()]
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        raise SceneError(f"{image_dir}: {len(missing)} image(s) of the model are missing, e.g. "
                         f"{missing[0]}. Pass the right folder with --images DIR.")
    models = sorted({c.model.name for c in rec.cameras.values()})
    if set(models) <= set(PINHOLE_MODELS):
        print(f"undistort: {model_dir} already uses {', '.join(models)}; copying it as it is.")
    leftovers = [d for d in ("heatmaps", "depths") if (scene / d).exists()]
    if leftovers:
        print(f"undistort: {', '.join(leftovers)} in {scene} are in the distorted pixel grid and are "
              f"not copied; make them again on {out}.")
    scene_ply = scene / "points3D.ply" if scene.is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    with _pycolmap_log(verbose):
        done = _undistort_into(model_dir, image_dir, out, progress=progress, crop=crop, scene_ply=scene_ply)
    model = read_model(done["sparse"])
    info = {"scene": str(out), "models_before": models, "images": len(model.views),
            "points": len(model.xyz), "points_note": done["points_note"], "crop": crop,
            "trimmed": done["trimmed"], "width": model.views[0].width, "height": model.views[0].height}
    return info


def undistort_main(cfg: UndistortConfig) -> int:
    cfg.validate()
    info = undistort_scene(cfg.scene, cfg.out, images=cfg.images, crop=cfg.crop, overwrite=cfg.overwrite,
                           verbose=cfg.verbose)
    crop = ("cropped to the picture area" + (f", {100 * info['trimmed']:.1f} % of the border trimmed"
                                             if info["trimmed"] else "")) if info["crop"] else "not cropped"
    print(f"undistort: {info['images']} images ({', '.join(info['models_before'])} -> PINHOLE "
          f"{info['width']}x{info['height']}, {crop}); {info['points_note']} -> {info['scene']}")
    if info["points"] == 0:
        print(f"undistort: warning: {info['scene']}/points3D.ply is empty; training will start from "
              "random points")
    return 0


# ----------------------------------------------------------------------------------------------
# prepare


def _pairs(db_path: Path, matcher: str, overlap: int) -> list[tuple[str, str]]:
    """Image-name pairs to match, from pycolmap's own pair generators.

    exhaustive: all pairs. sequential: each frame (in name order) with its next `overlap` frames and
    the frames 2, 4, 8, ... ahead (linear and quadratic overlap together), plus all pairs of every
    `overlap`-th frame, which closes loops (an orbit around a plant ends where it began) without the
    vocabulary tree that COLMAP's loop detection needs.
    """
    pycolmap = import_pycolmap()

    with pycolmap.Database.open(str(db_path)) as db:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        if matcher == "exhaustive":
            pairs = set(pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db).all_pairs())
        else:
            pairs = set()
            for quadratic in (False, True):
                o = pycolmap.SequentialPairingOptions()
                o.overlap = overlap
                o.quadratic_overlap = quadratic
                pairs |= set(pycolmap.SequentialPairGenerator(o, db).all_pairs())
    named = {tuple(sorted((id_to_name[a], id_to_name[b]))) for a, b in pairs}
    if matcher != "exhaustive":
        keyframes = sorted(id_to_name.values())[:: max(1, overlap)]
        named |= {(a, b) for i, a in enumerate(keyframes) for b in keyframes[i + 1:]}
    return sorted(named)


def _extract(frames: FrameSet, db_path: Path, cfg: PrepareConfig, progress: bool) -> None:
    pycolmap = import_pycolmap()
    from tqdm import tqdm

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    ext = pycolmap.FeatureExtractionOptions()
    ext.sift.max_num_features = cfg.max_features
    ext.num_threads = cfg.num_threads
    single = frames.size is not None
    mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE
    chunk = max(4, min(32, len(frames.names) // 20 or 4))
    with tqdm(total=len(frames.names), desc="features", unit="frame", disable=not progress) as bar:
        for i in range(0, len(frames.names), chunk):
            names = frames.names[i:i + chunk]
            pycolmap.extract_features(str(db_path), str(frames.image_dir), image_names=names,
                                      camera_mode=mode, reader_options=reader, extraction_options=ext,
                                      device=pycolmap.Device.cpu)
            if single and reader.existing_camera_id < 0:
                with pycolmap.Database.open(str(db_path)) as db:
                    reader.existing_camera_id = db.read_all_cameras()[0].camera_id
            bar.update(len(names))
    with pycolmap.Database.open(str(db_path)) as db:
        if db.num_images() < len(frames.names):
            raise PrepareError(f"{frames.image_dir}: pycolmap read only {db.num_images()} of "
                               f"{len(frames.names)} frames; check the images are readable.")


def _match(db_path: Path, matcher: str, cfg: PrepareConfig, work: Path, progress: bool) -> int:
    pycolmap = import_pycolmap()
    from tqdm import tqdm

    pairs = _pairs(db_path, matcher, cfg.overlap)
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = cfg.num_threads
    chunk = max(200, -(-len(pairs) // 10))
    pair_file = work / "pairs.txt"
    with tqdm(total=len(pairs), desc=f"matching ({matcher})", unit="pair", disable=not progress) as bar:
        for i in range(0, len(pairs), chunk):
            part = pairs[i:i + chunk]
            pair_file.write_text("".join(f"{a} {b}\n" for a, b in part))
            po = pycolmap.ImportedPairingOptions()
            po.match_list_path = str(pair_file)
            pycolmap.match_image_pairs(str(db_path), matching_options=opts, pairing_options=po,
                                       device=pycolmap.Device.cpu)
            bar.update(len(part))
    with pycolmap.Database.open(str(db_path)) as db:
        _, inliers = db.read_two_view_geometry_num_inliers()
    min_inliers = pycolmap.TwoViewGeometryOptions().min_num_inliers
    return sum(1 for n in inliers if n >= min_inliers)  # pairs that passed geometric verification


# Thresholds of the second mapping attempt, for weakly textured or small frames (few inliers per
# pair): COLMAP's defaults are 100 inliers and 16 degrees for the first pair, 30 inliers and a 25 %
# inlier ratio to register a frame.
RELAXED_MAPPER = {"init_min_num_inliers": 30, "init_min_tri_angle": 8.0,
                  "abs_pose_min_num_inliers": 15, "abs_pose_min_inlier_ratio": 0.15}


def _map(db_path: Path, frames: FrameSet, sparse_dir: Path, cfg: PrepareConfig, progress: bool,
         relaxed: bool = False) -> dict:
    pycolmap = import_pycolmap()
    from tqdm import tqdm

    if sparse_dir.exists():
        shutil.rmtree(sparse_dir)
    sparse_dir.mkdir(parents=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = cfg.seed
    opts.num_threads = cfg.num_threads
    opts.min_model_size = max(3, min(10, len(frames.names) // 4))
    if relaxed:
        for k, v in RELAXED_MAPPER.items():
            setattr(opts.mapper, k, v)
    desc = "mapping (relaxed)" if relaxed else "mapping"
    with tqdm(total=len(frames.names), desc=desc, unit="frame", disable=not progress) as bar:
        def _tick():
            if bar.n < bar.total:
                bar.update(1)
        recs = pycolmap.incremental_mapping(str(db_path), str(frames.image_dir), str(sparse_dir), opts,
                                            initial_image_pair_callback=lambda: (_tick(), _tick()),
                                            next_image_callback=_tick)
    return {k: r for k, r in recs.items() if r.num_reg_images() > 0}


def _most_registered(recs: dict) -> int:
    return max((r.num_reg_images() for r in recs.values()), default=0)


def prepare_scene(
    input: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    **overrides,
) -> PrepareSummary | RomiSummary:
    """Video or folder of frames -> PINHOLE scene directory, through pycolmap; a ROMI scan folder ->
    scene with the scan's known poses (`s3dgs.scene.romi.prepare_romi`, no structure from motion).

    Args:
        input: a video file or a folder of frames.
        out: scene directory: out/images, out/sparse/0, out/points3D.ply, out/prepare.json, and the
            structure-from-motion work in out/colmap/.
        cfg: options (PrepareConfig; `input`/`out` in it are ignored); keyword overrides, e.g.
            `prepare_scene(video, out, fps=4, progress=False)`.

    Returns:
        PrepareSummary (registered frames, reprojection error, points, timings, warnings).

    Raises:
        PrepareError: no input, an unreadable video, no images, nothing registered.
        TooFewRegisteredError: fewer than `min_registered` of the frames registered; the best model
            is written to `out` before this is raised (its summary is on the exception).
    """
    input, out = Path(input), Path(out)
    base = cfg if cfg is not None else PrepareConfig(input=input, out=out)
    cfg = PrepareConfig(**{**asdict(base), **overrides, "input": input, "out": out})
    cfg.validate()
    progress = cfg.progress
    if not input.exists():
        raise PrepareError(f"{input}: no such file or folder. Pass a video file, a folder of frames or a "
                           "ROMI scan folder.")
    from s3dgs.scene.romi import is_romi_scan, prepare_romi

    if is_romi_scan(input):
        return prepare_romi(input, out, max_size=cfg.max_size, crop=cfg.crop, units=cfg.units,
                            exg_threshold=cfg.exg_threshold, seed=cfg.seed, progress=progress,
                            overwrite=cfg.overwrite)
    _check_out(out, cfg.overwrite, [input])
    work = out / "colmap"
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").unlink(missing_ok=True)  # written last: its presence means a finished prepare
    work.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    warnings: list[str] = []

    # 1. frames
    t0 = time.perf_counter()
    frame_dir = work / "frames"
    if input.is_dir():
        frames = folder_frames(input, frame_dir, max_size=cfg.max_size, blur_threshold=cfg.blur_threshold,
                               progress=progress)
    else:
        if frame_dir.exists():
            shutil.rmtree(frame_dir)
        frames = video_frames(input, frame_dir, fps=cfg.fps, candidates=cfg.candidates,
                              max_frames=cfg.max_frames, max_size=cfg.max_size,
                              blur_threshold=cfg.blur_threshold, progress=progress)
    timings["frames"] = time.perf_counter() - t0
    if frames.dropped_blurred:
        warnings.append(f"{len(frames.dropped_blurred)} blurred frame(s) dropped: "
                        + ", ".join(frames.dropped_blurred[:5]) + (" ..." if len(frames.dropped_blurred) > 5 else ""))
    if len(frames.names) < 3:
        raise PrepareError(f"{input}: only {len(frames.names)} usable frame(s); structure from motion "
                           "needs at least 3 overlapping views (raise --fps, or lower --blur-threshold).")
    if frames.size is None:
        warnings.append("frames differ in size; one camera per frame was used")

    matcher = cfg.matcher
    if matcher == "auto":
        matcher = "exhaustive" if len(frames.names) <= cfg.exhaustive_max else "sequential"

    with _pycolmap_log(cfg.verbose):
        # 2. features
        t0 = time.perf_counter()
        db_path = work / "database.db"
        for p in (db_path, Path(str(db_path) + "-shm"), Path(str(db_path) + "-wal")):
            p.unlink(missing_ok=True)
        _extract(frames, db_path, cfg, progress)
        timings["features"] = time.perf_counter() - t0

        # 3. matching
        t0 = time.perf_counter()
        verified = _match(db_path, matcher, cfg, work, progress)
        timings["matching"] = time.perf_counter() - t0
        if verified == 0:
            raise PrepareError(f"{input}: no two frames could be matched (no verified image pairs). The "
                               "frames need more overlap and texture: film slower or raise --fps.")

        # 4. mapping
        t0 = time.perf_counter()
        need = max(3, int(np.ceil(cfg.min_registered * len(frames.names))))
        sparse_root = work / "sparse"
        recs = _map(db_path, frames, sparse_root, cfg, progress)
        if _most_registered(recs) < need and cfg.relax:
            first = _most_registered(recs)
            retry = _map(db_path, frames, work / "sparse_relaxed", cfg, progress, relaxed=True)
            if _most_registered(retry) > first:
                warnings.append(f"COLMAP's default mapping thresholds registered {first} frames; relaxed "
                                f"ones (fewer inliers per frame) registered {_most_registered(retry)}")
                recs, sparse_root = retry, work / "sparse_relaxed"
        timings["mapping"] = time.perf_counter() - t0
        if not recs:
            raise PrepareError(f"{input}: structure from motion found no model ({verified} matched pairs "
                               f"among {len(frames.names)} frames). Film with more overlap between frames, "
                               "more texture, slower motion, or raise --fps.")
        order = sorted(recs, key=lambda k: recs[k].num_reg_images(), reverse=True)
        best_key = order[0]
        rec = recs[best_key]
        sizes = [recs[k].num_reg_images() for k in order]
        if len(order) > 1:
            warnings.append(
                f"structure from motion found {len(order)} disconnected models ({', '.join(map(str, sizes))} "
                f"frames); kept the largest (colmap/{sparse_root.name}/{best_key}). The others could not be joined: film "
                "with more overlap, or raise --fps / --overlap.")
        best_dir = sparse_root / str(best_key)
        if not (best_dir / "images.bin").exists() and not (best_dir / "images.txt").exists():
            best_dir.mkdir(parents=True, exist_ok=True)
            rec.write_binary(str(best_dir))

        # 5. undistortion into the scene layout
        t0 = time.perf_counter()
        _undistort_into(best_dir, frames.image_dir, out, progress=progress)
        timings["undistort"] = time.perf_counter() - t0

    registered = {rec.images[i].name for i in rec.reg_image_ids()}
    cam = next(iter(rec.cameras.values()))
    und = read_model(out / "sparse" / "0")
    summary = PrepareSummary(
        scene=str(out), source=frames.source, frames_total=frames.total, frames_used=len(frames.names),
        frames_blurred=len(frames.dropped_blurred), registered=len(registered), models=sizes,
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
        points=int(rec.num_points3D()), mean_track_length=float(rec.compute_mean_track_length()),
        camera_model=cam.model.name, matcher=matcher, width=und.views[0].width, height=und.views[0].height,
        timings={k: round(v, 3) for k, v in timings.items()}, warnings=warnings,
        unregistered=[n for n in frames.names if n not in registered])
    too_few = len(registered) < need
    if too_few:
        summary.warnings.append(
            f"only {len(registered)} of {len(frames.names)} frames registered (need {need}); the best model "
            "was kept anyway")
    atomic_write_text(out / "prepare.json", json.dumps(asdict(summary), indent=2))
    if too_few:
        raise TooFewRegisteredError(
            f"{input}: only {len(registered)} of {len(frames.names)} frames registered (--min-registered "
            f"{cfg.min_registered:g} asks for {need}). The best model was kept in {out}, but it covers "
            "part of the scene only. Film with more overlap and slower motion, raise --fps, or lower "
            "--min-registered to accept it.", summary)
    return summary


def prepare_main(cfg: PrepareConfig) -> int:
    cfg.validate()
    try:
        summary = prepare_scene(cfg.input, cfg.out, cfg)
    except TooFewRegisteredError as exc:
        print(exc.summary.text())  # what was registered, then the error (s3dgs.cli prints it)
        raise
    print(summary.text())
    return 0
