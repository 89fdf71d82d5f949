"""Small helpers shared by the steps of `s3dgs.phenotypes`: unit vectors and frames, weighted
medians, covariances from scales and rotations, JSON-safe rounding; and `PlantGaussians`, a
plant's Gaussians with the class rule applied (step 2), which the steps take."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s3dgs.errors import UsageError


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(3)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise UsageError(f"up vector {v.tolist()} has no direction")
    return v / n


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing `up` to a right-handed orthonormal frame (e1, e2, up)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = helper - (helper @ up) * up
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted median of x [M] with weights w [M] >= 0."""
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][min(np.searchsorted(c, 0.5 * c[-1]), len(x) - 1)])


def _covariances(scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """[M, 3] standard deviations and [M, 4] wxyz quaternions (any norm) -> [M, 3, 3] covariances."""
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)
    return np.einsum("mij,mj,mkj->mik", R, scales ** 2, R)


def _r(x, nd: int = 6):
    """JSON-safe rounding of floats / arrays; NaN and inf become None."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return [_r(v, nd) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _r_tree(d):
    if isinstance(d, dict):
        return {k: _r_tree(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_r_tree(v) for v in d]
    if isinstance(d, (float, np.floating, np.integer, np.bool_)):
        return _r(d, 7)
    return d


@dataclass
class PlantGaussians:
    """The Gaussians of one plant as float64 arrays, with the class rule applied (step 2).

    X [N, 3] centres (model frame), scales [N, 3] standard deviations (activated), quats [N, 4] wxyz
    rotations (any norm), opac [N] activated opacities, probs [N, K] class probabilities in the
    order of `classes`. A Gaussian is of class C when its probability of C exceeds
    `class_threshold` and its opacity `min_opacity` (the rule of `s3dgs export`): ``m[C]`` [N] is
    that mask and ``w[C]`` [N] its weight, probability x opacity, for C in U, N, D, P (all False
    and 0 for a class the model lacks)."""

    X: np.ndarray
    scales: np.ndarray
    quats: np.ndarray
    opac: np.ndarray
    probs: np.ndarray
    classes: tuple
    class_threshold: float
    min_opacity: float

    def __post_init__(self):
        self.m, self.w = {}, {}
        for c in ("U", "N", "D", "P"):
            self.m[c], self.w[c] = self.of_class(c)

    @property
    def rule(self) -> str:
        """The class rule, as the notes and ``method`` state it."""
        return f"class probability > {self.class_threshold} and opacity > {self.min_opacity}"

    def of_class(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mask [N], weight [N]) of class `name`."""
        N = len(self.X)
        if name not in self.classes:
            return np.zeros(N, bool), np.zeros(N)
        p = self.probs[:, self.classes.index(name)]
        m = (p > self.class_threshold) & (self.opac > self.min_opacity)
        return m, p * self.opac

    def covs(self, m: np.ndarray) -> np.ndarray:
        """Covariances [M, 3, 3] of the Gaussians selected by mask m [N]."""
        return _covariances(np.maximum(self.scales[m], 1e-12), self.quats[m])
