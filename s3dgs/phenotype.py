"""The phenotypes under their old module name: the code lives in the package `s3dgs/phenotypes/`
(one module per step; its docstring describes the steps). Every name this module held is
re-exported here, so `from s3dgs.phenotype import measure_plant, run_phenotype, ...` and the CLI's
``s3dgs.phenotype`` entry keep working. New code imports `s3dgs.phenotypes`."""

from __future__ import annotations

from s3dgs.phenotypes import *  # noqa: F403
from s3dgs.phenotypes import __all__  # noqa: F401
from s3dgs.phenotypes.centreline import (  # noqa: F401
    Centreline,
    _bin_medians,
    _continue_to_stem_top,
    _curve_fit,
    _extend,
    fit_centreline,
)
from s3dgs.phenotypes.clusters import _average_linkage, _components  # noqa: F401
from s3dgs.phenotypes.common import (  # noqa: F401
    PlantGaussians,
    _basis,
    _covariances,
    _r,
    _r_tree,
    _unit,
    _wmedian,
)
from s3dgs.phenotypes.diameter import ALPHA_MAX, ALPHA_MIN, EPS2D, silhouette_diameter  # noqa: F401
from s3dgs.phenotypes.frame import (  # noqa: F401
    SCALE_HELP,
    _parse_up,
    fit_ground_plane,
    parse_scale,
    scale_of_scene,
    scene_box,
    up_from_cameras,
)
from s3dgs.phenotypes.geometry import (  # noqa: F401
    GEOMETRY_CSV_COLUMNS,
    MAX_GROUND_SHARE,
    MIN_STEM_GAUSSIANS,
    ORGAN_CLASS_NAMES,
    _measure_geometry,
    _stem_classes_usable,
    compare_to_reference,
    geometry_csv_text,
    plot_geometry,
)
from s3dgs.phenotypes.io import (  # noqa: F401
    CSV_COLUMNS,
    csv_text,
    format_summary,
    plot_phenotypes,
    summary_line,
    write_phenotypes,
)
from s3dgs.phenotypes.measure import measure_plant  # noqa: F401
from s3dgs.phenotypes.nodes import NODE_SEPARATION_M  # noqa: F401
from s3dgs.phenotypes.run import PhenotypeConfig, _scene_of, phenotype_main, run_phenotype  # noqa: F401
