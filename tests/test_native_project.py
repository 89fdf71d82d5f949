"""Tests of the native backend's fused projection + SH kernel (s3dgs/csrc/project_cpu.cpp through
s3dgs.render.native_project) against the torch code it replaces (projection.py's
project_gaussians and types.py's color_features, with the depth channel render() appends): every
output and the gradient of every per-Gaussian input, culled Gaussians of every kind included, every
SH degree and RGB, antialiased mode; gradcheck; render() taking the kernel exactly when it should
(and its fallbacks); determinism for any thread count. Tiny scenes; one build of the extension."""

import pytest
import torch
from test_render import make_scene

from s3dgs import extension
from s3dgs.render import api as render_api
from s3dgs.render import native, native_project, render
from s3dgs.render.native_project import native_project_available, project_native
from s3dgs.render.projection import project_gaussians
from s3dgs.render.types import color_features

OUT_NAMES = ("means2d", "conics", "depths", "opacities", "radii", "feats")
IN_NAMES = ("means", "quats", "scales", "opacities", "colors", "extra")


@pytest.fixture
def kernel():
    """Skips (saying why) where the native extension cannot be built."""
    if not native_project_available():
        pytest.skip(f"native kernels unavailable: {native.native_unavailable_reason()}")


def hard_scene(dtype, sh_degree=3, N=260, seed=5, C=3):
    """A scene with every kind of culled or clamped Gaussian, at known indices:
    0-9 behind the cameras, 10-19 far to the side (outside the image, Jacobian clamped), 20-24
    near-degenerate scales, 25-29 exactly zero scales (a point, or a flat disc), 30-34 opacity
    below 1/255, 35-39 large ones just outside the image whose footprint still reaches in
    (drawn with a clamped Jacobian), 40-44 SH colours below -0.5 (clamped to 0)."""
    s = make_scene(N=N, W=40, H=30, C=C, dtype=dtype, sh_degree=sh_degree, seed=seed)
    m, sc = s["means"], s["scales"]
    m[:10] = torch.tensor([0.0, 0.0, -10.0], dtype=dtype) + m[:10] * 0.1
    m[10:20, 0] += 50.0
    sc[20:25] = 1e-8
    sc[25:28] = 0.0
    sc[28:30, 2] = 0.0
    s["opacities"][30:35] = 0.5 / 255
    m[35:40] = torch.tensor([[2.6, 0.0, 0.0], [-2.6, 0.3, 0.0], [0.0, 2.3, 0.2], [0.2, -2.3, 0.0],
                             [2.5, 1.9, 0.1]], dtype=dtype)
    sc[35:40] = 0.8
    s["opacities"][35:40] = 0.9
    if sh_degree is not None:
        s["colors"][40:45, 0] = -3.0
        s["colors"][40:45, 1:] *= 0.1
    return s


def torch_way(s, *, sh_degree, extra=True, render_depth=True, antialiased=False, eps2d=0.3,
              near=0.01, far=1e10):
    """What render() computes with the torch code: projection, features, depth channel."""
    p = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"],
                          s["W"], s["H"], eps2d=eps2d, near=near, far=far, antialiased=antialiased)
    f = color_features(s["means"], s["colors"], s["viewmats"], sh_degree, s["extra"] if extra else None)
    if render_depth:
        f = torch.cat([f, p.depths[..., None]], -1)
    return [p.means2d, p.conics, p.depths, p.opacities, p.radii, f]


def native_way(s, *, sh_degree, extra=True, render_depth=True, antialiased=False, eps2d=0.3,
               near=0.01, far=1e10):
    return list(project_native(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                               s["viewmats"], s["Ks"], s["W"], s["H"], sh_degree=sh_degree,
                               extra=s["extra"] if extra else None, render_depth=render_depth,
                               eps2d=eps2d, near=near, far=far, antialiased=antialiased))


def outputs_and_grads(fn, s, seed=1, **kw):
    """Outputs of fn and the gradients of every per-Gaussian input under random upstream
    gradients on every differentiable output (culled Gaussians included)."""
    s = dict(s)
    for k in IN_NAMES:
        s[k] = s[k].detach().clone().requires_grad_(True)
    outs = fn(s, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
               for name, o in zip(OUT_NAMES, outs) if name != "radii")
    loss.backward()
    return [o.detach() for o in outs], {k: s[k].grad for k in IN_NAMES}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3, 4])
