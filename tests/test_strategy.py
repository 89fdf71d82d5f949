"""Densification pieces aimed at thin stems (issue 12): stem-aware thresholds, depth-guided floater
pruning, and gsplat's MCMC strategy on the CPU. Tiny constructed cases, no rendering (seconds)."""

import math

import numpy as np
import pytest
import torch
from gsplat.strategy import DefaultStrategy as GsplatDefault

from s3dgs.errors import UsageError
from s3dgs.gaussians.floaters import DepthView, floater_mask, floater_votes, prior_to_depth
from s3dgs.gaussians.mcmc import MCMCStrategy, compute_relocation, inject_position_noise, mcmc_regularization
from s3dgs.gaussians.strategy import DefaultStrategy, stem_hits

W, H = 64, 48
K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]])


def make_params(means, *, scale=0.01, opacity=0.5, K_cls=4):
    means = torch.as_tensor(means, dtype=torch.float32)
    n = len(means)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(means.clone()),
        "scales": torch.nn.Parameter(torch.full((n, 3), math.log(scale))),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), float(opacity)))),
        "sh0": torch.nn.Parameter(torch.linspace(0, 1, n * 3).reshape(n, 1, 3)),
        "shN": torch.nn.Parameter(torch.zeros(n, 3, 3)),
        "semantics": torch.nn.Parameter(torch.arange(n * K_cls, dtype=torch.float32).reshape(n, K_cls)),
    })
    opts = {k: torch.optim.Adam([{"params": v, "lr": 1e-3, "name": k}], eps=1e-15) for k, v in params.items()}
    # one optimiser step so every parameter has Adam state (exp_avg = 0.1 * grad = row index)
    for k, v in params.items():
        v.grad = torch.arange(n, dtype=torch.float32).reshape(n, *[1] * (v.dim() - 1)).expand_as(v).clone()
    keep = {k: v.detach().clone() for k, v in params.items()}
    for o in opts.values():
        o.step()
        o.zero_grad(set_to_none=True)
    with torch.no_grad():  # values as given; only the moments remain from the step
        for k, v in params.items():
            v.copy_(keep[k])
    return params, opts


def assert_consistent(params, opts, state=None):
    """Every parameter, its Adam moments and every per-Gaussian state tensor have N rows."""
    n = len(params["means"])
    for k, p in params.items():
        assert p.shape[0] == n, k
        st = opts[k].state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape, k
        assert opts[k].param_groups[0]["params"][0] is p, k
    for k, v in (state or {}).items():
        if isinstance(v, torch.Tensor) and k != "binoms":
            assert v.shape[0] == n, k


def look_at(eye, target):
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    M = np.eye(4)
    M[:3, :3] = np.stack([r, d, f])
    M[:3, 3] = -M[:3, :3] @ eye
    return torch.tensor(M, dtype=torch.float32)


# ------------------------------------------------------------------------------ stem-aware growth

def grow_info(n, grad_norm, pixels, C=1):
    """An info dict as the renderer gives it: every Gaussian drawn at `pixels` [N, 2] with a 2D
    gradient of norm `grad_norm` [N] in gsplat's normalised units (one camera)."""
    g = torch.zeros(C, n, 2)
    g[..., 0] = torch.as_tensor(grad_norm, dtype=torch.float32) / (W / 2.0 * C)  # undone by gsplat
    m2 = torch.as_tensor(pixels, dtype=torch.float32)[None].repeat(C, 1, 1).requires_grad_(True)
    m2.grad = g.clone()
    m2.absgrad = g.abs()
    return {"means2d": m2, "radii": torch.full((C, n, 2), 3, dtype=torch.int32), "width": W, "height": H,
            "n_cameras": C, "gaussian_ids": None}


