"""Pure loss functions for S-3DGS: colour, depth prior, semantics, and the weight schedules.

Every function states the space it compares in and the shapes it takes. Nothing here reads a
tensor's value on the host (no ``.item()``, no boolean indexing, no Python branch on a tensor
value), so the trainer can call them every step without a host-device synchronisation. The one
exception is :func:`fit_depth_scale_sfm`, which runs once per image at set-up and returns Python
floats.

Conventions (see docs/ARCHITECTURE.md): images are float in [0, 1] with channels last (``[H, W, 3]`` or
``[C, H, W, 3]``); rendered depth is expected (alpha-normalised) camera z; depth priors are the
16-bit PNG value scaled to [0, 1], disparity (near = bright) unless said otherwise; pixel centres
are at +0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DepthLossConfig",
    "SemanticConfig",
    "depth_prior_loss",
    "depth_weight_schedule",
    "fit_depth_scale_sfm",
    "l1_loss",
    "mark_unreliable_scales",
    "rgb_loss",
    "scale_invariant_depth_loss",
    "semantic_loss",
    "semantic_weight",
    "sobel_edge_weight",
    "ssim",
]



def _arg(name: str) -> Any:
    """The option's command-line name on every command (no group prefix); see s3dgs/config.py."""
    from s3dgs.options import opt

    return opt(name=name, flat=True)


def _auto_arg(name: str, words: str) -> Any:
    """As :func:`_arg`, for an integer option whose None means "auto" (s3dgs.options.auto_opt)."""
    from s3dgs.options import auto_opt

    return auto_opt("INT", words, name=name)


@dataclass
class DepthLossConfig:
    """The depth-prior term: its weight and every option of the depth-prior loss."""

    # (the group is passed whole to depth_prior_loss as its `config`)

    weight: Annotated[float, _arg("lambda-depth")] = 0.1
    """Weight of the depth-prior term (0 switches it off)."""
    schedule: Annotated[Literal["constant", "exp"], _arg("depth-schedule")] = "constant"
    """Depth weight over the run: constant, or exponential decay to 1 % (as 3DGS decays 1.0 -> 0.01)."""
    loss: Annotated[Literal["prior", "original", "seed"], _arg("depth-loss")] = "prior"
    """'prior': the depth-prior loss with the options below; 'original': the formula of the
    integration guide the project started from (its scale-invariant loss on rendered depth against
    the prior value), which takes no options ('seed' is its older name)."""
    space: Annotated[Literal["disparity", "depth"], _arg("depth-space")] = "disparity"
    """Where rendered depth is compared: disparity (1/z; Depth Anything V2 predicts affine-invariant
    inverse depth, so this is the right relation) or depth (the integration guide's formula)."""
    alignment: Annotated[Literal["per_view", "sfm", "patch"], _arg("depth-alignment")] = "per_view"
    """per_view: prior scale and shift fitted to the render every step (the integration guide); sfm: fitted once
    per image against the projected COLMAP points (3DGS); images whose fit is implausible are dropped;
    patch: fitted every step in windows of --depth-patch-size pixels (absorbs the prior's low-frequency
    warp; a window without enough depth spread takes the per-view fit)."""
    patch_size: Annotated[int, _arg("depth-patch-size")] = 32
    """Window side in pixels of --depth-alignment patch (at least 4)."""
    robust: Annotated[bool, _arg("depth-robust")] = True
    """Robust (trimmed) per-view alignment instead of plain least squares."""
    multiscale: Annotated[bool, _arg("depth-multiscale")] = False
    """Average the loss over full, half and quarter resolution."""
    edge_aware: Annotated[bool, _arg("depth-edge-aware")] = False
    """Weight the loss by the frame's Sobel edges."""
    confidence: Annotated[bool, _arg("depth-confidence")] = True
    """Weight pixels by depths/<stem>.conf.png when such maps exist."""
    stem_aware: Annotated[bool, _arg("depth-stem-aware")] = False
    """Trust the prior less where the heatmaps show thin stems (monocular models blur them)."""
    stem_weight: Annotated[float, _arg("depth-stem-weight")] = 0.1
    """Weight of stem pixels in the depth loss when --depth-stem-aware is on (0-1)."""
    stem_one_sided: Annotated[bool, _arg("depth-stem-one-sided")] = False
    """On stem pixels (heatmap U/D/P > 0.5) penalise only rendered depth farther than the prior: a
    monocular prior blurs a thin stem into what lies behind it, so there it says no more than "the
    surface is at least this near"."""
    thin: Annotated[Literal["off", "down", "one-sided"], _arg("depth-thin")] = "one-sided"
    """Thin structures found in the frame itself (a Hessian ridge filter, no heatmaps needed; see
    s3dgs/thin.py), where a monocular prior puts stems at the depth of what lies behind them.
    one-sided: thin pixels leave the alignment and count in the loss only where the render lies
    behind the prior's surface (the loss never pulls a thin structure back toward the background);
    down: thin pixels weigh --depth-thin-weight in the alignment and the loss; off: no special
    treatment (the prior as shipped before one-sided kept thin stems whole in BENCHMARKS.md's study)."""
    thin_weight: Annotated[float, _arg("depth-thin-weight")] = 0.1
    """Weight of a sure thin pixel (map value 1) with --depth-thin down (0-1; 0 ignores them); with
    one-sided, the weight in the alignment of the map's fringe (values up to 0.5)."""
    thin_max_width: Annotated[int, _arg("depth-thin-max-width")] = 6
    """Widest structure, in frame pixels, that --depth-thin treats as thin (1 to 32; the prior blurs
    structures narrower than about 5 px at its 518 px input, i.e. 5 * short side / 518 frame px)."""
    gate_disagreement: Annotated[float, _arg("depth-gate-disagreement")] = 0.0
    """Leave out of the loss the pixels whose residual after alignment exceeds this many times the
    view's median residual (0: off; e.g. 3). Drops where prior and render disagree most -- blurred
    thin stems, but also floaters the prior would remove."""

    def validate(self) -> None:
        from s3dgs.validate import flag, fraction, in_range, non_negative

        non_negative(flag(self, "weight"), self.weight)
        fraction(flag(self, "stem_weight"), self.stem_weight)
        fraction(flag(self, "thin_weight"), self.thin_weight)
        in_range(flag(self, "thin_max_width"), self.thin_max_width, 1, 32)
        non_negative(flag(self, "gate_disagreement"), self.gate_disagreement)
        in_range(flag(self, "patch_size"), self.patch_size, 4, 4096)

    @property
    def original_formula(self) -> bool:
        """Whether the loss is the integration guide's original formula (``original`` / ``seed``)."""
        return self.loss in ("original", "seed")

    def ignored_by_seed_loss(self) -> list[str]:
        """The options set here that the original formula (``--depth-loss original``) ignores."""
        if not self.original_formula:
            return []
        from s3dgs.validate import flag

        on = {"alignment": self.alignment in ("sfm", "patch"), "multiscale": self.multiscale,
              "edge_aware": self.edge_aware, "stem_aware": self.stem_aware,
              # --depth-thin's default (one-sided) belongs to the prior loss: only another choice is named
              "stem_one_sided": self.stem_one_sided, "thin": self.thin == "down",
              "gate_disagreement": self.gate_disagreement > 0}
        valued = {"alignment": self.alignment, "thin": self.thin}  # shown with their value
        return [flag(self, f) + (f" {valued[f]}" if f in valued else "") for f, set_ in on.items() if set_]

    @property
    def thin_widths(self) -> tuple[float, ...]:
        """The line widths (px) the thin-structure map looks for: 1 .. --depth-thin-max-width."""
        return tuple(float(w) for w in range(1, int(self.thin_max_width) + 1))


