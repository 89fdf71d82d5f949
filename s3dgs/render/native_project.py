"""The ``native`` backend's projection and colour features: one C++ pass per Gaussian, forward and
backward (``csrc/project_cpu.cpp``).

What it computes is what :func:`s3dgs.render.projection.project_gaussians` and
:func:`s3dgs.render.types.color_features` compute in plain torch (they stay the readable reference,
and the code of the ``torch`` backend), with the depth channel that :func:`s3dgs.render.render`
appends: the EWA projection (covariance ``R S S^T R^T``, the Jacobian clamped to 1.3x the field of
view, the ``eps2d`` low-pass, the antialiasing compensation when asked, the opacity-aware radii and
every culling rule), SH colours the gsplat way (degrees 0-4), the extra channels and the depth
channel, in one feature tensor. The backward gives the gradients of means, quaternions, scales,
opacities, SH coefficients (or RGB) and extra channels; the camera (``viewmats``, ``Ks``) gets none,
so :func:`s3dgs.render.render` takes this path only when no camera tensor requires a gradient.

Why: in plain torch, projection and SH of 100k Gaussians are a few hundred elementwise operations
over ``[C, N]`` tensors, each a pass over memory, forward and again backward (0.27 s of a 0.46 s
render at 100k Gaussians, 480x270, 2 threads); here each Gaussian is read once and its outputs
written once. Results: float64 agrees with the torch code to rounding (most values bitwise, as the
C++ follows the same operations in the same order); deterministic for any thread count (each
Gaussian is one thread's, summing its cameras in order).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from s3dgs.extension import native_available

from .projection import camera_centers

__all__ = ["NativeProjection", "native_project_available", "project_native"]


class NativeProjection(NamedTuple):
    """What :func:`project_native` returns: :class:`s3dgs.render.projection.Projection`'s fields
    (without ``covars2d``) and the features a rasteriser blends."""

    means2d: Tensor  # [C, N, 2]
    conics: Tensor  # [C, N, 3]
    depths: Tensor  # [C, N]
    opacities: Tensor  # [C, N]
    radii: Tensor  # [C, N, 2] int32, 0 = culled
    feats: Tensor  # [C, N, 3 + E (+ 1 with depth)]: RGB, extra channels, camera z


def native_project_available() -> bool:
    """True when the native extension is loaded and holds the projection ops."""
    return native_available() and hasattr(torch.ops.s3dgs_native, "project_sh_fwd")


class _ProjectSH(torch.autograd.Function):
    """The fused kernel as an autograd node: the backward recomputes each Gaussian's projection
    from the inputs (nothing per camera is kept between the passes)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, extra, viewmats, Ks, campos, cfg):
        outs = torch.ops.s3dgs_native.project_sh_fwd(
            means, quats, scales, opacities, colors, extra, viewmats, Ks, campos, *cfg,
            torch.get_num_threads(),
        )
        ctx.cfg = cfg
        ctx.save_for_backward(means, quats, scales, opacities, colors, extra, viewmats, Ks, campos)
        ctx.mark_non_differentiable(outs[4])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means2d, v_conics, v_depths, v_opacities, _v_radii, v_feats):
        saved = ctx.saved_tensors
        dt = saved[0].dtype

        def prep(g):
            return None if g is None else g.to(dt).contiguous()

        grads = torch.ops.s3dgs_native.project_sh_bwd(
            *saved, *ctx.cfg, prep(v_means2d), prep(v_conics), prep(v_depths), prep(v_opacities),
            prep(v_feats), torch.get_num_threads(),
        )
        v_means, v_quats, v_scales, v_opac, v_colors, v_extra = grads
        need = ctx.needs_input_grad
        return (
            v_means if need[0] else None,
            v_quats if need[1] else None,
            v_scales if need[2] else None,
            v_opac if need[3] else None,
            v_colors if need[4] else None,
            v_extra if need[5] else None,
            None, None, None, None,
        )


def project_native(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K, 3] SH with sh_degree, else [N, 3] RGB
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    extra: Tensor | None = None,  # [N, E]
    render_depth: bool = True,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
    antialiased: bool = False,
) -> NativeProjection:
    """Project the Gaussians into ``C`` cameras and build their feature rows, in C++.

    The same values as ``project_gaussians(means, quats, scales, opacities, viewmats, Ks, width,
    height, eps2d, near, far, antialiased)`` and, as ``feats``, ``color_features(means, colors,
    viewmats, sh_degree, extra)`` with the depth appended when ``render_depth``; everything in the
    dtype of ``means`` (float32 or float64, CPU). Differentiable with respect to every per-Gaussian
    input; ``viewmats`` and ``Ks`` are treated as constants. Call only when
    :func:`native_project_available` is True.
    """
    if not native_project_available():
        raise RuntimeError("the native projection kernel is unavailable")
    dt = means.dtype
    degree = -1 if sh_degree is None else int(sh_degree)
    if degree > 4:
        raise ValueError(f"sh_degree must be in 0..4, got {sh_degree}")
    colors = colors.to(dt)  # any strides: the kernel reads them as they are
    extra = None if extra is None else extra.to(dt).contiguous()
    ins = [means, quats, scales, opacities]
    ins = [t.to(dt).contiguous() for t in ins]
    cams = [viewmats.detach().to(dt).contiguous(), Ks.detach().to(dt).contiguous()]
    with torch.no_grad():
        # the camera centres of the SH direction, as projection.py's sh_colors finds them
        campos = camera_centers(cams[0]).contiguous() if degree >= 1 else cams[0].new_zeros(
            (cams[0].shape[0], 3))
    cfg = (int(width), int(height), degree, bool(render_depth), float(eps2d), float(near), float(far),
           bool(antialiased))
    args = (*ins, colors, extra, *cams, campos)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        outs = _ProjectSH.apply(*args, cfg)
    else:
        outs = torch.ops.s3dgs_native.project_sh_fwd(*args, *cfg, torch.get_num_threads())
    return NativeProjection(*outs)
