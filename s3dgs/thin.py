"""Thin structures of a frame (stems, petioles, peduncles) found in the frame itself, no heatmaps.

A monocular depth prior (Depth Anything V2) blurs structures a few pixels wide into what lies
behind them; :func:`thin_structure_map` says where such structures are, so the depth loss can trust
the prior less there (``--depth-thin``, see ``s3dgs/losses.py``). It is computed once per frame
(the trainer keeps it), never per step.

:func:`thin_structure_map_reference` is the readable original (numpy and scikit-image: its Hessian,
the core of its Sato / Frangi / Meijering ridge filters); :func:`thin_structure_map_torch` is the
same computation in torch (separable convolutions, any device), tested equal to it
(``tests/test_thin_fast.py``); :func:`thin_structure_map` runs the torch one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_WIDTHS", "EDGE_SUPPRESSION", "LINE_RESPONSE", "thin_structure_map",
           "thin_structure_map_reference", "thin_structure_map_torch"]

DEFAULT_WIDTHS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)

# The scale-normalised response sigma^2 |d2I/dx2| at the centre of an ideal line (box profile) of
# width w and contrast 1, at sigma = w / 2 (where it peaks): 2 exp(-1/2) / sqrt(2 pi), whatever w.
LINE_RESPONSE = 2.0 * np.exp(-0.5) / np.sqrt(2.0 * np.pi)
# Weight of the gradient term: at 2, a step edge keeps at most 2 % of a line's response.
EDGE_SUPPRESSION = 2.0


def _check_args(shape: tuple[int, ...], widths_px: Sequence[float], contrast: tuple[float, float]):
    """The checks both paths share; ``(widths, lo, hi)``. ``shape`` is the image's after ``[H, W]`` -> ``[H, W, 1]``."""
    if len(shape) != 3:
        raise ValueError(f"thin_structure_map: rgb must be [H, W, 3] or [H, W] (got {tuple(shape)})")
    widths = [float(w) for w in widths_px]
    if not widths or min(widths) <= 0:
        raise ValueError(f"thin_structure_map: widths_px must be positive (got {tuple(widths_px)})")
    lo, hi = float(contrast[0]), float(contrast[1])
    if not hi > lo >= 0:
        raise ValueError(f"thin_structure_map: contrast must be 0 <= low < high (got {contrast})")
    return widths, lo, hi


def _margin(widths: Sequence[float]) -> int:
    """The reflect padding of the image before filtering: no border artefacts, no border lines."""
    return int(np.ceil(2.0 * max(widths))) + 2


def thin_structure_map(
    rgb: np.ndarray | torch.Tensor,
    widths_px: Sequence[float] = DEFAULT_WIDTHS,
    contrast: tuple[float, float] = (0.03, 0.10),
    *,
    reference: bool = False,
) -> np.ndarray | torch.Tensor:
    """Soft map ``[H, W]`` in [0, 1] of bright and dark lines ``widths_px`` pixels wide.

    ``rgb``: ``[H, W, 3]`` (or ``[H, W]``) float in [0, 1] (uint8 is divided by 255), a numpy
    array or a torch tensor on any device. Returns float32 of the same kind: numpy in, numpy out;
    a tensor in, a tensor on its device out. The computation is
    :func:`thin_structure_map_reference`'s (read it for what the map is); by default it runs as
    :func:`thin_structure_map_torch` (the same filters in torch, equal within 1e-4, many times
    faster and on the GPU), ``reference=True`` runs the numpy / scikit-image original.
    """
    if isinstance(rgb, torch.Tensor):
        if reference:
            img = rgb.detach().cpu()
            img = img.numpy() if img.dtype == torch.uint8 else img.float().numpy()
            return torch.from_numpy(thin_structure_map_reference(img, widths_px, contrast)).to(rgb.device)
        return thin_structure_map_torch(rgb, widths_px, contrast)
    if reference:
        return thin_structure_map_reference(rgb, widths_px, contrast)
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        img = img.astype(np.float32, copy=False)
    return thin_structure_map_torch(torch.from_numpy(np.ascontiguousarray(img)), widths_px, contrast).numpy()


