"""Known-answer tests of s3dgs.losses (CPU, seconds)."""

import math

import numpy as np
import pytest
import torch

from s3dgs.losses import (
    depth_prior_loss,
    depth_weight_schedule,
    fit_depth_scale_sfm,
    l1_loss,
    mark_unreliable_scales,
    rgb_loss,
    scale_invariant_depth_loss,
    semantic_loss,
    semantic_weight,
    sobel_edge_weight,
    ssim,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _seed_reference(pred_depth, gt_depth):
    """The seed's function, verbatim, in float64 (reference for the closed form)."""
    pred_flat = pred_depth.reshape(-1)
    gt_flat = gt_depth.reshape(-1)
    valid_mask = torch.isfinite(pred_flat) & torch.isfinite(gt_flat)
    pred_valid = pred_flat[valid_mask]
    gt_valid = gt_flat[valid_mask]
    A = torch.stack([pred_valid, torch.ones_like(pred_valid)], dim=1)
    b = gt_valid
    params = torch.linalg.solve(A.T @ A, A.T @ b)
    s, t = params[0], params[1]
    pred_aligned = s * pred_flat + t
    return torch.abs(pred_aligned[valid_mask] - gt_valid).mean()


# ------------------------------------------------------------------ colour


def test_ssim_equal_images_is_one_and_rgb_loss_zero():
    img = torch.rand(2, 24, 20, 3, generator=_gen())
    assert torch.allclose(ssim(img, img), torch.tensor(1.0), atol=1e-6)
    assert rgb_loss(img, img).abs() < 1e-6


def test_ssim_constant_images_known_value_and_grad():
    a, b = 0.3, 0.7
    x = torch.full((32, 32, 3), a, dtype=torch.float64, requires_grad=True)
    y = torch.full((32, 32, 3), b, dtype=torch.float64)
    smap = ssim(x, y, reduce=False)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variance factor is c2 / c2 = 1
    assert smap.shape == (32, 32, 3)
    assert abs(smap[16, 16, 0].item() - expected) < 1e-9
    ssim(x, y).backward()
    assert torch.isfinite(x.grad).all()


def test_rgb_loss_lambda_zero_is_l1_and_mix():
    p = torch.rand(16, 16, 3, generator=_gen(1))
    g = torch.rand(16, 16, 3, generator=_gen(2))
    assert torch.allclose(rgb_loss(p, g, lambda_ssim=0.0), l1_loss(p, g))
    mix = 0.8 * l1_loss(p, g) + 0.2 * (1 - ssim(p, g))
    assert torch.allclose(rgb_loss(p, g), mix)


# ------------------------------------------------------------------ seed's depth loss


def test_seed_loss_zero_under_any_scale_and_shift():
    pred = torch.rand(20, 30, generator=_gen(3)) * 4 + 1
    for s, t in [(2.0, 0.5), (-0.3, 1.0), (1e-3, -7.0), (50.0, 0.0)]:
        assert scale_invariant_depth_loss(pred, s * pred + t) < 1e-4 * max(1.0, abs(t))


def test_seed_loss_ignores_nan_inf_and_matches_seed_formula():
    pred = torch.rand(20, 30, generator=_gen(4), dtype=torch.float64) * 4 + 1
    gt = torch.rand(20, 30, generator=_gen(5), dtype=torch.float64)
    ref = _seed_reference(pred, gt)
    assert torch.allclose(scale_invariant_depth_loss(pred, gt), ref, rtol=1e-9)
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[0, :5] = float("nan")
    gt2[1, :5] = float("inf")
    gt2[2, 3] = float("-inf")
    out = scale_invariant_depth_loss(pred2, gt2)
    assert torch.isfinite(out)
    assert torch.allclose(out, _seed_reference(pred2, gt2), rtol=1e-9)
    # related by scale and shift except at the invalid pixels -> 0
    gt3 = 3 * pred2 - 2
    gt3[3, 3] = float("nan")
    assert scale_invariant_depth_loss(pred2, gt3) < 1e-10


def test_seed_loss_mask_and_too_few_pixels():
    pred = torch.rand(8, 8, generator=_gen(6), requires_grad=True)
    gt = torch.rand(8, 8, generator=_gen(7))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask.view(-1)[:9] = True  # 9 < 10 valid pixels
    out = scale_invariant_depth_loss(pred, gt, mask)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.all(pred.grad == 0)
    mask.view(-1)[:10] = True
    assert scale_invariant_depth_loss(pred, gt, mask) > 0
    # mask selects the pixels exactly as dropping the others would
    m = torch.rand(8, 8, generator=_gen(8)) > 0.3
    ref = _seed_reference(pred.detach()[m].double(), gt[m].double())
    assert abs(scale_invariant_depth_loss(pred.detach(), gt, m).item() - ref.item()) < 1e-5


def test_seed_loss_singular_system_no_nan():
    pred = torch.full((10, 10), 2.5, requires_grad=True)
    gt = torch.rand(10, 10, generator=_gen(9))
    out = scale_invariant_depth_loss(pred, gt)
    assert torch.isfinite(out)
    assert abs(out.item() - (gt - gt.mean()).abs().mean().item()) < 1e-6
    out.backward()
    assert torch.isfinite(pred.grad).all()


def test_seed_loss_importable_from_train_when_present():
    try:
        from s3dgs import train  # the lead re-exports it
    except ImportError:
        pytest.skip("s3dgs.train not importable yet")
    if not hasattr(train, "scale_invariant_depth_loss"):
        pytest.skip("s3dgs.train does not re-export it yet")
    assert train.scale_invariant_depth_loss is scale_invariant_depth_loss


# ------------------------------------------------------------------ depth prior loss


def _scene(h=32, w=40, seed=10):
    g = _gen(seed)
    z = torch.rand(h, w, generator=g, dtype=torch.float64) * 4 + 1  # depth 1..5
    return z


def test_disparity_space_recovers_inverse_relation():
    z = _scene()
    prior = 0.8 / z + 0.05
    for robust in (False, True, "mad"):
        loss, info = depth_prior_loss(z, prior, robust=robust, return_info=True)
        assert loss < 1e-9, robust
        assert abs(info["scale"].item() - 0.8) < 1e-6  # s * (1/z) + t = prior
        assert abs(info["shift"].item() - 0.05) < 1e-6
    # the seed's literal depth-space fit cannot represent 1/z exactly
    assert depth_prior_loss(z, prior, space="depth", robust=False) > 1e-3


def test_depth_space_is_seed_literal_formula():
    z = _scene().float()
    prior = torch.rand(z.shape, generator=_gen(11))
    a = depth_prior_loss(z, prior, space="depth", robust=False)
    b = scale_invariant_depth_loss(z, prior)
    assert torch.allclose(a, b, atol=1e-6)
    assert depth_prior_loss(z, 0.9 - 0.1 * z, space="depth") < 1e-5


def test_alpha_threshold_excludes_empty_pixels():
    z = _scene()
    prior = 0.8 / z + 0.05
    alpha = torch.ones_like(z)
    alpha[:, :10] = 0.2
    prior_bad = prior.clone()
    prior_bad[:, :10] = torch.rand(z.shape[0], 10, generator=_gen(12), dtype=z.dtype)
    assert depth_prior_loss(z, prior_bad, alpha) < 1e-9
    assert depth_prior_loss(z, prior_bad, None) > 1e-3
    assert depth_prior_loss(z, prior_bad, alpha, alpha_threshold=0.1) > 1e-3
    # too few valid pixels -> 0, graph kept
    zz = z.clone().requires_grad_(True)
    out = depth_prior_loss(zz, prior, torch.zeros_like(z))
    assert out.item() == 0.0
    out.backward()
    assert torch.all(zz.grad == 0)


def test_robust_alignment_ignores_outliers():
    z = _scene(seed=13)
    prior = 0.8 / z + 0.05
    g = _gen(14)
    out = torch.rand(z.shape, generator=g) < 0.1
    bad = prior + torch.where(out, torch.rand(z.shape, generator=g, dtype=z.dtype) * 0.8, 0 * z)
    _, lsq = depth_prior_loss(z, bad, robust=False, return_info=True)
    assert abs(lsq["shift"].item() - 0.05) > 1e-2  # plain least squares is pulled away
    _, rob = depth_prior_loss(z, bad, robust=True, return_info=True)
    assert abs(rob["scale"].item() - 0.8) < 1e-3  # trimmed LS fits the inliers
    assert abs(rob["shift"].item() - 0.05) < 1e-4


def test_nan_inputs_give_finite_loss_and_gradient():
    z = _scene().clone()
    z[0, 0] = float("nan")
    z[0, 1] = 0.0
    z[0, 2] = float("inf")
    prior = (0.5 / _scene() + 0.1).clone()
    prior[1, 1] = float("nan")
    zz = z.requires_grad_(True)
    for kw in ({}, {"space": "depth"}, {"multiscale": True, "robust": "mad"}):
        zz.grad = None
        loss = depth_prior_loss(zz, prior, **kw)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(zz.grad).all()


def test_sfm_alignment_fixed_scale_shift():
    z = _scene()
    prior = 0.5 / z + 0.1  # so 1/z = 2 * prior - 0.2
    assert depth_prior_loss(z, prior, alignment="sfm", scale_shift=(2.0, -0.2)) < 1e-9
    assert depth_prior_loss(z, prior, alignment="sfm", scale_shift=(2.0, -0.2), space="depth") < 1e-9
    wrong = depth_prior_loss(z, prior, alignment="sfm", scale_shift=(2.0, -0.1))
    assert abs(wrong.item() - 0.1) < 1e-9  # L1 in inverse-depth units
    with pytest.raises(ValueError):
        depth_prior_loss(z, prior, alignment="sfm")


def test_confidence_and_stem_weights_downweight_bad_prior():
    z = _scene()
    prior = 0.8 / z + 0.05
    bad = prior.clone()
    bad[:8, :8] += 0.5
    conf = torch.ones_like(z)
    conf[:8, :8] = 0
    stem = torch.zeros_like(z)
    stem[:8, :8] = 1.0
    base = depth_prior_loss(z, bad, robust=True)
    assert base > 1e-3
    assert depth_prior_loss(z, bad, confidence=conf) < 1e-9
    assert depth_prior_loss(z, bad, stem_heatmap=stem, stem_weight=0.0) < 1e-9
    half = depth_prior_loss(z, bad, stem_heatmap=stem, stem_weight=0.5)
    assert 1e-9 < half < base
    assert torch.allclose(depth_prior_loss(z, bad, stem_heatmap=stem, stem_weight=1.0), base)


def test_edge_weights():
    img = torch.zeros(16, 16, 3)
    img[:, 8:] = 1.0  # one vertical edge
    w = sobel_edge_weight(img, strength=2.0)
    assert torch.allclose(w[:, 0], torch.ones(16)) and w.max().item() == pytest.approx(3.0)
    z = _scene(16, 16).float()
    prior = 0.8 / z + 0.05
    bad = prior.clone()
    bad[:, 7:9] += 0.3  # prior error exactly on the edge
    flat = torch.full((16, 16, 3), 0.5)
    base = depth_prior_loss(z, bad, robust=True)
    assert torch.allclose(depth_prior_loss(z, bad, edge_image=flat), base)
    assert depth_prior_loss(z, bad, edge_image=img) > base  # edges weigh more


def test_multiscale_cancels_pixel_noise_not_bias():
    z = torch.ones(16, 16, dtype=torch.float64) * 2.0
    prior = 1.0 / z
    # sfm alignment with a known map keeps the residual exactly what we construct
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).double() * 2 - 1
    noisy = prior + 0.01 * checker
    single = depth_prior_loss(z, noisy, alignment="sfm", scale_shift=(1.0, 0.0))
    multi = depth_prior_loss(z, noisy, alignment="sfm", scale_shift=(1.0, 0.0), multiscale=True)
    assert single.item() == pytest.approx(0.01)
    assert multi.item() == pytest.approx(0.01 / 3)  # coarse levels average the checkerboard away
    biased = prior + 0.01
    a = depth_prior_loss(z, biased, alignment="sfm", scale_shift=(1.0, 0.0))
    b = depth_prior_loss(z, biased, alignment="sfm", scale_shift=(1.0, 0.0), multiscale=True)
    assert a.item() == pytest.approx(b.item())


