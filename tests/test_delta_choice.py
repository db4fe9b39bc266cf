"""The per-edit choice of how much of the mapper's Δs to apply (`deltaedit.delta_choice`)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import deltaedit.delta_choice as delta_choice
import deltaedit.refine as refine
from deltaedit.delta_choice import (
    DeltaChoice,
    choose_style_deltas,
    parse_delta_choice_margin,
    parse_delta_choices,
)
from deltaedit.pipelines.diffusion import psnr


def test_choices_parse_from_the_config_and_bad_ones_are_refused():
    assert parse_delta_choices(None) == () and parse_delta_choices([]) == ()
    assert parse_delta_choices([[0, 0.5], (0.5, 1)]) == (DeltaChoice(0.0, 0.5), DeltaChoice(0.5, 1.0))
    for bad in ([[0.5]], [[-1, 1]], [[0, 0]], [[0, float("nan")]], [0.5]):
        with pytest.raises(ValueError, match="delta_choices"):
            parse_delta_choices(bad)
    assert parse_delta_choice_margin(None) == 1.0 and parse_delta_choice_margin(0.5) == 0.5
    for bad in (0, -1, float("inf"), "x"):
        with pytest.raises(ValueError):
            parse_delta_choice_margin(bad)


class _Layout:
    def split(self, s):
        return s


def test_the_candidate_whose_clip_change_meets_the_target_is_chosen(monkeypatch):
    """A stand-in generator draws s as its image and a stand-in CLIP reads it as its feature: the
    candidate that moves the feature onto the grounded target wins, row by row, and ties keep the
    request's own Δs (candidate 0)."""
    monkeypatch.setattr(delta_choice, "decode_s", lambda generator, styles, w_plus: styles)
    for module in (delta_choice, refine):
        monkeypatch.setattr(module, "unit_image_features", lambda clip, images: images)

    class Bank:
        def ground(self, delta_t, source):
            return delta_t  # the target: the feature moves by Δt

    s = torch.zeros(1, 3)
    delta_t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    candidates = torch.stack([
        torch.tensor([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),  # the request's own
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[0.2, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
    ])  # fmt: skip
    chosen, index = choose_style_deltas(
        None, None, _Layout(), s, torch.zeros(1, 1, 1), candidates, delta_t, 1.0, s, Bank()
    )
    assert index.tolist() == [1, 2, 0]
    torch.testing.assert_close(chosen, torch.stack([candidates[1][0], candidates[2][1], candidates[0][2]]))
    # With a margin an alternative must beat the request's own loss by that factor: row 0's
    # alternative (loss 0 against 0.25) still wins, row 1's (0 against 1) too; a near tie does not.
    near = candidates.clone()
    near[1, 0] = torch.tensor([0.55, 0.0, 0.0])  # loss 0.2025 against the request's 0.25
    near[2, 0] = torch.tensor([0.6, 0.0, 0.0])  # loss 0.16
    _, index = choose_style_deltas(
        None, None, _Layout(), s, torch.zeros(1, 1, 1), near, delta_t, 1.0, s, Bank(), margin=0.5
    )
    assert index.tolist() == [0, 2, 0]


def test_toy_chubby_face_takes_the_whole_delta_and_lands_closer_to_the_truth(toy_g):
    """On the toy domain "chubby face" is a shape change the relevance selection cuts to a
    cross-fade of two outlines: the choice takes the mapper's whole Δs at a lower strength, and
    the edit lies closer to the true chubby render than the request's own Δs does (three faces)."""
    from deltaedit.toy.render import images_to_tensor, render_batch, render_many

    assert toy_g.delta_choices, "the toy config lists delta_choices"
    images, attrs = render_batch(12, 2024)
    faces = [i for i, a in enumerate(attrs) if a.face_width != "chubby"][:3]
    gains = []
    for i in faces:
        truth = images_to_tensor(render_many([attrs[i].replace(face_width="chubby")]))
        request = dict(image=Image.fromarray(images[i]), align=False, targets=["chubby face"], refine_steps=0)
        chosen = toy_g.edit(**request)
        kept_channels = int((chosen.s_edited != chosen.s_source).sum())
        choices, toy_g.delta_choices = toy_g.delta_choices, ()
        try:
            own = toy_g.edit(**request)
        finally:
            toy_g.delta_choices = choices
        assert kept_channels > int((own.s_edited != own.s_source).sum())  # more than the selection's
        gains.append(float(psnr(chosen.edited_tensor.float(), truth) - psnr(own.edited_tensor.float(), truth)))
    assert min(gains) > 0 and sum(gains) / len(gains) > 1.0, gains


def test_without_choices_or_strength_the_delta_is_the_selection_as_before(toy_g):
    codes = toy_g.sample(seed=3)
    delta_t, _, _ = toy_g.request_deltas(codes, ["face with bangs", "face"], "face", None, None, False)
    plain = toy_g.style_deltas(codes, delta_t, 0.1)
    choices, toy_g.delta_choices = toy_g.delta_choices, ()
    try:
        torch.testing.assert_close(toy_g.style_deltas(codes, delta_t, 0.1, 0.85), plain, atol=0, rtol=0)
    finally:
        toy_g.delta_choices = choices
    chosen = toy_g.style_deltas(codes, delta_t, 0.1, 0.85)
    assert (chosen[1] == 0).all()  # target == source stays no edit
    assert torch.isfinite(chosen).all()


def test_the_choice_is_made_at_the_default_strength_so_re_edits_equal_edits(toy_g):
    """The chosen Δs does not depend on the request's strength: a kept plan redrawn at another
    strength is the full edit at that strength, for a prompt where the choice takes effect."""
    from deltaedit.toy.render import render_batch

    images, attrs = render_batch(12, 2024)
    face = next(i for i, a in enumerate(attrs) if a.face_width != "chubby")
    codes = toy_g.prepare(image=Image.fromarray(images[face]), align=False)
    request = dict(codes=codes, targets="chubby face", refine_steps=0)
    plan = toy_g.plan(**request)
    selected = toy_g.style_deltas(codes, toy_g.request_deltas(codes, ["chubby face"], "face", None, None, False)[0], 0.1)
    assert not torch.equal(plan.delta_s, selected)  # the choice took another Δs than the selection
    for strength in (0.4, 1.3):
        again = toy_g.decode_plan(plan, strength=strength).edited_tensor
        full = toy_g.edit(**request, strength=strength).edited_tensor
        torch.testing.assert_close(again, full, atol=1e-5, rtol=0)
