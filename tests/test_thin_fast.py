"""The torch thin-structure map (s3dgs/thin.py, `thin_structure_map_torch`) against the numpy /
scikit-image reference it reproduces: equal within 1e-4 on random images and on constructed thin
lines (bright and dark, 1-6 px, flat and textured backgrounds, at the borders), several sizes and
width sets; and the public `thin_structure_map` dispatching numpy -> numpy, tensor -> tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s3dgs.thin import (
    _extend_index,
    thin_structure_map,
    thin_structure_map_reference,
    thin_structure_map_torch,
)

TOL = 1e-4


def _check(img: np.ndarray, widths=(1, 2, 3, 4, 5, 6), contrast=(0.03, 0.10)) -> np.ndarray:
    ref = thin_structure_map_reference(img, widths, contrast)
    got = thin_structure_map_torch(torch.from_numpy(img), widths, contrast)
    assert got.dtype == torch.float32 and tuple(got.shape) == img.shape[:2]
    err = float(np.abs(got.numpy() - ref).max())
    assert err <= TOL, f"max |torch - reference| = {err} on {img.shape}, widths {widths}"
    return ref


@pytest.mark.parametrize("shape", [(37, 53), (64, 48), (21, 90)])
@pytest.mark.parametrize("widths", [(1, 2, 3, 4, 5, 6), (1.5, 2.5), (3,), (2, 7)])
def test_random_images_match_the_reference(shape, widths):
    rng = np.random.default_rng(hash((shape, widths)) % 2**32)
    img = rng.random((*shape, 3)).astype(np.float32)
    # smooth part too, so that the map is not everywhere 1
    img = 0.5 * img + 0.5 * np.linspace(0, 1, shape[1], dtype=np.float32)[None, :, None]
    ref = _check(img, widths)
    _check(img[..., 1], widths)  # one channel, [H, W]
    _check(img, widths, contrast=(0.5, 2.0))  # a contrast range where the map is not saturated
    assert 0.0 < ref.mean() < 1.0


def _lines(h, w, bright, textured, seed):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.25 if bright else 0.75, np.float32)
    if textured:
        img += 0.08 * rng.standard_normal((h, w, 3)).astype(np.float32)
        img += 0.1 * np.sin(np.arange(w) / 5.0)[None, :, None].astype(np.float32)
    v = 0.8 if bright else 0.1
    col = 0
    for lw in range(1, 7):  # vertical lines 1..6 px, the first on the left border
        img[:, col:col + lw] = v
        col += lw + 6
    img[:, w - 2:] = v  # a line on the right border
    img[0:1, :] = v  # horizontal lines on the top border and inside
    img[h // 2:h // 2 + 3, :] = v
    rr, cc = np.mgrid[0:h, 0:w]  # a diagonal line, 2 px
    img[np.abs(rr - cc * h / w) < 1.0] = v
    img[-1, :, 0] = 1.0 - v  # the bottom row differs in one channel
    return np.clip(img, 0.0, 1.0)


@pytest.mark.parametrize("bright", [True, False])
@pytest.mark.parametrize("textured", [False, True])
@pytest.mark.parametrize("shape", [(60, 81), (33, 75)])
def test_constructed_lines_match_the_reference(bright, textured, shape):
    img = _lines(*shape, bright, textured, seed=shape[0])
    ref = _check(img)
    assert ref[:, 0].max() > 0.9  # the border line is found (the test is not vacuous)
    _check(img, widths=(1, 2), contrast=(0.2, 0.6))
    _check(img, widths=(4.5, 6))


def test_tiny_image_larger_padding_than_the_image():
    # the reflect padding (14 px) and the kernels reach past the whole image: repeated reflections
    rng = np.random.default_rng(1)
    _check(rng.random((5, 7, 3)).astype(np.float32))
    _check(rng.random((1, 9, 3)).astype(np.float32), widths=(1, 2))


@pytest.mark.parametrize("n,pad", [(4, 2), (4, 9), (1, 3), (2, 5)])
def test_extend_index_is_numpy_and_scipy_reflect(n, pad):
    a = np.arange(n)
    i = _extend_index(n, pad, pad, False, "cpu").numpy()
    assert np.array_equal(a[i], np.pad(a, pad, mode="reflect"))
    j = _extend_index(n, pad, pad, True, "cpu").numpy()
    assert np.array_equal(a[j], np.pad(a, pad, mode="symmetric"))


def test_uint8_input_and_dispatch():
    img = (_lines(40, 90, True, True, 3) * 255).astype(np.uint8)
    ref = thin_structure_map_reference(img)
    out = thin_structure_map(img)  # numpy in: numpy out, the torch path
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= TOL
    assert np.array_equal(thin_structure_map(img, reference=True), ref)
    t = thin_structure_map(torch.from_numpy(img))  # tensor in: tensor out
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert np.abs(t.numpy() - ref).max() <= TOL
    tr = thin_structure_map(torch.from_numpy(img), reference=True)
    assert isinstance(tr, torch.Tensor) and np.array_equal(tr.numpy(), ref)
    # float64 tensors are computed in float32 as the reference does
    f = torch.from_numpy(img.astype(np.float64) / 255.0)
    assert np.abs(thin_structure_map(f).numpy() - ref).max() <= TOL


def test_torch_path_rejects_bad_input():
    with pytest.raises(ValueError):
        thin_structure_map(torch.zeros(4, 4, 3, 2))
    with pytest.raises(ValueError):
        thin_structure_map(torch.zeros(8, 8, 3), widths_px=())
    with pytest.raises(ValueError):
        thin_structure_map(torch.zeros(8, 8, 3), contrast=(0.2, 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_the_reference():
    img = _lines(70, 101, False, True, 5)
    ref = thin_structure_map_reference(img)
    got = thin_structure_map(torch.from_numpy(img).cuda())
    assert got.is_cuda and np.abs(got.cpu().numpy() - ref).max() <= TOL
