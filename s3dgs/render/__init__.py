"""One ``render(...)`` call for colour, semantic channels, expected depth and alpha.

Backends (``backend=`` of :func:`render`):

- ``native`` (CPU, the default there): EWA projection and SH in plain torch, then a C++ tiled
  rasteriser with OpenMP threads and a hand-written backward (:mod:`s3dgs.render.native`), compiled
  on first use. It is hand-written because the CPU options elsewhere do not fit training here:
  gsplat's rasteriser is CUDA-only (its pure-torch functions run on a CPU, but its tile
  intersection does not), and OpenSplat's CPU rasteriser is single-threaded and untiled.
- ``torch`` (any device): the same algorithm in plain torch with a hand-written backward
  (:mod:`s3dgs.render.raster`): readable, and the fallback when the C++ extension cannot be built.
- ``gsplat`` (CUDA): SH to RGB here, then one ``gsplat.rasterization(render_mode="RGB+ED")``.
- ``auto``: gsplat when the tensors are on CUDA and its extension loads, else native, else torch.

:mod:`s3dgs.render.reference` is a dense brute-force renderer in plain autograd, the yardstick
the tests hold every backend to.
"""

from .api import gsplat_available, render
from .native import native_available
from .projection import eval_sh, project_gaussians, quat_to_rotmat, sh_colors
from .types import RenderOutput, color_features

__all__ = [
    "RenderOutput",
    "color_features",
    "eval_sh",
    "gsplat_available",
    "native_available",
    "project_gaussians",
    "quat_to_rotmat",
    "render",
    "sh_colors",
]
