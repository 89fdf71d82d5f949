"""The fused CPU SSIM (s3dgs/csrc/ssim_cpu.cpp) against the torch reference of s3dgs.losses.ssim.

Values and gradients agree to rounding in float64, and within stated bounds in float32 (where the
fused kernel is measured closer to a float64 computation than the torch code); equal images give
exactly 1; results are bitwise the same for 1, 2 and 3 threads; without the extension ssim is the
torch code.
"""

import logging

import pytest
import torch

from s3dgs import extension
from s3dgs.losses import _gaussian_1d, _ssim_path, _ssim_reference, rgb_loss, ssim

needs_native = pytest.mark.skipif(not extension.native_available(),
                                  reason="native extension unavailable (no compiler?)")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair(shape, dtype, seed=0, smooth=False):
    x = torch.rand(shape, generator=_gen(seed), dtype=torch.float64)
    y = torch.rand(shape, generator=_gen(seed + 1), dtype=torch.float64)
    if smooth:  # nearly equal, locally flat images: small variances, where rounding matters most
        flat = x.reshape(-1, *shape[-3:]).permute(0, 3, 1, 2)
        x = torch.nn.functional.avg_pool2d(flat, 9, 1, 4).permute(0, 2, 3, 1).reshape(shape)
        y = (x + 0.02 * y).clamp(0, 1)
    return x.to(dtype).contiguous(), y.to(dtype).contiguous()


def _value_and_grad(fn, x, y, **kw):
    xr = x.clone().requires_grad_(True)
    out = fn(xr, y, **kw)
    out.backward()
    return out.detach(), xr.grad


# odd sizes, smaller than the window, batched, extra leading dims, one channel, several row
# strips (700 x 3 values a row: 3 strips) and row bands (70 rows: 2 bands)
SHAPES = [(5, 7, 3), (2, 24, 20, 3), (1, 1, 1, 3), (3, 2, 13, 17, 1), (1, 21, 700, 3), (70, 400, 3)]


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [11, 7])
def test_float64_values_and_gradients_match_the_reference(shape, window):
    x, y = _pair(shape, torch.float64, seed=len(shape) + window)
    assert _ssim_path(x, y, window) == "native"
    v, g = _value_and_grad(ssim, x, y, window_size=window)
    v_ref, g_ref = _value_and_grad(_ssim_reference, x, y, window_size=window)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-13 * g_ref.abs().max().item())
    m, m_ref = ssim(x, y, window_size=window, reduce=False), _ssim_reference(x, y, window_size=window, reduce=False)
    assert m.shape == x.shape
    torch.testing.assert_close(m, m_ref, rtol=0, atol=1e-13)


@needs_native
def test_the_gradient_of_the_map_under_any_upstream_gradient():
    x, y = _pair((2, 19, 23, 3), torch.float64, seed=5)
    w = torch.randn(x.shape, generator=_gen(9), dtype=torch.float64)
    grads = []
    for fn in (ssim, _ssim_reference):
        xr = x.clone().requires_grad_(True)
        (fn(xr, y, reduce=False) * w).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-13 * grads[1].abs().max().item())


@needs_native
@pytest.mark.parametrize("smooth", [False, True])
def test_float32_within_the_stated_bound_and_no_less_accurate_than_torch(smooth):
    """float32: mean within 1e-6 of the torch code, map within 1e-5 and gradient within 1e-4 of its
    largest entry on random images (5e-4 and 1e-3 on the smooth ones); and against float64, the fused kernel's
    errors are at most twice the torch float32 code's (measured: about half of them)."""
    x64, y64 = _pair((1, 60, 80, 3), torch.float64, seed=11, smooth=smooth)
    x, y = x64.float(), y64.float()
    v, g = _value_and_grad(ssim, x, y)
    v32, g32 = _value_and_grad(_ssim_reference, x, y)
    v64, g64 = _value_and_grad(_ssim_reference, x64, y64)
    gmax = g64.abs().max().item()
    assert abs(v.item() - v32.item()) <= 1e-6
    assert (g - g32).abs().max().item() <= (1e-3 if smooth else 1e-4) * gmax
    m, m32 = ssim(x, y, reduce=False), _ssim_reference(x, y, reduce=False)
    m64 = _ssim_reference(x64, y64, reduce=False)
    assert (m - m32).abs().max().item() <= (5e-4 if smooth else 1e-5)
    assert abs(v.item() - v64.item()) <= 2 * abs(v32.item() - v64.item()) + 1e-8
    assert (m.double() - m64).abs().max() <= 2 * (m32.double() - m64).abs().max() + 1e-7
    assert (g.double() - g64).abs().max() <= 2 * (g32.double() - g64).abs().max() + 1e-7 * gmax


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_images_give_exactly_one(dtype):
    x, _ = _pair((2, 37, 29, 3), dtype, seed=3)
    assert _ssim_path(x, x, 11) == "native"
    assert ssim(x, x.clone()).item() == 1.0
    assert (ssim(x, x.clone(), reduce=False) == 1).all()
    xr = x.clone().requires_grad_(True)
    assert rgb_loss(xr, x).item() == 0.0
    rgb_loss(xr, x).backward()
    assert torch.isfinite(xr.grad).all()


