"""Known-answer tests of s3dgs.metrics (CPU, seconds)."""

import math

import numpy as np
import pytest
import torch

from s3dgs.metrics import (
    chamfer_distance,
    chamfer_to_surface,
    depth_metrics,
    depth_metrics_global,
    fit_global_scale,
    floater_fraction,
    psnr,
    semantic_iou,
    ssim,
    stem_continuity,
)


def test_psnr_and_ssim_identical_and_known():
    rng = np.random.default_rng(0)
    img = rng.random((20, 24, 3))
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(torch.tensor(img), torch.tensor(img)) == pytest.approx(1.0, abs=1e-12)
    off = img + 0.1  # MSE = 0.01 -> 20 dB
    assert psnr(off, img) == pytest.approx(20.0)
    assert psnr(img * 255 + 5, img * 255, max_val=255) == pytest.approx(10 * np.log10(255**2 / 25))
    mask = np.zeros((20, 24), bool)
    mask[:5] = True
    bad = img.copy()
    bad[5:] = 0
    assert psnr(bad, img, mask=mask) == math.inf
    assert ssim(bad, img) < 1.0


def test_depth_metrics_global_scale():
    rng = np.random.default_rng(1)
    gts = [rng.uniform(1, 5, (10, 12)) for _ in range(3)]
    preds = [g / 2.5 for g in gts]  # SfM scale off by 2.5, otherwise perfect
    for method in ("median", "lstsq"):
        assert fit_global_scale(preds, gts, method=method) == pytest.approx(2.5)
        m = depth_metrics_global(preds, gts, method=method)
        assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
        assert m["rmse"] == pytest.approx(0.0, abs=1e-12)
        assert m["delta1"] == 1.0 and m["n"] == 360
    # one view 10% too deep everywhere: abs_rel = 0.1 there, rmse = 0.1 * rms(gt)
    g = np.full((4, 4), 2.0)
    d = depth_metrics(g * 1.1, g, scale=1.0)
    assert d["abs_rel"] == pytest.approx(0.1) and d["rmse"] == pytest.approx(0.2)
    assert d["delta1"] == 1.0
    d = depth_metrics(g * 1.3, g, scale=1.0)
    assert d["delta1"] == 0.0
    # masks and invalid pixels are ignored; the median is robust to a few outliers
    p = g.copy()
    p[0, 0] = np.nan
    p[0, 1] = 100.0
    mask = np.ones((4, 4), bool)
    mask[0, 1] = False
    d = depth_metrics(p, g, mask)
    assert d["n"] == 14 and d["abs_rel"] == pytest.approx(0.0)
    assert depth_metrics(p, g)["scale"] == pytest.approx(1.0)  # median ignores the outlier
    # the scale is global: a per-view error is not hidden (median of 16 ones and 16 halves)
    m = depth_metrics_global([g, 2 * g], [g, g])
    assert m["scale"] == pytest.approx(0.75)
    assert m["per_view"][0]["abs_rel"] == pytest.approx(0.25)
    assert m["per_view"][1]["abs_rel"] == pytest.approx(0.5)
    assert m["abs_rel"] == pytest.approx(0.375)


def test_semantic_iou_by_hand():
    gt = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 0]])
    pred = np.array([[1, 1, 0], [2, 0, 0], [0, 0, 4]])
    r = semantic_iou(pred, gt)
    # U: inter 1 (0,1), union {(0,0),(0,1),(0,2)} = 3; N: inter 1, union 2; D: 0/1; P: 0/1
    assert r["iou"]["U"] == pytest.approx(1 / 3)
    assert r["iou"]["N"] == pytest.approx(1 / 2)
    assert r["iou"]["D"] == 0.0 and r["iou"]["P"] == 0.0
    assert r["miou"] == pytest.approx((1 / 3 + 1 / 2) / 4)
    # probabilities: argmax with threshold
    probs = np.zeros((3, 3, 4))
    probs[0, 1, 0] = probs[0, 2, 0] = 0.9
    probs[1, 0, 1] = 0.8
    probs[1, 0, 0] = 0.7  # lower than N there
    probs[1, 1, 1] = 0.4  # below threshold -> background
    probs[2, 0, 2] = 0.6
    r = semantic_iou(probs, gt, threshold=0.5)
    assert r["per_class"][:3] == pytest.approx([1.0, 0.5, 1.0])
    assert math.isnan(r["per_class"][3])  # P absent from both: left out of the mean
    assert r["miou"] == pytest.approx(2.5 / 3)
    ri = semantic_iou(probs, gt, threshold=0.5, mode="independent")
    assert ri["iou"]["U"] == pytest.approx(2 / 3)  # (1,0) also passes 0.7 > 0.5 for U
    assert semantic_iou(torch.tensor(probs), torch.tensor(gt))["miou"] == pytest.approx(r["miou"])