@pytest.mark.parametrize("antialiased", [False, True])
def test_matches_torch_code_float64(kernel, sh_degree, antialiased):
    """float64: every output to 1e-13 (radii exactly) and every gradient to 1e-12, relative to the
    largest value (measured: most outputs bitwise equal, gradients within 1e-15)."""
    s = hard_scene(torch.float64, sh_degree)
    (t_out, t_g), (n_out, n_g) = (outputs_and_grads(f, s, sh_degree=sh_degree, antialiased=antialiased)
                                  for f in (torch_way, native_way))
    for name, a, b in zip(OUT_NAMES, n_out, t_out):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name == "radii":
            assert torch.equal(a, b)
        else:
            assert rel_err(a, b) <= 1e-13, f"{name}: {rel_err(a, b):.2e}"
    for k in IN_NAMES:
        assert torch.isfinite(n_g[k]).all(), k
        assert rel_err(n_g[k], t_g[k]) <= 1e-12, f"grad {k}: {rel_err(n_g[k], t_g[k]):.2e}"
    # the scene has what its docstring says
    radii = n_out[4]
    drawn = (radii > 0).all(-1)
    assert drawn.sum() > 300
    assert not drawn[:, 0:10].any() and not drawn[:, 10:20].any() and not drawn[:, 30:35].any()
    assert drawn[:, 35:40].any()  # partly in view
    lim = n_out[0]
    assert ((lim[..., 0] < 0) | (lim[..., 0] > s["W"]))[:, 35:40][drawn[:, 35:40]].any()  # mean outside
    if sh_degree is not None:
        assert (n_out[5][:, 40:45, :3] == 0).all()  # clamped colours
    assert n_g["means"][10:20].abs().sum() > 0  # clamped Jacobian: gradients still flow (not NaN)


@pytest.mark.parametrize("sh_degree", [None, 0, 3, 4])
def test_matches_torch_code_float32(kernel, sh_degree):
    """float32 against the torch code in float32: outputs within 1e-6 and gradients within 2e-6 of
    the largest value (measured: outputs bitwise equal but for rounding of sqrt/log, gradients
    within 2e-7); radii equal but for at most 1 % off by one pixel (a ceil() at a float boundary)."""
    s = hard_scene(torch.float32, sh_degree, N=400, seed=7)
    for aa in (False, True):
        (t_out, t_g), (n_out, n_g) = (outputs_and_grads(f, s, sh_degree=sh_degree, antialiased=aa)
                                      for f in (torch_way, native_way))
        for name, a, b in zip(OUT_NAMES, n_out, t_out):
            if name == "radii":
                d = (a - b).abs()
                assert d.max() <= 1 and (d > 0).float().mean() <= 0.01
                assert torch.equal(a > 0, b > 0)
            else:
                assert rel_err(a, b) <= 1e-6, f"{name}: {rel_err(a, b):.2e}"
        for k in IN_NAMES:
            assert rel_err(n_g[k], t_g[k]) <= 2e-6, f"grad {k}: {rel_err(n_g[k], t_g[k]):.2e}"


def test_options_without_extra_or_depth_and_other_eps_near_far(kernel):
    s = hard_scene(torch.float64, 2)
    kw = dict(sh_degree=2, extra=False, render_depth=False, eps2d=0.1, near=2.9, far=3.6)
    (t_out, t_g), (n_out, n_g) = (outputs_and_grads(f, s, **kw) for f in (torch_way, native_way))
    assert n_out[5].shape[-1] == 3
    assert torch.equal(n_out[4], t_out[4])
    culled_by_depth = ((t_out[2] <= 2.9) | (t_out[2] >= 3.6))
    assert culled_by_depth.any() and (n_out[4][culled_by_depth] == 0).all()
    for name, a, b in zip(OUT_NAMES, n_out, t_out):
        if name != "radii":
            assert rel_err(a, b) <= 1e-13, name
    for k in IN_NAMES[:5]:
        assert rel_err(n_g[k], t_g[k]) <= 1e-12, k
    assert n_g["extra"] is None