@dataclass
class SemanticConfig:
    """The semantic term: the rendered class probabilities supervised by skeleton heatmaps or class
    masks (SCENE/masks), after a warm-up.

    Class masks are one-hot targets with unlabelled pixels left out. Their loss is the same
    per-class squared error with --sem-mask-fg-weight (default 1) in place of --sem-fg-weight: with weight 1
    it is the Brier score, like the per-class binary cross-entropy a proper scoring rule for the
    independent per-class sigmoid outputs (both are minimised by the true class probability), and
    bounded where cross-entropy is not, which suits alpha-blended renders whose boundary pixels mix
    classes. The heatmaps' foreground weight (20) is meant for thin skeleton lines and would fatten
    dense mask regions.
    """

    weight: Annotated[float, _arg("lambda-sem")] = 0.2
    """Weight of the semantic term after the warm-up (0 switches it off)."""
    warmup_iterations: Annotated[Optional[int], _auto_arg(
        "sem-warmup-iterations", "4000, 4/7 of a run shorter than 7,000 iterations")] = None
    """Iterations before the semantic term switches on (auto scales with --num-iterations, see
    --scale-schedule)."""
    conf_threshold: Annotated[float, _arg("sem-conf-threshold")] = 0.5
    """A class whose frame confidence is at or below this is not supervised in that frame (0-1)."""
    fg_weight: Annotated[float, _arg("sem-fg-weight")] = 20.0
    """Weight of heatmap foreground pixels (target > 0.1) in the semantic loss."""
    mask_fg_weight: Annotated[float, _arg("sem-mask-fg-weight")] = 1.0
    """Weight of class-mask foreground pixels in the semantic loss (1: the Brier score of the one-hot masks)."""
    activation: Annotated[Literal["sigmoid", "softmax"], _arg("sem-activation")] = "sigmoid"
    """Per-class sigmoid (heatmaps are independent per class) or the original softmax."""

    def validate(self) -> None:
        from s3dgs.validate import flag, in_range, non_negative, positive

        non_negative(flag(self, "weight"), self.weight)
        if self.warmup_iterations is not None:  # None: auto
            non_negative(flag(self, "warmup_iterations"), self.warmup_iterations)
        in_range(flag(self, "conf_threshold"), self.conf_threshold, 0.0, 1.0, hi_open=True)
        positive(flag(self, "fg_weight"), self.fg_weight)
        positive(flag(self, "mask_fg_weight"), self.mask_fg_weight)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------


def l1_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements, in the inputs' own space (RGB in [0, 1]).

    ``pred`` and ``gt`` have the same shape (any). Returns a scalar tensor.
    """
    return (pred - gt).abs().mean()


_WINDOW_CACHE: dict[tuple, torch.Tensor] = {}
_WINDOW_1D_CACHE: dict[tuple, torch.Tensor] = {}


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian window ``[size]`` (float64, CPU); exactly symmetric for odd sizes."""
    key = (size, sigma)
    g = _WINDOW_1D_CACHE.get(key)
    if g is None:
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        g = torch.exp(-(x**2) / (2.0 * sigma**2))
        g = g / g.sum()
        _WINDOW_1D_CACHE[key] = g
    return g


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    key = (size, sigma, channels, str(device), dtype)
    win = _WINDOW_CACHE.get(key)
    if win is None:
        g = _gaussian_1d(size, sigma)
        w2 = torch.outer(g, g)
        win = w2.expand(channels, 1, size, size).contiguous().to(device=device, dtype=dtype)
        _WINDOW_CACHE[key] = win
    return win


def ssim(
    img1: torch.Tensor,
    img2: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    reduce: bool = True,
) -> torch.Tensor:
    """Structural similarity, differentiable, as the official 3DGS ``ssim`` computes it.

    Space: image intensities (``data_range`` = 1 for [0, 1]). An ``window_size`` x ``window_size``
    Gaussian window (sigma 1.5), zero padding of ``window_size // 2`` ("same" output size),
    constants C1 = (0.01 R)^2 and C2 = (0.03 R)^2.

    ``img1``, ``img2``: ``[H, W, Ch]`` or ``[..., H, W, Ch]`` (channels last, e.g. RGB). Returns the
    mean SSIM over every pixel, channel and image (a scalar) when ``reduce``; otherwise the SSIM
    map ``[..., H, W, Ch]``. Equal images give exactly 1.

    Two implementations of the one definition: on a CPU, for float32/float64 images, an odd
    window and no gradient wanted for ``img2`` (the target), the fused C++ kernel of the native
    extension (``s3dgs/csrc/ssim_cpu.cpp``: separable filtering, the map, its mean and the
    backward w.r.t. ``img1`` in a few passes; forward + backward 10-14x faster than the torch
    code from 160x120 to 960x540, see ``benchmarks/ssim.py``; float32 results closer to a float64
    computation than the torch code's; no double backward); otherwise, or when the extension is
    unavailable, :func:`_ssim_reference`, the readable torch code. ``reduce=False`` (the map)
    takes the same path.
    """
    if img1.shape != img2.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if img1.dim() < 3:
        raise ValueError("ssim: expected [..., H, W, C] images (channels last)")
    if _ssim_path(img1, img2, window_size) == "native":
        return _ssim_fused(img1, img2, window_size, sigma, data_range, reduce)
    return _ssim_reference(img1, img2, window_size, sigma, data_range, reduce)


def _ssim_path(img1: torch.Tensor, img2: torch.Tensor, window_size: int) -> str:
    """Which implementation :func:`ssim` uses for these inputs: ``"native"`` or ``"torch"``."""
    if img1.device.type != "cpu" or img2.device.type != "cpu":
        return "torch"
    if img1.dtype not in (torch.float32, torch.float64) or img2.dtype != img1.dtype:
        return "torch"
    if not (1 <= window_size <= 129 and window_size % 2 == 1) or img1.numel() == 0:
        return "torch"
    if img2.requires_grad and torch.is_grad_enabled():  # the kernel differentiates img1 only
        return "torch"
    from s3dgs.extension import native_available

    return "native" if native_available() else "torch"


