"""Gaussian parameters: initialisation from points, activations, and 3DGS-layout PLY I/O.

Parameters live in a `torch.nn.ParameterDict` with gsplat's names, so gsplat's densification
strategies operate on every entry (the semantic logits are split, cloned and pruned with the rest):

    means [N, 3]        world coordinates (the scene's COLMAP frame and units; never normalised)
    scales [N, 3]       log of the standard deviations
    quats [N, 4]        wxyz, unnormalised
    opacities [N]       logits
    sh0 [N, 1, 3]       degree-0 SH coefficients
    shN [N, (d+1)^2-1, 3]  higher SH coefficients
    semantics [N, K]    per-class logits (sigmoid per class by default, softmax optional)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s3dgs.classes import CLASSES
from s3dgs.render.projection import SH_C0  # (re-exported: the one definition)


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] to the degree-0 SH coefficient."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    return sh * SH_C0 + 0.5


def knn_mean_distance(xyz: np.ndarray, k: int = 3) -> np.ndarray:
    """[N] mean distance of each point to its k nearest neighbours (scipy cKDTree)."""
    from scipy.spatial import cKDTree

    n = len(xyz)
    if n < 2:
        return np.full(n, 0.01)
    kk = min(k, n - 1)
    d, _ = cKDTree(xyz).query(xyz, k=kk + 1)
    d = np.asarray(d).reshape(n, kk + 1)[:, 1:]
    return d.mean(axis=1)


def init_params(
    xyz: np.ndarray,
    rgb: np.ndarray,
    *,
    sh_degree: int = 3,
    num_classes: int = 4,
    init_opacity: float = 0.1,
    init_semantic_logit: float = -3.0,
    init_scale: float = 1.0,
    seed: int = 0,
) -> torch.nn.ParameterDict:
    """Gaussians from a point cloud.

    Args:
        xyz: [N, 3] positions; rgb: [N, 3] uint8 colours.
        sh_degree: maximum SH degree (coefficients for all degrees are allocated; the trainer raises
            the active degree progressively).
        num_classes: K semantic classes.
        init_semantic_logit: starting logit of every class (-3: probability 0.05, close to the
            all-zero background of the heatmaps).
        init_scale: multiplier on the 3-nearest-neighbour distance.

    Returns:
        ParameterDict with the entries listed in the module docstring.
    """
    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    dist = np.clip(knn_mean_distance(xyz, 3), 1e-7, None) * init_scale
    g = torch.Generator().manual_seed(seed)
    means = torch.from_numpy(xyz).float()
    scales = torch.log(torch.from_numpy(dist).float())[:, None].repeat(1, 3)
    quats = torch.rand(n, 4, generator=g)
    opac = torch.logit(torch.full((n,), float(init_opacity)))
    colors = torch.from_numpy(np.asarray(rgb, np.float32) / 255.0)
    sh0 = rgb_to_sh(colors)[:, None, :]
    shN = torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3)
    sem = torch.full((n, num_classes), float(init_semantic_logit))
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(means), "scales": torch.nn.Parameter(scales),
        "quats": torch.nn.Parameter(quats), "opacities": torch.nn.Parameter(opac),
        "sh0": torch.nn.Parameter(sh0), "shN": torch.nn.Parameter(shN),
        "semantics": torch.nn.Parameter(sem),
    })


def semantic_probs(logits: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """[N, K] logits to per-class values in [0, 1]: independent sigmoids (default; matches heatmaps
    that are independent per class with an all-zero background) or the original softmax."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    raise ValueError(f"semantic activation must be 'sigmoid' or 'softmax', got {activation!r}")


# ---------------------------------------------------------------------------------------------
# PLY in the standard 3DGS layout (+ sem_* fields)
# ---------------------------------------------------------------------------------------------

def save_ply(path: str | Path, params: torch.nn.ParameterDict | dict,
             classes: tuple[str, ...] = CLASSES) -> None:
    """Write Gaussians as a 3DGS PLY: x, y, z, nx, ny, nz, f_dc_0..2, f_rest_* (channel-major as 3DGS
    writes them), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz), plus sem_<class> (logits).
    Common splat viewers open it; the sem_* fields are ignored by them."""
    from plyfile import PlyData, PlyElement

    with torch.no_grad():
        p = {k: v.detach().cpu().float().numpy() for k, v in params.items()}
    n = len(p["means"])
    f_dc = p["sh0"].reshape(n, -1, 3).transpose(0, 2, 1).reshape(n, -1)  # [N, 3]
    f_rest = p["shN"].transpose(0, 2, 1).reshape(n, -1)  # [N, 3*(M)] channel-major
    cols = [("x", p["means"][:, 0]), ("y", p["means"][:, 1]), ("z", p["means"][:, 2]),
            ("nx", np.zeros(n)), ("ny", np.zeros(n)), ("nz", np.zeros(n))]
    cols += [(f"f_dc_{i}", f_dc[:, i]) for i in range(f_dc.shape[1])]
    cols += [(f"f_rest_{i}", f_rest[:, i]) for i in range(f_rest.shape[1])]
    cols += [("opacity", p["opacities"].reshape(n))]
    cols += [(f"scale_{i}", p["scales"][:, i]) for i in range(3)]
    cols += [(f"rot_{i}", p["quats"][:, i]) for i in range(4)]
    if "semantics" in p:
        names = classes if len(classes) == p["semantics"].shape[1] else \
            [str(i) for i in range(p["semantics"].shape[1])]
        cols += [(f"sem_{c}", p["semantics"][:, i]) for i, c in enumerate(names)]
    arr = np.empty(n, dtype=[(name, "f4") for name, _ in cols])
    for name, v in cols:
        arr[name] = v
    from s3dgs.atomic import atomic_write

    atomic_write(path, lambda tmp: PlyData([PlyElement.describe(arr, "vertex")]).write(tmp))


