"""Depth-guided floater pruning: Gaussians that sit well in front of the scene's surface.

A *floater* is a Gaussian hanging in empty space between the cameras and the surfaces they see
(RGB-only 3DGS makes them to explain view-dependent effects of the backdrop). A depth map per view
tells where the first surface is along every pixel's ray; a Gaussian whose centre is well in front
of that surface, in most of the views that can see it, explains nothing that the surface does not,
and is pruned.

For one view with world-to-camera ``viewmat``, intrinsics ``K`` and a depth map ``depth [H, W]``
(camera z, the units of the Gaussians' means), a Gaussian with camera-space centre ``(x, y, z)``
that projects to pixel ``(i, j)``:

- is *seen* when ``z > near``, the pixel is inside the image and the view's ``valid`` map holds
  a valid pixel within ``window`` pixels of it;
- is *in front* when ``z < d * (1 - margin)``, ``d`` the smallest valid depth within ``window``
  pixels (the nearest surface nearby: a Gaussian at the silhouette of a thin stem that projects a
  pixel off onto the backdrop is not taken for a floater).

It is a floater when it is seen in at least ``min_views`` views and in front in at least
``min_fraction`` of them. A Gaussian on a surface (``z = d``) or behind one (occluded: ``z > d``)
is never in front, so the rule removes only what floats in front of everything in most views.

The depth maps are the monocular prior aligned to metric depth (:func:`prior_to_depth` inverts the
alignment :func:`s3dgs.losses.depth_prior_loss` fits) or, without a prior, a rendered depth. Where a
prior is known to be wrong the trainer marks the pixels invalid: monocular priors blur thin stems
into what lies behind them, so stem pixels (the heatmaps' U/D/P channels) should be invalid, else
a stem Gaussian is "in front" of the blurred surface in every view.

The pruning itself is a strategy hook (:class:`FloaterPruning`, mixed into
:class:`s3dgs.gaussians.strategy.DefaultStrategy` and :class:`s3dgs.gaussians.mcmc.MCMCStrategy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from s3dgs.errors import UsageError

__all__ = ["DepthView", "FloaterPruning", "floater_mask", "floater_votes", "prior_to_depth"]


class DepthView(NamedTuple):
    """One view for :func:`floater_mask`.

    - ``viewmat [4, 4]`` world-to-camera (OpenCV axes: z forward);
    - ``K [3, 3]`` intrinsics in pixels (pixel centres at +0.5);
    - ``depth [H, W]`` camera z of the first surface along each pixel's ray, in the units of the
      Gaussians' means (non-finite or <= 0 counts as invalid);
    - ``valid [H, W]`` bool, or None (every pixel with a finite positive depth is valid).
    """

    viewmat: Tensor
    K: Tensor
    depth: Tensor
    valid: Tensor | None = None


def prior_to_depth(prior: Tensor, scale, shift, *, mapping: str = "per_view", space: str = "disparity",
                   prior_kind: str = "disparity", min_depth: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Metric depth from a depth prior and the alignment fitted for it.

    ``prior [H, W]`` the prior value in [0, 1]; ``scale``, ``shift`` floats or 0-d tensors.

    - ``mapping="per_view"``: the alignment of ``depth_prior_loss(..., alignment="per_view",
      return_info=True)``, which fits ``scale * x + shift ~ prior`` with ``x = 1 / z``
      (``space="disparity"``) or ``x = z`` (``space="depth"``); so ``x = (prior - shift) / scale``.
    - ``mapping="sfm"``: the fit of :func:`s3dgs.losses.fit_depth_scale_sfm`,
      ``m = scale * prior + shift``, ``m`` inverse depth for a disparity prior (``prior_kind``),
      depth for a depth prior.

    Returns ``(depth [H, W], valid [H, W] bool)``: depth is ``inf`` where the mapping gives no
    positive depth (then ``valid`` is False).
    """
    p = prior.double() if prior.dtype != torch.float64 else prior
    s = torch.as_tensor(scale, dtype=p.dtype, device=p.device)
    t = torch.as_tensor(shift, dtype=p.dtype, device=p.device)
    if mapping == "per_view":
        if space not in ("disparity", "depth"):
            raise UsageError(f"prior_to_depth: space must be 'disparity' or 'depth', got {space!r}")
        x = (p - t) / torch.where(s == 0, torch.full_like(s, float("nan")), s)
        inverse = space == "disparity"
    elif mapping == "sfm":
        if prior_kind not in ("disparity", "depth"):
            raise UsageError(f"prior_to_depth: prior_kind must be 'disparity' or 'depth', got {prior_kind!r}")
        x = s * p + t
        inverse = prior_kind == "disparity"
    else:
        raise UsageError(f"prior_to_depth: mapping must be 'per_view' or 'sfm', got {mapping!r}")
    ok = torch.isfinite(x) & (x > 0)
    xs = torch.where(ok, x, torch.ones_like(x))
    z = 1.0 / xs if inverse else xs
    ok = ok & (z > min_depth) & torch.isfinite(z)
    z = torch.where(ok, z, torch.full_like(z, float("inf")))
    return z.to(prior.dtype if prior.is_floating_point() else torch.float32), ok


