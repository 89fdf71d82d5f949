"""Thin structures of a frame (stems, petioles, peduncles) found in the frame itself, no heatmaps.

A monocular depth prior (Depth Anything V2) blurs structures a few pixels wide into what lies
behind them; :func:`thin_structure_map` says where such structures are, so the depth loss can trust
the prior less there (``--depth-thin``, see ``s3dgs/losses.py``). It is computed once per frame
(the trainer keeps it), never per step.

Only numpy and scikit-image (its Hessian, the core of its Sato / Frangi / Meijering ridge filters).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_WIDTHS", "EDGE_SUPPRESSION", "LINE_RESPONSE", "thin_structure_map"]

DEFAULT_WIDTHS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)

# The scale-normalised response sigma^2 |d2I/dx2| at the centre of an ideal line (box profile) of
# width w and contrast 1, at sigma = w / 2 (where it peaks): 2 exp(-1/2) / sqrt(2 pi), whatever w.
LINE_RESPONSE = 2.0 * np.exp(-0.5) / np.sqrt(2.0 * np.pi)
# Weight of the gradient term: at 2, a step edge keeps at most 2 % of a line's response.
EDGE_SUPPRESSION = 2.0


def thin_structure_map(
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
    if img.ndim != 3:
        raise ValueError(f"thin_structure_map: rgb must be [H, W, 3] or [H, W] (got {img.shape})")
    widths = [float(w) for w in widths_px]
    if not widths or min(widths) <= 0:
        raise ValueError(f"thin_structure_map: widths_px must be positive (got {tuple(widths_px)})")
    lo, hi = float(contrast[0]), float(contrast[1])
    if not hi > lo >= 0:
        raise ValueError(f"thin_structure_map: contrast must be 0 <= low < high (got {contrast})")
    pad = int(np.ceil(2.0 * max(widths))) + 2  # reflect-pad: no border artefacts, no border lines
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
