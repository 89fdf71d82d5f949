"""Densification: gsplat's `DefaultStrategy`, with its opacity reset made to fire, and two pieces
aimed at thin stems (both off by default).

gsplat 1.5.3 guards the reset with `step % self.reset_every == 0 & step > 0`; by operator precedence
that reads `step % reset_every == (0 & step) > 0`, a chained comparison whose second half `0 > 0` is
always False, so opacities are never reset (fixed upstream after 1.5.3). `DefaultStrategy` here
subclasses gsplat's and performs the reset itself, once, at the steps the original intended.

The stem pieces (the trainer's side of each is in the report of issue 12 and below):

- **stem-aware densification** (``grow_grad2d_stem``): Gaussians whose 2D means fall on stem pixels
  (``info["stem_mask"]``, from the heatmaps) get a lower split/clone gradient threshold, so thin
  structures are refined first;
- **depth-guided floater pruning** (``prune_floaters``, :class:`s3dgs.gaussians.floaters.FloaterPruning`):
  Gaussians well in front of the depth maps' surface in most views that see them are removed at
  refinement steps.

Stem-aware densification, in detail: with ``grow_grad2d_stem`` set, ``step_post_backward`` also
reads ``info["stem_mask"]`` (``[C, H, W]`` bool, the stem pixels of the rendered cameras; absent on
steps without one) and keeps, per Gaussian, ``state["stem_hits"]`` (steps its 2D mean fell on a stem
pixel) and ``state["stem_seen"]`` (steps it was drawn while a stem mask was given). gsplat's ops
carry both through splits, clones and prunes (they update every per-Gaussian tensor of the state),
and they are zeroed at every refinement like ``grad2d``. At refinement a Gaussian with
``stem_hits > 0`` and ``stem_hits >= stem_min_fraction * stem_seen`` is split or cloned when its
mean 2D gradient exceeds ``grow_grad2d_stem`` instead of ``grow_grad2d``; ``state["n_on_stem"]``
is how many there were at the last refinement. ``state["n_resets"]`` counts opacity resets and
``state["n_floaters"]`` pruned floaters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import torch
import tyro
from gsplat.strategy import DefaultStrategy as _GsplatDefault
from gsplat.strategy.ops import remove, reset_opa

from s3dgs.errors import UsageError
from s3dgs.gaussians.floaters import FloaterPruning
from s3dgs.options import opt

__all__ = ["DefaultStrategy", "stem_hits"]


@torch.no_grad()
def stem_hits(stem_mask: torch.Tensor, means2d: torch.Tensor, radii: torch.Tensor,
              gaussian_ids: Optional[torch.Tensor] = None, camera_ids: Optional[torch.Tensor] = None,
              n_gaussians: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per Gaussian, in how many of these cameras it is drawn, and drawn with its 2D mean on a stem pixel.

    Unpacked (gsplat's and this project's default): ``stem_mask [C, H, W]`` bool, ``means2d
    [C, N, 2]`` pixel coordinates (x right, y down; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``),
    ``radii [C, N, 2]`` or ``[C, N]`` (0: not drawn). Packed: ``means2d [nnz, 2]``, ``radii [nnz, 2]``
    or ``[nnz]``, ``gaussian_ids [nnz]``, ``camera_ids [nnz]`` and ``n_gaussians``.

    Returns ``(hits [N], seen [N])`` float32.
    """
    m2 = means2d.detach()
    r = radii if radii.dim() == m2.dim() - 1 else (radii > 0).all(dim=-1)
    drawn = r > 0 if r.dtype != torch.bool else r
    C, H, W = stem_mask.shape
    if gaussian_ids is None:
        N = m2.shape[1]
        cam = torch.arange(C, device=m2.device)[:, None].expand(C, N)
        gid = torch.arange(N, device=m2.device)[None].expand(C, N)
        drawn, m2, cam, gid = drawn.reshape(-1), m2.reshape(-1, 2), cam.reshape(-1), gid.reshape(-1)
    else:
        N = int(n_gaussians)
        cam, gid = camera_ids, gaussian_ids
    j = torch.floor(m2[:, 0]).long()
    i = torch.floor(m2[:, 1]).long()
    inside = drawn & (j >= 0) & (j < W) & (i >= 0) & (i < H)
    on = torch.zeros_like(inside)
    on[inside] = stem_mask.to(m2.device).bool()[cam[inside], i[inside], j[inside]]
    hits = torch.zeros(N, device=m2.device)
    seen = torch.zeros(N, device=m2.device)
    hits.index_add_(0, gid, on.float())
    seen.index_add_(0, gid, drawn.float())
    return hits, seen


