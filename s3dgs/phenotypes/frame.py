"""Step 1, the frame: the plant's up axis (the camera ring, the cameras' up, or the ground plane:
a RANSAC plane through opaque background Gaussians) and the metric scale (``--scale``, else known
poses: a synthetic scene, a scene aligned to a reference, units.json, or ``--metric-poses``); the
box the plant stands in, when the scene knows it.

Hand-written here, and why: a small RANSAC plane fit for the ground (scikit-learn's
RANSACRegressor fits z = f(x, y), which fails when the ground is vertical in the model's frame; SfM
frames have any orientation)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from s3dgs.errors import S3dgsError, UsageError
from s3dgs.phenotypes.common import _unit

SCALE_HELP = ("--scale takes one of: a factor, metres per model unit (e.g. 0.012); a known size, "
              "METRES=MODEL_LENGTH (e.g. 0.30=2.45: an object 0.30 m long measures 2.45 in the "
              "model); a known distance, METRES=x1,y1,z1,x2,y2,z2 (two points picked in the model, "
              "e.g. a ruler's ends, that are METRES apart)")


def _parse_up(text: str):
    """The --up option: "auto", "cameras", "ground", or a unit vector [3] from "X,Y,Z"."""
    t = str(text).strip().lower()
    if t in ("auto", "cameras", "ground"):
        return t
    try:
        vec = [float(v) for v in t.split(",")]
        if len(vec) != 3 or not all(math.isfinite(v) for v in vec):
            raise ValueError
        return _unit(vec)
    except (ValueError, UsageError):
        raise UsageError(f"--up {text!r}: give auto, cameras, ground, or a vector X,Y,Z in the model "
                         "frame (e.g. 0,0,1)") from None


def parse_scale(text: str) -> tuple[float, str]:
    """Parse the ``--scale`` option. Returns (metres per model unit, a sentence saying where it came
    from). Raises UsageError naming --scale and its three forms."""
    t = str(text).strip().replace(" ", "")

    def num(s: str, what: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise UsageError(f"--scale {text!r}: {what} {s!r} is not a number. {SCALE_HELP}") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"--scale {text!r}: {what} must be a positive number. {SCALE_HELP}")
        return v

    if "=" not in t:
        f = num(t, "the factor")
        return f, f"--scale {t}: {f:g} metres per model unit, given"
    left, right = t.split("=", 1)
    metres = num(left, "the known length in metres")
    parts = [p for p in right.split(",") if p != ""]
    if len(parts) == 1:
        model = num(parts[0], "the model length")
        return metres / model, (f"--scale {t}: a known size, {metres:g} m measuring {model:g} model "
                                f"units -> {metres / model:g} m per unit")
    if len(parts) == 6:
        try:
            xyz = np.array([float(p) for p in parts]).reshape(2, 3)
        except ValueError:
            raise UsageError(f"--scale {text!r}: the six coordinates must be numbers. {SCALE_HELP}") from None
        d = float(np.linalg.norm(xyz[1] - xyz[0]))
        if not np.isfinite(d) or d <= 0:
            raise UsageError(f"--scale {text!r}: the two points coincide. {SCALE_HELP}")
        return metres / d, (f"--scale {t}: a known distance, {metres:g} m between two model points "
                            f"{d:.6g} units apart -> {metres / d:g} m per unit")
    raise UsageError(f"--scale {text!r}: after '=' give one model length or six coordinates, got "
                     f"{len(parts)} numbers. {SCALE_HELP}")


def up_from_cameras(centres: np.ndarray, cam_ups: np.ndarray) -> tuple[np.ndarray, str]:
    """Up from a capture. centres [C, 3] camera centres, cam_ups [C, 3] each camera's up (-y axis).

    When the centres span a plane (a ring or an arc around the plant) and its normal is within 60
    degrees of the cameras' mean up, up = that normal, oriented like the cameras' up; otherwise
    (forward-facing or line captures) the cameras' mean up. Returns (unit up [3], which was used)."""
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    mean_up = np.asarray(cam_ups, np.float64).reshape(-1, 3).mean(0)
    if np.linalg.norm(mean_up) < 1e-9:
        raise S3dgsError("the cameras' up directions cancel out; pass --up X,Y,Z")
    mean_up = mean_up / np.linalg.norm(mean_up)
    if len(centres) >= 4:
        _, s, vt = np.linalg.svd(centres - centres.mean(0), full_matrices=False)
        n = vt[2]
        if s[1] > 0.2 * s[0] and s[2] < 0.5 * s[1] and abs(n @ mean_up) > 0.5:
            n = n if n @ mean_up > 0 else -n
            return n, (f"normal of the plane of the {len(centres)} camera centres (a ring around the "
                       "plant), oriented like the cameras' up")
    return mean_up, (f"mean up direction (-y) of the {len(centres)} cameras (their centres do not "
                     "span a ring around the plant)")


