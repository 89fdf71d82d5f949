"""Align a structure-from-motion scene to a reference scene with known poses (pycolmap Sim3).

Structure from motion recovers the scene only up to a similarity (scale, rotation, translation).
When a reference with true poses exists (the synthetic plant), the prepared model is moved into
the reference's frame by the similarity that best maps its camera centres onto the true ones
(`pycolmap.estimate_sim3d`, matched by image name), so that training, evaluation against ground
truth, and lengths measured on the result are in the reference's frame and units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from s3dgs.atomic import atomic_write_text
from s3dgs.scene.colmap import SceneError, find_model_dir, import_pycolmap, read_model


def align_to_reference(scene: str | Path, reference: str | Path) -> dict:
    """Transform `scene`'s COLMAP model and points3D.ply into `reference`'s world frame, in place.

    Returns a summary: number of matched cameras, scale, camera-centre error after alignment
    (median and max, in reference units, and as a share of the reference cameras' spread).
    Writes the same summary to SCENE/alignment.json.
    """
    pycolmap = import_pycolmap()

    scene, reference = Path(scene), Path(reference)
    ours = read_model(scene)
    ref = read_model(reference)
    ref_centres = {v.name: v.camera_center for v in ref.views}
    names = [v.name for v in ours.views if v.name in ref_centres]
    if len(names) < 3:
        raise SceneError(f"{scene}: only {len(names)} of its images are in the reference {reference}; "
                         "alignment needs at least 3 cameras with the same names")
    src = np.stack([ours.view_by_name(n).camera_center for n in names])
    tgt = np.stack([ref_centres[n] for n in names])
    sim = pycolmap.estimate_sim3d(src, tgt)
    if sim is None:
        raise SceneError(f"{scene}: no similarity maps its cameras onto {reference}'s (degenerate layout)")
    model_dir = find_model_dir(scene)
    rec = pycolmap.Reconstruction(str(model_dir))
    rec.transform(sim)
    rec.write_binary(str(model_dir))
    for ext in ("txt",):  # a text copy would now be stale
        for f in ("cameras", "images", "points3D", "rigs", "frames"):
            (model_dir / f"{f}.{ext}").unlink(missing_ok=True)
    ply = scene / "points3D.ply"
    if ply.exists():
        from s3dgs.scene.ply import read_points_ply, write_points_ply

        xyz, rgb = read_points_ply(ply)
        M = np.asarray(sim.matrix())  # [3, 4] = [s R | t]
        write_points_ply(ply, xyz @ M[:, :3].T + M[:, 3], rgb)
    moved = read_model(scene)
    err = np.linalg.norm(np.stack([moved.view_by_name(n).camera_center for n in names]) - tgt, axis=1)
    spread = float(np.linalg.norm(tgt - tgt.mean(0), axis=1).max())
    summary = {"reference": str(reference), "matched_cameras": len(names), "scale": float(sim.scale),
               "centre_error_median": float(np.median(err)), "centre_error_max": float(err.max()),
               "centre_error_median_pct_of_spread": float(100 * np.median(err) / spread),
               "centre_error_max_pct_of_spread": float(100 * err.max() / spread)}
    atomic_write_text(scene / "alignment.json", json.dumps(summary, indent=2))
    return summary