def thin_structure_map_reference(
    rgb: np.ndarray,
    widths_px: Sequence[float] = DEFAULT_WIDTHS,
    contrast: tuple[float, float] = (0.03, 0.10),
) -> np.ndarray:
    """Soft map ``[H, W]`` in [0, 1] of bright and dark lines ``widths_px`` pixels wide.

    ``rgb``: ``[H, W, 3]`` (or ``[H, W]``) float in [0, 1] (uint8 is divided by 255). Returns float32.

    Per colour channel and per width ``w`` (Hessian scale ``sigma = w / 2``, where an ideal line's
    scale-normalised response peaks): the eigenvalues of scikit-image's Hessian
    (``skimage.feature.hessian_matrix``, ``hessian_matrix_eigvals``); a bright line is a strongly
    negative smallest eigenvalue, a dark line a strongly positive largest one -- Sato's 2-D
    tubeness (``skimage.filters.sato`` is ``sigma^2 max(lambda, 0)`` per polarity), both polarities
    taken from one decomposition (plants stand on dark and on bright backgrounds, and a stem may be
    brighter or darker than what lies behind it). What no library filter does, and the reason for
    writing these few lines instead of calling ``sato`` twice: the edge of a wide region also has a
    strong second derivative (half a line's), so the response is reduced by twice the
    scale-normalised gradient magnitude ``sigma |grad I|`` (zero at a line's centre, as large as
    the Hessian term at an edge), which leaves an edge about 2 % of a line of equal contrast
    (measured on sampled lines: 1-6 px lines keep 35-100 %, even widths the least). Gaussian
    derivatives (``use_gaussian_derivatives=True``): finite differences lose half of a 1 px line. The maximum over
    widths and channels, divided by :data:`LINE_RESPONSE`, is about the line's contrast; it is
    mapped linearly from ``contrast[0]`` (0) to ``contrast[1]`` (1) and clipped. Each
    width's response is spread over the width (a grey dilation of ``2 round(w / 2) + 1`` px), since
    it peaks on the centre line and the prior is wrong across the whole structure.

    Structures wider than ``max(widths_px)`` respond little (a 20 px bar at sigma 3: 2 %).
    """
    from scipy.ndimage import gaussian_gradient_magnitude, maximum_filter
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    img = np.asarray(rgb)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32, copy=False)
    if img.ndim == 2:
        img = img[..., None]
    widths, lo, hi = _check_args(img.shape, widths_px, contrast)
    pad = _margin(widths)  # reflect-pad: no border artefacts, no border lines
    best = np.zeros(img.shape[:2], np.float32)
    for c in range(img.shape[2]):
        ch = np.pad(img[..., c], pad, mode="reflect")
        for w in widths:
            sigma = w / 2.0
            ev = hessian_matrix_eigvals(hessian_matrix(ch, sigma, order="rc", mode="reflect",
                                                       use_gaussian_derivatives=True))
            ridge = sigma * sigma * np.maximum(np.maximum(-ev[-1], ev[0]), 0.0)  # bright | dark
            grad = sigma * gaussian_gradient_magnitude(ch, sigma, mode="reflect")
            resp = (ridge - EDGE_SUPPRESSION * grad)[pad:-pad, pad:-pad]
            size = 2 * int(round(w / 2.0)) + 1
            if size > 1:  # the response peaks on the centre line: spread it over the line's width
                resp = maximum_filter(resp, size=size, mode="nearest")
            np.maximum(best, resp, out=best)
    strength = best / LINE_RESPONSE
    return np.clip((strength - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ the same, in torch

# Taps of a truncated Gaussian kernel below this fraction of its largest are dropped: scikit-image
# truncates its small-sigma kernels at 100 sigma (71 taps a side at sigma 0.7) where all beyond
# ~6 sigma are < 1e-12 of the peak; dropping them changes nothing at float32 and saves most of the work.
_TAP_FLOOR = 1e-12


def _gaussian_taps(sigma: float, order: int, truncate: float) -> np.ndarray:
    """The correlation taps ``[2r + 1]`` (float64) that ``scipy.ndimage.gaussian_filter1d`` uses for
    ``sigma``, derivative ``order`` (0 or 1) and ``truncate``: the sampled Gaussian normalised over
    ``radius = int(truncate * sigma + 0.5)``, times ``-x / sigma^2`` for the first derivative,
    reversed (scipy correlates with the flipped kernel); then the outer taps below
    :data:`_TAP_FLOOR` of the peak dropped. Written out because scipy's own is private."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    s2 = float(sigma) ** 2
    phi = np.exp(-0.5 / s2 * x * x)
    phi /= phi.sum()
    k = (phi if order == 0 else -x / s2 * phi)[::-1]
    keep = np.abs(k) > _TAP_FLOOR * np.abs(k).max()
    r = int(np.abs(x[keep]).max())
    return np.ascontiguousarray(k[radius - r:radius + r + 1])


def _extend_index(n: int, before: int, after: int, scipy_reflect: bool, device) -> torch.Tensor:
    """Indices ``[before + n + after]`` into an axis of length ``n`` that extend it past its ends:
    ``scipy_reflect`` as scipy.ndimage's ``mode="reflect"`` (half-sample symmetric, ``c b a | a b
    c``), otherwise as ``np.pad(mode="reflect")`` (= torch's ``reflect``, ``c b | a b c``), both
    repeated as far as asked (torch's ``F.pad`` stops at ``n - 1``)."""
    i = torch.arange(-before, n + after, device=device)
    if scipy_reflect:
        p = 2 * n
        i = i.remainder(p)
        return torch.where(i >= n, p - 1 - i, i)
    if n == 1:
        return torch.zeros_like(i)
    p = 2 * n - 2
    i = i.remainder(p)
    return torch.where(i >= n, p - i, i)


def _correlate(x: torch.Tensor, taps: list[np.ndarray], src: list[int], axis: int) -> torch.Tensor:
    """``scipy.ndimage.correlate1d(mode="reflect")`` along ``axis`` (1: rows, 2: columns) of
    ``x [K, C, H, W]``... that is, of the planes ``x[src[j]]`` (``[C, H, W]``) with ``taps[j]``:
    ``[len(taps), C, H, W]``. A weighted sum of shifted views, one in-place add per tap: on one
    CPU thread several times faster than torch's depthwise ``conv2d`` with these 1-D kernels, and
    plain float32 on every device (no TF32)."""
    r = max(len(t) for t in taps) // 2
    n = x.shape[axis + 1]
    xp = x.index_select(axis + 1, _extend_index(n, r, r, True, x.device))
    out = torch.empty((len(taps), *x.shape[1:]), dtype=x.dtype, device=x.device)
    for j, (t, c) in enumerate(zip(taps, src)):
        plane, o, q = xp[c], out[j], r - len(t) // 2
        o.copy_(plane.narrow(axis, q, n)).mul_(float(t[0]))
        for i in range(1, len(t)):
            o.add_(plane.narrow(axis, q + i, n), alpha=float(t[i]))
    return out


def thin_structure_map_torch(
    rgb: torch.Tensor,
    widths_px: Sequence[float] = DEFAULT_WIDTHS,
    contrast: tuple[float, float] = (0.03, 0.10),
) -> torch.Tensor:
    """:func:`thin_structure_map_reference` in torch, on ``rgb``'s device: ``[H, W, 3]`` (or
    ``[H, W]``) float in [0, 1] or uint8 -> ``[H, W]`` float32 in [0, 1], equal to the reference
    within 1e-4 (``tests/test_thin_fast.py``).

    Step by step as the reference: the image reflect-padded (``np.pad``'s reflect) by the same
    margin; per width, scikit-image's Gaussian-derivative Hessian (``hessian_matrix`` with
    ``use_gaussian_derivatives=True``: two first-derivative Gaussian filters at ``sigma / sqrt(2)``,
    truncated at 8 sigma, or 100 when ``sigma <= 1``) and scipy's ``gaussian_gradient_magnitude``
    (truncate 4), each a sequence of 1-D passes (rows, then columns) with scipy's half-sample
    ``reflect`` border, as separable convolutions over all channels at once; closed-form 2x2
    eigenvalues; the grey dilation (``maximum_filter``, ``mode="nearest"``) as a replicate-padded
    max pool -- taken after the maximum over channels, which it commutes with. Written by hand
    because no torch library has scipy's Gaussian filters with its borders.
    """
    img = rgb.detach()
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    img = img.to(torch.float32)
    if img.ndim == 2:
        img = img[..., None]
    widths, lo, hi = _check_args(tuple(img.shape), widths_px, contrast)
    pad = _margin(widths)
    dev = img.device
    H, W = img.shape[:2]
    x = img.permute(2, 0, 1)[None]  # [1, C, H, W]
    x = x.index_select(2, _extend_index(H, pad, pad, False, dev))
    x = x.index_select(3, _extend_index(W, pad, pad, False, dev))
    best = torch.zeros((H, W), dtype=torch.float32, device=dev)
    with torch.no_grad():
        for w in widths:
            sigma = w / 2.0
            ss = sigma / np.sqrt(2.0)  # scikit-image: two first-order passes at sigma / sqrt(2)
            tr = 8.0 if sigma > 1 else 100.0
            g0, g1 = _gaussian_taps(ss, 0, tr), _gaussian_taps(ss, 1, tr)
            # gradients [d/dr, d/dc] at ss: rows then columns, as scipy's gaussian_filter
            grads = _correlate(_correlate(x, [g1, g0], [0, 0], 1), [g0, g1], [0, 1], 2)
            # Hessian [Hrr, Hrc, Hcc]: d/dr of d/dr, d/dc of d/dr, d/dc of d/dc
            hess = _correlate(_correlate(grads, [g1, g0, g0], [0, 0, 1], 1), [g0, g1, g1], [0, 1, 2], 2)
            hrr, hrc, hcc = hess.unbind(0)
            half_trace = (hrr + hcc) / 2
            hsqrtdet = torch.sqrt(hrc ** 2 + ((hrr - hcc) / 2) ** 2)
            ev0, ev1 = half_trace + hsqrtdet, half_trace - hsqrtdet
            ridge = sigma * sigma * torch.maximum(-ev1, ev0).clamp_min(0.0)  # bright | dark
            k0, k1 = _gaussian_taps(sigma, 0, 4.0), _gaussian_taps(sigma, 1, 4.0)
            d = _correlate(_correlate(x, [k1, k0], [0, 0], 1), [k0, k1], [0, 1], 2)
            grad = sigma * torch.sqrt(d[0] ** 2 + d[1] ** 2)
            resp = (ridge - EDGE_SUPPRESSION * grad)[:, pad:-pad, pad:-pad].amax(0)
            size = 2 * round(w / 2.0) + 1
            if size > 1:  # the response peaks on the centre line: spread it over the line's width
                h = size // 2
                rp = resp[None, None].index_select(2, torch.arange(-h, H + h, device=dev).clamp(0, H - 1))
                rp = rp.index_select(3, torch.arange(-h, W + h, device=dev).clamp(0, W - 1))
                resp = F.max_pool2d(rp, size, stride=1)[0, 0]
            best = torch.maximum(best, resp)
    strength = best / LINE_RESPONSE
    return ((strength - lo) / (hi - lo)).clamp(0.0, 1.0)