def _nearest_valid_depth(depth: Tensor, valid: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Min of the valid depths in each (2w+1)^2 neighbourhood, and whether there was one."""
    d = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    if window <= 0:
        return d, valid
    k = 2 * window + 1
    dmin = -F.max_pool2d(-d[None, None], k, stride=1, padding=window)[0, 0]
    vany = F.max_pool2d(valid[None, None].float(), k, stride=1, padding=window)[0, 0] > 0
    return dmin, vany


@torch.no_grad()
def floater_votes(means: Tensor, views: Iterable[DepthView], *, margin: float = 0.2, window: int = 1,
                  near: float = 0.01) -> tuple[Tensor, Tensor]:
    """Per Gaussian: in how many views it is seen, and in how many of those it is well in front.

    ``means [N, 3]`` world positions; ``views`` an iterable of :class:`DepthView`. See the module
    docstring for *seen* and *in front*. Returns ``(n_front [N], n_seen [N])`` int32.
    """
    if not 0.0 <= margin < 1.0:
        raise UsageError(f"floater margin must be in [0, 1), got {margin}")
    means = means.detach()
    N = means.shape[0]
    n_seen = torch.zeros(N, dtype=torch.int32, device=means.device)
    n_front = torch.zeros(N, dtype=torch.int32, device=means.device)
    for v in views:
        vm = torch.as_tensor(v.viewmat, device=means.device, dtype=means.dtype)
        K = torch.as_tensor(v.K, device=means.device, dtype=means.dtype)
        depth = torch.as_tensor(v.depth, device=means.device).to(means.dtype)
        H, W = depth.shape
        valid = torch.isfinite(depth) & (depth > 0)
        if v.valid is not None:
            valid = valid & torch.as_tensor(v.valid, device=means.device).bool()
        dmin, vany = _nearest_valid_depth(torch.where(valid, depth, torch.zeros_like(depth)), valid, window)
        pc = means @ vm[:3, :3].T + vm[:3, 3]
        z = pc[:, 2]
        zs = torch.where(z > near, z, torch.ones_like(z))
        u = K[0, 0] * pc[:, 0] / zs + K[0, 2]
        w = K[1, 1] * pc[:, 1] / zs + K[1, 2]
        inside = (z > near) & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        j = torch.where(inside, u, torch.zeros_like(u)).long().clamp(0, W - 1)
        i = torch.where(inside, w, torch.zeros_like(w)).long().clamp(0, H - 1)
        seen = inside & vany[i, j]
        front = seen & (z < dmin[i, j] * (1.0 - margin))
        n_seen += seen.to(torch.int32)
        n_front += front.to(torch.int32)
    return n_front, n_seen


@torch.no_grad()
def floater_mask(means: Tensor, views: Iterable[DepthView], *, margin: float = 0.2, min_fraction: float = 0.75,
                 min_views: int = 3, window: int = 1, near: float = 0.01) -> Tensor:
    """``[N]`` bool: the Gaussians that sit well in front of the surface in most views that see them.

    ``means [N, 3]``; ``views`` :class:`DepthView` s. A Gaussian is a floater when it is seen in at
    least ``min_views`` views and, in at least ``min_fraction`` of them, its camera z is below
    ``(1 - margin)`` times the nearest valid depth within ``window`` pixels of its projection.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise UsageError(f"floater min_fraction must be in (0, 1], got {min_fraction}")
    n_front, n_seen = floater_votes(means, views, margin=margin, window=window, near=near)
    return (n_seen >= max(int(min_views), 1)) & (n_front.float() >= min_fraction * n_seen.float())


@dataclass
class FloaterPruning:
    """Strategy piece: depth-guided floater pruning at refinement steps (off by default).

    At every refinement step at or after ``floater_start_iter`` the strategy reads
    ``info["floater_views"]`` -- a sequence of :class:`DepthView` or a callable with no argument
    returning one (called only at those steps, so the trainer prepares depth maps only then) --
    and prunes :func:`floater_mask`'s Gaussians (gsplat's ``remove`` op; MCMC relocates them
    instead). ``info["floater_keep"]``, optional, is a callable ``params -> [N] bool`` of Gaussians
    that are never pruned (e.g. those whose semantics say stem). ``state["n_floaters"]`` counts the
    pruned Gaussians.
    """

    prune_floaters: bool = False
    """Prune Gaussians that sit well in front of the depth maps' surface in most views that see them."""
    floater_margin: float = 0.2
    """'Well in front': camera z below (1 - margin) x the surface depth."""
    floater_fraction: float = 0.75
    """'Most views': at least this fraction of the views in which the Gaussian is seen."""
    floater_min_views: int = 3
    """Only Gaussians seen in at least this many views are judged."""
    floater_window: int = 1
    """The surface depth is the nearest valid depth within this many pixels of the projection."""
    floater_start_iter: int = 0
    """No floater pruning before this step (the depth maps need a few hundred steps of geometry)."""

    def _floaters(self, params, step: int, info: dict[str, Any]) -> Tensor | None:
        """The floater mask for this step (None when pruning is off or not due)."""
        if not self.prune_floaters or step < self.floater_start_iter:
            return None
        views = info.get("floater_views")
        if views is None:
            raise UsageError("prune_floaters is on but the trainer gave no info['floater_views'] (a list of "
                             "DepthView, or a callable returning one); switch it off or provide the views")
        if callable(views):
            views = views()
        mask = floater_mask(params["means"], views, margin=self.floater_margin,
                            min_fraction=self.floater_fraction, min_views=self.floater_min_views,
                            window=self.floater_window)
        keep: Callable | None = info.get("floater_keep")
        if keep is not None:
            mask = mask & ~keep(params).to(mask.device).bool()
        return mask
