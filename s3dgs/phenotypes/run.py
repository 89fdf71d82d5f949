"""A run folder: `run_phenotype` (read the model, find up, scale, ground and pixel size, measure
with the classes or the geometry, write the files) and the CLI command (`PhenotypeConfig`,
`phenotype_main`: `s3dgs phenotype RUN`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import tyro

from s3dgs.errors import S3dgsError, UsageError
from s3dgs.options import opt
from s3dgs.phenotypes.common import _r
from s3dgs.phenotypes.frame import (
    _parse_up,
    fit_ground_plane,
    parse_scale,
    scale_of_scene,
    scene_box,
    up_from_cameras,
)
from s3dgs.phenotypes.geometry import _measure_geometry, _stem_classes_usable, compare_to_reference
from s3dgs.phenotypes.io import format_summary, summary_line, write_phenotypes
from s3dgs.phenotypes.measure import measure_plant


def _scene_of(run: Path, rc: dict, scene) -> Optional[Path]:
    if scene is not None:
        p = Path(scene)
        if not p.is_dir():
            raise UsageError(f"--scene {p}: folder not found")
        return p
    if rc["scene"] is not None and Path(rc["scene"]).is_dir():
        return Path(rc["scene"])
    cd = rc["paths"].get("colmap_dir")
    if cd and Path(cd).exists():
        return Path(cd)
    p = run.parent / "scene"
    return p if p.is_dir() else None


def run_phenotype(run_dir, *, scale: str | None = None, up: str = "auto", scene=None,
                  metric_poses: bool = False, class_threshold: float = 0.5, min_opacity: float = 0.1,
                  node_separation: float | None = None, extend_stem: bool = True, base: str = "auto",
                  write: bool = True, method: str = "auto", reference=None,
                  reference_scale: float = 1.0) -> dict:
    """Measure the plant of a run folder and write RUN/phenotypes.json, .csv and .png.

    Args:
        run_dir: holds point_cloud.ply (and config.json naming the scene, for up and scale).
        scale: the --scale option (see `parse_scale`); overrides the scale of known poses.
        up: "auto" (cameras, else the ground plane), "cameras", "ground", or "X,Y,Z".
        scene: the scene folder (default: config.json's scene, else RUN/../scene).
        metric_poses: the scene's poses are known to be in metres.
        node_separation: in metres when the scale is known, else model units (default: derived).
        base: "auto", "ground" or "stem" (see `measure_plant`'s base_rule).
        method: "classes" (`measure_plant`: the stem classes U/N/D/P), "geometry"
            (`s3dgs.organs.measure_organs` on the opaque Gaussians: main stem, lateral organs,
            internodes and divergence angles, no class needed; main-stem classes, where the model
            has them, sharpen the main stem), or "auto": classes when the model has U and D classes
            with at least MIN_STEM_GAUSSIANS confident opaque Gaussians, else geometry.
        reference: a ROMI angles_internodes.json; the measured organ sequence (geometry) is aligned
            with it (`s3dgs.sequence.align_sequences`) into ``reference_comparison``.
        reference_scale: measured length units per reference unit (the reference's internodes are
            multiplied by it before comparing).

    Returns:
        The `measure_plant` dict plus ``run``, ``scene``, ``scale`` {"metres_per_unit", "source"},
        ``up_source``, ``ground_model``, ``pixel_size_model``, ``summary`` (one line) and ``files``.
        Raises S3dgsError (UsageError for bad options) naming the file or option.
    """
    run = Path(run_dir)
    rc, means, scales, quats, opac, probs, classes = _read_model(run)
    scene_dir = _scene_of(run, rc, scene)

    # scale
    if scale is not None:
        mpu, scale_src = parse_scale(scale)
    else:
        mpu, scale_src = scale_of_scene(scene_dir, metric_poses)
    views = _read_cameras(scene_dir)
    ground, n_bg = _fit_ground(means, opac, probs, class_threshold)
    up_vec, up_src = _choose_up(up, views, ground, n_bg, run, rc, scene_dir)
    pixel_size = _pixel_size(views, rc, means, probs, class_threshold) if views else None

    ns = None
    if node_separation is not None:
        ns = node_separation / (mpu or 1.0)
    if method not in ("auto", "classes", "geometry"):
        raise UsageError(f"--method {method!r}: choose auto, classes or geometry")
    usable, why = _stem_classes_usable(probs, opac, classes, class_threshold, min_opacity)
    geo_pts = None
    if method == "geometry" or (method == "auto" and not usable):
        why = "--method geometry" if method == "geometry" else why
        res, geo_pts = _measure_geometry(means, opac, probs, classes, up_vec, mpu, class_threshold,
                                         min_opacity, ground, why, box=scene_box(scene_dir))
    else:
        res = measure_plant(means, scales, quats, opac, probs, up=up_vec, metres_per_unit=mpu, classes=classes,
                            class_threshold=class_threshold, min_opacity=min_opacity, node_separation=ns,
                            pixel_size=pixel_size, extend_stem=extend_stem, base_rule=base,
                            ground=(ground[0], ground[1]) if ground is not None else None)
        res["measured_by"] = "classes"
    res = {"run": str(run), "scene": str(scene_dir) if scene_dir else None,
           "scale": {"metres_per_unit": mpu, "source": scale_src}, "up_source": up_src,
           "pixel_size_model": _r(pixel_size),
           "ground_model": ({"normal": _r(ground[0]), "offset": _r(ground[1]), "inliers": _r(ground[2], 3)}
                            if ground is not None else None), **res}
    if mpu is None:
        res["notes"].insert(0, "lengths are in model units: " + scale_src)
    if reference is not None:
        if res.get("method") == "geometry":
            res["reference_comparison"] = compare_to_reference(res, reference, reference_scale)
        else:
            res["notes"].append("--reference: the comparison needs divergence angles, which the geometry "
                                "method measures; rerun with --method geometry")
    res["summary"] = summary_line(res)
    if write:
        if geo_pts is not None:
            paths = write_phenotypes(res, run, geo_pts)
        else:
            paths = write_phenotypes(res, run, means, probs, opac, classes=classes,
                                     class_threshold=class_threshold, min_opacity=min_opacity)
        res["files"] = {k: str(v) for k, v in paths.items()}
    return res


def _read_model(run: Path):
    """RUN/point_cloud.ply as float64 arrays, activated, and RUN/config.json. Returns (run config,
    means [N, 3], scales [N, 3], quats [N, 4], opacities [N], probs [N, K], classes [K]); K = 0 for
    a model without semantics. S3dgsError naming the file when one is missing or unreadable."""
    import torch

    from s3dgs.config import load_run_config
    from s3dgs.gaussians.model import load_ply, semantic_probs

    ply = run / "point_cloud.ply"
    if not ply.is_file():
        from s3dgs.checkpoint import train_first_advice

        raise S3dgsError(f"{ply}: not found; {train_first_advice(run)}")
    try:
        rc = load_run_config(run)  # the run's scene, class activation and training resolution
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise S3dgsError(f"{run / 'config.json'}: unreadable ({exc}); pass --scene and --up, or "
                         "restore the file") from exc
    try:
        params, classes = load_ply(ply)
    except Exception as exc:  # plyfile raises several types for a bad file
        raise S3dgsError(f"{ply}: not a readable 3DGS PLY ({exc})") from exc
    means = params["means"].numpy().astype(np.float64)
    scales = torch.exp(params["scales"]).numpy().astype(np.float64)
    quats = params["quats"].numpy().astype(np.float64)
    opac = torch.sigmoid(params["opacities"].reshape(-1)).numpy().astype(np.float64)
    if "semantics" in params and params["semantics"].shape[1] > 0:
        probs = semantic_probs(params["semantics"], rc["train"].semantics.activation).numpy()
    else:
        probs, classes = np.zeros((len(means), 0)), ()
    probs = probs.astype(np.float64)
    return rc, means, scales, quats, opac, probs, classes


def _read_cameras(scene_dir: Optional[Path]):
    """The scene's cameras (for up and the pixel size), or None without a readable scene."""
    views = None
    if scene_dir is not None:
        try:
            from s3dgs.scene.colmap import read_model

            views = read_model(scene_dir).views
        except S3dgsError:
            views = None
    return views


def _fit_ground(means: np.ndarray, opac: np.ndarray, probs: np.ndarray, class_threshold: float):
    """The ground: a plane (`fit_ground_plane`) through opaque Gaussians of no class (at most
    20000), oriented so that the plant stands on its + side (the up fallback, the stem's floor).
    Returns ((normal [3], offset, inlier fraction) or None, the number of Gaussians fitted)."""
    maxp = probs.max(1) if probs.shape[1] else np.zeros(len(means))
    bg = np.nonzero((opac > 0.5) & (maxp < class_threshold))[0]
    if len(bg) > 20000:
        bg = np.random.default_rng(0).choice(bg, 20000, replace=False)
    ground = fit_ground_plane(means[bg])
    plant = maxp > class_threshold
    if ground is not None:
        n, d, frac = ground
        side = np.median(means[plant] @ n - d) if plant.any() else 1.0
        ground = (n, d, frac) if side >= 0 else (-n, -d, frac)  # the plant stands on its + side
    return ground, len(bg)


def _choose_up(up: str, views, ground, n_bg: int, run: Path, rc: dict, scene_dir: Optional[Path]):
    """The --up option resolved: a given vector, the cameras (`up_from_cameras`), else the ground
    plane's normal. Returns (unit up [3], where it came from); UsageError when none is found."""
    up_s = _parse_up(up)
    if isinstance(up_s, np.ndarray):
        up_vec, up_src = up_s, f"--up {up}: given"
    elif up_s in ("auto", "cameras") and views:
        centres = np.stack([v.camera_center for v in views])
        cam_ups = np.stack([-v.viewmat[1, :3] for v in views])
        up_vec, up_src = up_from_cameras(centres, cam_ups)
    elif up_s == "cameras":
        raise UsageError(f"--up cameras: no cameras found (scene {scene_dir}); pass --scene DIR or "
                         "--up ground / X,Y,Z")
    elif ground is None:
        moved = (f" The scene recorded in {run}/config.json ({rc['scene']}) is not there (moved?): pass "
                 "--scene DIR to use its cameras, or" if scene_dir is None and rc["scene"] is not None else " Pass")
        raise UsageError("--up: no cameras found, and no ground plane among the opaque background "
                         f"Gaussians.{moved} --up X,Y,Z (the plant's up direction in the model frame)")
    else:
        up_vec = ground[0]
        up_src = (f"normal of the ground plane fitted (RANSAC) to {n_bg} opaque background "
                  f"Gaussians ({ground[2]:.0%} inliers), oriented towards the plant")
    return up_vec, up_src


def _pixel_size(views, rc: dict, means: np.ndarray, probs: np.ndarray, class_threshold: float) -> float:
    """Model units per pixel at the plant in the training images: the median over the cameras of
    distance to the plant's median centre / focal length (at the training resolution)."""
    rs = float(rc["train"].data.resolution_scale)
    plant_m = (probs.max(1) > class_threshold) if probs.shape[1] else np.zeros(len(means), bool)
    target = np.median(means[plant_m], 0) if plant_m.any() else np.median(means, 0)
    dist = np.array([np.linalg.norm(v.camera_center - target) for v in views])
    fx = np.array([v.K[0, 0] * rs for v in views])
    return float(np.median(dist / fx))


@dataclass
class PhenotypeConfig:
    """Measure a trained plant: height, nodes, internodes, stem diameters, peduncles."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder holding point_cloud.ply (and config.json, which names the scene)."""
    scale: Annotated[Optional[str], opt("SCALE", "from known poses, else model units")] = None
    """Metric scale when the poses are not metric. A factor, metres per model unit (0.012); a known
    size, METRES=MODEL_LENGTH (0.30=2.45: an object 0.30 m long measures 2.45 in the model); or a
    known distance, METRES=x1,y1,z1,x2,y2,z2 (two points picked in the model, e.g. a ruler's ends).
    Known poses are metric for the synthetic scene, a scene aligned with `s3dgs run --reference`, or
    with --metric-poses; otherwise lengths are in model units, labelled so."""
    up: str = "auto"
    """The plant's up axis: auto (the camera ring's normal, else the ground plane), cameras, ground
    (plane fitted to background Gaussians), or a vector X,Y,Z in the model frame."""
    scene: Annotated[Optional[Path], opt("DIR", "RUN/config.json's scene, else RUN/../scene")] = None
    """Scene folder (for the cameras, the scale and the scan's box)."""
    metric_poses: bool = False
    """The scene's camera poses are in metres (e.g. from a calibrated rig)."""
    class_threshold: float = 0.5
    """Class probability a Gaussian needs to belong to a class."""
    min_opacity: float = 0.1
    """Opacity a Gaussian needs to count."""
    node_separation: Annotated[Optional[float], opt(
        "M", "0.025 m with a metric scale, else 3 median stem diameters")] = None
    """Node clustering cut and peduncle attachment tolerance (metres when the scale is known; tomato
    internodes are 3-12 cm)."""
    extend_stem: bool = True
    """Follow the stem past its labelled ends through opaque Gaussians (to the soil and the tip)."""
    method: Literal["auto", "classes", "geometry"] = "auto"
    """How to measure: classes (the stem classes U/N/D/P: nodes, internodes, diameters, peduncles),
    geometry (the shape of the opaque Gaussians alone: main stem, lateral organs, internodes and
    divergence angles in ROMI's convention; main-stem classes, where present, guide the main stem),
    or auto (classes when the model has confident U and D Gaussians, else geometry)."""
    reference: Annotated[Optional[Path], opt("FILE", "none")] = None
    """A ROMI angles_internodes.json to compare the measured organ sequence with (geometry method):
    organs found / missed / extra and median angle and internode errors, in phenotypes.json."""
    reference_scale: float = 1.0
    """Measured length units per unit of the reference's internodes (its internodes are multiplied
    by it before comparing)."""
    base: Literal["auto", "ground", "stem"] = "auto"
    """Base of the plant for heights: the ground plane under the stem (fitted to background
    Gaussians; auto uses it when found) or the stem's lowest reconstructed point (stem; use it for
    potted plants, where the ground found may be the bench under the pot)."""

    def validate(self) -> None:
        """Every option's value, before any work (UsageError naming the option)."""
        from s3dgs import validate as V

        V.in_range("--class-threshold", self.class_threshold, 0.0, 1.0, hi_open=True)
        V.in_range("--min-opacity", self.min_opacity, 0.0, 1.0, hi_open=True)
        V.positive("--node-separation", self.node_separation)
        V.one_of("--base", self.base, ("auto", "ground", "stem"))
        V.one_of("--method", self.method, ("auto", "classes", "geometry"))
        V.positive("--reference-scale", self.reference_scale)
        if self.reference is not None and not Path(self.reference).is_file():
            raise UsageError(f"--reference {self.reference}: file not found (give ROMI's angles_internodes.json)")
        if self.scale is not None:
            parse_scale(self.scale)
        _parse_up(self.up)


def phenotype_main(cfg: PhenotypeConfig) -> int:
    """CLI: `s3dgs phenotype RUN`."""
    from s3dgs.runlock import run_lock

    cfg.validate()
    if Path(cfg.run).is_dir():  # RUN/phenotypes.* must be writable before the measuring
        from s3dgs.atomic import check_writable_folder

        check_writable_folder(cfg.run, "RUN", files=("phenotypes.json", "phenotypes.csv", "phenotypes.png"))
    with run_lock(cfg.run, "s3dgs phenotype", create=False):  # no other command writes into RUN meanwhile
        res = run_phenotype(cfg.run, scale=cfg.scale, up=cfg.up, scene=cfg.scene, metric_poses=cfg.metric_poses,
                            class_threshold=cfg.class_threshold, min_opacity=cfg.min_opacity,
                            node_separation=cfg.node_separation, extend_stem=cfg.extend_stem, base=cfg.base,
                        method=cfg.method, reference=cfg.reference, reference_scale=cfg.reference_scale)
    print(format_summary(res))
    print(f"-> {res['files']['json']}, {Path(res['files']['csv']).name}, {Path(res['files']['png']).name}")
    return 0
