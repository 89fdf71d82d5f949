"""The one rendering call: colour, semantic channels, depth and alpha in a single pass."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..errors import UsageError
from .native import native_available, rasterize_native
from .native_project import native_project_available, project_native
from .projection import project_gaussians
from .raster import build_plan, chunk_budget, rasterize
from .types import RenderOutput, color_features

BACKENDS = ("auto", "native", "torch", "gsplat")

# Elements per [tiles, pixels, Gaussians] chunk of the torch backend: None follows
# raster.chunk_budget() (the one rule); a number overrides it (tests force small chunks).
DEFAULT_BUDGET: int | None = None

logger = logging.getLogger("s3dgs.render")

_GSPLAT_OK: bool | None = None
_ANNOUNCED: set = set()


def gsplat_available() -> bool:
    """True when CUDA is present and gsplat's CUDA extension loads (checked once)."""
    global _GSPLAT_OK
    if _GSPLAT_OK is None:
        ok = False
        if torch.cuda.is_available():
            try:
                from gsplat.cuda._backend import _C

                ok = _C is not None
            except (ImportError, OSError, RuntimeError) as e:  # pragma: no cover - machine-dependent
                logger.info("gsplat CUDA extension unavailable (%s); using the torch backend", e)
        _GSPLAT_OK = ok
    return _GSPLAT_OK