def test_depth_prior_loss_is_sync_free():
    """Runs on the meta device, where .item() and boolean indexing are impossible."""
    kw = {"device": "meta"}
    z, p, a = torch.rand(32, 32, **kw), torch.rand(32, 32, **kw), torch.rand(32, 32, **kw)
    for opts in (
        {},
        {"robust": "mad", "space": "depth"},
        {"multiscale": True, "edge_image": torch.rand(32, 32, 3, **kw), "confidence": a, "stem_heatmap": a},
        {"alignment": "sfm", "scale_shift": (1.0, 0.1)},
    ):
        assert depth_prior_loss(z, p, a, **opts).shape == ()
    assert scale_invariant_depth_loss(z, p).shape == ()
    assert (
        semantic_loss(torch.rand(4, 4, 4, **kw), torch.rand(4, 4, 4, **kw), torch.rand(4, **kw)).shape == ()
    )


# ------------------------------------------------------------------ SfM scale fit


def _sfm_points(n=200, seed=20, h=48, w=64):
    rng = np.random.default_rng(seed)
    uv = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
    return uv, rng


def _prior_from_depth(zmap, s, t):
    return (1.0 / zmap - t) / s  # so that 1/z = s * prior + t


def test_sfm_fit_recovers_scale_and_shift_with_outliers():
    h, w = 48, 64
    zmap = 1.0 / (0.25 + 0.75 * np.tile(np.linspace(0, 1, w), (h, 1)))  # 1/z linear in x
    s_true, t_true = 0.9, 0.15
    prior = _prior_from_depth(zmap, s_true, t_true)
    uv, rng = _sfm_points(h=h, w=w)
    # sample the true depth exactly where the fit samples the prior (bilinear, centres +0.5)
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1)
    z = 1.0 / (0.25 + 0.75 * x / (w - 1))
    z_out = z.copy()
    z_out[:20] *= rng.uniform(1.5, 3.0, 20)  # 10% gross outliers
    fit = fit_depth_scale_sfm(prior, uv, z_out)
    assert fit["ok"], fit["reason"]
    assert fit["scale"] == pytest.approx(s_true, rel=1e-6)
    assert fit["shift"] == pytest.approx(t_true, abs=1e-6)
    assert fit["n"] == 200 and fit["n_inliers"] >= 180
    plain = fit_depth_scale_sfm(prior, uv, z_out, method="lstsq")
    assert abs(plain["scale"] - s_true) > 1e-3  # least squares is pulled by the outliers
    # the fit feeds depth_prior_loss(alignment="sfm") to zero
    zt = torch.tensor(zmap)
    loss = depth_prior_loss(
        zt, torch.tensor(prior), alignment="sfm", scale_shift=(fit["scale"], fit["shift"])
    )
    assert loss < 1e-6


