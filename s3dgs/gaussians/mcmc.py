"""gsplat's `MCMCStrategy` (3DGS as Markov Chain Monte Carlo, Kheradmand et al. 2024), made to run
on any device and in this project's units.

What gsplat 1.5.3's MCMCStrategy does, and why it is not used as is here:

- it *relocates* dead Gaussians (opacity <= ``min_opacity``) onto live ones drawn by opacity and
  *adds* 5 % more per refinement up to ``cap_max`` -- a Gaussian budget, which also bounds the cost
  of a CPU step -- with the opacity/scale correction of the paper's Eq. 9 so the rendered image
  barely changes; and it injects position noise every step, scaled by each Gaussian's covariance
  and gated to nearly transparent ones, which shakes floaters loose;
- on a CPU it fails at the first call: Eq. 9 (``gsplat.relocation.compute_relocation``) and the
  covariances of the noise (``quat_scale_to_covar_preci``) are CUDA kernels. Here both are torch
  code (:func:`compute_relocation`, :func:`inject_position_noise`) that runs on any device;
- the noise is ``lr * noise_lr * Sigma @ eps``: with gsplat's trainer the scene is normalised to
  about unit size, here it is not (the scene's own COLMAP units), so ``Sigma`` (a squared length)
  and ``lr`` (a length) would make the noise depend on the units. The noise is divided by
  ``scene_scale ** 2`` (``noise_unit_invariant``), which equals gsplat's when ``scene_scale = 1``;
- ``cap_max`` bounds only growth: a model initialised above it stays above it. Here the
  least opaque Gaussians beyond ``cap_max`` are removed at the first refinement;
- gsplat's relocation zeroes the optimiser state of the *sampled* Gaussians but leaves the dead
  slots with the dead Gaussian's Adam moments; here both are zeroed (the copies are new Gaussians).

Every parameter in the dict -- this project's ``semantics [N, K]`` included -- is moved, copied and
grown with the rest (the ops act on every entry and its optimiser state).

What the trainer must do with it (gsplat's ``simple_trainer`` does the same):

1. ``strategy.step_post_backward(params, optimizers, state, step, info, lr=<the means' learning
   rate at this step>)`` after ``optimizer.step()``;
2. add :func:`mcmc_regularization` (opacity and scale L1, 0.01 each in the paper) to the loss;
3. create the state with ``initialize_state(scene_scale=...)`` (the scale the means' learning rate
   is multiplied by), and start from opacities around 0.5 (gsplat's MCMC default ``init_opa``);
4. no ``step_pre_backward`` and no 2D-gradient bookkeeping (``absgrad`` is not needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from gsplat.strategy import MCMCStrategy as _GsplatMCMC
from gsplat.strategy.ops import _update_param_with_optimizer, remove
from torch import Tensor

from s3dgs.errors import UsageError
from s3dgs.gaussians.floaters import FloaterPruning
from s3dgs.render.projection import quat_to_rotmat

__all__ = ["MCMCStrategy", "compute_relocation", "inject_position_noise", "mcmc_regularization"]


@torch.no_grad()
def compute_relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 9 of the MCMC paper: the opacity and scale of each of ``n`` copies of a Gaussian.

    ``opacities [M]`` (activated), ``scales [M, 3]`` (activated), ``ratios [M]`` the number of
    copies ``n`` (clamped to ``[1, n_max]``), ``binoms [n_max, n_max]`` binomial coefficients
    (``binoms[a, b] = C(a, b)``, as gsplat's MCMC state holds). The new opacity is
    ``1 - (1 - o)^(1/n)``; the scales are multiplied by ``o / D`` with
    ``D = sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1)`` -- the same
    quantity as gsplat's CUDA kernel (which scales linearly, as the paper's reference code does).
    The inner sums are regrouped per ``k`` (``A[n-1, k] = sum_{i<n} C(i, k)``) and evaluated in
    float64, where the alternating sum is well conditioned. Returns ``(opacities [M], scales
    [M, 3])`` in the inputs' dtype.
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    o = opacities.double()
    o_new = 1.0 - torch.pow(1.0 - o, 1.0 / n.double())
    A = binoms.double().to(o.device).cumsum(0)  # A[m, k] = sum_{i <= m} C(i, k)
    k = torch.arange(n_max, device=o.device, dtype=torch.float64)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    coef = A[n - 1] * (sign / torch.sqrt(k + 1.0))  # [M, n_max]
    denom = (coef * torch.pow(o_new[:, None], k + 1.0)).sum(1)
    new_scales = (o / denom)[:, None] * scales.double()
    return o_new.to(opacities.dtype), new_scales.to(scales.dtype)


def _sample_by_opacity(opacities: Tensor, n: int) -> Tensor:
    return torch.multinomial(opacities.float().clamp_min(0) + 1e-12, n, replacement=True)


def _opacities(params) -> Tensor:
    """Activated opacities [N] of ``params``."""
    return torch.sigmoid(params["opacities"].detach().reshape(len(params["means"]), -1)[:, 0])


def _shared_sources(params, opa: Tensor, src: Tensor, binoms: Tensor, min_opacity: float):
    """The parameter update common to relocation and addition: each source Gaussian in ``src``
    (indices, repeated once per copy made of it) gets the opacity and scale that keep its look once
    shared with its copies (:func:`compute_relocation`). Returns ``fn(name, p) -> updated copy of p``."""
    copies = torch.bincount(src, minlength=len(opa))[src] + 1  # the source itself and its copies
    new_o, new_s = compute_relocation(opa[src], torch.exp(params["scales"].detach()[src]), copies, binoms)
    new_o = new_o.clamp(min_opacity, 1.0 - torch.finfo(torch.float32).eps)

    def fn(name: str, p: Tensor) -> Tensor:
        q = p.detach().clone()
        if name == "opacities":
            q[src] = torch.logit(new_o).to(q.dtype).reshape(q[src].shape)
        elif name == "scales":
            q[src] = torch.log(new_s).to(q.dtype)
        return q
    return fn


@torch.no_grad()
def _relocate(params, optimizers, dead: Tensor, binoms: Tensor, min_opacity: float) -> int:
    """Move the ``dead`` Gaussians onto live ones drawn by opacity (in place). Returns how many."""
    dead_idx = dead.nonzero(as_tuple=True)[0]
    alive_idx = (~dead).nonzero(as_tuple=True)[0]
    if len(dead_idx) == 0 or len(alive_idx) == 0:
        return 0
    opa = _opacities(params)
    src = alive_idx[_sample_by_opacity(opa[alive_idx], len(dead_idx))]
    shared = _shared_sources(params, opa, src, binoms, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        q = shared(name, p)
        q[dead_idx] = q[src]
        return torch.nn.Parameter(q, requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        v = v.clone()
        v[src] = 0
        v[dead_idx] = 0
        return v

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
    return len(dead_idx)


@torch.no_grad()
def _add(params, optimizers, n: int, binoms: Tensor, min_opacity: float) -> int:
    """Append ``n`` copies of Gaussians drawn by opacity (Eq. 9 applied to source and copies)."""
    if n <= 0:
        return 0
    opa = _opacities(params)
    src = _sample_by_opacity(opa, n)
    shared = _shared_sources(params, opa, src, binoms, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        q = shared(name, p)
        return torch.nn.Parameter(torch.cat([q, q[src]]), requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: Tensor) -> Tensor:
        v = v.clone()
        v[src] = 0
        return torch.cat([v, torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
    return n


@torch.no_grad()
def inject_position_noise(params, scaler: float) -> None:
    """MCMC's exploration noise, in place: ``means += Sigma @ eps * gate(1 - opacity) * scaler``.

    ``Sigma [N, 3, 3]`` each Gaussian's covariance (``R diag(s^2) R^T``), ``eps ~ N(0, I)``,
    ``gate(x) = 1 / (1 + exp(-100 (x - 0.995)))``: about 1 for opacities below 0.005, about 0.01 at
    0.05, so only nearly transparent Gaussians wander. Torch code, any device.
    """
    means = params["means"]
    opa = torch.sigmoid(params["opacities"].detach().reshape(len(means), -1)[:, 0])
    s = torch.exp(params["scales"].detach())
    R = quat_to_rotmat(params["quats"].detach())
    cov = (R * (s * s)[:, None, :]) @ R.transpose(-1, -2)
    gate = torch.sigmoid(100.0 * ((1.0 - opa) - 0.995))
    eps = torch.randn_like(means) * (gate * scaler)[:, None]
    means.add_(torch.einsum("nij,nj->ni", cov, eps))


def mcmc_regularization(params, opacity_reg: float = 0.01, scale_reg: float = 0.01,
                        scene_scale: float = 1.0) -> Tensor:
    """The MCMC paper's regularisers, to add to the loss: ``opacity_reg * mean(sigmoid(opacities))
    + scale_reg * mean(exp(scales)) / scene_scale`` (scales divided by the scene scale so the term
    does not depend on the scene's units; gsplat's trainer normalises the scene instead). Scalar."""
    return (opacity_reg * torch.sigmoid(params["opacities"]).mean()
            + scale_reg * torch.exp(params["scales"]).mean() / float(scene_scale))


@dataclass
class MCMCStrategy(FloaterPruning, _GsplatMCMC):
    """MCMC densification (gsplat's MCMCStrategy, 3DGS as Markov Chain Monte Carlo) on any device: a
    budget of --mcmc.cap-max Gaussians, dead ones relocated onto live ones, 5 % added per
    refinement, position noise every step; optional depth-guided floater relocation
    (--mcmc.prune-floaters)."""

    cap_max: int = 200_000
    """Most Gaussians the model may grow to (gsplat's own default is 1,000,000; 200,000 bounds a
    CPU step)."""
    # gsplat's fields, declared again with the same defaults so that --help explains them in this
    # project's words
    noise_lr: float = 5e5
    """Scale of the position noise added to every Gaussian each step (times the means' learning rate)."""
    refine_start_iter: int = 500
    """Iteration from which dead Gaussians are relocated and new ones added."""
    refine_stop_iter: int = 25_000
    """Iteration after which relocation and addition stop."""
    refine_every: int = 100
    """Iterations between relocations and additions."""
    min_opacity: float = 0.005
    """Gaussians below this opacity are dead: relocated onto live ones."""
    verbose: bool = False
    """Print what each refinement did."""
    noise_unit_invariant: bool = True
    """Divide the position noise by the square of the scene's scale, so it does not depend on
    the scene's units; equal to gsplat's noise when the scene's scale is 1."""

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """gsplat's state, plus ``scene_scale`` and the counts ``n_relocated``, ``n_added``,
        ``n_capped`` and ``n_floaters`` (the log's figures)."""
        if self.cap_max < 1:
            raise UsageError(f"cap_max must be at least 1, got {self.cap_max}")
        state = super().initialize_state()
        state.update(scene_scale=float(scene_scale), n_relocated=0, n_added=0, n_capped=0, n_floaters=0)
        return state

    def refines_at(self, step: int) -> bool:
        """Whether ``step_post_backward(step)`` relocates and adds Gaussians."""
        return self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int, info: dict[str, Any],
                           lr: Optional[float] = None, packed: bool = False):
        """After ``optimizer.step()``. ``lr``: the means' learning rate at this step (required)."""
        if lr is None:
            raise UsageError("MCMCStrategy.step_post_backward needs lr=<the means' learning rate at this step>")
        binoms = state["binoms"] = state["binoms"].to(params["means"].device)
        if self.refines_at(step):
            n = len(params["means"])
            if n > self.cap_max:
                opa = params["opacities"].detach().reshape(n, -1)[:, 0]
                drop = torch.zeros(n, dtype=torch.bool, device=opa.device)
                drop[torch.argsort(opa)[: n - self.cap_max]] = True
                remove(params=params, optimizers=optimizers, state={}, mask=drop)
                state["n_capped"] = state.get("n_capped", 0) + (n - self.cap_max)
            opa = torch.sigmoid(params["opacities"].detach().reshape(len(params["means"]), -1)[:, 0])
            dead = opa <= self.min_opacity
            floaters = self._floaters(params, step, info)
            if floaters is not None:
                state["n_floaters"] = state.get("n_floaters", 0) + int((floaters & ~dead).sum())
                dead = dead | floaters
            n_rel = _relocate(params, optimizers, dead, binoms, self.min_opacity)
            state["n_relocated"] = state.get("n_relocated", 0) + n_rel
            n_now = len(params["means"])
            n_add = _add(params, optimizers, max(0, min(self.cap_max, int(1.05 * n_now)) - n_now), binoms,
                         self.min_opacity)
            state["n_added"] = state.get("n_added", 0) + n_add
            if self.verbose:
                print(f"Step {step}: relocated {n_rel}, added {n_add}; {len(params['means'])} Gaussians")
        scaler = lr * self.noise_lr
        if self.noise_unit_invariant:
            scaler = scaler / state.get("scene_scale", 1.0) ** 2
        inject_position_noise(params, scaler)