def test_stem_threshold_applies_only_to_gaussians_on_stem_pixels():
    # four small Gaussians with the same gradient, between the stem threshold and the normal one;
    # two fall on stem pixels, two do not; a fifth on the stem has a gradient below both thresholds
    n = 5
    params, opts = make_params(torch.rand(n, 3), scale=0.001)
    stem = torch.zeros(1, H, W, dtype=torch.bool)
    stem[0, :, 10:13] = True  # a vertical stem 3 px wide
    pix = torch.tensor([[11.5, 5.5], [10.2, 30.0], [40.5, 5.5], [30.0, 20.0], [12.9, 40.0]])
    grads = torch.tensor([0.0005, 0.0005, 0.0005, 0.0005, 0.0001])
    s = DefaultStrategy(grow_grad2d=0.0008, grow_grad2d_stem=0.0003, refine_start_iter=0, refine_every=2,
                        reset_every=10_000, absgrad=True, prune_opa=0.0)
    st = s.initialize_state(scene_scale=1.0)
    s.step_post_backward(params, opts, st, 1, dict(grow_info(n, grads, pix), stem_mask=stem))
    assert torch.equal(st["stem_hits"], torch.tensor([1.0, 1, 0, 0, 1]))
    assert torch.equal(st["stem_seen"], torch.ones(n))
    s.step_post_backward(params, opts, st, 2, dict(grow_info(n, grads, pix), stem_mask=stem))  # refines
    assert st["n_on_stem"] == 3
    # Gaussians 0 and 1 were duplicated (appended in order), nothing else
    assert len(params["means"]) == n + 2
    assert torch.equal(params["semantics"][n:], params["semantics"][[0, 1]])
    assert_consistent(params, opts, st)
    assert float(st["stem_hits"].abs().sum()) == 0 and float(st["stem_seen"].abs().sum()) == 0

    # the same steps without the stem piece grow nothing (every gradient is below grow_grad2d) ...
    params2, opts2 = make_params(torch.rand(n, 3), scale=0.001)
    s2 = DefaultStrategy(grow_grad2d=0.0008, refine_start_iter=0, refine_every=2, reset_every=10_000,
                         absgrad=True, prune_opa=0.0)
    st2 = s2.initialize_state()
    for step in (1, 2):
        s2.step_post_backward(params2, opts2, st2, step, dict(grow_info(n, grads, pix), stem_mask=stem))
    assert len(params2["means"]) == n and "stem_hits" not in st2
    # ... and a stem threshold with no stem mask given grows nothing either
    params3, opts3 = make_params(torch.rand(n, 3), scale=0.001)
    st3 = s.initialize_state()
    for step in (1, 2):
        s.step_post_backward(params3, opts3, st3, step, grow_info(n, grads, pix))
    assert len(params3["means"]) == n and st3["n_on_stem"] == 0


def test_stem_fraction_and_state_through_split_and_prune():
    # Gaussian 0 is on the stem in 1 of 3 steps (below the 0.5 fraction), Gaussian 1 in 3 of 3;
    # both large (split, not cloned); Gaussian 2 is transparent and pruned
    n = 3
    params, opts = make_params(torch.rand(n, 3), scale=0.5)
    with torch.no_grad():
        params["opacities"][2] = torch.logit(torch.tensor(0.001))
    stem = torch.zeros(1, H, W, dtype=torch.bool)
    stem[0, 20:23, :] = True  # a horizontal stem
    s = DefaultStrategy(grow_grad2d=0.0008, grow_grad2d_stem=0.0003, refine_start_iter=0, refine_every=3,
                        reset_every=10_000, absgrad=True, prune_opa=0.005)
    st = s.initialize_state(scene_scale=1.0)
    grads = torch.tensor([0.0005, 0.0005, 0.0005])
    for step, y0 in ((1, 21.0), (2, 5.0), (3, 5.0)):
        pix = torch.tensor([[10.0, y0], [30.0, 21.5], [50.0, 21.5]])
        s.step_post_backward(params, opts, st, step, dict(grow_info(n, grads, pix), stem_mask=stem))
    # split: Gaussian 1 replaced by two halves at the end; Gaussian 2 pruned; Gaussian 0 kept
    assert len(params["means"]) == 3
    assert torch.equal(params["semantics"][0], torch.tensor([0.0, 1, 2, 3]))
    assert torch.equal(params["semantics"][1:], torch.tensor([[4.0, 5, 6, 7]] * 2))
    assert torch.allclose(torch.exp(params["scales"][1:]), torch.full((2, 3), 0.5 / 1.6))
    assert_consistent(params, opts, st)