def _native_ok(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and native_available()


def _pick_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and gsplat_available():
            chosen = "gsplat"
        else:
            chosen = "native" if _native_ok(device, dtype) else "torch"
        if chosen not in _ANNOUNCED:
            _ANNOUNCED.add(chosen)
            logger.info("s3dgs.render: backend 'auto' uses '%s' on %s", chosen, device)
        return chosen
    if backend == "gsplat" and not (device.type == "cuda" and gsplat_available()):
        raise UsageError(
            "backend='gsplat' needs CUDA tensors and gsplat's CUDA extension; "
            "use backend='native', 'torch' or 'auto' on this machine"
        )
    if backend == "native":
        if device.type != "cpu":
            raise UsageError(
                f"backend='native' is the CPU rasteriser and the tensors are on {device}; "
                "use backend='gsplat' or 'auto' there"
            )
        # without the extension (build failed, S3DGS_NO_NATIVE=1; logged once) or for a dtype it
        # does not take, the torch rasteriser computes the same images
        return "native" if _native_ok(device, dtype) else "torch"
    return backend


def render(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, (d+1)^2, 3] with sh_degree, else [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    extra: Tensor | None = None,  # [N, E]
    render_depth: bool = True,
    backgrounds: Tensor | None = None,  # [C, 3]
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    absgrad: bool = False,
    eps2d: float = 0.3,
    antialiased: bool = False,
    tile_size: int = 8,
) -> RenderOutput:
    """Render Gaussians into ``C`` cameras: colour, extra channels, expected depth and alpha.

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations (w, x, y, z), normalised here.
        scales: ``[N, 3]`` activated (positive) scales.
        opacities: ``[N]`` activated opacities in ``[0, 1]``.
        colors: SH coefficients ``[N, K, 3]`` (``K >= (sh_degree+1)^2``) when ``sh_degree`` is
            given, else RGB ``[N, 3]``. SH are evaluated the gsplat way: direction from the camera
            centre to the mean, ``+0.5``, clamped at 0.
        viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
        Ks: ``[C, 3, 3]`` intrinsics in pixels, pixel centres at ``+0.5``.
        width, height: image size in pixels.
        extra: ``[N, E]`` extra per-Gaussian channels (e.g. semantic probabilities), blended
            with the same weights as colour, without background.
        render_depth: also return the expected depth.
        backgrounds: ``[C, 3]`` background colours.
        near, far: depth culling planes (camera z).
        backend: ``"native"`` (C++ on the CPU: projection, SH and feature rows in one pass,
            :mod:`s3dgs.render.native_project`, unless ``viewmats`` or ``Ks`` require a gradient,
            then the torch projection; the rasteriser :mod:`s3dgs.render.native`; falls back
            to ``"torch"`` when it cannot be built, with one log line), ``"torch"`` (the readable
            plain-torch projection and rasteriser, any device), ``"gsplat"`` (CUDA) or ``"auto"`` (gsplat on
            CUDA, else native, else torch).
        absgrad: also compute ``meta["means2d"].absgrad`` ``[C, N, 2]``, the sum over pixels of
            the absolute per-pixel gradient (AbsGS), during backward.
        eps2d: low-pass added to the 2D covariance, in pixels^2.
        antialiased: gsplat's antialiased mode (opacity times the low-pass compensation).
        tile_size: tile edge in pixels.

    Returns:
        :class:`RenderOutput`. ``meta`` holds ``means2d [C, N, 2]`` (its ``.grad`` is filled on
        backward once ``retain_grad()`` is called, as gsplat's ``DefaultStrategy`` does),
        ``radii [C, N, 2]`` int32 (0 = not drawn), ``depths [C, N]``, ``conics [C, N, 3]``,
        ``opacities [C, N]``, ``width``, ``height``, ``n_cameras``, ``tile_size``, ``absgrad``,
        ``backend`` and ``gaussian_ids = camera_ids = None`` (unpacked layout).
    """
    C = viewmats.shape[0]
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, extra, backgrounds)
    chosen = _pick_backend(backend, means.device, means.dtype)
    if chosen == "gsplat":
        from .gsplat_backend import render_gsplat

        return render_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, extra=extra, render_depth=render_depth, backgrounds=backgrounds,
            near=near, far=far, absgrad=absgrad, eps2d=eps2d, antialiased=antialiased,
            tile_size=tile_size,
        )

    E = 0 if extra is None else extra.shape[-1]
    camera_grad = torch.is_grad_enabled() and (viewmats.requires_grad or Ks.requires_grad)
    if chosen == "native" and not camera_grad and native_project_available():
        # projection, SH, extra and depth channels in one C++ pass (no camera gradients there)
        proj = project_native(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, extra=extra, render_depth=render_depth, eps2d=eps2d, near=near,
            far=far, antialiased=antialiased,
        )
        feats = proj.feats
    else:
        proj = project_gaussians(
            means, quats, scales, opacities, viewmats, Ks, width, height,
            eps2d=eps2d, near=near, far=far, antialiased=antialiased,
        )
        feats = color_features(means, colors, viewmats, sh_degree, extra)  # [C, N, 3 + E]
        if render_depth:
            feats = torch.cat([feats, proj.depths[..., None].to(feats.dtype)], dim=-1)
        feats = feats.contiguous()

    if chosen == "native":
        img, alphas, n_isects = rasterize_native(
            proj.means2d, proj.conics, proj.opacities, feats, proj.radii, proj.depths, width,
            height, tile_size, absgrad=absgrad,
        )
    else:
        budget = DEFAULT_BUDGET if DEFAULT_BUDGET is not None else chunk_budget()
        plan = build_plan(
            proj.means2d, proj.radii, proj.depths, width, height, tile_size, budget,
            conics=proj.conics, opacities=proj.opacities,
        )
        img, alphas = rasterize(proj.means2d, proj.conics, proj.opacities, feats, plan, absgrad=absgrad)
        n_isects = plan.n_isects

    out_colors = img[..., :3]
    if backgrounds is not None:
        out_colors = out_colors + (1.0 - alphas) * backgrounds[:, None, None, :]
    extras = img[..., 3 : 3 + E] if extra is not None else None
    depths = None
    if render_depth:
        depths = img[..., 3 + E : 4 + E] / alphas.clamp_min(1e-10)

    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()  # .grad filled on backward, as gsplat's DefaultStrategy expects
    meta = {
        "means2d": means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": tile_size,
        "n_isects": n_isects,
        "gaussian_ids": None,
        "camera_ids": None,
        "absgrad": absgrad,
        "backend": chosen,
    }
    return RenderOutput(colors=out_colors, extras=extras, depths=depths, alphas=alphas, meta=meta)


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, extra, backgrounds):
    N = means.shape[0]
    C = viewmats.shape[0]

    def need(cond, msg):
        if not cond:
            raise ValueError(msg)

    need(means.dim() == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    need(tuple(quats.shape) == (N, 4), f"quats must be [{N}, 4], got {tuple(quats.shape)}")
    need(tuple(scales.shape) == (N, 3), f"scales must be [{N}, 3], got {tuple(scales.shape)}")
    need(tuple(opacities.shape) == (N,), f"opacities must be [{N}], got {tuple(opacities.shape)}")
    need(tuple(viewmats.shape[1:]) == (4, 4), f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    need(tuple(Ks.shape) == (C, 3, 3), f"Ks must be [{C}, 3, 3], got {tuple(Ks.shape)}")
    if sh_degree is None:
        need(tuple(colors.shape) == (N, 3), f"colors must be RGB [{N}, 3] without sh_degree, got {tuple(colors.shape)}")
    else:
        need(
            colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3
            and colors.shape[1] >= (sh_degree + 1) ** 2,
            f"colors must be SH [{N}, >={(sh_degree + 1) ** 2}, 3] for sh_degree={sh_degree}, "
            f"got {tuple(colors.shape)}",
        )
    if extra is not None:
        need(extra.dim() == 2 and extra.shape[0] == N, f"extra must be [{N}, E], got {tuple(extra.shape)}")
    if backgrounds is not None:
        need(tuple(backgrounds.shape) == (C, 3), f"backgrounds must be [{C}, 3], got {tuple(backgrounds.shape)}")
