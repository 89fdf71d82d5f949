"""The ``native`` backend's rasteriser: gsplat's tile algorithm in C++ for CPUs, built on first use.

Why hand-written: gsplat's rasteriser is CUDA-only, and the plain-torch one in
:mod:`s3dgs.render.raster` cannot stop a pixel early or skip the pixels a Gaussian does not
reach, so it evaluates every pixel of a tile against every Gaussian of that tile in dense
batches. ``csrc/rasterize_cpu.cpp`` does what gsplat's CUDA kernels do, pixel by pixel and front
to back, with OpenMP threads over tiles and SIMD over the pixels of a tile row: binning
(Gaussian-tile pairs by the same exact ellipse test as :func:`s3dgs.render.raster.build_plan`,
sorted by camera, tile and depth), a forward pass that keeps per pixel only the final
transmittance and the last blended Gaussian, and a backward pass that replays each pixel back to
front, recovering the transmittance by division. Its results are bitwise identical run to run
and for any thread count (see the .cpp). Projection and SH stay in torch
(:mod:`s3dgs.render.projection`).

Build route, flags and the fallback: :mod:`s3dgs.extension` (one C++ extension for every native
kernel of the project, ``s3dgs/csrc/*.cpp``). Without it, :func:`s3dgs.render.render` uses the
torch rasteriser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from s3dgs.extension import native_available, native_unavailable_reason

__all__ = ["NativePlan", "bin_tiles", "native_available", "native_unavailable_reason", "rasterize_native"]

logger = logging.getLogger("s3dgs.render")

@dataclass
class NativePlan:
    """The Gaussian-tile lists of one render (int tensors on the CPU; see ``bin_tiles`` in the .cpp).

    - ``vis_ids [V]`` int32: flat ids ``camera * N + n`` of the visible Gaussians, front to back.
    - ``tile_offsets [C * n_tiles + 1]`` int64: where each (camera, tile) list starts in ``isect_ids``.
    - ``isect_ids [M]`` int32: per intersection, the Gaussian's row in the kernels' per-Gaussian
      table; depth order in each tile.
    - ``gauss_offsets [V + 1]`` int64 and ``gauss_isects [M]`` int32: per visible Gaussian (in the
      order of ``vis_ids``), the positions of its intersections in ``isect_ids`` (the backward
      sums its gradient over them, in tile order).
    - ``table_ids [V']`` int32: the flat ids of the per-Gaussian table's rows (the Gaussians with
      at least one intersection), ordered by the tile under each mean for memory locality.
    """

    vis_ids: Tensor
    tile_offsets: Tensor
    isect_ids: Tensor
    gauss_offsets: Tensor
    gauss_isects: Tensor
    table_ids: Tensor
    width: int
    height: int
    tile: int

    @property
    def n_isects(self) -> int:
        return int(self.isect_ids.numel())


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile: int = 8,
) -> NativePlan:
    """Gaussian-tile intersections sorted by (camera, tile) then depth; see :class:`NativePlan`."""
    dt = means2d.dtype
    out = torch.ops.s3dgs_native.bin_tiles(
        means2d.detach().contiguous(), radii.to(torch.int32).contiguous(),
        depths.detach().to(dt).contiguous(), conics.detach().to(dt).contiguous(),
        opacities.detach().to(dt).contiguous(), int(width), int(height), int(tile),
        torch.get_num_threads(),
    )
    return NativePlan(*out, width=int(width), height=int(height), tile=int(tile))


def _forward(plan: NativePlan, means2d, conics, opacities, feats):
    """(image, alpha, final T, last index, per-Gaussian table) of detached contiguous inputs."""
    nt = torch.get_num_threads()
    table = torch.ops.s3dgs_native.make_table(
        means2d, conics, opacities, feats, plan.table_ids, plan.width, plan.height, nt
    )
    img, alpha, tfin, last = torch.ops.s3dgs_native.rasterize_fwd(
        table, plan.tile_offsets, plan.isect_ids, opacities.shape[0], plan.width, plan.height,
        plan.tile, nt,
    )
    return img, alpha, tfin, last, table


class _NativeRasterize(torch.autograd.Function):
    """Differentiable blending by the C++ kernels; ``means2d.absgrad`` as gsplat's backward sets it."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, plan: NativePlan, absgrad: bool):
        ins = [t.detach().contiguous() for t in (means2d, conics, opacities, feats)]
        img, alpha, tfin, last, table = _forward(plan, *ins)
        ctx.plan = plan
        ctx.absgrad = absgrad
        ctx.shape = (opacities.shape[0], opacities.shape[1], feats.shape[-1])
        ctx.means2d_ref = means2d  # to attach .absgrad in backward, as gsplat does
        ctx.save_for_backward(table, tfin, last)
        return img, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, v_img, v_alpha):
        table, tfin, last = ctx.saved_tensors
        plan = ctx.plan
        C, N, D = ctx.shape
        H, W = plan.height, plan.width
        if v_img is None:
            v_img = table.new_zeros((C, H, W, D))
        if v_alpha is None:
            v_alpha = table.new_zeros((C, H, W, 1))
        nt = torch.get_num_threads()
        partial = torch.ops.s3dgs_native.rasterize_bwd(
            table, plan.tile_offsets, plan.isect_ids, tfin, last,
            v_img.to(table.dtype).contiguous(), v_alpha.to(table.dtype).contiguous(),
            W, H, plan.tile, nt,
        )  # [M, 8 + D]: per intersection, the gradient summed over its tile's pixels
        g_m, g_con, g_o, g_f, g_abs = torch.ops.s3dgs_native.reduce_grads(
            partial, plan.vis_ids, plan.gauss_offsets, plan.gauss_isects, C, N, bool(ctx.absgrad), nt,
        )
        if ctx.absgrad:
            ref = ctx.means2d_ref
            prev = getattr(ref, "absgrad", None)
            ref.absgrad = g_abs if prev is None else prev + g_abs
        return g_m, g_con, g_o, g_f, None, None


def rasterize_native(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    feats: Tensor,  # [C, N, D]
    radii: Tensor,  # [C, N, 2] int32, 0 = not drawn
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = 8,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, int]:
    """Blend ``feats [C, N, D]`` of the screen-space Gaussians front to back with the C++ kernels.

    Returns the images ``[C, H, W, D]``, the alpha ``[C, H, W, 1]`` and the number of
    Gaussian-tile intersections. Differentiable with respect to ``means2d``, ``conics``,
    ``opacities`` and ``feats`` (hand-written backward); with ``absgrad`` the backward also sets
    ``means2d.absgrad [C, N, 2]``, the sum over pixels of the absolute per-pixel gradient.
    Call only when :func:`native_available` is True; float32 or float64, CPU tensors.
    """
    if not native_available():
        raise RuntimeError(f"the native CPU rasteriser is unavailable: {native_unavailable_reason()}")
    dt = feats.dtype
    means2d, conics, opacities = means2d.to(dt), conics.to(dt), opacities.to(dt)
    plan = bin_tiles(means2d, radii, depths, conics, opacities, width, height, tile_size)
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, feats)
    )
    if need_grad:
        img, alpha = _NativeRasterize.apply(means2d, conics, opacities, feats, plan, absgrad)
    else:
        with torch.no_grad():
            ins = [t.detach().contiguous() for t in (means2d, conics, opacities, feats)]
            img, alpha = _forward(plan, *ins)[:2]
    return img, alpha, plan.n_isects