def test_sfm_fit_flags_implausible():
    h, w = 48, 64
    prior = np.tile(np.linspace(0, 1, w), (h, 1))
    uv, rng = _sfm_points(h=h, w=w)
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1) / (w - 1)
    few = fit_depth_scale_sfm(prior, uv[:5], 1 / (0.5 + x[:5]))
    assert not few["ok"] and "too few" in few["reason"]
    neg = fit_depth_scale_sfm(prior, uv, 1 / (2.0 - x))  # inverse depth falls as prior rises
    assert not neg["ok"] and "scale" in neg["reason"]
    noise = fit_depth_scale_sfm(prior, uv, rng.uniform(1, 5, len(uv)))  # unrelated
    assert not noise["ok"]
    flat = fit_depth_scale_sfm(np.full((h, w), 0.5), uv, 1 / (0.5 + x))
    assert not flat["ok"]
    good = fit_depth_scale_sfm(prior, uv, 1 / (0.5 + x))
    assert good["ok"] and good["scale"] == pytest.approx(1.0) and good["shift"] == pytest.approx(0.5)
    fits = {"a": dict(good), "b": dict(good), "c": dict(good, scale=20.0)}
    mark_unreliable_scales(fits)
    assert fits["a"]["ok"] and not fits["c"]["ok"]