def test_stem_hits_packed_matches_unpacked():
    C, N = 2, 6
    stem = torch.rand(C, H, W) > 0.5
    m2 = torch.rand(C, N, 2) * torch.tensor([W + 10.0, H + 10.0]) - 5.0
    radii = (torch.rand(C, N, 2) > 0.3).int() * 2
    hits, seen = stem_hits(stem, m2, radii)
    sel = (radii > 0).all(-1)
    cam, gid = torch.where(sel)
    hp, sp = stem_hits(stem, m2[sel], radii[sel], gid, cam, n_gaussians=N)
    assert torch.equal(hits, hp) and torch.equal(seen, sp)
    assert torch.equal(seen, sel.float().sum(0))
    # brute force
    want = torch.zeros(N)
    for c in range(C):
        for g in range(N):
            x, y = m2[c, g]
            if sel[c, g] and 0 <= x < W and 0 <= y < H:
                want[g] += float(stem[c, int(y), int(x)])
    assert torch.equal(hits, want)


def test_options_off_behave_as_gsplat():
    """With the new pieces off, growth and pruning equal gsplat's DefaultStrategy, row for row."""
    n = 40
    torch.manual_seed(3)
    means = torch.rand(n, 3)
    grads = torch.rand(n) * 0.002
    pix = torch.rand(n, 2) * torch.tensor([W, H])
    out = []
    for cls in (GsplatDefault, DefaultStrategy):
        params, opts = make_params(means, scale=0.005)
        with torch.no_grad():
            params["scales"][::3] = math.log(0.5)
            params["opacities"][::7] = -8.0
        s = cls(grow_grad2d=0.0008, refine_start_iter=0, refine_every=2, reset_every=10_000, absgrad=True)
        st = s.initialize_state(scene_scale=1.0)
        torch.manual_seed(0)
        for step in (1, 2):
            s.step_post_backward(params, opts, st, step, grow_info(n, grads, pix))
        out.append({k: v.detach().clone() for k, v in params.items()})
    assert out[0].keys() == out[1].keys()
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k


def test_opacity_reset_fires():
    params, opts = make_params(torch.rand(4, 3), opacity=0.9)
    s = DefaultStrategy(refine_start_iter=100, reset_every=5, refine_stop_iter=1000)
    st = s.initialize_state()
    s.step_post_backward(params, opts, st, 5, grow_info(4, torch.zeros(4), torch.full((4, 2), 5.0)))
    assert st["n_resets"] == 1
    assert torch.allclose(torch.sigmoid(params["opacities"]), torch.full((4,), 0.01), atol=1e-6)


# ------------------------------------------------------------------------------ floaters

