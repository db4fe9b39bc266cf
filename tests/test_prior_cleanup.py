"""DeltaEdit-D's image prior (`PriorCleanup`, issue 26's fourth round): each edit is noised to a
shallow depth and decoded back by a full-image model, then blended in with the change mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from deltaedit.errors import InputError
from deltaedit.nn.style_unet import StyleConditionedUNet
from deltaedit.pipelines.diffusion import DEFAULT_SCHEDULER_CONFIG, DiffusionBackbone
from deltaedit.pipelines.prior_cleanup import PriorCleanup

S = 8


class OneImagePrior(nn.Module):
    """The exact ε of a data set holding one image x*: every decoding lands on x*."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, target):
        super().__init__()
        self.config = SimpleNamespace(style_dim=S, sample_size=target.shape[-1], render_channels=0)
        self.register_buffer("target", target)
        self.register_buffer("ac", DDIMScheduler(**DEFAULT_SCHEDULER_CONFIG).alphas_cumprod)

    def forward(self, x, t, s):
        a = self.ac[t]
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


def oracle_prior(target, **kwargs) -> PriorCleanup:
    return PriorCleanup(
        DiffusionBackbone(OneImagePrior(target), DEFAULT_SCHEDULER_CONFIG, traced=False), **kwargs
    )


def test_redraw_lands_on_what_the_prior_knows():
    """With an exact prior of one image x*, any edit comes back as x*, at any depth and draw count:
    the noising and the DDIM decoding are the same step of the same chain."""
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    edits = torch.rand(3, 3, 8, 8) * 2 - 1
    for depth, draws in ((0.1, 1), (0.3, 4), (1.0, 2)):
        out = oracle_prior(target, depth=depth, draws=draws).redraw(edits, torch.zeros(3, S))
        torch.testing.assert_close(out, target.expand(3, -1, -1, -1), atol=1e-4, rtol=0)


def test_redraw_is_seeded_and_averages_its_draws():
    torch.manual_seed(0)
    model = DiffusionBackbone(
        StyleConditionedUNet.tiny(style_dim=S, sample_size=16), DEFAULT_SCHEDULER_CONFIG
    )
    edits, styles = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, S)
    one = PriorCleanup(model, depth=0.2, draws=1)
    a, b = one.redraw(edits, styles), one.redraw(edits, styles)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # one request, one picture
    assert a.shape == edits.shape and a.abs().max() <= 1
    other = PriorCleanup(model, depth=0.2, draws=1, seed=1).redraw(edits, styles)
    assert (other - a).abs().max() > 1e-3
    # Draws are averaged: the mean of 4 lies closer to the mean of 4 other draws than one draw does.
    four = PriorCleanup(model, depth=0.2, draws=4).redraw(edits, styles)
    four_more = PriorCleanup(model, depth=0.2, draws=4, seed=7).redraw(edits, styles)
    assert (four - four_more).pow(2).mean() < (a - other).pow(2).mean()
    assert PriorCleanup(model).redraw(edits[:0], styles[:0]).shape[0] == 0
    # An edit's redraw does not depend on the other edits of its batch.
    alone = one.redraw(edits[1:], styles[1:])
    torch.testing.assert_close(alone, a[1:], atol=1e-5, rtol=0)


def test_structure_sigma_keeps_the_edits_shape_and_colour_and_takes_the_priors_detail():
    """An edit that differs from what the prior knows only by a flat colour keeps that colour; one
    that differs by fine speckle loses it (comes back close to the prior's image); σ 0 takes all."""
    torch.manual_seed(0)
    target = (torch.rand(1, 3, 32, 32) * 2 - 1) * 0.5
    recoloured = target + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2 * 2 - 1).float() * 0.2
    speckled = target + checker
    edits, styles = torch.cat([recoloured, speckled]), torch.zeros(2, S)
    kept = oracle_prior(target, depth=0.1, draws=2, structure_sigma=3.0).redraw(edits, styles)
    torch.testing.assert_close(kept[:1], recoloured, atol=1e-4, rtol=0)
    assert (kept[1:] - target).abs().mean() < 0.1 * (speckled - target).abs().mean()
    replaced = oracle_prior(target, depth=0.1, draws=2).redraw(edits, styles)
    torch.testing.assert_close(replaced, target.expand(2, -1, -1, -1), atol=1e-4, rtol=0)
    # The kernel is cut to what a small image allows instead of failing.
    tiny = oracle_prior(target[..., :4, :4], structure_sigma=3.0).redraw(edits[:1, :, :4, :4], styles[:1])
    assert tiny.shape == (1, 3, 4, 4) and torch.isfinite(tiny).all()


def test_the_prior_must_be_a_full_image_model_with_sane_settings():
    torch.manual_seed(0)
    residual = DiffusionBackbone(StyleConditionedUNet.tiny(style_dim=S, sample_size=16, render_channels=3))
    with pytest.raises(InputError, match="full-image"):
        PriorCleanup(residual)
    plain = DiffusionBackbone(StyleConditionedUNet.tiny(style_dim=S, sample_size=16))
    bad_settings = (
        {"draws": 0}, {"draws": 2.5}, {"depth": 0}, {"depth": 1.5},
        {"structure_sigma": -1}, {"structure_sigma": float("nan")}, {"structure_sigma": "3"},
    )  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(InputError):
            PriorCleanup(plain, **bad)


def test_toy_edit_is_redrawn_inside_the_change_mask_only(toy_d, monkeypatch):
    """The shipped toy D: with its prior replaced by an exact prior of one image x*, the edit is x*
    where the change weight is 1, the input where it is 0, and the reconstruction stays the input."""
    from deltaedit.pipelines.diffusion import change_weights

    assert toy_d.prior is not None  # the toy domain ships one
    codes = toy_d.sample(seed=5)
    plan = toy_d.plan(codes=codes, targets=["chubby face"], steps=20)
    assert toy_d.prior.structure_sigma == toy_d.config.extra["diffusion_prior_structure_sigma"] > 0
    target = torch.rand(1, 3, 64, 64) * 2 - 1
    monkeypatch.setattr(toy_d, "prior", oracle_prior(target, depth=0.1, draws=2))
    result = toy_d.decode_plan(plan)
    x = plan.inversion.image
    w = change_weights(plan.renders[:1], plan.renders[1:], toy_d.config.extra["diffusion_change_ramp"])
    assert 0 < float((w == 1).float().mean()) < 1 and float((w == 0).float().mean()) > 0.3
    edit = result.edited_tensor.float()
    expected = (x + w * (target - x)).clamp(-1, 1)
    torch.testing.assert_close(edit, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(result.source_tensor.float(), x, atol=1e-5, rtol=0)
    monkeypatch.setattr(toy_d, "prior", None)
    plain = toy_d.decode_plan(plan).edited_tensor.float()
    assert (plain - edit)[(w == 1).expand_as(edit)].abs().mean() > 0.1
