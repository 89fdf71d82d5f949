"""One ``render(...)`` call for colour, semantic channels, expected depth and alpha.

Backends:

- ``torch`` (any device; what CPUs use): EWA projection in plain torch plus a tiled rasteriser
  with a hand-written backward (:mod:`s3dgs.render.raster`). It is hand-written because gsplat,
  the field's rasteriser, has no CPU path: ``gsplat.rasterization`` and even its "torch" variant
  call CUDA-only kernels, so without this module nothing could train a splat on a CPU.
- ``gsplat`` (CUDA): SH to RGB here, then one ``gsplat.rasterization(render_mode="RGB+ED")``.
- ``auto``: gsplat when the tensors are on CUDA and its extension loads, else torch.
"""

from .api import RenderOutput, gsplat_available, render
from .projection import eval_sh, project_gaussians, quat_to_rotmat, sh_colors

__all__ = [
    "RenderOutput",
    "eval_sh",
    "gsplat_available",
    "project_gaussians",
    "quat_to_rotmat",
    "render",
    "sh_colors",
]