def wall_views(n_views=6, wall_y=1.0, stem=None, blur_stem=False):
    """Cameras on an arc of radius 1 around the origin (centre one at y = -1) looking at the wall y = wall_y (+y). Depth maps: the wall, and a
    vertical stem (a thin cylinder at x = 0, y = `stem`) when given; `blur_stem` leaves the stem out
    of the depth maps (as a monocular prior blurs it into the wall) and marks its pixels invalid
    in `valid` (as the trainer would from the heatmaps)."""
    views, views_noinvalid = [], []
    for k in range(n_views):
        ang = (k - (n_views - 1) / 2) * 0.12
        eye = np.array([math.sin(ang), -math.cos(ang), 0.0])
        vm = look_at(eye, [0.0, wall_y, 0.0])
        # ray-cast the depth (camera z) of every pixel centre: wall plane, then the stem cylinder
        i, j = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        dc = torch.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], torch.ones_like(i)], -1)
        R, t = vm[:3, :3], vm[:3, 3]
        o = -R.T @ t
        dw = dc @ R  # world direction per unit camera z
        tz = (wall_y - o[1]) / dw[..., 1]  # camera z of the wall hit
        depth = tz.clone()
        stem_px = torch.zeros(H, W, dtype=torch.bool)
        if stem is not None:
            r = 0.04  # about 3.7 px wide at 1.3 m
            ox, oy = o[0] - 0.0, o[1] - stem
            a = dw[..., 0] ** 2 + dw[..., 1] ** 2
            b = 2 * (ox * dw[..., 0] + oy * dw[..., 1])
            c = ox ** 2 + oy ** 2 - r * r
            disc = b * b - 4 * a * c
            ts = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
            stem_px = (disc > 0) & (ts > 0)
            if not blur_stem:
                depth = torch.where(stem_px, torch.minimum(ts, depth), depth)
        views.append(DepthView(vm, K, depth, ~stem_px if blur_stem else None))
        views_noinvalid.append(DepthView(vm, K, depth, None))
    return views, views_noinvalid


def test_floater_mask_prunes_a_floater_and_keeps_surfaces_and_stems():
    views, _ = wall_views(stem=0.3)
    pts = torch.tensor([
        [0.05, -0.3, 0.05],  # floater: 0.7 m in front of the camera, the wall 2 m away
        [0.0, 0.3, 0.1],  # on the stem's axis (inside the thin stem, seen in the depth maps)
        [0.2, 1.0, 0.1],  # on the wall
        [0.0, 1.3, 0.0],  # behind the wall
        [0.3, 0.8, -0.1],  # a little in front of the wall (10 %: within the margin)
    ])
    n_front, n_seen = floater_votes(pts, views, margin=0.2)
    assert n_seen.tolist()[:3] == [6, 6, 6]
    assert n_front.tolist() == [6, 0, 0, 0, 0]
    assert floater_mask(pts, views).tolist() == [True, False, False, False, False]
    # a Gaussian seen by too few views is not judged
    assert not floater_mask(pts[:1], views[:2], min_views=3).any()


def test_floater_mask_needs_stem_pixels_invalid_when_the_prior_blurs_stems():
    # the prior has no stem (blurred into the wall): the stem Gaussian sits "in front" everywhere
    views_valid, views_all = wall_views(stem=0.3, blur_stem=True)
    pts = torch.tensor([[0.0, 0.3, 0.1], [0.05, -0.3, 0.05]])
    assert floater_mask(pts, views_all).tolist() == [True, True]  # why stem pixels must be invalid
    assert floater_mask(pts, views_valid).tolist() == [False, True]  # stem kept, floater still found


def test_floater_window_spares_gaussians_at_a_silhouette():
    # a Gaussian on the stem's surface that projects one pixel beside the stem (onto the wall)
    views, _ = wall_views(n_views=1, stem=0.3)
    v = views[0]
    vm = v.viewmat
    stem_cols = torch.nonzero((v.depth < 1.5).any(0))[:, 0]
    j_out = int(stem_cols.max()) + 1  # first wall column right of the stem
    z = 1.3  # the stem's camera depth (about)
    xc = torch.tensor([(j_out + 0.5 - K[0, 2]) / K[0, 0] * z, 0.0, z])
    X = (vm[:3, :3].T @ (xc - vm[:3, 3]))[None]
    assert floater_votes(X, views, window=0)[0].item() == 1
    assert floater_votes(X, views, window=1)[0].item() == 0


