"""Phenotypes from a trained model: plant height, nodes, internode lengths, stem diameters, peduncles.

    s3dgs phenotype RUN [--scale 0.30=2.45 | --scale 0.30=x1,y1,z1,x2,y2,z2 | --scale 0.012]

    from s3dgs.phenotypes import measure_plant, run_phenotype   # (s3dgs.phenotype: the same names)
    res = measure_plant(means, scales, quats, opacities, probs, up=(0, 0, 1), metres_per_unit=1.0)
    res = run_phenotype("out/run")   # reads RUN/point_cloud.ply, writes phenotypes.json/.csv/.png

`measure_plant` works on arrays (Gaussians as the model holds them, activated); `run_phenotype`
finds the up axis and the metric scale of a run folder, calls it, and writes the files. The steps,
each written into ``phenotypes.json`` (``method``) with the thresholds it used:

1. **Frame.** Up: the normal of the camera ring (the plane of the camera centres, oriented like
   the cameras' up), else the cameras' mean up, else the normal of the ground plane fitted to
   opaque background Gaussians; ``up_source`` says which. Scale: ``--scale``, else known poses (the
   synthetic scene, or a scene aligned to a reference with `s3dgs run --reference`), else none:
   model units; ``scale.source`` says which.
2. **Classes.** A Gaussian is of class C when its class probability exceeds ``class_threshold``
   and its opacity ``min_opacity`` (the rule of `s3dgs export`).
3. **Main stem.** Its centreline is a smoothing spline (scipy ``UnivariateSpline``, FITPACK; each
   point weighted by the standard error of its median, residuals at the noise level) of the
   horizontal position against height through the weighted medians of the U, N and D Gaussians in
   height bins, refitted without the Gaussians farther than three median residuals of the first fit
   (robust to mislabelled leaf and floater Gaussians). A tomato main stem does not fold back on itself, so
   height parametrises it; lengths are arc lengths along the curve, not chords. Nor does it run
   sideways: the curve ends where it would lean more than 45 degrees from up (a curve pulled
   towards a stray cluster of stem-labelled Gaussians beside the plant does). Past the labelled
   stretch the centreline is followed through Gaussians (not P) in a tube along its end tangent,
   not below the ground: the heatmaps label the stem only up to the U/D keypoints, not down to
   the soil or up to the tip; ``stem.extended`` says how far. Heights are measured from the ground
   plane under the stem when one is found (``--base stem``: from the stem's lowest point).
4. **Nodes.** Confident N Gaussians within reach of the centreline, clustered by scipy's
   hierarchical clustering (average linkage) cut at ``node_separation`` (2.5 cm with a metric
   scale, else 3 median stem diameters); clusters with too little support are dropped and counted
   in the notes, clusters closer than ``node_separation`` along the stem are one node. Position =
   weighted mean, ordered by arc length from the base; confidence = opacity-weighted mean N
   probability of its Gaussians.
5. **Internodes.** Arc length along the centreline between consecutive nodes (and the chord).
6. **Stem diameter** per internode, over its middle half (away from the node swellings): the width
   of the silhouette the opaque (> 0.5) U and D Gaussians draw, in orthographic side views from
   ``n_views`` directions around the axis. A 3DGS Gaussian draws alpha = min(0.999, o exp(-d^T S^-1 d / 2))
   with S its projected covariance (plus the rasteriser's 0.3 px^2 low-pass at the training
   images' pixel size, when known); a stem's edge in an image is where the accumulated alpha
   1 - prod(1 - alpha) crosses 0.5. So the diameter is what the Gaussians draw, whether the model
   put flat Gaussians on the stem's surface (centres at radius r, thin across it) or a row of round
   ones on its axis (centres at radius 0, edge near sigma sqrt(2 ln 2o)): the spread of the centres
   alone is right only in the first case, the scales alone only in the second. Checked against
   the rasteriser in tests/test_phenotype.py. Semi-transparent Gaussians are left out: around a
   thin stem the model fits them with the colours of what lies behind as much as of the stem, so
   they add alpha where the images show no stem.
7. **Peduncles.** Confident P Gaussians linked into branches (single linkage at ``peduncle_link``:
   connected components of the cut-off graph); a branch whose nearest Gaussian is within reach of
   the stem and within ``node_separation`` of a node along it belongs to that node; pieces of one
   branch (leaving the stem the same way, or continuing an attached branch across a gap) count once.

8. **Geometry only** (``--method geometry``, or ``auto`` when the model has no U and D classes or
   under MIN_STEM_GAUSSIANS confident ones): `s3dgs.organs.measure_organs` on the opaque Gaussians
   (main stem, lateral organs, internodes, divergence angles in ROMI's convention; main-stem classes,
   where present, guide the main stem); ``--reference`` aligns the sequence with a ROMI
   angles_internodes.json (`s3dgs.sequence`) into ``reference_comparison``. The main stem's
   centreline of the class path is also carried on through stem-class Gaussians connected above its
   top, or a note says by how much it may be cut short.

Where each step lives: 1 `frame.py` (up, ground, scale, the scan's box); 2 `common.py`
(`PlantGaussians`, with small helpers); 3 `stem.py` (the step), `centreline.py` (the curve, the
tube following) and `clusters.py`; 4-5 `nodes.py`; 6 `diameter.py` (`silhouette_diameter`); 7
`peduncles.py`; 8 `geometry.py`. `measure.py` holds `measure_plant`, which calls steps 2-7 in turn;
`io.py` writes the files and summaries; `run.py` holds `run_phenotype` and the CLI command
(`PhenotypeConfig`, `phenotype_main`). `s3dgs/phenotype.py` re-exports all of it under its old name.

Hand-written in this package, and why: the silhouette width (no library renders a 1D
orthographic scanline of 3D Gaussians; the formula is the rasteriser's, `s3dgs.render.raster`),
the tube following at the stem's ends, and a small RANSAC plane fit for the ground (scikit-learn's
RANSACRegressor fits z = f(x, y), which fails when the ground is vertical in the model's frame; SfM
frames have any orientation). Clustering, splines, trees and the assignment are scipy's.

Units: lengths are in metres when the scale is known (``units: "m"``), else in the model's units
(``units: "model units"``, labelled so everywhere); positions stay in the model's frame.
"""