def test_sh_coefficients_beyond_the_degree_and_strided(kernel):
    """Coefficient rows past (d+1)^2 get a zero gradient; a strided view (what slicing the SH
    bands gives) is read in place and gets the same gradients as a contiguous copy."""
    s = hard_scene(torch.float64, 4)
    full = s["colors"].detach().clone().requires_grad_(True)  # [N, 25, 3]
    outs = native_way(dict(s, colors=full), sh_degree=2)
    outs[5].sum().backward()
    assert (full.grad[:, 9:] == 0).all() and full.grad[:, :9].abs().sum() > 0
    view_src = s["colors"].detach().clone().requires_grad_(True)
    sliced = view_src[:, :9]
    assert not sliced.is_contiguous()
    copy = s["colors"][:, :9].detach().clone().requires_grad_(True)
    a = native_way(dict(s, colors=sliced), sh_degree=2)
    b = native_way(dict(s, colors=copy), sh_degree=2)
    assert torch.equal(a[5], b[5])
    a[5].sum().backward()
    b[5].sum().backward()
    assert torch.equal(view_src.grad[:, :9], copy.grad) and torch.equal(view_src.grad[:, :9], full.grad[:, :9])


def test_gradcheck_float64(kernel):
    """Finite differences on a small scene away from the clamps and the culling thresholds."""
    s = make_scene(N=6, W=30, H=24, C=2, sh_degree=3, E=2, dtype=torch.float64, seed=3,
                   scale_range=(0.1, 0.3))
    s["means"] = s["means"] * 0.5
    s["colors"][:, 1:] *= 0.3  # every colour well above its clamp at 0

    def fn(means, quats, scales, opacities, colors, extra):
        p = project_native(means, quats, scales, opacities, colors, s["viewmats"], s["Ks"], s["W"],
                           s["H"], sh_degree=3, extra=extra, antialiased=True)
        return p.means2d, p.conics, p.depths, p.opacities, p.feats

    ins = [s[k].detach().clone().requires_grad_(True) for k in IN_NAMES]
    p = fn(*ins)
    assert (p[4][..., :3] > 0.05).all()  # no colour at its clamp
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_zero_gaussians_and_no_grad_path(kernel):
    s = make_scene(N=1, dtype=torch.float32, C=2)
    for k in IN_NAMES:
        s[k] = s[k][:0].clone().requires_grad_(True)
    outs = native_way(s, sh_degree=2)
    assert [tuple(o.shape) for o in outs] == [(2, 0, 2), (2, 0, 3), (2, 0), (2, 0), (2, 0, 2), (2, 0, 8)]
    outs[5].sum().backward()
    assert s["colors"].grad.shape == s["colors"].shape
    s = hard_scene(torch.float32, 3)
    with torch.no_grad():
        a = native_way(s, sh_degree=3)
    b = native_way({k: (v.clone().requires_grad_(True) if k in IN_NAMES else v) for k, v in s.items()},
                   sh_degree=3)
    assert b[0].requires_grad and not a[0].requires_grad
    for x, y in zip(a, b):
        assert torch.equal(x, y.detach())


def test_bitwise_independent_of_thread_count(kernel):
    """Every output and gradient is the same bits with 1, 2 and 3 threads (each Gaussian is one
    thread's; enough Gaussians that every thread gets several chunks)."""
    s = make_scene(N=3000, W=64, H=48, C=2, sh_degree=3, dtype=torch.float32, seed=21,
                   scale_range=(0.01, 0.05))
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs, grads = outputs_and_grads(native_way, s, sh_degree=3, antialiased=True)
            results.append(outs + [grads[k] for k in IN_NAMES])
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


# --------------------------------------------------------------------------- through render()
def _render_grads(s, backend="native", absgrad=True, camera_grad=False, **kw):
    s = dict(s)
    for k in IN_NAMES:
        s[k] = s[k].detach().clone().requires_grad_(True)
    if camera_grad:
        s["viewmats"] = s["viewmats"].detach().clone().requires_grad_(True)
    out = render(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"],
                 s["W"], s["H"], sh_degree=s["sh_degree"], extra=s["extra"], backend=backend,
                 absgrad=absgrad, **kw)
    m2 = out.meta["means2d"]
    g = torch.Generator().manual_seed(2)
    loss = (out.colors * torch.randn(out.colors.shape, generator=g, dtype=out.colors.dtype)).sum()
    loss = loss + (out.extras * torch.rand(out.extras.shape, generator=g, dtype=out.colors.dtype)).sum()
    loss = loss + out.depths.sum() + out.alphas.sum()
    loss.backward()
    return out, {k: s[k].grad for k in IN_NAMES}, m2, s