def test_prior_to_depth_inverts_the_losses_alignment():
    from s3dgs.losses import depth_prior_loss

    torch.manual_seed(0)
    z = 1.0 + 2.0 * torch.rand(H, W)
    prior = 0.4 * (1.0 / z) + 0.1  # a disparity prior with an unknown scale and shift
    loss, info = depth_prior_loss(z, prior, torch.ones(H, W), return_info=True, robust=False)
    d, ok = prior_to_depth(prior, info["scale"], info["shift"])
    assert ok.all() and torch.allclose(d, z, rtol=1e-4)
    # the SfM mapping: m = s * prior + t is inverse depth
    d2, ok2 = prior_to_depth(prior, 2.5, -0.25, mapping="sfm")
    assert ok2.all() and torch.allclose(d2, z, rtol=1e-4)
    # no positive depth: invalid
    d3, ok3 = prior_to_depth(torch.zeros(2, 2), 1.0, 0.5)
    assert not ok3.any() and torch.isinf(d3).all()


def test_default_strategy_prunes_floaters_and_keeps_optimizer_state_consistent():
    views, _ = wall_views(stem=0.3)
    pts = torch.tensor([[0.05, -0.3, 0.05], [0.0, 0.3, 0.1], [0.2, 1.0, 0.1], [-0.1, -0.4, -0.05],
                        [0.3, 1.0, -0.1]])
    params, opts = make_params(pts)
    s = DefaultStrategy(prune_floaters=True, refine_start_iter=0, refine_every=2, reset_every=10_000,
                        grow_grad2d=1.0, prune_opa=0.0)
    st = s.initialize_state()
    calls = []

    def provide():
        calls.append(1)
        return views

    info = lambda: grow_info(5, torch.zeros(5), torch.full((5, 2), 5.0)) | {"floater_views": provide}  # noqa: E731
    s.step_post_backward(params, opts, st, 1, info())
    assert not calls and len(params["means"]) == 5  # not a refinement step: views not even built
    s.step_post_backward(params, opts, st, 2, info())
    assert len(calls) == 1 and st["n_floaters"] == 2
    assert torch.equal(params["means"], pts[[1, 2, 4]])
    assert torch.equal(params["semantics"][:, 0], torch.tensor([4.0, 8.0, 16.0]))  # rows moved together
    for k, p in params.items():  # Adam moments of the kept rows kept (exp_avg = 0.1 * row index)
        ea = opts[k].state[p]["exp_avg"].reshape(3, -1)[:, 0]
        assert torch.allclose(ea, torch.tensor([0.1, 0.2, 0.4])), k
    assert_consistent(params, opts, st)
    # protected Gaussians are never pruned
    params, opts = make_params(pts)
    st = s.initialize_state()
    keep = lambda p: torch.arange(len(p["means"])) == 0  # noqa: E731
    s.step_post_backward(params, opts, st, 2, info() | {"floater_keep": keep})
    assert torch.equal(params["means"], pts[[0, 1, 2, 4]])
    # switched on without views: one clear message
    with pytest.raises(UsageError, match="floater_views"):
        s.step_post_backward(params, opts, st, 4, grow_info(4, torch.zeros(4), torch.full((4, 2), 5.0)))


# ------------------------------------------------------------------------------ MCMC

def test_compute_relocation_is_eq9():
    binoms = MCMCStrategy().initialize_state()["binoms"]
    o = torch.tensor([0.3, 0.9, 0.05, 0.6, 0.99])
    s = torch.rand(5, 3) + 0.1
    n = torch.tensor([1, 2, 3, 7, 50])
    o_new, s_new = compute_relocation(o, s, n, binoms)
    for a in range(5):
        k = int(n[a])
        on = 1 - (1 - float(o[a])) ** (1 / k)
        assert math.isclose(float(o_new[a]), on, rel_tol=1e-6)
        # n copies of the new opacity composite to the old one at the centre
        assert math.isclose(1 - (1 - float(o_new[a])) ** k, float(o[a]), rel_tol=1e-5)
        den = sum(math.comb(i - 1, kk) * (-1) ** kk / math.sqrt(kk + 1) * on ** (kk + 1)
                  for i in range(1, k + 1) for kk in range(i))
        assert torch.allclose(s_new[a], s[a] * float(o[a]) / den, rtol=1e-5)
    assert torch.allclose(s_new[0], s[0]) and math.isclose(float(o_new[0]), 0.3, rel_tol=1e-6)  # n = 1


