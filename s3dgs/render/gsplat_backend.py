"""The ``gsplat`` backend (CUDA only): one ``gsplat.rasterization`` call for all channels."""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import sh_colors


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
    """Same contract as :func:`s3dgs.render.render`; see there."""
    from gsplat import rasterization

    from .api import RenderOutput

    C = viewmats.shape[0]
    N = means.shape[0]
    if sh_degree is not None:
        rgb = sh_colors(sh_degree, means, colors, viewmats)  # [C, N, 3]
    else:
        rgb = colors[None].expand(C, N, 3)
    E = 0
    feats = rgb
    if extra is not None:
        E = extra.shape[-1]
        feats = torch.cat([rgb, extra[None].expand(C, N, E).to(rgb.dtype)], dim=-1)
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
