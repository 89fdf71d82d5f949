"""A dense brute-force renderer in plain autograd: the yardstick for every backend.

Every pixel is blended against every Gaussian in front of the camera, sorted by depth, with no
tiles, no extents and no hand-written gradients; autograd differentiates all of it. It is slow and
memory-hungry (``[pixels, Gaussians]`` per camera) and meant for tiny scenes in tests, as gsplat
ships ``_torch_impl`` and PyTorch3D its Python rasteriser. The projection and SH here are written
anew in the most direct form (per camera, explicit matrices, the conic by matrix inverse) rather
than shared with :mod:`s3dgs.render.projection`, so that the two cross-check each other.

Blending semantics (3DGS / gsplat, the contract of every backend): with ``d = mean - pixel
centre`` and conic ``Q``, ``alpha = min(0.999, o exp(-0.5 d^T Q d))``; alphas below 1/255 count as
0; a pixel blends front to back and stops, exclusively, before the Gaussian that would take its
transmittance to 1e-4 or below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .raster import ALPHA_MAX, ALPHA_THRESHOLD, T_STOP
from .types import RenderOutput

__all__ = ["blend_reference", "project_reference", "render_reference", "sh_reference"]

# Real spherical harmonics up to degree 4 (the 3DGS convention), one entry per basis function:
# the constant and the polynomial in the unit direction (x, y, z).
_SH_BASIS = [
    (0.28209479177387814, lambda x, y, z: torch.ones_like(x)),
    (-0.4886025119029199, lambda x, y, z: y),
    (0.4886025119029199, lambda x, y, z: z),
    (-0.4886025119029199, lambda x, y, z: x),
    (1.0925484305920792, lambda x, y, z: x * y),
    (-1.0925484305920792, lambda x, y, z: y * z),
    (0.31539156525252005, lambda x, y, z: 2 * z * z - x * x - y * y),
    (-1.0925484305920792, lambda x, y, z: x * z),
    (0.5462742152960396, lambda x, y, z: x * x - y * y),
    (-0.5900435899266435, lambda x, y, z: y * (3 * x * x - y * y)),
    (2.890611442640554, lambda x, y, z: x * y * z),
    (-0.4570457994644658, lambda x, y, z: y * (4 * z * z - x * x - y * y)),
    (0.3731763325901154, lambda x, y, z: z * (2 * z * z - 3 * x * x - 3 * y * y)),
    (-0.4570457994644658, lambda x, y, z: x * (4 * z * z - x * x - y * y)),
    (1.445305721320277, lambda x, y, z: z * (x * x - y * y)),
    (-0.5900435899266435, lambda x, y, z: x * (x * x - 3 * y * y)),
    (2.5033429417967046, lambda x, y, z: x * y * (x * x - y * y)),
    (-1.7701307697799304, lambda x, y, z: y * z * (3 * x * x - y * y)),
    (0.9461746957575601, lambda x, y, z: x * y * (7 * z * z - 1)),
    (-0.6690465435572892, lambda x, y, z: y * z * (7 * z * z - 3)),
    (0.10578554691520431, lambda x, y, z: z * z * (35 * z * z - 30) + 3),
    (-0.6690465435572892, lambda x, y, z: x * z * (7 * z * z - 3)),
    (0.47308734787878004, lambda x, y, z: (x * x - y * y) * (7 * z * z - 1)),
    (-1.7701307697799304, lambda x, y, z: x * z * (x * x - 3 * y * y)),
    (0.6258357354491761, lambda x, y, z: x * x * (x * x - 3 * y * y) - y * y * (3 * x * x - y * y)),
]


def sh_reference(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Raw SH value ``[..., 3]`` of ``coeffs [..., K, 3]`` along ``dirs [..., 3]`` (any length)."""
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    x, y, z = d.unbind(-1)
    out = torch.zeros(coeffs.shape[:-2] + (3,), dtype=coeffs.dtype, device=coeffs.device)
    for k in range((degree + 1) ** 2):
        const, poly = _SH_BASIS[k]
        out = out + (const * poly(x, y, z))[..., None] * coeffs[..., k, :]
    return out