def mcmc_setup(n=200, cap=260, seed=0):
    torch.manual_seed(seed)
    params, opts = make_params(torch.rand(n, 3), scale=0.01)
    with torch.no_grad():
        params["opacities"].copy_(torch.logit(torch.rand(n) * 0.9 + 0.05))
        params["opacities"][:20] = torch.logit(torch.tensor(0.001))  # dead
    return params, opts


def test_mcmc_runs_on_cpu_keeps_cap_and_semantics_in_step():
    params, opts = mcmc_setup()
    s = MCMCStrategy(cap_max=260, refine_start_iter=0, refine_every=1, noise_lr=0.0)
    s.check_sanity(params, opts)
    st = s.initialize_state(scene_scale=1.0)
    key = params["means"].detach().clone()  # each row's semantics encode its source row
    sem_of = {tuple(key[i].tolist()): params["semantics"][i].detach().clone() for i in range(200)}
    counts = []
    for step in range(1, 8):
        s.step_post_backward(params, opts, st, step, {}, lr=1e-3)
        counts.append(len(params["means"]))
        assert_consistent(params, opts)
    assert max(counts) <= 260 and counts[-1] == 260 and counts[0] == 210
    assert st["n_relocated"] >= 20
    assert (torch.sigmoid(params["opacities"]) >= s.min_opacity - 1e-6).all()  # the dead were relocated
    # every Gaussian (relocated and added ones too) carries the semantics of the row it came from
    for i in range(len(params["means"])):
        assert torch.equal(params["semantics"][i], sem_of[tuple(params["means"][i].tolist())])
    # relocated / added rows start with fresh Adam moments; untouched rows keep theirs
    ea = opts["semantics"].state[params["semantics"]]["exp_avg"][:, 0]
    assert (ea[200:] == 0).all() and (ea[:20] == 0).all()


def test_mcmc_cap_holds_from_above_and_needs_lr():
    params, opts = mcmc_setup(n=300)
    s = MCMCStrategy(cap_max=250, refine_start_iter=0, refine_every=1)
    st = s.initialize_state()
    opa_before = torch.sigmoid(params["opacities"].detach()).sort(descending=True).values
    s.step_post_backward(params, opts, st, 1, {}, lr=1e-4)
    assert len(params["means"]) == 250 and st["n_capped"] == 50
    assert st["n_relocated"] == 0  # the 50 least opaque went, the 20 dead among them
    assert torch.sigmoid(params["opacities"]).min() >= opa_before[249] - 1e-6
    assert_consistent(params, opts)
    with pytest.raises(UsageError, match="lr="):
        s.step_post_backward(params, opts, st, 2, {})


def test_mcmc_noise_moves_only_transparent_gaussians_and_is_unit_invariant():
    params, _ = make_params(torch.zeros(4, 3), scale=0.02)
    with torch.no_grad():
        params["opacities"].copy_(torch.logit(torch.tensor([0.001, 0.002, 0.5, 0.95])))
    torch.manual_seed(1)
    inject_position_noise(params, 1e3)
    d1 = params["means"].detach().clone()
    assert (d1[:2].norm(dim=1) > 1e-4).all() and (d1[2:].norm(dim=1) < 1e-12).all()
    # the same noise in centimetres (x100): 100 x the displacement with the strategy's scaling
    out = []
    for unit in (1.0, 100.0):
        params, opts = make_params(torch.zeros(4, 3), scale=0.02 * unit)
        with torch.no_grad():
            params["opacities"].copy_(torch.logit(torch.tensor([0.001, 0.002, 0.5, 0.95])))
        s = MCMCStrategy(refine_start_iter=10)
        st = s.initialize_state(scene_scale=0.8 * unit)
        torch.manual_seed(1)
        s.step_post_backward(params, opts, st, 1, {}, lr=1.6e-4 * 0.8 * unit)
        out.append(params["means"].detach().clone())
    assert torch.allclose(out[1], 100.0 * out[0], rtol=1e-4)
    reg = [mcmc_regularization(make_params(torch.zeros(3, 3), scale=0.02 * u)[0], scene_scale=u).detach()
           for u in (1, 100)]
    assert torch.allclose(reg[0], reg[1]) and math.isclose(float(reg[0]), 0.01 * 0.5 + 0.01 * 0.02, rel_tol=1e-5)