def _plane_distance(points):
    return np.abs(points[:, 2])  # the plane z = 0


def test_floater_fraction_known_distance():
    means = np.array([[0, 0, 0.0], [1, 2, 0.01], [0, 0, 0.5], [3, 1, -0.2]])
    ops = np.array([1.0, 1.0, 0.5, 0.25])
    r = floater_fraction(means, ops, _plane_distance, tol=0.05)
    assert r["fraction"] == pytest.approx(0.75 / 2.75)
    assert r["n_floaters"] == 2 and r["count_fraction"] == 0.5
    assert floater_fraction(means, ops, _plane_distance, tol=0.6)["fraction"] == 0.0
    r = floater_fraction(means, ops, _plane_distance, tol=0.05, min_opacity=0.3)
    assert r["n"] == 3 and r["fraction"] == pytest.approx(0.5 / 2.5)
    assert floater_fraction(np.zeros((0, 3)), np.zeros(0), _plane_distance, 0.1)["fraction"] == 0.0


def _line_gaussians(gaps, length=10.0, spacing=0.05):
    x = np.arange(0, length + 1e-9, spacing)
    for a, b in gaps:
        x = x[(x < a) | (x > b)]
    return np.stack([x, np.zeros_like(x), np.zeros_like(x)], 1)


def test_stem_continuity_one_gap():
    stem = {"class": "N", "points": np.array([[0, 0, 0], [5, 0, 0], [10, 0, 0.0]]), "radius": 0.1}
    means = _line_gaussians([(4.0, 6.0)])
    n = len(means)
    classes = np.full(n, 1)  # N = 1 in the 0-based argmax convention
    ops = np.ones(n)
    tol = 0.05
    r = stem_continuity([stem], means, classes, ops, tol=tol)
    s = r["stems"][0]
    # a sample is covered within radius + tol = 0.15 of a Gaussian: the uncovered gap is
    # (3.95 + 0.15, 6.05 - 0.15) -> 1.8 of 10
    assert s["length"] == pytest.approx(10.0)
    assert s["covered_fraction"] == pytest.approx(0.82, abs=0.005)
    assert s["breaks"] == 1 and r["breaks"] == 1 and r["n_broken_stems"] == 1
    assert s["gaps"][0] == pytest.approx(1.8, abs=0.03)
    # a gap shorter than break_factor * radius (0.3) is not a break
    short = _line_gaussians([(4.0, 4.4)])
    r2 = stem_continuity([stem], short, np.full(len(short), 1), np.ones(len(short)), tol=tol)
    assert r2["breaks"] == 0 and r2["stems"][0]["covered_fraction"] < 1.0
    # wrong class, or too transparent, covers nothing
    assert stem_continuity([stem], means, np.full(n, 2), ops, tol)["covered_fraction"] == 0.0
    assert stem_continuity([stem], means, classes, ops * 0.1, tol)["covered_fraction"] == 0.0
    assert stem_continuity([dict(stem, **{"class": 1})], means, classes, ops, tol)["breaks"] == 1
    # an uncovered tip is a truncation, not a break
    tip = _line_gaussians([(8.0, 11.0)])
    r3 = stem_continuity([stem], tip, np.full(len(tip), 1), np.ones(len(tip)), tol=tol)
    assert r3["breaks"] == 0
    assert r3["stems"][0]["uncovered_end_length"] == pytest.approx(10.0 - 7.95 - 0.15, abs=0.03)
    # totals are length-weighted over stems
    full = _line_gaussians([])
    r4 = stem_continuity(
        [stem, stem], np.concatenate([full]), np.full(len(full), 1), np.ones(len(full)), tol=tol
    )
    assert r4["covered_fraction"] == pytest.approx(1.0) and r4["n_stems"] == 2


def test_chamfer():
    a = np.array([[0, 0, 0.0], [1, 0, 0]])
    b = np.array([[0, 0, 0.5], [1, 0, 0], [5, 0, 0]])
    r = chamfer_distance(a, b)
    assert r["a_to_b"] == pytest.approx(0.25)
    assert r["b_to_a"] == pytest.approx((0.5 + 0 + 4) / 3)
    assert r["chamfer"] == pytest.approx(0.5 * (0.25 + 1.5))
    assert chamfer_distance(a, a)["chamfer"] == 0.0
    pts = np.array([[0, 0, 0.1], [2, 0, -0.3]])
    s = chamfer_to_surface(pts, _plane_distance)
    assert s["accuracy"] == pytest.approx(0.2) and s["chamfer"] == pytest.approx(0.2)
    samples = np.array([[0, 0, 0.0], [2, 0, 0], [2, 4, 0]])
    s = chamfer_to_surface(pts, _plane_distance, samples)
    assert s["completeness"] == pytest.approx((0.1 + 0.3 + np.hypot(4, 0.3)) / 3)