def fit_ground_plane(points: np.ndarray, *, tol: float | None = None, iterations: int = 400,
                     seed: int = 0) -> tuple[np.ndarray, float, float] | None:
    """RANSAC plane through points [M, 3] (e.g. opaque background Gaussians). Returns (unit normal
    [3], offset d with normal . x = d, inlier fraction), or None with fewer than 10 points or when
    the best plane's inliers lie along a line. `tol` defaults to 1 % of the points' robust extent.
    The normal's sign is arbitrary."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) < 10:
        return None
    rng = np.random.default_rng(seed)
    if tol is None:
        lo, hi = np.percentile(p, [5, 95], axis=0)
        tol = 0.01 * float(np.linalg.norm(hi - lo)) or 1e-6
    best, best_n = None, -1
    for _ in range(iterations):
        a, b, c = p[rng.choice(len(p), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n /= np.linalg.norm(n)
        k = int((np.abs((p - a) @ n) < tol).sum())
        if k > best_n:
            best, best_n = (n, float(n @ a)), k
    if best is None:
        return None
    n, d = best
    inl = np.abs(p @ n - d) < tol
    c = p[inl].mean(0)  # least-squares refinement on the inliers
    _, sv, vt = np.linalg.svd(p[inl] - c, full_matrices=False)
    if sv[1] < 0.2 * sv[0]:
        return None  # the inliers lie along a line (a stem, an edge): not a ground
    n2 = vt[2] if vt[2] @ n > 0 else -vt[2]
    return n2, float(n2 @ c), float(inl.mean())


def scene_box(scene: Optional[Path]) -> Optional[np.ndarray]:
    """The box [2, 3] the plant stands in, when the scene knows it: a ROMI scan's workspace or
    bounding box, as `s3dgs prepare` carved it (prepare.json ``carve.box``); else None."""
    if scene is None or not (Path(scene) / "prepare.json").is_file():
        return None
    try:
        box = json.loads((Path(scene) / "prepare.json").read_text()).get("carve", {}).get("box")
        box = np.asarray(box, np.float64)
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
    return box if box.shape == (2, 3) and np.isfinite(box).all() and (box[1] > box[0]).all() else None


def scale_of_scene(scene: Optional[Path], metric_poses: bool = False) -> tuple[float | None, str]:
    """Metric scale from what is known about a scene's poses: (metres per unit or None, source)."""
    if scene is not None:
        al = scene / "alignment.json"
        if al.is_file():
            try:
                a = json.loads(al.read_text())
            except json.JSONDecodeError:
                a = {}
            ref = Path(str(a.get("reference", "")))
            if (ref / "gt" / "meta.json").is_file():
                return 1.0, (f"known poses: the scene was aligned to the reference {ref} (Sim3 from "
                             f"{a.get('matched_cameras')} cameras, alignment.json), whose poses are "
                             "metric (a synthetic scene, metres)")
            return 1.0, (f"known poses: the scene was aligned to the reference {ref} (alignment.json); "
                         "lengths are in the reference's units, taken as metres")
        if (scene / "gt" / "meta.json").is_file() and (scene / "gt" / "stems.json").is_file():
            return 1.0, "known poses: the synthetic scene's true poses are metric (metres)"
        un = scene / "units.json"
        if un.is_file():
            try:
                u = json.loads(un.read_text())
            except (OSError, json.JSONDecodeError):
                u = {}
            mpu = u.get("metres_per_unit") if isinstance(u, dict) else None
            if isinstance(mpu, (int, float)) and mpu > 0:
                return float(mpu), f"known poses: {u.get('source', un)} (units.json: {u.get('units')})"
    if metric_poses:
        return 1.0, "known poses: --metric-poses says the scene's poses are in metres"
    return None, ("none: structure from motion is up to scale; lengths are in model units (give "
                  "--scale, or align the scene to a reference with known poses)")