def test_mcmc_relocates_floaters():
    views, _ = wall_views(stem=0.3)
    pts = torch.tensor([[0.05, -0.3, 0.05], [0.0, 0.3, 0.1], [0.2, 1.0, 0.1], [0.3, 1.0, -0.1]])
    params, opts = make_params(pts)
    s = MCMCStrategy(cap_max=4, refine_start_iter=0, refine_every=1, noise_lr=0.0, prune_floaters=True)
    st = s.initialize_state()
    s.step_post_backward(params, opts, st, 1, {"floater_views": views}, lr=1e-3)
    assert len(params["means"]) == 4 and st["n_floaters"] == 1 and st["n_relocated"] == 1
    rows = {tuple(r) for r in params["means"].tolist()}
    assert tuple(pts[0].tolist()) not in rows and rows <= {tuple(r) for r in pts[1:].tolist()}
    assert_consistent(params, opts)


# ------------------------------------------------------------------------------ with the renderer

@pytest.mark.parametrize("kind", ["default", "mcmc"])
def test_strategies_run_in_a_training_loop_with_the_project_renderer(kind):
    """The renderer's meta (means2d with absgrad, radii [C, N, 2]) drives both strategies through a
    few real optimisation steps on the CPU, semantics included."""
    from s3dgs.render import render

    torch.manual_seed(0)
    n = 60
    vm = look_at([0.0, -1.0, 0.0], [0.0, 0.0, 0.0])
    params, opts = make_params((torch.rand(n, 3) - 0.5) * 0.4, scale=0.02)
    target = torch.zeros(1, H, W, 3)
    target[:, 10:40, 20:44] = torch.tensor([0.2, 0.6, 0.1])
    stem = torch.zeros(1, H, W, dtype=torch.bool)
    stem[:, :, 30:34] = True
    if kind == "default":
        s = DefaultStrategy(absgrad=True, grow_grad2d=2e-4, grow_grad2d_stem=1e-4, refine_start_iter=0,
                            refine_every=4, reset_every=10_000, grow_scale3d=0.5)
        st = s.initialize_state(scene_scale=1.0)
    else:
        s = MCMCStrategy(cap_max=70, refine_start_iter=0, refine_every=4)
        st = s.initialize_state(scene_scale=1.0)
    s.check_sanity(params, opts)
    for step in range(1, 13):
        r = render(params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                   torch.sigmoid(params["sh0"][:, 0]), vm[None], K[None], W, H,
                   extra=torch.sigmoid(params["semantics"]), backend="torch", absgrad=True)
        s.step_pre_backward(params, opts, st, step, r.meta)
        loss = (r.colors - target).abs().mean() + r.extras.mean()
        if kind == "mcmc":
            loss = loss + mcmc_regularization(params)
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if kind == "default":
            s.step_post_backward(params, opts, st, step, r.meta | {"stem_mask": stem}, packed=False)
        else:
            s.step_post_backward(params, opts, st, step, r.meta, lr=1e-3)
        assert_consistent(params, opts, st)
    if kind == "default":
        assert len(params["means"]) > n and "n_on_stem" in st
    else:
        assert n < len(params["means"]) <= 70