from s3dgs.phenotypes.centreline import Centreline, fit_centreline
from s3dgs.phenotypes.common import PlantGaussians
from s3dgs.phenotypes.diameter import silhouette_diameter
from s3dgs.phenotypes.frame import (
                                    SCALE_HELP,
                                    fit_ground_plane,
                                    parse_scale,
                                    scale_of_scene,
                                    scene_box,
                                    up_from_cameras,
)
from s3dgs.phenotypes.geometry import (
                                    GEOMETRY_CSV_COLUMNS,
                                    MIN_STEM_GAUSSIANS,
                                    compare_to_reference,
                                    geometry_csv_text,
                                    plot_geometry,
)
from s3dgs.phenotypes.io import (
                                    CSV_COLUMNS,
                                    csv_text,
                                    format_summary,
                                    plot_phenotypes,
                                    summary_line,
                                    write_phenotypes,
)
from s3dgs.phenotypes.measure import measure_plant
from s3dgs.phenotypes.nodes import NODE_SEPARATION_M
from s3dgs.phenotypes.run import PhenotypeConfig, phenotype_main, run_phenotype

__all__ = [
                                    "CSV_COLUMNS",
                                    "GEOMETRY_CSV_COLUMNS",
                                    "MIN_STEM_GAUSSIANS",
                                    "NODE_SEPARATION_M",
                                    "SCALE_HELP",
                                    "Centreline",
                                    "PhenotypeConfig",
                                    "PlantGaussians",
                                    "compare_to_reference",
                                    "csv_text",
                                    "fit_centreline",
                                    "fit_ground_plane",
                                    "format_summary",
                                    "geometry_csv_text",
                                    "measure_plant",
                                    "parse_scale",
                                    "phenotype_main",
                                    "plot_geometry",
                                    "plot_phenotypes",
                                    "run_phenotype",
                                    "scale_of_scene",
                                    "scene_box",
                                    "silhouette_diameter",
                                    "summary_line",
                                    "up_from_cameras",
                                    "write_phenotypes",
]
