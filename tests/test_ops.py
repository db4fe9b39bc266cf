"""Reference ops against their definitions; the compiled CUDA ops against the reference (gpu)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from deltaedit.nn import ops
from deltaedit.nn.ops import fused_leaky_relu, upfirdn2d


def upfirdn2d_by_definition(x, k, up, down, x0, x1, y0, y1):
    """Loops straight from the definition: zero-insert, pad (negative = crop), convolve, decimate."""
    x, k = x.double().numpy(), k.double().numpy()
    b, c, h, w = x.shape
    kh, kw = k.shape
    big = np.zeros((b, c, h * up, w * up))
    big[:, :, ::up, ::up] = x
    padded = np.zeros((b, c, h * up + y0 + y1, w * up + x0 + x1))
    for yy in range(padded.shape[2]):
        for xx in range(padded.shape[3]):
            sy, sx = yy - y0, xx - x0
            if 0 <= sy < h * up and 0 <= sx < w * up:
                padded[:, :, yy, xx] = big[:, :, sy, sx]
    oh = (padded.shape[2] - kh) // down + 1
    ow = (padded.shape[3] - kw) // down + 1
    out = np.zeros((b, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    # True convolution: the kernel is applied flipped.
                    out[:, :, oy, ox] += (
                        padded[:, :, oy * down + i, ox * down + j] * k[kh - 1 - i, kw - 1 - j]
                    )
    return torch.from_numpy(out).float()


@pytest.mark.parametrize(
    "up,down,pad",
    [
        (1, 1, (0, 0, 0, 0)),
        (2, 1, (2, 1, 2, 1)),
        (1, 2, (1, 1, 1, 1)),
        (2, 1, (1, 1, 0, 2)),
        (1, 1, (-1, 2, 1, -1)),
    ],
)
def test_upfirdn2d_matches_definition(up, down, pad):
    x = torch.randn(2, 3, 5, 6)
    k = torch.randn(3, 4)  # asymmetric: catches a missing flip or swapped axes
    got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    want = upfirdn2d_by_definition(x, k, up, down, *pad)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_upfirdn2d_two_tuple_pads_both_axes():
    x, k = torch.randn(1, 2, 4, 7), torch.randn(4, 4)
    torch.testing.assert_close(upfirdn2d(x, k, up=2, pad=(2, 1)), upfirdn2d(x, k, up=2, pad=(2, 1, 2, 1)))


def test_upfirdn2d_upsampling_preserves_constant_images():
    # StyleGAN2's upsampling kernel (normalised, gain up**2) keeps a flat image flat inside.
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = (k[:, None] * k[None, :]) / 64 * 4
    out = upfirdn2d(torch.full((1, 1, 6, 6), 0.7), k, up=2, pad=(2, 1))
    assert out.shape == (1, 1, 12, 12)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.full((1, 1, 8, 8), 0.7))


def test_fused_leaky_relu_formula_and_bias_axes():
    x = torch.randn(2, 3, 4)
    b1, b_last = torch.randn(3), torch.randn(4)
    y1 = fused_leaky_relu(x, b1, bias_axis=1)
    y_last = fused_leaky_relu(x, b_last, bias_axis=-1)
    pre1, pre_last = x + b1[None, :, None], x + b_last[None, None, :]
    torch.testing.assert_close(y1, torch.where(pre1 > 0, pre1, 0.2 * pre1) * math.sqrt(2))
    torch.testing.assert_close(y_last, torch.where(pre_last > 0, pre_last, 0.2 * pre_last) * math.sqrt(2))
    with pytest.raises(ValueError):
        fused_leaky_relu(x, b_last, bias_axis=1)


def test_unknown_impl_rejected_and_cuda_on_cpu_falls_back(caplog):
    x, b = torch.randn(2, 5), torch.randn(5)
    with pytest.raises(ValueError):
        fused_leaky_relu(x, b, impl="fast")
    with caplog.at_level(logging.WARNING, logger="deltaedit.nn.ops"):
        got = fused_leaky_relu(x, b, impl="cuda")
    torch.testing.assert_close(got, fused_leaky_relu(x, b, impl="ref"))
    assert "reference" in caplog.text


def test_import_compiles_nothing():
    assert ops._ext is None or torch.cuda.is_available()
    assert ops.get_default_impl() == "ref"


@pytest.mark.gpu
def test_compiled_ops_match_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert ops._load_extension() is not None, "the CUDA extension failed to build"
    dev = "cuda"
    x = torch.randn(3, 8, 17, 19, device=dev)
    k = torch.randn(4, 4, device=dev)
    with torch.no_grad():
        for up, down, pad in [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, 3, -1, 2))]:
            ref = upfirdn2d(x, k, up, down, pad, impl="ref")
            got = upfirdn2d(x, k, up, down, pad, impl="cuda")
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    for shape, axis in [((3, 8, 5, 6), 1), ((4, 3, 16), -1), ((5, 16), -1)]:
        x = torch.randn(*shape, device=dev, requires_grad=True)
        b = torch.randn(shape[axis], device=dev, requires_grad=True)
        ref = fused_leaky_relu(x, b, bias_axis=axis, impl="ref")
        gx_ref, gb_ref = torch.autograd.grad(ref.square().sum(), [x, b])
        got = fused_leaky_relu(x, b, bias_axis=axis, impl="cuda")
        gx, gb = torch.autograd.grad(got.square().sum(), [x, b])
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gb, gb_ref, atol=1e-3, rtol=1e-4)