# ------------------------------------------------------------------ semantics and schedules


def test_semantic_loss_hand_computed():
    # 1 x 2 pixels, K = 2 classes
    pred = torch.tensor([[[0.5, 0.0], [0.0, 1.0]]])  # [H=1, W=2, K=2]
    target = torch.tensor([[[1.0, 0.0], [0.05, 0.5]]])
    # class 0: px0 fg (1.0 > 0.1): 20 * 0.25 = 5; px1 bg: 1 * 0.0025 = 0.0025
    # class 1: px0 bg: 0; px1 fg: 20 * 0.25 = 5
    full = semantic_loss(pred, target, torch.tensor([0.9, 0.9]))
    assert full.item() == pytest.approx((5 + 0.0025 + 0 + 5) / 4)
    gated = semantic_loss(pred, target, torch.tensor([0.9, 0.5]))  # 0.5 is not > 0.5
    assert gated.item() == pytest.approx((5 + 0.0025) / 2)
    assert semantic_loss(pred, target, None).item() == pytest.approx(full.item())
    assert semantic_loss(pred, target, torch.tensor([0.1, 0.2])).item() == 0.0
    w1 = semantic_loss(pred, target, None, fg_weight=1.0)
    assert w1.item() == pytest.approx(((pred - target) ** 2).mean().item())
    # batched with per-image confidence
    b = semantic_loss(
        torch.stack([pred, pred]), torch.stack([target, target]), torch.tensor([[0.9, 0.9], [0.9, 0.0]])
    )
    assert b.item() == pytest.approx((10.0025 + 5.0025) / 6)