@pytest.mark.parametrize("antialiased", [False, True])
def test_render_native_uses_the_kernel_and_matches_torch_projection(kernel, monkeypatch, antialiased):
    """render(backend="native") projects with the kernel (its autograd node), and equals the same
    render with the torch projection: images, extras, depth, meta, every gradient, means2d.grad
    and .absgrad (what DefaultStrategy reads)."""
    s = hard_scene(torch.float64, 3, C=2)
    a, ag, am, _ = _render_grads(s, antialiased=antialiased)
    assert type(am.grad_fn).__name__ == "_ProjectSHBackward"
    monkeypatch.setattr(render_api, "native_project_available", lambda: False)
    b, bg, bm, _ = _render_grads(s, antialiased=antialiased)
    assert type(bm.grad_fn).__name__ != "_ProjectSHBackward"
    assert a.meta["backend"] == b.meta["backend"] == "native"
    assert a.meta["n_isects"] == b.meta["n_isects"] > 100
    assert torch.equal(a.meta["radii"], b.meta["radii"])
    for x, y in ((a.colors, b.colors), (a.alphas, b.alphas), (a.extras, b.extras), (a.depths, b.depths),
                 (a.meta["conics"], b.meta["conics"]), (a.meta["opacities"], b.meta["opacities"])):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-13)
    assert am.grad is not None and am.absgrad is not None
    for x, y in ((am.grad, bm.grad), (am.absgrad, bm.absgrad)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12 * y.abs().max().item())
    for k in IN_NAMES:
        torch.testing.assert_close(ag[k], bg[k], rtol=1e-10, atol=1e-12 * bg[k].abs().max().item())


def test_render_with_camera_gradients_keeps_the_torch_projection(kernel):
    s = hard_scene(torch.float64, 1, C=2)
    out, grads, m2, ins = _render_grads(s, camera_grad=True)
    assert out.meta["backend"] == "native"
    assert type(m2.grad_fn).__name__ != "_ProjectSHBackward"
    assert ins["viewmats"].grad is not None and ins["viewmats"].grad.abs().sum() > 0
    # without camera gradients: the kernel, the same per-Gaussian gradients
    out2, grads2, m2b, _ = _render_grads(s)
    assert type(m2b.grad_fn).__name__ == "_ProjectSHBackward"
    for k in IN_NAMES:
        torch.testing.assert_close(grads2[k], grads[k], rtol=1e-10, atol=1e-12 * grads[k].abs().max().item())
    # under no_grad a camera that requires grad does not matter
    with torch.no_grad():
        vm = s["viewmats"].clone().requires_grad_(True)
        o = render(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], vm, s["Ks"], s["W"],
                   s["H"], sh_degree=1, extra=s["extra"], backend="native")
    torch.testing.assert_close(o.colors, out2.colors.detach(), rtol=0, atol=0)


def test_render_float32_rgb_and_mixed_dtypes(kernel):
    """RGB colours (no SH) and extra channels in another dtype are cast as the torch path does."""
    s = hard_scene(torch.float32, None, C=1)
    s["extra"] = s["extra"].double()
    out, grads, _, _ = _render_grads(s)
    assert out.extras.dtype == torch.float32 and grads["extra"].dtype == torch.float64
    assert out.alphas.max() > 0.5 and all(torch.isfinite(g).all() for g in grads.values())


def test_torch_backend_keeps_the_torch_projection(kernel):
    s = hard_scene(torch.float64, 2, C=1)
    _, _, m2, _ = _render_grads(s, backend="torch")
    assert type(m2.grad_fn).__name__ != "_ProjectSHBackward"


def test_fallback_without_the_extension(monkeypatch):
    """A failed build: no kernel, render(backend="native") uses the torch code throughout, and
    project_native says why it cannot run."""
    def no_compiler():
        raise RuntimeError("c++: command not found")

    monkeypatch.setattr(extension, "_state", {"ok": None, "reason": None})
    monkeypatch.setattr(extension, "_load", no_compiler)
    monkeypatch.delenv(extension.ENV_OFF, raising=False)
    assert not native_project.native_project_available()
    s = hard_scene(torch.float64, 2, C=1)
    out, grads, m2, _ = _render_grads(s)
    assert out.meta["backend"] == "torch" and type(m2.grad_fn).__name__ != "_ProjectSHBackward"
    assert all(torch.isfinite(g).all() for g in grads.values())
    with pytest.raises(RuntimeError, match="unavailable"):
        native_way(s, sh_degree=2)