def load_ply(path: str | Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Read a 3DGS PLY written by `save_ply` (or by 3DGS/gsplat: sem_* then absent).

    Returns:
        (params dict with the module's entries, semantic class names).

    Raises:
        SceneError naming the file: missing, truncated or garbled, without the 3DGS fields, or
        holding NaN/inf."""
    from plyfile import PlyData

    from s3dgs.errors import SceneError

    path = Path(path)
    fix = (f"write it again from the run's last checkpoint (`s3dgs train SCENE --out {path.parent} "
           "--resume`) or train again")
    try:
        v = PlyData.read(str(path))["vertex"]
    except FileNotFoundError:
        raise SceneError(f"{path}: Gaussian PLY not found; train first (`s3dgs train SCENE --out "
                         f"{path.parent}`)") from None
    except KeyError:
        raise SceneError(f"{path}: PLY without a vertex element, not a Gaussian splat file; {fix}.") from None
    except Exception as exc:  # plyfile: PlyHeaderParseError, PlyElementParseError (truncated), ...
        raise SceneError(f"{path}: unreadable Gaussian PLY, truncated or damaged ({exc}); {fix}.") from exc
    names = v.data.dtype.names
    n = len(v.data)
    need = ["x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [c for c in need if c not in names]
    if missing:
        raise SceneError(f"{path}: not a 3DGS Gaussian PLY (no {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}); point it at a run's point_cloud.ply, "
                         f"or {fix}.")

    def stack(prefix):
        cols = sorted([c for c in names if c.startswith(prefix)], key=lambda c: int(c[len(prefix):]))
        return np.stack([np.asarray(v[c]) for c in cols], axis=1) if cols else np.zeros((n, 0))

    f_dc = stack("f_dc_")
    f_rest = stack("f_rest_")
    m = f_rest.shape[1] // 3
    out = {
        "means": np.stack([v["x"], v["y"], v["z"]], axis=1),
        "sh0": f_dc.reshape(n, 3, 1).transpose(0, 2, 1),
        "shN": f_rest.reshape(n, 3, m).transpose(0, 2, 1),
        "opacities": np.asarray(v["opacity"]),
        "scales": stack("scale_"),
        "quats": stack("rot_"),
    }
    sem_cols = [c for c in names if c.startswith("sem_")]
    classes = tuple(c[4:] for c in sem_cols)
    if sem_cols:
        out["semantics"] = np.stack([np.asarray(v[c]) for c in sem_cols], axis=1)
    for k, a in out.items():  # NaN anywhere, or an infinite position, cannot be rendered
        a = np.asarray(a, np.float64).reshape(n, -1)
        bad = (np.isnan(a) | (np.isinf(a) if k == "means" else False)).any(axis=1)
        if bad.any():
            raise SceneError(f"{path}: {int(bad.sum())} of {n} Gaussians hold NaN or inf ({k}, first at "
                             f"vertex {int(np.argmax(bad))}); the training diverged or the file is damaged: "
                             f"{fix}.")
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in out.items()}, classes


def render_params(params, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                  sh_degree: int | None = None, semantics: str | None = None, **render_kwargs):
    """Render Gaussians held as parameters (the module docstring's entries): the one place where
    their activations (exp of the log-scales, sigmoid of the opacity logits, the SH bands in use,
    the semantic activation) meet :func:`s3dgs.render.render`. Training, export and evaluation all
    render through it.

    Args:
        params: ParameterDict or dict of tensors, all on the render device.
        viewmats, Ks, width, height: as :func:`s3dgs.render.render` (``[C, 4, 4]``, ``[C, 3, 3]``).
        sh_degree: SH degree to evaluate (default: every band the parameters hold).
        semantics: ``"sigmoid"`` / ``"softmax"`` renders the class probabilities as extra channels;
            None renders no semantics.
        render_kwargs: passed on (``render_depth``, ``backgrounds``, ``backend``, ``absgrad`` ...).

    Returns:
        The :class:`s3dgs.render.RenderOutput`.
    """
    from s3dgs.render import render

    held = int(round((params["sh0"].shape[1] + params["shN"].shape[1]) ** 0.5)) - 1
    d = held if sh_degree is None else min(sh_degree, held)
    colors = torch.cat([params["sh0"], params["shN"]], 1)[:, : (d + 1) ** 2]
    extra = None
    if semantics is not None and "semantics" in params:
        extra = semantic_probs(params["semantics"], semantics)
    return render(params["means"], params["quats"], torch.exp(params["scales"]),
                  torch.sigmoid(params["opacities"].reshape(-1)), colors, viewmats, Ks, width, height,
                  sh_degree=d, extra=extra, **render_kwargs)
