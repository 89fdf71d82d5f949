"""What every backend shares: the output of a render and the per-Gaussian colour features.

:class:`RenderOutput` is what :func:`s3dgs.render.render` returns whatever the backend, and
:func:`color_features` is the one place where SH coefficients (or plain RGB) and the extra channels
become the per-camera feature rows that a rasteriser blends, so that the CPU backends
(:mod:`s3dgs.render.api`) and the CUDA one (:mod:`s3dgs.render.gsplat_backend`) cannot drift apart
and need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .projection import sh_colors

__all__ = ["RenderOutput", "color_features"]


@dataclass
class RenderOutput:
    """What :func:`s3dgs.render.render` returns. ``C`` cameras, ``H x W`` pixels, ``E`` extra channels."""

    colors: Tensor
    """``[C, H, W, 3]`` RGB composited over the background: ``c + (1 - alpha) bg``."""
    extras: Tensor | None
    """``[C, H, W, E]`` alpha-blended extra channels (no background), or None without ``extra``."""
    depths: Tensor | None
    """``[C, H, W, 1]`` expected camera z, blended z / alpha (0 where alpha = 0), or None."""
    alphas: Tensor
    """``[C, H, W, 1]`` accumulated opacity."""
    meta: dict[str, Any]
    """What densification needs, gsplat-compatible (see :func:`s3dgs.render.render`)."""


def color_features(
    means: Tensor,  # [N, 3]
    colors: Tensor,  # [N, K, 3] SH with sh_degree, else [N, 3] RGB
    viewmats: Tensor,  # [C, 4, 4]
    sh_degree: int | None,
    extra: Tensor | None = None,  # [N, E]
) -> Tensor:
    """The features every camera blends: RGB then the extra channels, ``[C, N, 3 + E]``.

    With ``sh_degree`` the RGB is evaluated from the SH coefficients the gsplat way (direction from
    the camera centre to the mean, ``+0.5``, clamped at 0); without it ``colors`` is RGB. The
    extra channels are cast to the colour dtype.
    """
    C, N = viewmats.shape[0], means.shape[0]
    if sh_degree is not None:
        rgb = sh_colors(sh_degree, means, colors, viewmats)  # [C, N, 3]
    else:
        rgb = colors[None].expand(C, N, 3)
    if extra is None:
        return rgb
    E = extra.shape[-1]
    return torch.cat([rgb, extra[None].expand(C, N, E).to(rgb.dtype)], dim=-1)