class _FusedSSIM(torch.autograd.Function):
    """The native kernel's SSIM (mean or map) of ``x [N, H, W, C]`` against ``y``; gradient for
    ``x`` only. Saves the kernel's three per-pixel partial derivatives for the backward."""

    @staticmethod
    def forward(ctx, x, y, window, c1: float, c2: float, want_map: bool, need_grad: bool):
        mean, smap, part = torch.ops.s3dgs_native.ssim_fwd(
            x, y, window, c1, c2, want_map, need_grad, torch.get_num_threads()
        )
        ctx.want_map = want_map
        ctx.window = window
        if need_grad:
            ctx.save_for_backward(x, y, part)
        return smap if want_map else mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y, part = ctx.saved_tensors
        # dL/dS per pixel: the map's gradient, or the mean's spread evenly
        g = grad.to(x.dtype).contiguous() if ctx.want_map else (grad.to(x.dtype) / x.numel()).reshape(1)
        dx = torch.ops.s3dgs_native.ssim_bwd(x, y, part, g, ctx.window, torch.get_num_threads())
        return dx, None, None, None, None, None, None


def _ssim_fused(img1, img2, window_size, sigma, data_range, reduce):
    """:func:`ssim` by the native kernel (see :func:`_ssim_path` for when it applies)."""
    lead = img1.shape[:-3]
    h, w, ch = img1.shape[-3:]
    x = img1.reshape(-1, h, w, ch).contiguous()
    y = img2.detach().reshape(-1, h, w, ch).contiguous()
    need_grad = torch.is_grad_enabled() and img1.requires_grad
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    out = _FusedSSIM.apply(x, y, _gaussian_1d(window_size, sigma), c1, c2, not reduce, need_grad)
    return out if reduce else out.reshape(*lead, h, w, ch)


def _ssim_reference(
    img1: torch.Tensor,
    img2: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    reduce: bool = True,
) -> torch.Tensor:
    """:func:`ssim` in plain torch (autograd through depthwise conv2d on the five filtered maps):
    the readable reference of the native kernel, and the path for CUDA tensors, other dtypes,
    even windows, a target that needs a gradient, or no native extension."""
    lead = img1.shape[:-3]
    h, w, ch = img1.shape[-3:]
    x = img1.reshape(-1, h, w, ch).permute(0, 3, 1, 2)
    y = img2.reshape(-1, h, w, ch).permute(0, 3, 1, 2)
    win = _gaussian_window(window_size, sigma, ch, x.device, x.dtype)
    pad = window_size // 2

    def filt(t):
        return F.conv2d(t, win, padding=pad, groups=ch)

    mu1, mu2 = filt(x), filt(y)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(x * x) - mu1_sq
    s2 = filt(y * y) - mu2_sq
    s12 = filt(x * y) - mu12
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    smap = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    if reduce:
        return smap.mean()
    return smap.permute(0, 2, 3, 1).reshape(*lead, h, w, ch)


def rgb_loss(pred: torch.Tensor, gt: torch.Tensor, lambda_ssim: float = 0.2) -> torch.Tensor:
    """Colour loss of 3DGS / gsplat: ``(1 - lambda_ssim) * L1 + lambda_ssim * (1 - SSIM)``.

    Space: RGB in [0, 1]. ``pred``, ``gt``: ``[H, W, 3]`` or ``[C, H, W, 3]``. ``lambda_ssim = 0``
    gives the integration guide's plain L1 (and skips the SSIM computation). Returns a scalar.
    """
    l1 = l1_loss(pred, gt)
    if lambda_ssim == 0:
        return l1
    return (1.0 - lambda_ssim) * l1 + lambda_ssim * (1.0 - ssim(pred, gt))


# --------------------------------------------------------------------------------------------
# Depth: the integration guide's loss
# --------------------------------------------------------------------------------------------


def _weighted_affine_fit(p: torch.Tensor, g: torch.Tensor, w: torch.Tensor):
    """Weighted least squares ``s * p + t ~ g`` over flat tensors, without host sync.

    Solves the same normal equations as ``torch.linalg.solve(A.T W A, A.T W b)`` with
    ``A = [p, 1]``, written in centred closed form (better conditioned in float32). A singular
    system (no spread in ``p``, or fewer than 2 weighted points) returns ``s = 0`` and
    ``t = weighted mean of g`` -- one of the least-squares solutions -- instead of NaN. The caller
    must have zeroed ``p`` and ``g`` where ``w == 0`` (so no NaN leaks through 0 * NaN).
    Returns ``(s, t)`` as 0-d tensors, differentiable w.r.t. ``p`` and ``g``.
    """
    sw = w.sum()
    sw_safe = torch.where(sw > 0, sw, torch.ones_like(sw))
    pm = (w * p).sum() / sw_safe
    gm = (w * g).sum() / sw_safe
    dp = p - pm
    var = (w * dp * dp).sum()
    cov = (w * dp * (g - gm)).sum()
    eps = torch.finfo(p.dtype).eps
    # Round-off noise on a constant p is of order (eps * |pm|)^2 per point.
    tiny = sw * ((64 * eps) ** 2) * (pm * pm + torch.finfo(p.dtype).tiny)
    ok = (var > tiny) & (sw > 0)
    var_safe = torch.where(ok, var, torch.ones_like(var))
    s = torch.where(ok, cov / var_safe, torch.zeros_like(cov))
    t = gm - s * pm
    return s, t


def scale_invariant_depth_loss(
    pred_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    min_valid: int = 10,
) -> torch.Tensor:
    """The integration guide's scale-invariant depth loss (DEPTH_ANYTHING_V2_INTEGRATION.md, section 3).

    Space: whatever ``pred_depth`` and ``gt_depth`` are in -- the integration guide passes the rendered depth
    and the raw prior value, i.e. it aligns depth *linearly* to the (disparity) prior. Steps, as
    the integration guide specifies:

    1. flatten both;
    2. valid = finite(pred) & finite(gt) (& ``mask != 0`` when ``mask`` is given);
    3. least squares ``min_{s,t} || s * pred + t - gt ||^2`` over the valid pixels (the normal
       equations of ``A = [pred, 1]``, solved in closed form);
    4. return the mean of ``|s * pred + t - gt|`` over the valid pixels (L1 after alignment).

    ``s`` and ``t`` are not detached (gradients flow through the fit, as in the integration guide). Additions
    the integration guide leaves unspecified: fewer than ``min_valid`` (10) valid pixels returns a zero tensor
    that still belongs to the graph (backward gives zero gradients); a singular system (constant
    prediction) uses ``s = 0, t = mean(gt)`` instead of raising or returning NaN. No host sync.

    ``pred_depth``, ``gt_depth``, ``mask``: same number of elements (e.g. ``[H, W]``). Returns a
    scalar tensor.
    """
    pred_flat = pred_depth.reshape(-1)
    gt_flat = gt_depth.reshape(-1).to(pred_flat.dtype)
    valid = torch.isfinite(pred_flat) & torch.isfinite(gt_flat)
    if mask is not None:
        valid = valid & (mask.reshape(-1) != 0)
    w = valid.to(pred_flat.dtype)
    p = torch.where(valid, pred_flat, torch.zeros_like(pred_flat))
    g = torch.where(valid, gt_flat, torch.zeros_like(gt_flat))
    s, t = _weighted_affine_fit(p, g, w)
    n = w.sum()
    loss = (w * (s * p + t - g).abs()).sum() / n.clamp(min=1)
    return torch.where(n >= min_valid, loss, torch.zeros_like(loss))