def _rotation(quats: Tensor) -> Tensor:
    """``[N, 3, 3]`` rotation matrices of quaternions ``[N, 4]`` (w, x, y, z)."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def project_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
) -> dict[str, Tensor]:
    """EWA splatting, camera by camera: ``means2d [C, N, 2]``, ``conics [C, N, 3]`` (a, b, c of the
    inverse 2D covariance), ``depths [C, N]``, ``compensation [C, N]`` (antialiasing factor) and
    ``valid [C, N]`` (in the depth range with a positive-definite 2D covariance).

    The Jacobian is taken at the mean clamped to 1.3x the field of view (3DGS), and ``eps2d``
    pixels^2 are added to the 2D covariance."""
    R = _rotation(quats)
    cov3d = R @ torch.diag_embed(scales * scales) @ R.transpose(-1, -2)  # [N, 3, 3]
    out = {k: [] for k in ("means2d", "conics", "depths", "compensation", "valid")}
    for c in range(viewmats.shape[0]):
        W_rot, W_t = viewmats[c, :3, :3], viewmats[c, :3, 3]
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
        p = means @ W_rot.T + W_t  # [N, 3] camera coordinates
        z = p[:, 2]
        valid = (z > near) & (z < far)
        z = torch.where(valid, z, torch.ones_like(z))  # keeps culled ones finite
        lim_x = 0.3 * 0.5 * width / fx
        lim_y = 0.3 * 0.5 * height / fy
        tx = z * torch.clamp(p[:, 0] / z, -(cx / fx + lim_x), (width - cx) / fx + lim_x)
        ty = z * torch.clamp(p[:, 1] / z, -(cy / fy + lim_y), (height - cy) / fy + lim_y)
        zero = torch.zeros_like(z)
        J = torch.stack([
            torch.stack([fx / z, zero, -fx * tx / (z * z)], -1),
            torch.stack([zero, fy / z, -fy * ty / (z * z)], -1),
        ], -2)  # [N, 2, 3]
        cov2d = J @ W_rot @ cov3d @ W_rot.T @ J.transpose(-1, -2)  # [N, 2, 2]
        cov2d_lp = cov2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
        det = torch.linalg.det(cov2d_lp)
        valid = valid & (det > 0)
        eye = torch.eye(2, dtype=means.dtype, device=means.device).expand_as(cov2d_lp)
        conic = torch.linalg.inv(torch.where(valid[:, None, None], cov2d_lp, eye))
        comp = torch.sqrt(torch.clamp(torch.linalg.det(cov2d) / torch.where(valid, det, 1.0), min=0.0))
        out["means2d"].append((p @ Ks[c, :2, :3].T) / z[:, None])  # the whole K (skew too), as gsplat
        out["conics"].append(torch.stack([conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1]], -1))
        out["depths"].append(p[:, 2])
        out["compensation"].append(comp)
        out["valid"].append(valid)
    return {k: torch.stack(v) for k, v in out.items()}


def blend_reference(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    feats: Tensor,  # [C, N, D]
    valid: Tensor,  # [C, N] bool
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    means2d_per_pixel: Tensor | None = None,  # [C, H*W, N, 2]
) -> tuple[Tensor, Tensor]:
    """Every pixel against every valid Gaussian, front to back; returns ``[C, H, W, D]`` features
    and ``[C, H, W, 1]`` alpha. ``means2d_per_pixel`` replaces ``means2d`` by one copy per pixel,
    so that autograd gives per-pixel mean gradients (to check AbsGS sums)."""
    C, D = opacities.shape[0], feats.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype) + 0.5,
                            torch.arange(width, dtype=means2d.dtype) + 0.5, indexing="ij")
    px, py = xs.reshape(-1), ys.reshape(-1)  # [P]
    imgs, alphas = [], []
    for c in range(C):
        idx = torch.nonzero(valid[c]).squeeze(1)
        idx = idx[torch.argsort(depths[c, idx].detach(), stable=True)]
        if means2d_per_pixel is not None:
            m = means2d_per_pixel[c][:, idx]  # [P, n, 2]
            dx, dy = m[..., 0] - px[:, None], m[..., 1] - py[:, None]
        else:
            m = means2d[c, idx]
            dx, dy = m[None, :, 0] - px[:, None], m[None, :, 1] - py[:, None]  # [P, n]
        a, b, cc = conics[c, idx].unbind(-1)
        sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[c, idx] * torch.exp(-sigma), max=ALPHA_MAX)
        alpha = torch.where(alpha < ALPHA_THRESHOLD, torch.zeros_like(alpha), alpha)
        with torch.no_grad():  # the stop is a decision, not differentiated
            keep = torch.cumprod(1 - alpha, dim=-1) > T_STOP
        alpha = alpha * keep
        T = torch.cumprod(1 - alpha, dim=-1)
        T_front = torch.cat([torch.ones_like(T[:, :1]), T[:, :-1]], dim=-1)
        weights = alpha * T_front
        imgs.append((weights @ feats[c, idx]).reshape(height, width, D))
        if idx.numel():
            alphas.append((1 - T[:, -1:]).reshape(height, width, 1))
        else:
            alphas.append(torch.zeros(height, width, 1, dtype=feats.dtype))
    return torch.stack(imgs), torch.stack(alphas)


def render_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, K, 3] with sh_degree, else [N, 3]
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
    eps2d: float = 0.3,
    antialiased: bool = False,
    per_pixel_means2d: bool = False,
) -> RenderOutput:
    """What :func:`s3dgs.render.render` computes, by brute force; same arguments and outputs.

    ``meta`` holds ``means2d [C, N, 2]`` and, with ``per_pixel_means2d``, ``means2d_per_pixel
    [C, H*W, N, 2]``: a leaf whose ``.grad`` after backward is the per-pixel gradient of the mean
    (its absolute values summed over pixels are what ``absgrad`` must give)."""
    C, N = viewmats.shape[0], means.shape[0]
    pr = project_reference(means, quats, scales, viewmats, Ks, width, height, eps2d, near, far)
    o = opacities[None].expand(C, N)
    if antialiased:
        o = o * pr["compensation"]
    if sh_degree is None:
        rgb = colors[None].expand(C, N, 3)
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None] - campos[:, None]
        rgb = torch.clamp_min(sh_reference(sh_degree, dirs, colors[None].expand(C, -1, -1, -1)) + 0.5, 0.0)
    parts = [rgb]
    E = 0 if extra is None else extra.shape[1]
    if extra is not None:
        parts.append(extra[None].expand(C, N, E))
    if render_depth:
        parts.append(pr["depths"][..., None])
    feats = torch.cat(parts, -1)
    m_pix = None
    if per_pixel_means2d:
        m_pix = pr["means2d"].detach()[:, None].expand(C, width * height, N, 2).clone().requires_grad_(True)
    img, alpha = blend_reference(pr["means2d"], pr["conics"], o, feats, pr["valid"], pr["depths"],
                                 width, height, m_pix)
    out_colors = img[..., :3]
    if backgrounds is not None:
        out_colors = out_colors + (1 - alpha) * backgrounds[:, None, None, :]
    return RenderOutput(
        colors=out_colors,
        extras=img[..., 3 : 3 + E] if extra is not None else None,
        depths=img[..., 3 + E : 4 + E] / alpha.clamp_min(1e-10) if render_depth else None,
        alphas=alpha,
        meta={"means2d": pr["means2d"], "means2d_per_pixel": m_pix, "valid": pr["valid"]},
    )
