"""EWA projection of 3D Gaussians and spherical-harmonic colours, in plain torch.

Everything here is differentiable through ordinary autograd and works on any device; it is
shared by the ``torch`` backend (all of it) and the ``gsplat`` backend (the SH evaluation).

Conventions (see docs/ARCHITECTURE.md): ``viewmats [C, 4, 4]`` are world-to-camera,
OpenCV axes (x right, y down, z forward); ``Ks [C, 3, 3]`` are in pixels with pixel centres at
``+0.5``. The maths follows 3DGS / gsplat 1.5.3: covariance ``R S S^T R^T``, the EWA Jacobian
evaluated at the mean clamped to 1.3x the field of view, a ``eps2d`` pixel low-pass added to the
2D covariance, and opacity-aware 3.33-sigma extents (a Gaussian is only drawn where its alpha
reaches 1/255, so pixels outside the extents could not receive anything anyway).

Speed: the per-Gaussian 3x3 and 2x3 matrix products are written out entry by entry on ``[C, N]``
tensors. As batched matrix products (``einsum``/``bmm`` over ``N`` tiny matrices) they cost about
1 microsecond per matrix on a CPU, forward and backward, which made projection and SH of 100k
Gaussians slower than the native rasteriser itself; elementwise they vectorise over ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .raster import ALPHA_THRESHOLD  # (re-exported: the rasteriser's one definition)

EXTENT_SIGMAS = 3.33

__all__ = [
    "ALPHA_THRESHOLD",
    "Projection",
    "camera_centers",
    "eval_sh",
    "project_gaussians",
    "quat_to_rotmat",
    "sh_colors",
]


def _rotmat_entries(quats: Tensor) -> tuple[Tensor, ...]:
    """The nine entries ``r00, r01, ..., r22`` (row-major, each ``[...]``) of the rotation matrices
    of ``quats [..., 4]`` (w, x, y, z; need not be unit)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return (
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    )


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions ``quats [..., 4]`` (w, x, y, z; need not be unit).

    Returns ``[..., 3, 3]``.
    """
    return torch.stack(_rotmat_entries(quats), dim=-1).reshape(quats.shape[:-1] + (3, 3))


@dataclass
class Projection:
    """Per-camera screen-space Gaussians. ``C`` cameras, ``N`` Gaussians.

    - ``means2d [C, N, 2]`` pixel coordinates of the projected means.
    - ``conics [C, N, 3]`` upper triangle ``(a, b, c)`` of the inverse 2D covariance, so that
      ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``.
    - ``depths [C, N]`` camera-space z of the means.
    - ``opacities [C, N]`` opacity used for blending (times the antialiasing compensation).
    - ``radii [C, N, 2]`` int32 half extents in pixels; 0 where the Gaussian is culled.
    - ``covars2d [C, N, 2, 2]`` 2D covariance including the low-pass.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    radii: Tensor
    covars2d: Tensor


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor | None,  # [N] or None
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
    antialiased: bool = False,
) -> Projection:
    """Project 3D Gaussians into ``C`` pinhole cameras (EWA splatting).

    With ``opacities=None`` the extents are the plain ``ceil(3.33 sigma)`` of gsplat's pure-torch
    reference and the returned opacities are ones; otherwise they shrink with the opacity as in
    gsplat's CUDA projection and Gaussians with opacity below 1/255 are culled.
    """
    N = means.shape[0]
    C = viewmats.shape[0]
    dtype, device = means.dtype, means.device

    # M = R S, nine entries, each [N]
    r = _rotmat_entries(quats)
    s0, s1, s2 = scales.t().unbind(0)
    rs = [r[3 * i + j] * (s0, s1, s2)[j] for i in range(3) for j in range(3)]  # M_ij, row-major

    Rw = viewmats[:, :3, :3]  # [C, 3, 3]
    w = [[Rw[:, i, j, None] for j in range(3)] for i in range(3)]  # [C, 1] each
    mx, my, mz = means.t()[:, None, :]  # [1, N] each
    # camera coordinates [C, N], written out: torch.matmul picks another algorithm (other
    # rounding) when its input requires grad, and the no-grad render must equal the training one
    x, y, z = (w[i][0] * mx + w[i][1] * my + w[i][2] * mz + viewmats[:, i, 3, None] for i in range(3))

    in_depth = (z > near) & (z < far)
    zs = torch.where(in_depth, z, torch.ones_like(z))  # safe depth: no inf/nan in culled ones

    fx = Ks[:, 0, 0, None]
    fy = Ks[:, 1, 1, None]
    cx = Ks[:, 0, 2, None]
    cy = Ks[:, 1, 2, None]
    # Jacobian at the mean, clamped to the (1.3x) field of view as in 3DGS.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_xp = (width - cx) / fx + 0.3 * tan_fovx
    lim_xn = cx / fx + 0.3 * tan_fovx
    lim_yp = (height - cy) / fy + 0.3 * tan_fovy
    lim_yn = cy / fy + 0.3 * tan_fovy
    u = torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    v = torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    # T = J Rw, J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]]: rows T0, T1 of three [C, N] entries
    ax, bx = fx / zs, fx * u / zs
    ay, by = fy / zs, fy * v / zs
    T0 = [ax * w[0][k] - bx * w[2][k] for k in range(3)]
    T1 = [ay * w[1][k] - by * w[2][k] for k in range(3)]
    # cov2d = A A^T with A = T M (a Gram matrix: positive semi-definite also after rounding)
    A0 = [T0[0] * rs[k] + T0[1] * rs[3 + k] + T0[2] * rs[6 + k] for k in range(3)]
    A1 = [T1[0] * rs[k] + T1[1] * rs[3 + k] + T1[2] * rs[6 + k] for k in range(3)]
    cov00 = A0[0] * A0[0] + A0[1] * A0[1] + A0[2] * A0[2]
    c01 = A0[0] * A1[0] + A0[1] * A1[1] + A0[2] * A1[2]
    cov11 = A1[0] * A1[0] + A1[1] * A1[1] + A1[2] * A1[2]

    c00 = cov00 + eps2d
    c11 = cov11 + eps2d
    # det(A A^T) as the sum of the squared 2x2 minors of A (Cauchy-Binet), and the low-pass terms
    # added: all positive, where c00 c11 - c01^2 cancels (measured: 1e-5 relative conic error in
    # float32 for elongated Gaussians, enough to move the depth of faint pixels by 1e-5)
    m01 = A0[0] * A1[1] - A0[1] * A1[0]
    m02 = A0[0] * A1[2] - A0[2] * A1[0]
    m12 = A0[1] * A1[2] - A0[2] * A1[1]
    det_orig = m01 * m01 + m02 * m02 + m12 * m12
    det = det_orig + eps2d * (cov00 + cov11) + eps2d * eps2d
    det_ok = det > 0
    det_s = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_s, -c01 / det_s, c00 / det_s], dim=-1)
    covars2d = torch.stack([c00, c01, c01, c11], dim=-1).reshape(C, N, 2, 2)

    # means2d = K[:2, :3] @ means_c / z
    K2 = Ks[:, :2, :3]
    means2d = torch.stack([
        (K2[:, 0, 0, None] * x + K2[:, 0, 1, None] * y + K2[:, 0, 2, None] * z) / zs,
        (K2[:, 1, 0, None] * x + K2[:, 1, 1, None] * y + K2[:, 1, 2, None] * z) / zs,
    ], dim=-1)

    if opacities is None:
        opac = torch.ones((C, N), dtype=dtype, device=device)
    else:
        opac = opacities[None, :].expand(C, N)
    if antialiased:
        # sqrt(max(ratio, 0)), with no gradient where the ratio is 0 (a footprint of zero area:
        # sqrt's gradient there is infinite, and times the zero gradient of the ratio it was NaN)
        ratio = det_orig / det_s
        pos = ratio > 0
        comp = torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio)))
        comp = torch.where(pos, comp, torch.zeros_like(comp))
        opac = opac * comp

    with torch.no_grad():
        valid = in_depth & det_ok
        if opacities is None:
            extend = torch.full_like(z, EXTENT_SIGMAS)
        else:
            o = opac.detach()
            valid = valid & (o >= ALPHA_THRESHOLD)
            extend = torch.sqrt(
                2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)
            ).clamp(max=EXTENT_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c11.detach().clamp_min(0)))
        m = means2d.detach()
        inside = (
            (m[..., 0] + rx > 0)
            & (m[..., 0] - rx < width)
            & (m[..., 1] + ry > 0)
            & (m[..., 1] - ry < height)
        )
        valid = valid & inside & (rx > 0) & (ry > 0)
        radii = torch.stack([rx, ry], dim=-1)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)

    return Projection(
        means2d=means2d, conics=conics, depths=z, opacities=opac, radii=radii, covars2d=covars2d
    )


