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
    load_style_subspace,
    parse_delta_choice_margin,
    parse_delta_choices,
    project_onto,
    style_subspace,
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


def test_the_style_subspace_spans_the_codes_main_directions_and_projects_onto_them():
    """`style_subspace` finds the directions codes vary along (orthonormal, one sign convention),
    and `project_onto` keeps a Δs inside them and drops what lies outside."""
    gen = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(12, 3, generator=gen))[0].T  # 3 orthonormal rows in R^12
    codes = 5.0 + torch.randn(400, 3, generator=gen) * torch.tensor([3.0, 2.0, 1.0]) @ directions
    codes = codes + 0.01 * torch.randn(400, 12, generator=gen)
    basis = style_subspace(codes, 3)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(basis.T @ basis, directions.T @ directions, atol=0.01, rtol=0)  # same span
    assert (basis.gather(1, basis.abs().argmax(1, keepdim=True)) > 0).all()
    torch.testing.assert_close(style_subspace(-codes, 3), basis)  # the sign convention: one file
    inside = torch.tensor([[1.0, -2.0, 0.5]]) @ directions
    outside = torch.randn(1, 12, generator=gen)
    outside = outside - (outside @ directions.T) @ directions
    torch.testing.assert_close(project_onto(inside, basis), inside, atol=0.02, rtol=0)
    assert float(project_onto(outside, basis).norm()) < 0.02 * float(outside.norm())
    for dims in (0, 13):
        with pytest.raises(ValueError):
            style_subspace(codes, dims)


def test_a_style_subspace_file_is_checked_when_loaded(tmp_path):
    import numpy as np

    from deltaedit.errors import WeightsError

    good = torch.linalg.qr(torch.randn(8, 3))[0].T.numpy().astype("float32")
    np.save(tmp_path / "good.npy", good)
    torch.testing.assert_close(load_style_subspace(tmp_path / "good.npy", 8), torch.from_numpy(good))
    bad = {
        "wrong_width": (good[:, :6], "expected"),
        "not_orthonormal": (good * 2, "orthonormal"),
        "nan": (np.where(np.eye(3, 8) > 0, np.nan, good).astype("float32"), "NaN"),
    }
    for name, (matrix, message) in bad.items():
        np.save(tmp_path / f"{name}.npy", matrix)
        with pytest.raises(WeightsError, match=message):
            load_style_subspace(tmp_path / f"{name}.npy", 8)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError):
        load_style_subspace(tmp_path / "pickled.npy", 8)


def test_toy_chubby_face_with_the_style_subspace_lands_closer_to_the_truth(toy_g):
    """With the shipped style subspace the choice also weighs each candidate projected onto it:
    on "chubby face" it takes a projected Δs for some faces, and over twelve faces the edits lie
    closer to the true chubby render than with the same choice and no subspace (per face the
    gain runs from about −1 to +2.7 dB; the mean about +0.5)."""
    from deltaedit.toy.render import images_to_tensor, render_batch, render_many

    assert toy_g.style_subspace is not None, "the toy domain ships style_subspace.npy"
    images, attrs = render_batch(40, 2024)
    faces = [i for i, a in enumerate(attrs) if a.face_width != "chubby"][:12]
    gains, projected = [], 0
    for i in faces:
        truth = images_to_tensor(render_many([attrs[i].replace(face_width="chubby")]))
        request = dict(image=Image.fromarray(images[i]), align=False, targets=["chubby face"], refine_steps=0)
        with_subspace = toy_g.edit(**request)
        delta = with_subspace.s_edited - with_subspace.s_source
        projected += bool(torch.allclose(project_onto(delta, toy_g.style_subspace), delta, atol=1e-4))
        subspace, toy_g.style_subspace = toy_g.style_subspace, None
        try:
            without = toy_g.edit(**request)
        finally:
            toy_g.style_subspace = subspace
        gains.append(float(psnr(with_subspace.edited_tensor.float(), truth) - psnr(without.edited_tensor.float(), truth)))
    assert projected >= 1
    assert sum(gains) / len(gains) > 0.2, gains


def test_the_subspace_stage_reproduces_the_shipped_file(tmp_path):
    """`toy train --stages subspace` on the shipped generator and encoder gives the shipped
    style_subspace.npy (the same span: projectors equal to float precision)."""
    import numpy as np

    from deltaedit.domain import Domain
    from deltaedit.toy import train as toy_train
    from deltaedit.toy.budget import FULL
    from deltaedit.toy.stages import subspace
    from deltaedit.toy.stages.common import StageContext

    toy = Domain.open("toy")
    shipped = toy.find("style_subspace")
    if shipped is None:
        pytest.skip("no shipped style_subspace.npy")
    ctx = StageContext(tmp_path, np.empty((subspace.SUBSPACE_CODES, 1)), [], FULL, 0, "cpu", False)
    ctx.gan = toy_train._load_gan(shipped.parent, "cpu")
    subspace.run(ctx)
    mine = torch.from_numpy(np.load(tmp_path / "style_subspace.npy"))
    theirs = torch.from_numpy(np.load(shipped))
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine.T @ mine, theirs.T @ theirs, atol=1e-4, rtol=0)