def test_semantic_warmup_and_depth_schedule():
    assert semantic_weight(0) == 0.0 and semantic_weight(3999) == 0.0
    assert semantic_weight(4000) == 0.2 and semantic_weight(10_000, lambda_sem=0.5) == 0.5
    assert depth_weight_schedule(123, 1000, start=0.1) == 0.1
    assert depth_weight_schedule(0, 1000, start=1.0, kind="exp") == pytest.approx(1.0)
    assert depth_weight_schedule(1000, 1000, start=1.0, kind="exp") == pytest.approx(0.01)
    assert depth_weight_schedule(500, 1000, start=1.0, kind="exp") == pytest.approx(0.1)
    assert depth_weight_schedule(5000, 1000, start=1.0, kind="exp") == pytest.approx(0.01)
    assert depth_weight_schedule(500, 1000, start=0.1, end=0.1, kind="exp") == pytest.approx(0.1)
    assert math.isfinite(depth_weight_schedule(10, 100, start=0.0, kind="exp"))


@pytest.mark.parametrize("alignment", ["per_view", "sfm"])
@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_stem_one_sided_depth_ignores_only_nearer_renders_on_stems(alignment, space):
    """On stem pixels the prior (blurred into the backdrop) bounds depth from one side only: a
    render nearer than it costs nothing there, a farther one costs as before; elsewhere both cost."""
    from s3dgs.losses import DepthLossConfig, depth_prior_loss

    H, W = 24, 32
    z = torch.full((H, W), 2.0, dtype=torch.float64)
    z[:, :8] = 1.0  # a nearer region, so the per-view fit is well posed
    prior = 1.0 / z  # disparity prior, exact up to the identity fit
    prior = (prior - prior.min()) / (prior.max() - prior.min())
    stem = torch.zeros(H, W, dtype=torch.float64)
    stem[:, 20:24] = 1.0
    ss = None
    if alignment == "sfm":  # prior -> inverse depth: m = s * prior + t
        ss = (0.5, 0.5)
    cfg = DepthLossConfig(space=space, alignment=alignment, robust=False, stem_one_sided=True)
    off = DepthLossConfig(space=space, alignment=alignment, robust=False)

    def loss(zz, c):
        return float(depth_prior_loss(zz, prior, None, config=c, scale_shift=ss, stem_heatmap=stem))

    base = loss(z, cfg)
    nearer, farther = z.clone(), z.clone()
    nearer[5:15, 21:23] = 1.5  # the stem rendered in front of the blurred prior
    farther[5:15, 21:23] = 3.0
    assert loss(nearer, cfg) == pytest.approx(base, abs=1e-9) or alignment == "per_view" and \
        loss(nearer, cfg) < loss(nearer, off)
    assert loss(nearer, off) > base + 1e-4  # without the option the nearer stem is penalised
    assert loss(farther, cfg) > base + 1e-4  # a farther render is penalised either way
    away = z.clone()
    away[5:15, 2:4] = 0.6  # nearer off the stems: penalised with the option too
    assert loss(away, cfg) > base + 1e-4