@needs_native
@pytest.mark.parametrize("window", [11, 5])
def test_gradcheck_float64(window):
    x, y = _pair((7, 9, 2), torch.float64, seed=21)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ssim(t, y, window_size=window), (xr,), eps=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda t: ssim(t, y, window_size=window, reduce=False), (xr,),
                                    eps=1e-6, atol=1e-8)
    assert "FusedSSIM" in type(ssim(xr, y, window_size=window).grad_fn).__name__


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_the_same_for_any_thread_count(dtype):
    x, y = _pair((2, 150, 400, 3), dtype, seed=4)  # 2 strips a row, several bands per image
    before = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            v, g = _value_and_grad(ssim, x, y)
            outs.append((v, g, ssim(x, y, reduce=False)))
    finally:
        torch.set_num_threads(before)
    for v, g, m in outs[1:]:
        assert torch.equal(v, outs[0][0]) and torch.equal(g, outs[0][1]) and torch.equal(m, outs[0][2])


@needs_native
def test_which_inputs_take_the_native_path():
    x, y = _pair((9, 11, 3), torch.float64, seed=8)
    assert _ssim_path(x, y, 11) == "native"
    assert _ssim_path(x.half(), y.half(), 11) == "torch"  # dtype
    assert _ssim_path(x, y.float(), 11) == "torch"  # mixed dtypes
    assert _ssim_path(x, y, 10) == "torch"  # even window
    yr = y.clone().requires_grad_(True)
    assert _ssim_path(x, yr, 11) == "torch"  # the target wants a gradient: torch differentiates it
    xr = x.clone().requires_grad_(True)
    ssim(xr, yr).backward()
    _, g_ref = _value_and_grad(_ssim_reference, x, y)
    assert yr.grad is not None and torch.allclose(xr.grad, g_ref)
    with torch.no_grad():
        assert _ssim_path(x, yr, 11) == "native"
        torch.testing.assert_close(ssim(x, yr), _ssim_reference(x, y), rtol=0, atol=1e-14)
    # a non-contiguous (permuted) input is copied, not misread
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous()
    torch.testing.assert_close(ssim(xt, y), _ssim_reference(x, y), rtol=0, atol=1e-14)


@needs_native
def test_the_kernel_refuses_what_it_cannot_compute():
    x, y = _pair((1, 8, 8, 3), torch.float64, seed=2)
    op = torch.ops.s3dgs_native.ssim_fwd
    with pytest.raises(RuntimeError, match="symmetric"):
        op(x, y, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), 1e-4, 9e-4, False, False, 1)
    with pytest.raises(RuntimeError, match="odd"):
        op(x, y, torch.full((4,), 0.25, dtype=torch.float64), 1e-4, 9e-4, False, False, 1)
    with pytest.raises(RuntimeError, match="shapes differ"):
        op(x, y[:, :7].contiguous(), _gaussian_1d(11, 1.5), 1e-4, 9e-4, False, False, 1)


def test_fallback_when_the_extension_cannot_be_built(monkeypatch, caplog):
    """A failing build (simulated) sends ssim to the torch code: the same values and gradients,
    bit for bit, and one log line naming the reason."""
    def no_compiler():
        raise RuntimeError("Error building extension 's3dgs_native': c++: command not found")

    monkeypatch.setattr(extension, "_state", {"ok": None, "reason": None})
    monkeypatch.setattr(extension, "_load", no_compiler)
    monkeypatch.delenv(extension.ENV_OFF, raising=False)
    x, y = _pair((2, 13, 17, 3), torch.float32, seed=6)
    with caplog.at_level(logging.INFO, logger="s3dgs"):
        assert _ssim_path(x, y, 11) == "torch"
        v, g = _value_and_grad(ssim, x, y)
    v_ref, g_ref = _value_and_grad(_ssim_reference, x, y)
    assert torch.equal(v, v_ref) and torch.equal(g, g_ref)
    assert torch.equal(ssim(x, y, reduce=False), _ssim_reference(x, y, reduce=False))
    lines = [r.getMessage() for r in caplog.records if "native CPU kernels unavailable" in r.getMessage()]
    assert len(lines) == 1 and "command not found" in lines[0]