@dataclass
class DefaultStrategy(FloaterPruning, _GsplatDefault):
    """Densification (gsplat's DefaultStrategy: 3DGS split, clone and prune, AbsGS gradients), with
    the opacity reset that gsplat 1.5.3 never fires, a lower split/clone threshold for Gaussians on
    stem pixels (--grow-grad2d-stem) and depth-guided floater pruning (--prune-floaters)."""

    # gsplat's fields, declared again with the same defaults so that --help explains them in this
    # project's words (gsplat's docstrings state gsplat's defaults, which the trainer overrides)
    prune_opa: float = 0.005
    """Gaussians whose opacity falls below this are pruned at refinement steps."""
    grow_grad2d: float = 0.0002
    """Gaussians whose mean 2D position gradient (since the last refinement) exceeds this are split
    (large ones) or cloned (small ones)."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this (a fraction of the scene's scale) are split rather than cloned."""
    grow_scale2d: float = 0.05
    """Gaussians larger on screen than this (a fraction of the image) are split too, until
    --refine-scale2d-stop-iter."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this (a fraction of the scene's scale) are pruned after an opacity reset."""
    prune_scale2d: float = 0.15
    """Gaussians larger on screen than this (a fraction of the image) are pruned too, until
    --refine-scale2d-stop-iter."""
    refine_scale2d_stop_iter: int = 0
    """Iteration until which the screen-size rules above apply (0: never)."""
    refine_start_iter: int = 500
    """Iteration from which Gaussians are split, cloned and pruned (scaled to shorter runs)."""
    refine_stop_iter: int = 15_000
    """Iteration after which the number of Gaussians stays put."""
    reset_every: int = 3000
    """Iterations between opacity resets (scaled to shorter runs)."""
    refine_every: int = 100
    """Iterations between refinements (split, clone, prune)."""
    pause_refine_after_reset: int = 0
    """Iterations after an opacity reset without refinement (0: no pause)."""
    absgrad: bool = False
    """Use the absolute 2D gradients for splitting (AbsGS; with it --grow-grad2d is typically about
    four times higher)."""
    revised_opacity: bool = False
    """Halve the opacity of cloned and split Gaussians by the revised rule of arXiv:2404.06109
    (experimental)."""
    verbose: bool = False
    """Print what each refinement did."""
    key_for_gradient: Annotated[Literal["means2d", "gradient_2dgs"], tyro.conf.Suppress] = "means2d"
    """Which 2D gradient drives refinement (gsplat's; 3DGS uses means2d): not an option."""

    grow_grad2d_stem: Annotated[Optional[float], opt("FLOAT", "off")] = None
    """Split/clone gradient threshold for Gaussians on stem pixels (off: every Gaussian uses
    --grow-grad2d). Below --grow-grad2d, thin stems are refined before the rest."""
    stem_min_fraction: float = 0.5
    """A Gaussian is on a stem when its 2D mean fell on a stem pixel in at least this fraction of the
    steps (since the last refinement) in which it was drawn and a stem mask was given."""

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        if self.grow_grad2d_stem is not None and not self.grow_grad2d_stem > 0:
            raise UsageError(f"grow_grad2d_stem must be positive (or None for off), got {self.grow_grad2d_stem}")
        state = super().initialize_state(scene_scale=scene_scale)
        if self.grow_grad2d_stem is not None:
            state["stem_hits"] = None
            state["stem_seen"] = None
        return state

    def refines_at(self, step: int) -> bool:
        """Whether ``step_post_backward(step)`` grows and prunes (gsplat's schedule): a trainer that
        builds ``info["floater_views"]`` as a list needs it only at these steps."""
        return (self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0
                and step % self.reset_every >= self.pause_refine_after_reset)

    def on_stem(self, state: dict[str, Any]) -> Optional[torch.Tensor]:
        """``[N]`` bool: the Gaussians counted as on a stem now (None when the piece is off or has no data)."""
        hits, seen = state.get("stem_hits"), state.get("stem_seen")
        if self.grow_grad2d_stem is None or hits is None or seen is None:
            return None
        return (hits > 0) & (hits >= self.stem_min_fraction * seen)

    def _update_stem_state(self, params, state: dict[str, Any], info: dict[str, Any], packed: bool) -> None:
        n = len(params["means"])
        dev = params["means"].device
        if state.get("stem_hits") is None:
            state["stem_hits"] = torch.zeros(n, device=dev)
            state["stem_seen"] = torch.zeros(n, device=dev)
        stem = info.get("stem_mask")
        if stem is None:
            return
        if stem.dim() == 2:
            stem = stem[None]
        hits, seen = stem_hits(stem, info["means2d"], info["radii"],
                               info.get("gaussian_ids") if packed else None,
                               info.get("camera_ids") if packed else None, n_gaussians=n)
        state["stem_hits"] += hits
        state["stem_seen"] += seen

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state: dict[str, Any], step: int) -> tuple[int, int]:
        on = self.on_stem(state)
        if on is not None:
            state["n_on_stem"] = int(on.sum())
            # gsplat grows where grad2d / count > grow_grad2d; scaling the (about to be zeroed) sums
            # of the stem Gaussians by grow_grad2d / grow_grad2d_stem makes that test read
            # grad2d / count > grow_grad2d_stem for them, and leaves the rest of gsplat's rule alone.
            state["grad2d"][on] *= self.grow_grad2d / self.grow_grad2d_stem
        return super()._grow_gs(params, optimizers, state, step)

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int, info: dict[str, Any],
                           packed: bool = False):
        refine = self.refines_at(step)
        if self.grow_grad2d_stem is not None and step < self.refine_stop_iter:
            self._update_stem_state(params, state, info, packed)
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if refine:
            if state.get("stem_hits") is not None:
                state["stem_hits"].zero_()
                state["stem_seen"].zero_()
            mask = self._floaters(params, step, info)
            if mask is not None:
                n = int(mask.sum())
                if n > 0:
                    remove(params=params, optimizers=optimizers, state=state, mask=mask)
                state["n_floaters"] = state.get("n_floaters", 0) + n
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)
            state["n_resets"] = state.get("n_resets", 0) + 1
