"""Delta Mapper: official net_face.pth layout and an independent re-implementation of its maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from official_formats import random_state_dict

from deltaedit.errors import InputError
from deltaedit.nn.mapper import DeltaMapper
from deltaedit.nn.stylespace import StyleLayout

FFHQ = StyleLayout(
    widths=(512,) * 10 + (256, 256, 128, 128, 64, 64, 32),
    resolutions=(4, 8, 8, 16, 16, 32, 32) + tuple(r for r in (64, 128, 256, 512, 1024) for _ in range(2)),
)
# 2 coarse layers of 6, 3 medium of 5, fine 4 + 3 = 7 values.
SMALL = StyleLayout(widths=(6, 6, 5, 5, 5, 4, 3), resolutions=(4, 8, 16, 16, 32, 64, 64))


def test_official_net_face_strict_loads(checkpoint_formats):
    mapper = DeltaMapper(FFHQ, clip_dim=512)
    sd = random_state_dict(checkpoint_formats / "net_face.pth.keys.txt", scale=0.05)
    mapper.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = mapper(torch.randn(2, 6048), torch.randn(2, 1024))
    assert out.shape == (2, 6048) and torch.isfinite(out).all()


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


def _mlp(params, prefix, x, norm):
    """DESIGN.md's formulas: PixelNorm over dim 1; y = lrelu(x W^T * 0.01/sqrt(in) + 0.01 b) on the last axis."""
    if norm:
        x = x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + 1e-8)
    first = 0 if not norm else 1
    for i in range(first, first + 4):
        w, b = params[f"{prefix}.mapping.{i}.weight"], params[f"{prefix}.mapping.{i}.bias"]
        x = _lrelu(x @ (w * 0.01 / math.sqrt(w.shape[1])).T + 0.01 * b)
    return x


def reference_forward(params, s, cond):
    b = s.shape[0]
    sc, sm, sf = s[:, :12].reshape(b, 2, 6), s[:, 12:27].reshape(b, 3, 5), s[:, 27:]
    outs = []
    for name, x, n in (("coarse", sc, 2), ("medium", sm, 3)):
        style = _mlp(params, f"sm_{name}", x, True)
        c = _mlp(params, f"cm_{name}", cond, True)
        fused_in = torch.cat([style, torch.stack([c] * n, dim=1)], dim=2)
        outs.append(_mlp(params, f"fm_{name}", fused_in, False).reshape(b, -1))
    fine_in = torch.cat([_mlp(params, "sm_fine", sf, True), _mlp(params, "cm_fine", cond, True)], dim=1)
    outs.append(_mlp(params, "fm_fine", fine_in, False))
    return torch.cat(outs, dim=1)


def _randomised(mapper):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mapper.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (30.0 if p.ndim == 2 else 20.0))
    return mapper


def test_forward_matches_independent_formulas():
    mapper = _randomised(DeltaMapper(SMALL, clip_dim=4))
    assert set(dict(mapper.named_children())) == {
        f"{m}_{lvl}" for m in ("sm", "cm", "fm") for lvl in ("coarse", "medium", "fine")
    }
    params = dict(mapper.named_parameters())
    s, cond = torch.randn(3, SMALL.total) * 2, torch.randn(3, 8)
    with torch.no_grad():
        got = mapper(s, cond)
        want = reference_forward(params, s, cond)
    assert got.shape == (3, SMALL.total)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_pixelnorm_couples_layers_of_a_level():
    # The quirk: PixelNorm over the layer axis, so scaling one coarse layer changes its neighbour's Δs.
    mapper = _randomised(DeltaMapper(SMALL, clip_dim=4))
    s, cond = torch.randn(1, SMALL.total), torch.randn(1, 8)
    s2 = s.clone()
    s2[:, :6] *= 3.0
    with torch.no_grad():
        a, b = mapper(s, cond), mapper(s2, cond)
    assert not torch.allclose(a[:, 6:12], b[:, 6:12]), "coarse layer 1 should feel layer 0's scale"
    torch.testing.assert_close(a[:, 12:], b[:, 12:])  # other levels are independent


def test_gradients_reach_every_parameter():
    mapper = _randomised(DeltaMapper(SMALL, clip_dim=4))
    s = torch.randn(4, SMALL.total, requires_grad=True)
    mapper(s, torch.randn(4, 8)).square().mean().backward()
    assert s.grad.abs().sum() > 0
    for name, p in mapper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_level_with_mixed_widths_is_mapped_flat():
    # Tapering channels (toy generators): coarse layers 6 and 5 wide -> one flat block of 11.
    layout = StyleLayout(widths=(6, 5, 5), resolutions=(4, 8, 64))
    mapper = DeltaMapper(layout, clip_dim=4)
    assert mapper.shapes["coarse"] == (1, 11) and "coarse" in mapper.flat_levels
    s, cond = torch.randn(3, layout.total, requires_grad=True), torch.randn(3, 8)
    out = mapper(s, cond)
    assert out.shape == (3, layout.total)
    # The coarse output depends on every coarse input channel (one MLP over the whole block).
    out[:, :6].sum().backward()
    assert (s.grad[:, 6:11].abs().sum(0) > 0).all()


def test_layouts_the_mapper_cannot_take():
    with pytest.raises(InputError, match="follow each other"):
        DeltaMapper(StyleLayout((6, 5, 5), (4, 64, 8)))
    mapper = DeltaMapper(SMALL, clip_dim=4)
    with pytest.raises(InputError):
        mapper(torch.randn(2, SMALL.total + 1), torch.randn(2, 8))
    with pytest.raises(InputError):
        mapper(torch.randn(2, SMALL.total), torch.randn(2, 4))


def test_toy_sized_layout_without_fine_layers():
    layout = StyleLayout((8, 8, 8, 4, 4), (4, 8, 8, 16, 16))
    mapper = DeltaMapper(layout, clip_dim=4)
    assert not hasattr(mapper, "sm_fine")
    assert mapper(torch.randn(2, 32), torch.randn(2, 8)).shape == (2, 32)
