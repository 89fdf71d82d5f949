"""The ``gsplat`` backend (CUDA only): one ``gsplat.rasterization`` call for all channels."""

from __future__ import annotations

import torch
from torch import Tensor

from .types import RenderOutput, color_features


def render_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None,
    extra: Tensor | None,
    render_depth: bool,
    backgrounds: Tensor | None,
    near: float,
    far: float,
    absgrad: bool,
    eps2d: float,
    antialiased: bool,
    tile_size: int,
):
    """Same contract as :func:`s3dgs.render.render`; see there. Returns a :class:`RenderOutput`."""
    from gsplat import rasterization

    C = viewmats.shape[0]
    feats = color_features(means, colors, viewmats, sh_degree, extra)  # [C, N, 3 + E]
    E = 0 if extra is None else extra.shape[-1]
    bgs = None
    if backgrounds is not None:
        bgs = torch.cat([backgrounds, backgrounds.new_zeros(C, E)], dim=-1) if E else backgrounds
    img, alphas, meta = rasterization(
        means, quats, scales, opacities, feats.contiguous(), viewmats, Ks, width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, sh_degree=None, packed=False,
        tile_size=tile_size, backgrounds=bgs,
        render_mode="RGB+ED" if render_depth else "RGB",
        rasterize_mode="antialiased" if antialiased else "classic",
        absgrad=absgrad,
    )
    depths = None
    if render_depth:
        depths = img[..., -1:]
        img = img[..., :-1]
    meta = dict(meta)
    meta.update({"absgrad": absgrad, "backend": "gsplat", "n_cameras": C})
    return RenderOutput(
        colors=img[..., :3],
        extras=img[..., 3 : 3 + E] if extra is not None else None,
        depths=depths,
        alphas=alphas,
        meta=meta,
    )