# Real spherical-harmonic basis constants (degree 0..4), the convention used by 3DGS and gsplat.
SH_C0 = 0.28209479177387814  # the degree-0 spherical harmonic, 1 / (2 sqrt(pi)): the one definition
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
_SH_C4 = (2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892,
          0.10578554691520431, -0.6690465435572892, 0.47308734787878004, -1.7701307697799304,
          0.6258357354491761)


def _sh_terms(degree: int, x: Tensor, y: Tensor, z: Tensor) -> list[Tensor]:
    """The ``(degree+1)^2`` SH basis values at unit directions with components ``x, y, z``."""
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            _SH_C2[0] * xy,
            _SH_C2[1] * yz,
            _SH_C2[2] * (2.0 * zz - xx - yy),
            _SH_C2[3] * xz,
            _SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3 * xx - yy),
            _SH_C3[1] * xy * z,
            _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        out += [
            _SH_C4[0] * xy * (xx - yy),
            _SH_C4[1] * yz * (3 * xx - yy),
            _SH_C4[2] * xy * (7 * zz - 1),
            _SH_C4[3] * yz * (7 * zz - 3),
            _SH_C4[4] * (zz * (35 * zz - 30) + 3),
            _SH_C4[5] * xz * (7 * zz - 3),
            _SH_C4[6] * (xx - yy) * (7 * zz - 1),
            _SH_C4[7] * xz * (xx - 3 * yy),
            _SH_C4[8] * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return out


def _sh_basis(degree: int, d: Tensor) -> Tensor:
    """SH basis values ``[..., (degree+1)^2]`` at unit directions ``d [..., 3]``."""
    return torch.stack(_sh_terms(degree, *d.unbind(-1)), dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH ``coeffs [..., K, 3]`` (first ``(degree+1)^2`` used) along ``dirs [..., 3]``.

    ``dirs`` need not be unit length. Returns the raw value ``[..., 3]`` (no +0.5, no clamp).
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, got {degree}")
    nb = (degree + 1) ** 2
    if coeffs.shape[-2] < nb:
        raise ValueError(
            f"sh_degree={degree} needs {nb} coefficients per Gaussian, colors has {coeffs.shape[-2]}"
        )
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = _sh_basis(degree, d)  # [..., nb]
    return torch.matmul(basis.unsqueeze(-2), coeffs[..., :nb, :]).squeeze(-2)


class _ShContract(torch.autograd.Function):
    """``rgb[c, n, j] = sum_k basis[c, n, k] coeffs[n, k, j]``, in the coefficients' own layout.

    Forward: one batched product over the Gaussians. Backward: broadcast products, not batched
    ``[nb, C] @ [C, 3]`` products (slow on a CPU) and not a move of ``[N, K, 3]`` to a
    Gaussian-minor layout (a strided copy of every coefficient each way: measured 70 ms per 100k
    Gaussians, more than the rest of SH)."""

    @staticmethod
    def forward(ctx, basis, coeffs):  # [C, N, nb], [N, nb, 3] -> [C, N, 3]
        ctx.save_for_backward(basis, coeffs)
        return torch.bmm(basis.transpose(0, 1), coeffs).transpose(0, 1)

    @staticmethod
    def backward(ctx, g):  # g [C, N, 3]
        basis, coeffs = ctx.saved_tensors
        g = g.contiguous()
        g_basis = g_coeffs = None
        if ctx.needs_input_grad[0]:
            g_basis = coeffs[None, :, :, 0] * g[:, :, 0:1]
            for j in (1, 2):
                g_basis.addcmul_(coeffs[None, :, :, j], g[:, :, j : j + 1])
        if ctx.needs_input_grad[1]:
            g_coeffs = basis[0, :, :, None] * g[0, :, None, :]
            for c in range(1, basis.shape[0]):
                g_coeffs.addcmul_(basis[c, :, :, None], g[c, :, None, :])
        return g_basis, g_coeffs


def camera_centers(viewmats: Tensor) -> Tensor:
    """World-space camera centres ``[C, 3]`` of world-to-camera ``viewmats [C, 4, 4]``."""
    return torch.linalg.inv(viewmats)[:, :3, 3]


def sh_colors(degree: int, means: Tensor, coeffs: Tensor, viewmats: Tensor) -> Tensor:
    """RGB ``[C, N, 3]`` from SH ``coeffs [N, K, 3]`` seen from each camera, the gsplat way:
    direction from the camera centre to the mean, ``+0.5``, clamped at 0."""
    C = viewmats.shape[0]
    if degree == 0:
        rgb = (SH_C0 * coeffs[:, 0, :])[None].expand(C, -1, -1)
        return torch.clamp_min(rgb + 0.5, 0.0)
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, got {degree}")
    nb = (degree + 1) ** 2
    campos = camera_centers(viewmats)  # [C, 3]
    mt = means.t()  # [3, N]
    dx, dy, dz = (mt[i][None, :] - campos[:, i, None] for i in range(3))  # [C, N] each
    inv = torch.rsqrt((dx * dx + dy * dy + dz * dz).clamp_min(1e-24))
    basis = torch.stack(_sh_terms(degree, dx * inv, dy * inv, dz * inv), dim=-1)  # [C, N, nb]
    rgb = _ShContract.apply(basis, coeffs if coeffs.shape[1] == nb else coeffs[:, :nb, :])
    return torch.clamp_min(rgb + 0.5, 0.0)
