"""Step 6, the stem diameter: `silhouette_diameter`, the width of the silhouette the Gaussians draw
around an axis in orthographic side views (see `s3dgs.phenotypes`, step 6, for why the silhouette
and not the spread of the centres or the scales).

Hand-written here, and why: no library renders a 1D orthographic scanline of 3D Gaussians; the
formula is the rasteriser's (`s3dgs.render.raster`: its alpha clamp and threshold, its 0.3 px^2
low-pass)."""

from __future__ import annotations

import numpy as np

from s3dgs.phenotypes.common import _basis, _unit
from s3dgs.render.raster import ALPHA_MAX  # (the rasteriser's clamp, as gsplat)
from s3dgs.render.raster import ALPHA_THRESHOLD as ALPHA_MIN  # (alphas below are skipped)

EPS2D = 0.3  # the rasteriser's low-pass, pixels^2


def silhouette_diameter(means: np.ndarray, covs: np.ndarray, opacities: np.ndarray, centre: np.ndarray,
                        axis: np.ndarray, half_length: float, reach: float, *, n_views: int = 8,
                        n_rows: int = 7, n_cols: int = 257, eps: float = 0.0,
                        chunk: int = 2048) -> tuple[float | None, dict]:
    """Width of the silhouette the Gaussians draw around an axis, in orthographic side views.

    Args:
        means [M, 3], covs [M, 3, 3], opacities [M]: the Gaussians (activated opacity).
        centre [3], axis [3]: a point on the stem axis and its direction.
        half_length: rows are sampled at axial offsets in [-half_length, half_length].
        reach: the scanline spans [-reach, reach] across the axis.
        n_views: view directions around the axis over 180 degrees (opposite views see the same
            silhouette: accumulated alpha does not depend on the order).
        eps: isotropic variance added to the projected covariance (the rasteriser's 0.3 px^2
            low-pass in model units^2, when the pixel size is known).

    Returns:
        (median width over views and rows, or None when under a third of the rows reach alpha 0.5;
        {"coverage": share of rows that do, "iqr": [q25, q75] of the widths}).
    """
    axis = _unit(axis)
    b1, b2 = _basis(axis)
    rows = np.linspace(-half_length, half_length, n_rows)
    cols = np.linspace(-reach, reach, n_cols)
    dc = cols[1] - cols[0]
    widths, total = [], 0
    x = np.asarray(means, np.float64) - centre
    for k in range(n_views):
        phi = np.pi * k / n_views
        v = np.cos(phi) * b1 + np.sin(phi) * b2
        wdir = np.cross(axis, v)
        P = np.stack([axis, wdir])  # [2, 3]
        mu = x @ P.T  # [M, 2]
        S = np.einsum("ij,mjk,lk->mil", P, covs, P) + eps * np.eye(2)
        det = S[:, 0, 0] * S[:, 1, 1] - S[:, 0, 1] ** 2
        det = np.maximum(det, 1e-30)
        ia, ib, ic = S[:, 1, 1] / det, -S[:, 0, 1] / det, S[:, 0, 0] / det
        logT = np.zeros((n_rows, n_cols))
        # a Gaussian reaches alpha >= 1/255 on row t only where (t - mu_t)^2 / S_tt <= 2 ln(255 o)
        # (the minimum over the column of the quadratic form): skip the rest, as the rasteriser does
        reach2 = 2.0 * np.log(np.maximum(opacities * 255.0, 1.0))
        for r in range(n_rows):
            dt_all = rows[r] - mu[:, 0]
            sel = np.nonzero((dt_all ** 2 <= reach2 * S[:, 0, 0]) & (reach2 > 0))[0]
            for a in range(0, len(sel), chunk):
                g = sel[a:a + chunk]
                dt = dt_all[g, None]
                dd = cols[None, :] - mu[g, 1, None]
                maha = ia[g, None] * dt ** 2 + 2 * ib[g, None] * dt * dd + ic[g, None] * dd ** 2
                al = np.minimum(ALPHA_MAX, opacities[g, None] * np.exp(-0.5 * maha))
                al = np.where(al < ALPHA_MIN, 0.0, al)
                logT[r] += np.log1p(-al).sum(0)
        acc = 1.0 - np.exp(logT)  # [R, C]
        for r in range(n_rows):
            total += 1
            on = acc[r] >= 0.5
            if not on.any():
                continue
            idx = np.nonzero(on)[0]
            j0 = idx[np.argmin(np.abs(cols[idx]))]
            if abs(cols[j0]) > 0.5 * reach:
                continue
            lo = j0
            while lo > 0 and on[lo - 1]:
                lo -= 1
            hi = j0
            while hi < n_cols - 1 and on[hi + 1]:
                hi += 1

            def edge(i_in, i_out):  # linear interpolation of the 0.5 crossing
                a_in, a_out = acc[r, i_in], acc[r, i_out]
                f = (a_in - 0.5) / max(a_in - a_out, 1e-12)
                return cols[i_in] + f * (cols[i_out] - cols[i_in])

            if lo == 0 or hi == n_cols - 1:
                continue  # wider than the scanline: not a stem's silhouette
            widths.append(edge(hi, hi + 1) - edge(lo, lo - 1))
    cov = len(widths) / max(total, 1)
    if not widths or cov < 1 / 3:
        return None, {"coverage": cov, "iqr": None, "column_step": dc}
    return float(np.median(widths)), {"coverage": cov, "iqr": np.percentile(widths, [25, 75]).tolist(),
                                      "column_step": dc}
