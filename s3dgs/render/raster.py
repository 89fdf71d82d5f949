"""Tiled front-to-back rasteriser in plain torch, with a hand-written backward: the ``torch``
backend, the readable version of what the C++ kernels of :mod:`s3dgs.render.native` do, and their
fallback where those cannot be built (it also runs on any torch device).

Why hand-written: gsplat's rasteriser is CUDA-only (its pure-torch functions run on a CPU but its
tile intersection does not), and plain autograd over the blending would keep a
``[pixels, Gaussians]`` graph per tile alive until backward (gigabytes for 100k Gaussians);
instead the forward keeps only the final transmittance per pixel and the backward recomputes each
chunk of tiles. Being dense batches of torch operations, it evaluates every pixel of a tile
against every Gaussian of the tile and cannot stop a pixel early; the native kernels can.

Layout. The image is cut into ``tile x tile`` tiles; every (camera, tile) gets the list of
Gaussians whose extents touch it, sorted front to back. Tiles with similar list lengths are
grouped into chunks, padded to a common length ``K`` and processed as one batched tensor
``[tiles, P = tile^2, K]`` of about ``budget`` elements, so there is no Python loop per Gaussian
or per pixel. Very long lists are split into depth segments with the transmittance carried over.

Maths (3DGS / gsplat): with pixel offsets ``(dx, dy)`` from the mean and conic ``(a, b, c)``,
``alpha = min(0.999, o exp(-(0.5 a dx^2 + b dx dy + 0.5 c dy^2)))``, alphas below 1/255 are
skipped, and a pixel stops (exclusively) once its transmittance would fall to 1e-4. The exponent
is a quadratic form in the pixel coordinates, so per tile it is one matrix product of the six
pixel monomials ``[x^2, xy, y^2, x, y, 1]`` (measured from the tile centre) with six
per-Gaussian coefficients; the backward returns through the same product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_STOP = 1e-4
DEFAULT_BUDGET = 1 << 18  # elements per [tiles, P, K] chunk (256k measured fastest on CPU)
_BIG = 1e20  # padding slots get log opacity -1e20, hence alpha 0


def chunk_budget() -> int:
    """Elements per ``[tiles, P, K]`` chunk for the threads torch has now: the one rule, used by
    ``render(...)`` and the benchmarks. ``DEFAULT_BUDGET`` (2^18) with one thread (cache-friendly,
    fastest measured); 2^20 with several: fewer, larger parallel regions, which on an
    oversubscribed CPU with spinning OpenMP threads was measured 2-10x faster."""
    return DEFAULT_BUDGET if torch.get_num_threads() <= 1 else 1 << 20


@dataclass
class Chunk:
    tiles: Tensor  # [Tc] global tile ids (camera * n_tiles + tile)
    gauss: Tensor  # [Tc, K] flat Gaussian ids (camera * N + n); padding -> C*N
    seg: int  # depth-segment length (== K when not segmented)


@dataclass
class TilePlan:
    """Which Gaussians touch which tiles, in depth order, grouped into chunks."""

    C: int
    N: int
    width: int
    height: int
    tile: int
    tiles_x: int
    tiles_y: int
    n_isects: int
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y


def pixel_monomials(tile: int, dtype, device) -> Tensor:
    """``[P, 6]`` rows ``[x^2, xy, y^2, x, y, 1]`` of the pixel centres of a tile, measured from
    the tile centre; row-major pixel order inside the tile."""
    r = torch.arange(tile, dtype=torch.float64) + 0.5 - tile / 2.0
    py, px = torch.meshgrid(r, r, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    f = torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], dim=-1)
    return f.to(dtype=dtype, device=device)


@torch.no_grad()
def build_plan(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile: int = 8,
    budget: int = DEFAULT_BUDGET,
    conics: Tensor | None = None,  # [C, N, 3]
    opacities: Tensor | None = None,  # [C, N]
) -> TilePlan:
    """Intersect Gaussians with tiles, sort each tile's list by depth, and group tiles into
    chunks of about ``budget`` elements.

    With ``conics`` and ``opacities`` the bounding-box candidates are refined: a (Gaussian,
    tile) pair is dropped when no pixel centre of the tile can reach alpha >= 1/255 (exact
    minimum of the quadratic form over the tile's rectangle of pixel centres, with a margin),
    which changes nothing in the result and removes most corner tiles."""
    C, N = depths.shape
    device = means2d.device
    tiles_x = math.ceil(width / tile)
    tiles_y = math.ceil(height / tile)
    n_tiles = tiles_x * tiles_y
    plan = TilePlan(C, N, width, height, tile, tiles_x, tiles_y, 0)
    P = tile * tile

    vis = (radii > 0).all(dim=-1).reshape(-1)
    vidx = torch.nonzero(vis).squeeze(1)
    if vidx.numel() == 0:
        return plan
    order = torch.argsort(depths.reshape(-1)[vidx])
    vidx = vidx[order]  # visible Gaussians, front to back
    # int32 from here on where it fits: sorting and integer division are cheaper
    small = C * n_tiles < 2**31 and C * N < 2**31
    it = torch.int32 if small else torch.int64
    m = means2d.reshape(-1, 2)[vidx].double() / tile
    r = radii.reshape(-1, 2)[vidx].double() / tile
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).to(it)
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).to(it)
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).to(it)
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).to(it)
    nx = x1 - x0
    cnt = (nx * (y1 - y0)).long()
    M = int(cnt.sum())
    plan.n_isects = M
    if M == 0:
        return plan
    if M >= 2**31:
        it = torch.int64
        x0, y0, nx = x0.long(), y0.long(), nx.long()
    V = vidx.numel()
    rep = torch.repeat_interleave(torch.arange(V, device=device, dtype=it), cnt)
    local = torch.arange(M, device=device, dtype=it) - (torch.cumsum(cnt, 0) - cnt).to(it)[rep]
    nxr = nx[rep]
    q = torch.div(local, nxr, rounding_mode="floor")
    tx = x0[rep] + (local - q * nxr)
    ty = y0[rep] + q
    if conics is not None and opacities is not None:
        keep = _ellipse_touches_tile(
            means2d.reshape(-1, 2)[vidx], conics.reshape(-1, 3)[vidx], opacities.reshape(-1)[vidx],
            rep, tx, ty, tile,
        )
        ki = torch.nonzero(keep).squeeze(1)
        rep, tx, ty = rep[ki], tx[ki], ty[ki]
        M = int(rep.numel())
        plan.n_isects = M
        if M == 0:
            return plan
    key = ty * tiles_x + tx
    if C > 1:
        key = key + torch.div(vidx, N, rounding_mode="floor").to(it)[rep] * n_tiles
    key_sorted, perm = torch.sort(key, stable=True)  # stable: keeps depth order per tile
    isect_gauss = vidx[rep[perm]]
    counts = torch.bincount(key_sorted, minlength=C * n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    isect_gauss = torch.cat([isect_gauss, isect_gauss.new_full((1,), C * N)])  # padding slot

    nz = torch.nonzero(counts).squeeze(1)
    cnz = counts[nz]
    cnz_sorted, o = torch.sort(cnz, descending=True, stable=True)
    tiles_sorted = nz[o]
    cl = cnz_sorted.tolist()
    i = 0
    n_t = len(cl)
    while i < n_t:
        K = cl[i]
        n = max(1, budget // (P * K))
        tl = tiles_sorted[i : i + n]
        ar = torch.arange(K, device=device)
        idx = offsets[tl][:, None] + ar[None, :]
        idx = torch.where(ar[None, :] < counts[tl][:, None], idx, torch.full_like(idx, M))
        seg = K if P * K * tl.numel() <= budget else max(16, budget // (P * tl.numel()))
        plan.chunks.append(Chunk(tiles=tl, gauss=isect_gauss[idx], seg=min(seg, K)))
        i += n
    return plan


# columns of the packed per-Gaussian table
_X, _Y, _A, _B, _C, _LOGO, _O = range(7)
_NCOL = 7


def _ellipse_touches_tile(m, con, o, rep, tx, ty, tile):
    """Whether ``0.5 d^T Q d <= log(255 o)`` holds at some pixel centre of tile (tx, ty), for
    candidate pairs ``rep`` (index into the visible Gaussians ``m [V,2], con [V,3], o [V]``)."""
    tau = torch.log(o * 255.0)
    tau = tau + 1e-3 * tau.abs() + 1e-3  # conservative: keeping an extra pair costs only time
    a, b, c = con.unbind(-1)
    per_g = torch.stack([m[:, 0] - 0.5, m[:, 1] - 0.5, a, b, c, tau, b / c, b / a], -1)[rep]
    mx, my, a, b, c, tau, b_c, b_a = per_g.unbind(-1)
    x0 = tx.to(m.dtype) * tile - mx  # pixel-centre rectangle relative to the mean
    x1 = x0 + (tile - 1)
    y0 = ty.to(m.dtype) * tile - my
    y1 = y0 + (tile - 1)
    # on a vertical edge dx = X the minimum over dy is at dy = -b X / c (clamped); likewise
    best = None
    for X in (x0, x1):
        dy = torch.clamp(-b_c * X, y0, y1)
        v = (0.5 * a * X + b * dy) * X + 0.5 * c * dy * dy
        best = v if best is None else torch.minimum(best, v)
    for Y in (y0, y1):
        dx = torch.clamp(-b_a * Y, x0, x1)
        v = (0.5 * c * Y + b * dx) * Y + 0.5 * a * dx * dx
        best = torch.minimum(best, v)
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    return inside | (best <= tau)


def _gaussian_table(means2d, conics, opacities, feats) -> Tensor:
    """Packed per-Gaussian rows ``[C*N + 1, 7 + D]``: x, y, conic a, b, c, log opacity,
    opacity, features; the last row is padding (alpha = 0)."""
    C, N = opacities.shape
    D = feats.shape[-1]
    o = opacities.reshape(-1, 1)
    tab = torch.cat(
        [
            means2d.reshape(-1, 2),
            conics.reshape(-1, 3),
            # visible Gaussians have o >= 1/255; the clamp only keeps culled ones finite
            torch.log(o.clamp_min(1e-30)),
            o,
            feats.reshape(C * N, D),
        ],
        dim=1,
    )
    pad = torch.zeros((1, tab.shape[1]), dtype=tab.dtype, device=tab.device)
    pad[0, _LOGO] = -_BIG
    pad[0, _O] = 1.0
    return torch.cat([tab, pad])


class _Ctx:
    """Per-chunk recomputation shared by forward and backward."""

    def __init__(self, plan: TilePlan, table: Tensor, pixf: Tensor):
        self.plan = plan
        self.tab = table
        self.pixf = pixf  # [P, 6]
        # threshold_() keeps x > th: use the largest value below 1/255 in this dtype
        thr = torch.tensor(ALPHA_THRESHOLD, dtype=pixf.dtype)
        self.thr_lo = float(torch.nextafter(thr, torch.zeros_like(thr)))
        # alpha can only reach the 0.999 clamp for opacities >= 0.999
        self.any_clamp = bool((table[:-1, _O] >= ALPHA_MAX).any())
        t = plan.tile
        tid = torch.arange(plan.n_tiles, device=pixf.device)
        self.ox = ((tid % plan.tiles_x) * t + t / 2.0).to(pixf.dtype)
        self.oy = (torch.div(tid, plan.tiles_x, rounding_mode="floor") * t + t / 2.0).to(pixf.dtype)

    def gather(self, ch: Chunk, s0: int, s1: int):
        g = ch.gauss[:, s0:s1]  # [Tc, k]
        rows = self.tab[g]  # [Tc, k, 7 + D]
        lt = ch.tiles % self.plan.n_tiles
        mx = rows[..., _X] - self.ox[lt][:, None]
        my = rows[..., _Y] - self.oy[lt][:, None]
        a, b, c = rows[..., _A], rows[..., _B], rows[..., _C]
        ua = a * mx + b * my
        ub = b * mx + c * my
        # log alpha = pixf @ nq = log o - (0.5 a dx^2 + b dx dy + 0.5 c dy^2)
        nq = torch.stack(
            [-0.5 * a, -b, -0.5 * c, ua, ub, rows[..., _LOGO] - 0.5 * (mx * ua + my * ub)], dim=1
        )  # [Tc, 6, k]
        return g, rows, mx, my, a, b, c, ua, ub, nq

    def blend(self, nq: Tensor, T0: Tensor | None, done: Tensor | None):
        """alpha [Tc,P,k], one-minus-alpha with T0 prepended [Tc,P,k+1], T [Tc,P,k+1] and the
        pixels that have stopped [Tc,P] (None if none has). ``T0``/``done`` carry the state of
        earlier depth segments."""
        la = torch.matmul(self.pixf, nq)  # [Tc, P, k] log alpha
        # exp() of arguments that underflow float32 is ~20x slower on CPU: clamp first, since
        # alpha < 1/255 (log < -5.5) is then set to exactly 0 anyway
        alpha = la.clamp_(min=-80.0).exp_()
        torch.nn.functional.threshold_(alpha, self.thr_lo, 0.0)  # keeps alpha >= 1/255
        if self.any_clamp:
            alpha.clamp_(max=ALPHA_MAX)
        if done is not None:
            alpha.masked_fill_(done.unsqueeze(-1), 0.0)
        buf = _prepend(alpha, T0)
        T = torch.cumprod(buf, dim=-1)
        Tend = T[..., -1]
        stop = Tend <= T_STOP
        if bool(stop.any()):
            # exclusive early stop: drop every Gaussian whose blend would take T to <= 1e-4,
            # and every later one (the pixel is done). T before the stop is unchanged, so
            # T[..., :-1] stays valid where alpha is kept; the final T is the last one > 1e-4.
            keep = T[..., 1:] > T_STOP
            alpha.mul_(keep)
            n_keep = torch.count_nonzero(keep, dim=-1).unsqueeze(-1)
            Tend = T.gather(-1, n_keep).squeeze(-1)
            done = stop if done is None else (done | stop)
        return alpha, buf, T, Tend, done


def _one(x: Tensor) -> Tensor:
    return torch.ones((), dtype=x.dtype, device=x.device)


def _prepend(alpha: Tensor, T0: Tensor | None) -> Tensor:
    Tc, P, k = alpha.shape
    buf = torch.empty((Tc, P, k + 1), dtype=alpha.dtype, device=alpha.device)
    if T0 is None:
        buf[..., 0] = 1.0
    else:
        buf[..., 0] = T0
    torch.sub(_one(alpha), alpha, out=buf[..., 1:])
    return buf


def rasterize_forward(plan: TilePlan, means2d, conics, opacities, feats, for_backward: bool = False):
    """Blend ``feats [C, N, D]``; returns tile-major ``img [C*n_tiles, P, D]`` and final
    transmittance ``T [C*n_tiles, P]``, plus, per chunk, the start state of each depth segment
    (and, with ``for_backward``, its gathered per-Gaussian rows: small, ``[tiles, K]``-sized,
    so the backward only recomputes the ``[tiles, P, K]`` blending)."""
    D = feats.shape[-1]
    dt, dev = means2d.dtype, means2d.device
    P = plan.tile * plan.tile
    n_all = plan.C * plan.n_tiles
    img = torch.zeros((n_all, P, D), dtype=dt, device=dev)
    Tfin = torch.ones((n_all, P), dtype=dt, device=dev)
    seg_T0: list[list] = []
    if not plan.chunks:
        return img, Tfin, seg_T0
    cx = _Ctx(plan, _gaussian_table(means2d, conics, opacities, feats), pixel_monomials(plan.tile, dt, dev))
    for ch in plan.chunks:
        K = ch.gauss.shape[1]
        acc = None
        T0 = None
        done = None
        starts: list = []
        for s0 in range(0, K, ch.seg):
            s1 = min(K, s0 + ch.seg)
            if done is not None and bool(done.all()):
                break  # every pixel of these tiles has stopped
            gathered = cx.gather(ch, s0, s1)
            starts.append((T0, done, gathered if for_backward else None))
            rows, nq = gathered[1], gathered[-1]
            alpha, _, T, Tend, done = cx.blend(nq, T0, done)
            w = alpha.mul_(T[..., :-1])
            out = torch.bmm(w, rows[..., _NCOL:])  # [Tc, P, D]
            acc = out if acc is None else acc.add_(out)
            T0 = Tend.contiguous()
        img[ch.tiles] = acc
        Tfin[ch.tiles] = T0
        seg_T0.append(starts)
    return img, Tfin, seg_T0


def rasterize_backward(
    plan: TilePlan, means2d, conics, opacities, feats, Tfin, seg_T0, v_img, v_alpha, absgrad: bool
):
    """Gradients w.r.t. means2d [C,N,2], conics [C,N,3], opacities [C,N], feats [C,N,D] and,
    if asked, the per-pixel absolute means2d gradient sums [C,N,2]."""
    C, N = opacities.shape
    D = feats.shape[-1]
    dt, dev = means2d.dtype, means2d.device
    G = C * N + 1
    # accumulated per Gaussian: [mx, my, a, b, c, o, feats (D), |mx|, |my|]
    nacc = 6 + D + (2 if absgrad else 0)
    acc = torch.zeros((G, nacc), dtype=dt, device=dev)
    if plan.chunks:
        pixf = pixel_monomials(plan.tile, dt, dev)
        pix3 = pixf[:, 3:]  # [P, 3] = [x, y, 1]
        cx = _Ctx(plan, _gaussian_table(means2d, conics, opacities, feats), pixf)
        pixfT = pixf.t().contiguous()
        for ch, starts in zip(plan.chunks, seg_T0):
            Gc = v_img[ch.tiles]  # [Tc, P, D]
            # A = 1 - T_final, so dL/dalpha_k gets + T_final / (1 - alpha_k) * v_A: it enters
            # as a constant term of every suffix sum
            S = (-v_alpha[ch.tiles] * Tfin[ch.tiles]).unsqueeze(-1)  # [Tc, P, 1]
            K = ch.gauss.shape[1]
            segs = [(s0, min(K, s0 + ch.seg)) for s0 in range(0, K, ch.seg)][: len(starts)]
            for (s0, s1), (T0, done, gathered) in reversed(list(zip(segs, starts))):
                if gathered is None:
                    gathered = cx.gather(ch, s0, s1)
                g, rows, mx, my, a, b, c, ua, ub, nq = gathered
                alpha, buf, T, _, _ = cx.blend(nq, T0, done)
                F = rows[..., _NCOL:]  # [Tc, k, D]
                w = alpha * T[..., :-1]
                gf = torch.bmm(w.transpose(1, 2), Gc)  # [Tc, k, D]
                vw = torch.bmm(Gc, F.transpose(1, 2))  # [Tc, P, k] dL/dw
                wg = w.mul_(vw)
                del vw
                cs = torch.cumsum(wg, dim=-1)
                tot = cs[..., -1:]
                St = S + tot
                S = St
                # suffix_k = sum_{j>k} w_j vw_j + later segments + alpha term
                suffix = torch.sub(St, cs, out=cs)
                # dL/dalpha_k = T_k vw_k - suffix_k / (1 - alpha_k); alpha = exp(log alpha), so
                # dL/dlog(alpha_k) = w_k vw_k - suffix_k alpha_k / (1 - alpha_k)
                clamped = (alpha >= ALPHA_MAX) if cx.any_clamp else None
                ratio = alpha.div_(buf[..., 1:])
                vE = torch.sub(wg, suffix.mul_(ratio), out=wg)
                if clamped is not None:
                    vE.masked_fill_(clamped, 0.0)
                vnq = torch.matmul(pixfT, vE)  # [Tc, 6, k]
                q0, q1, q2, q3, q4, q5 = vnq.unbind(1)
                # nq = [-a/2, -b, -c/2, ua, ub, log o - (mx ua + my ub)/2]
                cols = [
                    a * q3 + b * q4 - ua * q5,  # mx
                    b * q3 + c * q4 - ub * q5,  # my
                    -0.5 * q0 + mx * q3 - 0.5 * mx * mx * q5,  # a
                    -q1 + my * q3 + mx * q4 - mx * my * q5,  # b
                    -0.5 * q2 + my * q4 - 0.5 * my * my * q5,  # c
                    q5 / rows[..., _O],  # o
                ]
                parts = [torch.stack(cols, -1), gf]
                if absgrad:
                    # per-pixel d log(alpha)/d mx = -(a dx + b dy) = -(ua - a px - b py)
                    lx = torch.matmul(pix3, torch.stack([-a, -b, ua], 1))  # [Tc, P, k]
                    ax = lx.mul_(vE).abs_().sum(1)
                    ly = torch.matmul(pix3, torch.stack([-b, -c, ub], 1))
                    ay = ly.mul_(vE).abs_().sum(1)
                    parts.append(torch.stack([ax, ay], -1))
                acc.index_add_(0, g.reshape(-1), torch.cat(parts, -1).reshape(-1, nacc))
    acc = acc[:-1]
    out = (
        acc[:, 0:2].reshape(C, N, 2),
        acc[:, 2:5].reshape(C, N, 3),
        acc[:, 5].reshape(C, N),
        acc[:, 6 : 6 + D].reshape(C, N, D),
    )
    return out + ((acc[:, 6 + D :].reshape(C, N, 2) if absgrad else None),)


def tiles_to_image(x: Tensor, plan: TilePlan) -> Tensor:
    """``[C*n_tiles, P, D]`` -> ``[C, H, W, D]`` (cropped)."""
    t = plan.tile
    D = x.shape[-1]
    x = x.reshape(plan.C, plan.tiles_y, plan.tiles_x, t, t, D).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(plan.C, plan.tiles_y * t, plan.tiles_x * t, D)
    return x[:, : plan.height, : plan.width]


def image_to_tiles(x: Tensor, plan: TilePlan) -> Tensor:
    """``[C, H, W, D]`` -> ``[C*n_tiles, P, D]`` (zero padded)."""
    t = plan.tile
    C, H, W, D = x.shape
    Hp, Wp = plan.tiles_y * t, plan.tiles_x * t
    if (Hp, Wp) != (H, W):
        x = torch.nn.functional.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    x = x.reshape(C, plan.tiles_y, t, plan.tiles_x, t, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(C * plan.n_tiles, t * t, D)


class RasterizeFunction(torch.autograd.Function):
    """Differentiable blending of screen-space Gaussians; see the module docstring."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, plan: TilePlan, absgrad: bool):
        img_t, Tfin, seg_T0 = rasterize_forward(plan, means2d, conics, opacities, feats, for_backward=True)
        ctx.plan = plan
        ctx.absgrad = absgrad
        ctx.seg_T0 = seg_T0
        ctx.means2d_ref = means2d  # to attach .absgrad in backward, as gsplat does
        ctx.save_for_backward(means2d, conics, opacities, feats, Tfin)
        img = tiles_to_image(img_t, plan)
        alpha = tiles_to_image((1.0 - Tfin).unsqueeze(-1), plan)
        return img, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, v_img, v_alpha):
        means2d, conics, opacities, feats, Tfin = ctx.saved_tensors
        plan = ctx.plan
        if v_img is None:
            v_img = torch.zeros((plan.C, plan.height, plan.width, feats.shape[-1]), dtype=feats.dtype, device=feats.device)
        if v_alpha is None:
            v_alpha = torch.zeros((plan.C, plan.height, plan.width, 1), dtype=feats.dtype, device=feats.device)
        v_img_t = image_to_tiles(v_img.contiguous(), plan)
        v_alpha_t = image_to_tiles(v_alpha.contiguous(), plan)[..., 0]
        g_m, g_con, g_o, g_f, g_abs = rasterize_backward(
            plan, means2d, conics, opacities, feats, Tfin, ctx.seg_T0, v_img_t, v_alpha_t, ctx.absgrad
        )
        if ctx.absgrad:
            ref = ctx.means2d_ref
            prev = getattr(ref, "absgrad", None)
            ref.absgrad = g_abs if prev is None else prev + g_abs
        return g_m, g_con, g_o, g_f, None, None


def rasterize(means2d, conics, opacities, feats, plan: TilePlan, absgrad: bool = False):
    """Blend ``feats [C, N, D]`` of the screen-space Gaussians into ``[C, H, W, D]`` images and
    return them with the alpha ``[C, H, W, 1]``. Differentiable (hand-written backward) when
    grad is enabled and an input requires it; a forward-only path otherwise."""
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, feats)
    )
    if need_grad:
        return RasterizeFunction.apply(means2d, conics, opacities, feats, plan, absgrad)
    with torch.no_grad():
        img_t, Tfin, _ = rasterize_forward(plan, means2d, conics, opacities, feats)
        return tiles_to_image(img_t, plan), tiles_to_image((1.0 - Tfin).unsqueeze(-1), plan)