# --------------------------------------------------------------------------------------------
# Depth: the prior loss with its options
# --------------------------------------------------------------------------------------------


def _as_hw(x: torch.Tensor, name: str) -> torch.Tensor:
    while x.dim() > 2 and (x.shape[0] == 1 or x.shape[-1] == 1):
        x = x.squeeze(-1) if x.shape[-1] == 1 else x.squeeze(0)
    if x.dim() != 2:
        raise ValueError(f"depth_prior_loss: {name} must be [H, W] (got {tuple(x.shape)})")
    return x


def sobel_edge_weight(image: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Edge-aware pixel weights ``1 + strength * |Sobel(gray)| / max|Sobel(gray)|``.

    ``image``: ``[H, W, 3]`` (or ``[H, W]``) in [0, 1]. Returns ``[H, W]`` weights in
    ``[1, 1 + strength]``: flat regions keep weight 1, the strongest image edge gets
    ``1 + strength`` (the integration guide's "focus on edges": on plants, thin stems are edges). Replicate
    padding; no gradient (the image is data).
    """
    with torch.no_grad():
        img = image.detach()
        gray = img if img.dim() == 2 else img[..., :3].mean(-1)
        gray = gray.float()[None, None]
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gray.device)
        k = torch.stack([kx, kx.T])[:, None]
        g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
        mag = torch.sqrt(g[0, 0] ** 2 + g[0, 1] ** 2)
        mag = mag / (mag.amax() + 1e-12)
        return (1.0 + strength * mag).to(image.dtype)


def _masked_nanmedian(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = torch.nanmedian(torch.where(valid, x, torch.full_like(x, float("nan"))))
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _robust_affine_fit(p, g, w, method: str, k: float, iters: int = 2):
    """Per-view alignment ``s * p + t ~ g`` (flat tensors, zeros where ``w == 0``).

    method ``"lstsq"``: weighted least squares.
    method ``"trimmed"``: least squares, then ``iters`` rounds of: drop pixels whose residual
    exceeds ``k`` robust sigmas (1.4826 x median |residual| of the valid pixels), refit on the rest.
    method ``"mad"``: the median / mean-absolute-deviation match of 3DGS's make_depth_scale:
    ``s = sign(cov) * MAD(g) / MAD(p)``, ``t = med(g) - s * med(p)``.
    """
    s, t = _weighted_affine_fit(p, g, w)
    if method == "lstsq":
        return s, t
    valid = w > 0
    if method == "trimmed":
        floor = 1e-6 * (_masked_nanmedian(g.detach().abs(), valid) + 1e-12)
        for _ in range(max(int(iters), 1)):
            r = (s * p + t - g).detach().abs()
            sigma = 1.4826 * _masked_nanmedian(r, valid)
            keep = (r <= k * sigma + floor).to(w.dtype)
            s, t = _weighted_affine_fit(p, g, w * keep)
        return s, t
    if method == "mad":
        nw = w.sum().clamp(min=1)
        mp = _masked_nanmedian(p, valid)
        mg = _masked_nanmedian(g, valid)
        sp = (w * (p - mp).abs()).sum() / nw
        sg = (w * (g - mg).abs()).sum() / nw
        ok = sp > torch.finfo(p.dtype).tiny
        sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
        s_mad = torch.where(ok, sign * sg / torch.where(ok, sp, torch.ones_like(sp)), 0 * sp)
        return s_mad, mg - s_mad * mp
    raise ValueError(f"unknown robust method {method!r} (use 'lstsq', 'trimmed' or 'mad')")


def _patch_affine_fit(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, valid: torch.Tensor, size: int,
                      s_view: torch.Tensor, t_view: torch.Tensor, min_fraction: float = 0.25,
                      min_rel_var: float = 0.01):
    """Weighted least squares ``s * x + t ~ g`` in each ``size`` x ``size`` window of ``[H, W]``
    maps (zeros where ``w == 0``), as ``[H, W]`` maps of ``s`` and ``t``, without host sync.

    A window keeps its own fit when at least ``min_fraction`` of its pixels are valid, its weighted
    variance of ``x`` is at least ``min_rel_var`` times the view's, and its scale has the sign of
    the view's ``s_view``; otherwise it takes ``(s_view, t_view)``. Windows cut by the image border
    are fitted on the pixels they hold. Differentiable through the fits, as the per-view one.
    Written here because no library fits affine maps per window of a weighted image; the sums are
    ``avg_pool2d`` over non-overlapping windows.
    """
    h, w_ = x.shape
    ph, pw = (-h) % size, (-w_) % size

    def sums(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t[None, None], (0, pw, 0, ph))
        return F.avg_pool2d(t, size)[0, 0] * (size * size)

    sw, sx, sg = sums(w), sums(w * x), sums(w * g)
    sxx, sxg, nv = sums(w * x * x), sums(w * x * g), sums(valid.to(x.dtype))
    sw_safe = torch.where(sw > 0, sw, torch.ones_like(sw))
    xm, gm = sx / sw_safe, sg / sw_safe
    var = sxx - sw * xm * xm
    cov = sxg - sw * xm * gm
    wsum = w.sum()
    xm_view = (w * x).sum() / wsum.clamp(min=torch.finfo(x.dtype).tiny)
    var_view = (w * (x - xm_view) ** 2).sum() / wsum.clamp(min=torch.finfo(x.dtype).tiny)
    ok = (nv >= min_fraction * size * size) & (sw > 0) & (var > min_rel_var * var_view * sw) & (var_view > 0)
    s = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), s_view.expand_as(var))
    ok = ok & (s * s_view > 0)
    s = torch.where(ok, s, s_view.expand_as(s))
    t = torch.where(ok, gm - s * xm, t_view.expand_as(s))

    def up(m: torch.Tensor) -> torch.Tensor:
        return m.repeat_interleave(size, 0).repeat_interleave(size, 1)[:h, :w_]

    return up(s), up(t)


def _pool_weighted_l1(r: torch.Tensor, w: torch.Tensor, factor: int) -> torch.Tensor:
    """L1 of the weight-averaged residual on a grid downsampled by ``factor`` (``[H, W]`` in)."""
    if factor == 1:
        return (w * r.abs()).sum() / w.sum().clamp(min=1e-12)
    wp = F.avg_pool2d(w[None, None], factor)[0, 0]
    rp = F.avg_pool2d((w * r)[None, None], factor)[0, 0] / wp.clamp(min=1e-12)
    return (wp * rp.abs()).sum() / wp.sum().clamp(min=1e-12)


def depth_prior_loss(
    pred_depth: torch.Tensor,
    prior: torch.Tensor,
    alpha: torch.Tensor | None = None,
    *,
    prior_kind: str = "disparity",
    space: str = "disparity",
    alignment: str = "per_view",
    scale_shift: tuple[Any, Any] | None = None,
    robust: bool | str = True,
    robust_k: float = 2.5,
    robust_iters: int = 2,
    alpha_threshold: float = 0.5,
    multiscale: bool = False,
    edge_image: torch.Tensor | None = None,
    edge_strength: float = 1.0,
    confidence: torch.Tensor | None = None,
    stem_heatmap: torch.Tensor | None = None,
    stem_weight: float = 0.1,
    min_depth: float = 1e-6,
    min_valid: int = 10,
    return_info: bool = False,
    config: DepthLossConfig | None = None,
    stem_one_sided: bool = False,
    thin_map: torch.Tensor | None = None,
    thin: str = "off",
    thin_weight: float = 0.1,
    gate_disagreement: float = 0.0,
    patch_size: int = 32,
):
    """Depth-prior loss between a rendered depth map and a monocular prior, with its options.

    ``config`` (the trainer's :class:`DepthLossConfig`, passed whole) sets ``space``,
    ``alignment``, ``robust``, ``multiscale``, ``stem_weight`` and ``stem_one_sided``, and decides
    which per-frame inputs are used: ``edge_image`` only with ``edge_aware``, ``confidence`` only
    with ``confidence``, ``stem_heatmap`` only with ``stem_aware`` or ``stem_one_sided``; so a
    caller passes every input it has.

    ``stem_one_sided``: on stem pixels (``stem_heatmap > 0.5``) only residuals that mean "rendered
    farther than the prior" count; a monocular prior blurs thin stems into the backdrop, so on them
    it bounds the depth from one side only.

    ``thin_map [H, W]`` in [0, 1] (:func:`s3dgs.thin.thin_structure_map` of the frame; used only
    when ``thin`` is not ``"off"``): thin structures found in the frame itself. ``thin="down"``:
    weight ``1 + (thin_weight - 1) * thin_map`` in the fit and the loss; ``thin="one-sided"``: on
    thin pixels (``thin_map > 0.5``) only residuals that mean "rendered farther than the prior"
    count (the same rule as ``stem_one_sided``), and they leave the fit (elsewhere the fit weight
    is ``1 + (thin_weight - 1) * thin_map``): the gradient also flows through the fit, and a thin
    pixel in it would be pulled toward the prior through the fit -- so the loss never pulls a thin
    structure toward the background the prior puts it in; it still pulls it forward when it is
    rendered behind the prior's surface.

    ``gate_disagreement`` ``k > 0``: pixels whose residual after alignment exceeds ``k`` times the
    median absolute residual of the view's valid pixels leave the loss (gating by disagreement; the
    gate is not differentiated). 0 leaves it off.

    Shapes: ``pred_depth [H, W]`` rendered expected depth (camera z, alpha-normalised);
    ``prior [H, W]`` the prior PNG value in [0, 1]; ``alpha [H, W]`` rendered opacity or None;
    ``edge_image [H, W, 3]``, ``confidence [H, W]``, ``stem_heatmap [H, W]`` optional. Singleton
    leading/trailing dimensions (``[1, H, W, 1]``) are squeezed. Returns a scalar tensor (and an
    info dict of 0-d tensors ``scale, shift, n_valid`` when ``return_info``). No host sync.

    **Valid pixels**: finite depth > ``min_depth``, finite prior, and ``alpha > alpha_threshold``
    when ``alpha`` is given (the render must have content there). Fewer than ``min_valid`` valid
    pixels gives a zero tensor that keeps the graph.

    **Space** (where the rendered depth is compared):

    - ``"disparity"`` (default): the render is inverted, ``x = 1 / clamp(z, min_depth)``. With a
      disparity prior (Depth Anything V2, the 16-bit PNG convention) this is the right relation:
      the prior is affine in inverse depth.
    - ``"depth"``: ``x = z``. With a disparity prior and per-view alignment this is the integration guide's
      literal formula -- rendered *depth* is fitted linearly to the *disparity* value
      (``s * z + t ~ prior``, ``s`` comes out negative). It is only a first-order approximation of
      the true ``1/z`` relation (exact when the depth range of the view is narrow); kept for the
      study and for compatibility.

    **Alignment**:

    - ``"per_view"`` (the integration guide): ``s, t`` fitted on this view every step, ``s * x + t ~ prior``;
      the loss is the weighted L1 of ``s * x + t - prior``, in prior units ([0, 1]) whatever the
      space, so ``lambda_depth`` does not depend on the scene's scale. ``robust``: ``False`` or
      ``"lstsq"`` plain least squares (as the integration guide); ``True`` or ``"trimmed"`` least squares,
      then ``robust_iters`` (2) rounds of: drop pixels beyond ``robust_k`` robust sigmas
      (1.4826 median |residual|), refit -- the
      dropped pixels are excluded from the *fit only*, the loss still covers every valid pixel
      (so a floater is still penalised); ``"mad"`` the median / mean-absolute-deviation match of
      3DGS. Gradients flow through ``s, t`` as in the integration guide.
    - ``"patch"``: as ``per_view``, but ``s, t`` fitted in each ``patch_size`` x ``patch_size``
      window (plain weighted least squares, :func:`_patch_affine_fit`); windows with too few valid
      pixels or too little depth spread take the per-view fit (which ``return_info`` reports).
    - ``"sfm"``: ``scale_shift = (s, t)`` is fixed (from :func:`fit_depth_scale_sfm`, once per
      image) and maps the prior to metric units: ``m = s * prior + t`` is inverse depth for a
      disparity prior, depth for a depth prior, in the units of the SfM model (which must be the
      units of ``pred_depth``). ``m`` is converted to ``space`` (inverted when the kinds differ)
      and the loss is the weighted L1 of ``x - m`` -- in scene units of ``space`` (3DGS uses L1
      on inverse depth), so its magnitude scales with the scene. ``s, t`` may be floats or 0-d
      tensors.

    **Pixel weights** (multiplied): ``confidence`` per-pixel confidence in [0, 1] (e.g.
    ``depths/<stem>.conf.png``), used in the fit and in the loss; ``stem_heatmap`` in [0, 1]
    (e.g. the max over the stem-class heatmaps): weight ``1 + (stem_weight - 1) * heatmap``, i.e.
    ``stem_weight`` on a sure stem pixel, 1 off stems -- monocular priors blur thin stems into the
    background, so the prior is trusted less there, in the fit and in the loss; ``edge_image``:
    :func:`sobel_edge_weight` ``1 + edge_strength * |Sobel| / max``, in the loss only (it would
    bias the alignment toward edges, where the prior is least accurate). The loss is the
    weighted mean ``sum(w |r|) / sum(w)``.

    **Multiscale**: ``True`` averages the loss on the full grid and on grids downsampled by 2
    and 4, where the residual is the weight-averaged residual of each 2x2 / 4x4 block (average
    pooling). The alignment is fitted once at full resolution (an affine map commutes with
    average pooling, so refitting per scale would change little and cost more). Coarse levels
    cancel zero-mean pixel noise and keep consistent low-frequency errors, so the multiscale loss
    is never above the full-resolution one and weighs structure over noise.
    """
    if config is not None:
        space, alignment, robust = config.space, config.alignment, config.robust
        multiscale, stem_weight = config.multiscale, config.stem_weight
        edge_image = edge_image if config.edge_aware else None
        confidence = confidence if config.confidence else None
        stem_one_sided = config.stem_one_sided
        stem_heatmap = stem_heatmap if (config.stem_aware or stem_one_sided) else None
        if not config.stem_aware:
            stem_weight = 1.0
        thin, thin_weight = config.thin, config.thin_weight
        gate_disagreement, patch_size = config.gate_disagreement, config.patch_size
    _check_modes(thin, space, prior_kind, alignment, scale_shift)
    thin_map = thin_map if thin != "off" else None
    method = ("trimmed" if robust else "lstsq") if isinstance(robust, bool) else robust

    z = _as_hw(pred_depth, "pred_depth")
    dt = z.dtype
    pr = _as_hw(prior, "prior").to(dt)
    if pr.shape != z.shape:
        raise ValueError(f"depth_prior_loss: prior {tuple(pr.shape)} vs depth {tuple(z.shape)}")

    # 1. the pixels that can be compared, in the comparison space
    valid = torch.isfinite(z) & (z > min_depth) & torch.isfinite(pr)
    if alpha is not None:
        valid = valid & (_as_hw(alpha, "alpha").detach() > alpha_threshold)
    zs = torch.where(valid, z, torch.ones_like(z))  # no NaN/0 reaches 1/z or its gradient
    x = 1.0 / zs if space == "disparity" else zs
    x = torch.where(valid, x, torch.zeros_like(x))
    pr0 = torch.where(valid, pr, torch.zeros_like(pr))
    vw = valid.to(dt)
    # 2. per-pixel weights of the fit and of the loss
    fit_w, loss_w, tm = _pixel_weights(vw, confidence, stem_heatmap, stem_weight, thin_map, thin, thin_weight,
                                       edge_image, edge_strength)
    # 3. the prior aligned to the render (or the render to the metric prior), the residual
    r, s, t, loss_w = _aligned_residual(x, pr0, fit_w, loss_w, valid, alignment, scale_shift, prior_kind, space,
                                        method, robust_k, robust_iters, patch_size)
    # 4. one-sided pixels (stems, thin structures): only "rendered farther than the prior" counts
    r = _near_side_free(r, _one_sided_pixels(stem_one_sided, stem_heatmap, thin, tm), prior_kind, alignment, space)
    # 5. gate: pixels disagreeing far more than the view's median leave the loss
    if gate_disagreement > 0:
        loss_w = _gated(r, valid, loss_w, gate_disagreement)

    factors = (1, 2, 4) if multiscale else (1,)
    loss = sum(_pool_weighted_l1(r, loss_w, f) for f in factors) / len(factors)
    n = vw.sum()
    loss = torch.where(n >= min_valid, loss, torch.zeros_like(loss))
    if return_info:
        return loss, {"scale": s.detach(), "shift": t.detach(), "n_valid": n.detach()}
    return loss


def _check_modes(thin: str, space: str, prior_kind: str, alignment: str, scale_shift) -> None:
    """ValueError for a mode :func:`depth_prior_loss` does not know."""
    if thin not in ("off", "down", "one-sided"):
        raise ValueError(f"thin must be 'off', 'down' or 'one-sided', not {thin!r}")
    if space not in ("disparity", "depth"):
        raise ValueError(f"space must be 'disparity' or 'depth', not {space!r}")
    if prior_kind not in ("disparity", "depth"):
        raise ValueError(f"prior_kind must be 'disparity' or 'depth', not {prior_kind!r}")
    if alignment not in ("per_view", "sfm", "patch"):
        raise ValueError(f"alignment must be 'per_view', 'sfm' or 'patch', not {alignment!r}")
    if alignment == "sfm" and scale_shift is None:
        raise ValueError("alignment='sfm' needs scale_shift=(s, t) from fit_depth_scale_sfm")


def _pixel_weights(vw: torch.Tensor, confidence, stem_heatmap, stem_weight: float, thin_map, thin: str,
                   thin_weight: float, edge_image, edge_strength: float):
    """``(fit_w, loss_w, tm)`` [H, W]: the weights of the alignment fit and of the loss from the valid
    mask ``vw`` (0/1, the loss's dtype), the prior's confidence, the stem heatmap (``stem_weight`` on
    a sure stem pixel), the thin-structure map (``down``: ``thin_weight`` in both; ``one-sided``:
    sure thin pixels leave the fit) and the Sobel edges (loss only); ``tm`` the clamped thin map or None."""
    dt = vw.dtype
    fit_w = vw
    if confidence is not None:
        c = _as_hw(confidence, "confidence").detach().to(dt)
        fit_w = fit_w * torch.where(torch.isfinite(c), c.clamp(min=0), torch.zeros_like(c))
    if stem_heatmap is not None:
        hm = _as_hw(stem_heatmap, "stem_heatmap").detach().to(dt).clamp(0, 1)
        fit_w = fit_w * (1.0 + (stem_weight - 1.0) * hm)
    loss_w, tm = fit_w, None
    if thin_map is not None:
        tm = _as_hw(thin_map, "thin_map").detach().to(dt).clamp(0, 1)
        if tm.shape != vw.shape:
            raise ValueError(f"depth_prior_loss: thin_map {tuple(tm.shape)} vs depth {tuple(vw.shape)}")
        thin_w = 1.0 + (float(thin_weight) - 1.0) * tm
        if thin == "down":
            fit_w = fit_w * thin_w
            loss_w = loss_w * thin_w
        else:  # one-sided: a bound is no measurement, so sure thin pixels leave the fit
            fit_w = fit_w * torch.where(tm > 0.5, torch.zeros_like(tm), thin_w)
    if edge_image is not None:
        loss_w = loss_w * sobel_edge_weight(edge_image, edge_strength).to(dt)
    return fit_w, loss_w, tm


def _aligned_residual(x, pr0, fit_w, loss_w, valid, alignment: str, scale_shift, prior_kind: str, space: str,
                      method: str, robust_k: float, robust_iters: int, patch_size: int):
    """``(r, s, t, loss_w)``: residual [H, W] (0 off ``valid``) of the render ``x`` against the prior
    ``pr0``: per view / per patch the prior's scale and shift fitted to the render (prior units), or
    with ``sfm`` the prior mapped to the render's space by the fixed ``scale_shift`` (pixels whose
    mapped inverse depth is not positive leave the loss)."""
    dt, dev = x.dtype, x.device
    if alignment in ("per_view", "patch"):
        s, t = _robust_affine_fit(x.reshape(-1), pr0.reshape(-1), fit_w.reshape(-1), method, robust_k, robust_iters)
        if alignment == "patch":
            sp, tp = _patch_affine_fit(x, pr0, fit_w, valid, int(patch_size), s, t)
            r = sp * x + tp - pr0
        else:
            r = s * x + t - pr0
    else:
        s = torch.as_tensor(scale_shift[0], dtype=dt, device=dev)
        t = torch.as_tensor(scale_shift[1], dtype=dt, device=dev)
        m = s * pr0 + t  # inverse depth for disparity priors, depth for depth priors
        if prior_kind != space:
            m_ok = m > 1e-12
            m = torch.where(m_ok, 1.0 / torch.where(m_ok, m, torch.ones_like(m)), torch.zeros_like(m))
            loss_w = loss_w * m_ok.to(dt)
        r = x - m
    return torch.where(valid, r, torch.zeros_like(r)), s, t, loss_w


def _one_sided_pixels(stem_one_sided: bool, stem_heatmap, thin: str, tm) -> torch.Tensor | None:
    """[H, W] bool: the pixels where the prior only bounds the depth (sure stem pixels with
    ``stem_one_sided``, sure thin pixels with ``thin == "one-sided"``), or None."""
    mask = None
    if stem_one_sided and stem_heatmap is not None:
        mask = _as_hw(stem_heatmap, "stem_heatmap").detach() > 0.5
    if thin == "one-sided" and tm is not None:
        mask = tm > 0.5 if mask is None else (mask | (tm > 0.5))
    return mask


def _near_side_free(r: torch.Tensor, mask, prior_kind: str, alignment: str, space: str) -> torch.Tensor:
    """``r`` with the residuals that mean "rendered nearer than the prior" zeroed on ``mask``. The
    sign of "farther": the prior grows with nearness for a disparity prior (per-view / patch fit into
    prior units); the render grows with nearness in disparity space (sfm, the render's space)."""
    if mask is None:
        return r
    far_sign = (-1.0 if prior_kind == "disparity" else 1.0) if alignment != "sfm" else \
        (-1.0 if space == "disparity" else 1.0)
    return torch.where(mask & (r * far_sign < 0), torch.zeros_like(r), r)


def _gated(r: torch.Tensor, valid: torch.Tensor, loss_w: torch.Tensor, k: float) -> torch.Tensor:
    """``loss_w`` without the pixels whose residual exceeds ``k`` times the view's median residual."""
    ra = r.detach().abs()
    med = _masked_nanmedian(ra, valid & (loss_w > 0))
    return loss_w * (ra <= float(k) * med).to(loss_w.dtype)


# --------------------------------------------------------------------------------------------
# Depth: per-image scale and shift against the SfM points (once per image, host side)
# --------------------------------------------------------------------------------------------


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``img [H, W]`` at pixel coordinates (pixel centres at +0.5)."""
    h, w = img.shape
    x = np.clip(u - 0.5, 0, w - 1)
    y = np.clip(v - 0.5, 0, h - 1)
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def fit_depth_scale_sfm(
    prior,
    uv,
    z,
    *,
    prior_kind: str = "disparity",
    method: str = "trimmed",
    robust_k: float = 2.5,
    min_points: int = 20,
    min_inlier_fraction: float = 0.5,
    max_rel_residual: float = 0.2,
) -> dict:
    """Fit the fixed map from a prior to metric (SfM) units against the projected SfM points.

    Direction: ``m ~ scale * prior + shift`` where ``m = 1 / z`` (inverse depth) for a disparity
    prior and ``m = z`` for a depth prior -- the map the official 3DGS make_depth_scale fits
    (prior -> inverse depth), and the ``scale_shift`` that :func:`depth_prior_loss` takes for
    ``alignment="sfm"``.

    ``prior [H, W]`` the prior in [0, 1]; ``uv [M, 2]`` pixel coordinates (x right, y down, pixel
    centres at +0.5) of the SfM points seen in this image; ``z [M]`` their camera depths, in the
    units the trainer renders. numpy arrays or tensors. The prior is sampled bilinearly; points
    outside the image, with non-positive or non-finite depth, or a non-finite prior are dropped.

    ``method``: ``"mad"`` the 3DGS median / mean-absolute-deviation match (scale = MAD(m) /
    MAD(prior), shift = med(m) - scale med(prior)); ``"trimmed"`` (default) starts from it and
    refines by least squares on the inliers (residual within ``robust_k`` robust sigmas, two
    rounds); ``"lstsq"`` plain least squares.

    The fit is marked unreliable (``ok=False``, ``reason`` says why) when: fewer than
    ``min_points`` usable points; the prior has no spread at the points; scale <= 0 (a disparity
    prior must grow with inverse depth, a depth prior with depth); fewer than
    ``min_inlier_fraction`` of the points are inliers; or the median absolute residual exceeds
    ``max_rel_residual`` times the median |m|. Across images, :func:`mark_unreliable_scales`
    adds 3DGS's check of each scale against the median scale.

    Returns a dict of Python values: ``scale, shift, ok, reason, n`` (usable points),
    ``n_inliers, inlier_fraction, median_abs_residual, rel_residual, rmse`` (over inliers).
    """
    if prior_kind not in ("disparity", "depth"):
        raise ValueError(f"prior_kind must be 'disparity' or 'depth', not {prior_kind!r}")
    img = _to_numpy(prior)
    while img.ndim > 2 and (img.shape[0] == 1 or img.shape[-1] == 1):
        img = img[..., 0] if img.shape[-1] == 1 else img[0]
    uv = _to_numpy(uv).reshape(-1, 2)
    z = _to_numpy(z).reshape(-1)
    out = {
        "scale": float("nan"),
        "shift": float("nan"),
        "ok": False,
        "reason": "",
        "n": 0,
        "n_inliers": 0,
        "inlier_fraction": 0.0,
        "median_abs_residual": float("nan"),
        "rel_residual": float("nan"),
        "rmse": float("nan"),
    }
    p, m = _prior_at_points(img, uv, z, prior_kind)
    n = len(m)
    out["n"] = int(n)
    if n < max(min_points, 2):
        out["reason"] = f"too few SfM points ({n} < {min_points})"
        return out
    if np.mean(np.abs(p - np.median(p))) <= 1e-12:
        out["reason"] = "prior has no spread at the SfM points"
        return out
    s, t = _sfm_scale_shift(p, m, method, robust_k)
    rel = _fit_quality(out, s, t, p, m, robust_k)
    reasons = []
    if not (math.isfinite(s) and s > 0):
        reasons.append(f"non-positive scale ({s:.3g})")
    if out["inlier_fraction"] < min_inlier_fraction:
        reasons.append(f"only {out['inlier_fraction']:.0%} inliers")
    if rel > max_rel_residual:
        reasons.append(f"large residual (median {rel:.1%} of |m|)")
    out["ok"] = not reasons
    out["reason"] = "; ".join(reasons)
    return out


def _prior_at_points(img: np.ndarray, uv: np.ndarray, z: np.ndarray, prior_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(p, m)`` [K]: the prior ``img [h, w]`` read bilinearly at the SfM points ``uv [N, 2]`` inside
    the frame with finite positive depth ``z [N]``, and their metric value (1/z for a disparity
    prior, z for a depth prior)."""
    h, w = img.shape
    keep = (np.isfinite(uv).all(1) & np.isfinite(z) & (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= w)
            & (uv[:, 1] >= 0) & (uv[:, 1] <= h))
    uv, z = uv[keep], z[keep]
    p = _bilinear(img, uv[:, 0], uv[:, 1]) if len(z) else np.zeros(0)
    fin = np.isfinite(p)
    p, z = p[fin], z[fin]
    return p, (1.0 / z if prior_kind == "disparity" else z)


def _lstsq_line(pp: np.ndarray, mm: np.ndarray) -> tuple[float, float]:
    """Least-squares ``mm ~ s pp + t``; NaNs when ``pp`` has no spread."""
    pc = pp - pp.mean()
    var = (pc * pc).sum()
    if var <= 1e-24 * max(1.0, (pp * pp).sum()):
        return float("nan"), float("nan")
    s_ = float((pc * (mm - mm.mean())).sum() / var)
    return s_, float(mm.mean() - s_ * pp.mean())


def _sfm_scale_shift(p: np.ndarray, m: np.ndarray, method: str, robust_k: float) -> tuple[float, float]:
    """Scale and shift with ``m ~ s p + t``: ``lstsq``; ``mad`` (median / mean-absolute-deviation
    match, 3DGS's make_depth_scale, sign from least squares); ``trimmed`` (mad, then two least-squares
    refits on the points within ``robust_k`` robust sigmas)."""
    if method == "lstsq":
        return _lstsq_line(p, m)
    mp, mm = np.median(p), np.median(m)
    sp, sm = np.mean(np.abs(p - mp)), np.mean(np.abs(m - mm))
    s0, _ = _lstsq_line(p, m)
    s = (sm / sp) * (np.sign(s0) if np.isfinite(s0) and s0 != 0 else 1.0)
    t = mm - s * mp
    if method == "trimmed":
        for _ in range(2):
            r = np.abs(s * p + t - m)
            sigma = 1.4826 * np.median(r)
            inl = r <= robust_k * sigma + 1e-12 * (abs(mm) + 1e-12)
            if inl.sum() < 2:
                break
            s_new, t_new = _lstsq_line(p[inl], m[inl])
            if not np.isfinite(s_new):
                break
            s, t = s_new, t_new
    elif method != "mad":
        raise ValueError(f"unknown method {method!r} (use 'trimmed', 'mad' or 'lstsq')")
    return s, t


def _fit_quality(out: dict, s: float, t: float, p: np.ndarray, m: np.ndarray, robust_k: float) -> float:
    """Write the fit and its residual figures into ``out``; return the median residual relative to
    the median |m|."""
    mm = np.median(m)
    r = s * p + t - m
    ar = np.abs(r)
    sigma = 1.4826 * np.median(ar)
    inl = ar <= robust_k * sigma + 1e-12 * (abs(mm) + 1e-12)
    med_res = float(np.median(ar))
    rel = med_res / max(float(np.median(np.abs(m))), 1e-300)
    out.update(scale=float(s), shift=float(t), n_inliers=int(inl.sum()), inlier_fraction=float(inl.mean()),
               median_abs_residual=med_res, rel_residual=float(rel), rmse=float(np.sqrt(np.mean(r[inl] ** 2))))
    return rel


def mark_unreliable_scales(fits: dict, low: float = 0.2, high: float = 5.0) -> dict:
    """Cross-image check of 3DGS: a scale below ``low`` or above ``high`` times the median
    scale of the reliable fits marks that fit unreliable. ``fits``: ``{image: fit dict}`` from
    :func:`fit_depth_scale_sfm`; updated in place (``ok``, ``reason``) and returned."""
    scales = [f["scale"] for f in fits.values() if f.get("ok")]
    if not scales:
        return fits
    med = float(np.median(scales))
    for f in fits.values():
        if f.get("ok") and not (low * med <= f["scale"] <= high * med):
            f["ok"] = False
            f["reason"] = f"scale {f['scale']:.3g} far from the median {med:.3g}"
    return fits


# --------------------------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------------------------


def semantic_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    confidence: torch.Tensor | None = None,
    fg_weight: float = 20.0,
    fg_threshold: float = 0.1,
    conf_threshold: float = 0.5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Foreground-weighted, confidence-gated MSE between rendered and target heatmaps (or one-hot
    class masks).

    Space: heatmap values (per-class probabilities in [0, 1]). ``pred``, ``target``:
    ``[H, W, K]`` or ``[C, H, W, K]``; ``confidence``: ``[K]`` (per view, shared by every image)
    or ``[C, K]``, or None (every class on).

    Per element the weight is ``fg_weight`` where ``target > fg_threshold`` and 1 elsewhere; a
    class is gated off (weight 0) in an image whose confidence is ``<= conf_threshold``. The loss
    is ``sum(weight * (pred - target)^2) / (H * W * number of gated-on (image, class) pairs)`` --
    the mean of the weighted squared error over the gated-on channels (a weighted *sum*, not a
    weighted average, so foreground pixels count ``fg_weight`` times). All classes gated off gives
    a zero tensor that keeps the graph. ``valid``: ``[H, W]`` or ``[C, H, W]`` bool, pixels to
    supervise (unlabelled mask pixels False); the others weigh 0 and leave the count ``H * W``
    (per image). No host sync.
    """
    if pred.shape != target.shape:
        raise ValueError(f"semantic_loss: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    x = pred if pred.dim() == 4 else pred[None]
    y = target.to(pred.dtype)
    y = y if y.dim() == 4 else y[None]
    c, h, w, k = x.shape
    wgt = torch.where(y > fg_threshold, torch.full_like(y, fg_weight), torch.ones_like(y))
    if confidence is None:
        gate = torch.ones(c, k, dtype=x.dtype, device=x.device)
    else:
        conf = confidence.to(device=x.device, dtype=x.dtype)
        conf = conf.reshape(1, k).expand(c, k) if conf.dim() == 1 else conf.reshape(c, k)
        gate = (conf > conf_threshold).to(x.dtype)
    wgt = wgt * gate[:, None, None, :]
    if valid is None:
        n = gate.sum() * (h * w)
    else:
        v = valid.to(device=x.device, dtype=x.dtype).reshape(-1, h, w).expand(c, h, w)
        wgt = wgt * v[..., None]
        n = (gate * v.sum((1, 2))[:, None]).sum()
    loss = (wgt * (x - y) ** 2).sum() / n.clamp(min=1)
    return torch.where(n > 0, loss, torch.zeros_like(loss))


def semantic_weight(step: int, warmup: int = 4000, lambda_sem: float = 0.2) -> float:
    """Weight of the semantic term at iteration ``step``: 0 before ``warmup``, ``lambda_sem``
    from ``step == warmup`` on (the integration guide's log shows 0.000 until iteration 4000)."""
    return float(lambda_sem) if step >= warmup else 0.0


def depth_weight_schedule(
    step: int,
    total: int,
    start: float = 0.1,
    end: float | None = None,
    kind: str = "constant",
) -> float:
    """Weight of the depth term at iteration ``step`` of ``total``.

    ``"constant"``: ``start`` throughout (the integration guide, lambda_depth = 0.1). ``"exp"``: log-linear
    decay from ``start`` at step 0 to ``end`` at ``total`` (default ``end = start / 100``, the
    ratio of 3DGS's 1.0 -> 0.01 depth-weight decay), ``start * (end / start) ** (step / total)``,
    held at ``end`` after ``total``.
    """
    if kind == "constant":
        return float(start)
    if kind != "exp":
        raise ValueError(f"kind must be 'constant' or 'exp', not {kind!r}")
    if end is None:
        end = start * 0.01
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    if start <= 0 or end <= 0:  # a log-linear decay needs positive ends: fall back to linear
        return float(start + (end - start) * frac)
    return float(math.exp(math.log(start) * (1 - frac) + math.log(end) * frac))
