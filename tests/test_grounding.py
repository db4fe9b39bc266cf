"""Text deltas grounded in one image through a feature bank (`deltaedit.grounding`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaedit import models
from deltaedit.domain import Domain
from deltaedit.errors import InputError, WeightsError
from deltaedit.grounding import FeatureBank, load_feature_bank

HAIR = 4  # a categorical attribute: black, blond, red, brown
D = 32


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def world():
    """Image features that add one vector per attribute value (hair of 4 values, glasses yes/no,
    a 3-valued background), as the toy CLIP's are; plus a direction only text deltas have."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    hair, glasses, background, text_only = basis[:, :4].T, basis[:, 4:6].T, basis[:, 6:9].T, basis[:, 9]
    base = 2.0 * basis[:, 10]  # what every image shares

    def features(h, e, b):
        x = base + hair[h] + glasses[e] + background[b]
        return _unit(x + 0.005 * torch.randn(x.shape, generator=g))

    n = 3000
    labels = torch.stack(
        [
            torch.randint(0, HAIR, (n,), generator=g),
            torch.randint(0, 2, (n,), generator=g),
            torch.randint(0, 3, (n,), generator=g),
        ],
        dim=1,
    )
    bank = features(labels[:, 0], labels[:, 1], labels[:, 2])
    return dict(bank=FeatureBank(bank), features=features, hair=hair, glasses=glasses, text_only=text_only)


def _text_delta(world, value):
    """What a text delta looks like: target value minus the mean over values, plus text-only junk."""
    return world["hair"][value] - world["hair"].mean(0) + 0.8 * world["text_only"]


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


@pytest.mark.parametrize("source_hair", [0, 2, 3])
def test_grounded_delta_swaps_only_the_asked_attribute_from_the_image_s_own_value(world, source_hair):
    blond = 1
    image = world["features"](torch.tensor([source_hair]), torch.tensor([1]), torch.tensor([2]))
    text = _text_delta(world, blond)
    grounded = world["bank"].ground(text[None], image)[0]
    true = world["features"](torch.tensor([blond]), torch.tensor([1]), torch.tensor([2]))[0] - image[0]
    assert _cos(grounded, true) > 0.97
    # The raw text delta is measurably worse: the source's value and the junk are both in it.
    assert _cos(text, true) < 0.8
    # Nothing moves along the other attributes or the text-only direction.
    for other in (world["glasses"], world["text_only"][None]):
        assert (other @ grounded).abs().max() < 0.05


def test_binary_attribute_grounds_to_one_direction(world):
    image = world["features"](torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    text = world["glasses"][1] - world["glasses"].mean(0) + 0.5 * world["text_only"]
    grounded = world["bank"].ground(text[None], image)[0]
    true = world["features"](torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))[0] - image[0]
    assert _cos(grounded, true) > 0.97
    ((_, subspace),) = world["bank"].attributes(text)
    assert subspace.shape[1] == 1
    ((_, hair_subspace),) = world["bank"].attributes(_text_delta(world, 1))
    assert hair_subspace.shape[1] == HAIR - 1


def test_a_two_attribute_prompt_grounds_to_both_swaps(world):
    image = world["features"](torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    text = _text_delta(world, 2) + world["glasses"][1] - world["glasses"].mean(0)
    grounded = world["bank"].ground(text[None], image)[0]
    true = world["features"](torch.tensor([2]), torch.tensor([1]), torch.tensor([1]))[0] - image[0]
    assert _cos(grounded, true) > 0.9
    assert len(world["bank"].attributes(text)) == 2  # one split per named attribute
    # Both swaps happen: red replaces black, glasses appear (at least half of the true change each).
    for swap in (world["hair"][2] - world["hair"][0], world["glasses"][1] - world["glasses"][0]):
        assert float(grounded @ swap) > 0.5 * float(true @ swap)
    single = world["bank"]._split(text @ world["bank"].basis.T @ world["bank"].basis)
    assert _cos(grounded, true) > _cos(single[1] @ (single[1].T @ (single[0] - image[0])), true)


def test_zero_delta_stays_zero_and_a_direction_images_never_take_passes_through(world):
    image = world["features"](torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    deltas = torch.stack([torch.zeros(D), world["text_only"]])
    grounded = world["bank"].ground(deltas, image)
    assert torch.equal(grounded[0], torch.zeros(D))
    torch.testing.assert_close(grounded[1], world["text_only"])


def test_ground_checks_shapes_and_caches_the_attribute(world):
    with pytest.raises(InputError, match=r"\[T, 32\]"):
        world["bank"].ground(torch.zeros(3, 7), torch.zeros(D))
    text = _text_delta(world, 2)
    assert world["bank"].attributes(text) is world["bank"].attributes(text.clone())
    with pytest.raises(InputError, match="N >= 16"):
        FeatureBank(torch.randn(3, D))


def test_load_feature_bank_reads_npy_and_refuses_bad_files(tmp_path):
    features = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float16)
    np.save(tmp_path / "bank.npy", features)
    bank = load_feature_bank(tmp_path / "bank.npy", clip_dim=8)
    assert len(bank) == 40 and bank.dim == 8
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(40))
    with pytest.raises(WeightsError, match="8-d features"):
        load_feature_bank(tmp_path / "bank.npy", clip_dim=16)
    np.save(tmp_path / "nan.npy", np.full((40, 8), np.nan, dtype=np.float32))
    with pytest.raises(WeightsError, match="NaN"):
        load_feature_bank(tmp_path / "nan.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="not a readable"):
        load_feature_bank(tmp_path / "objects.npy")


def test_toy_domain_ships_a_bank_for_its_clip_and_ffhq_has_none():
    bank = models.load_feature_bank(Domain.open("toy"))
    assert bank is not None and bank.dim == 128 and len(bank) >= 1000
    assert models.load_feature_bank(Domain.open("ffhq")) is None


def test_toy_editor_feeds_the_mapper_the_grounded_delta_and_selects_with_the_text_s():
    from deltaedit.api import load_editor
    from deltaedit.relevance import select_channels
    from deltaedit.toy.render import render_batch

    editor = load_editor("toy", backbone="gan")
    assert editor.feature_bank is not None
    images, _ = render_batch(1, 3)
    codes = editor.encode_image(images[0], align=False)
    delta_t, _ = editor.text_deltas(["face with blond hair", "face with a smile"], "face")
    with torch.no_grad():
        got = editor.style_deltas(codes, delta_t, 0.1)
        grounded = editor.feature_bank.ground(delta_t, codes.clip_feature)
        cond = editor.clip.condition(codes.clip_feature.expand(2, -1), grounded)
        expected = editor.mapper(codes.s.expand(2, -1), cond)
    keep = torch.stack([select_channels(editor.fs3, dt, 0.1) for dt in delta_t])
    torch.testing.assert_close(got, expected * keep)
    bank, editor.feature_bank = editor.feature_bank, None
    try:
        with torch.no_grad():
            paper = editor.style_deltas(codes, delta_t, 0.1)
    finally:
        editor.feature_bank = bank
    assert not torch.allclose(paper, got)  # the paper's Δt gives another Δs


def test_edits_without_strength_or_threshold_take_the_domain_s_defaults():
    from deltaedit import config
    from deltaedit.api import load_editor
    from deltaedit.toy.render import render_batch

    toy, ffhq = config.load_domain_config("toy"), config.load_domain_config("ffhq")
    authors = ffhq.defaults_for("gan")
    assert (authors.strength, authors.threshold, authors.refine_steps) == (1.0, 0.03, 0)
    assert ffhq.defaults_for("diffusion") == authors
    toy_gan = toy.defaults_for("gan")
    assert (toy_gan.strength, toy_gan.threshold, toy_gan.refine_steps, toy_gan.refine_lr) == (0.85, 0.1, 2, 0.02)
    images, _ = render_batch(1, 4)
    result = load_editor("toy", backbone="gan").edit(image=images[0], align=False, targets="face with bangs")
    assert (result.strength, result.threshold) == (0.85, 0.1) and "refine" in result.timings
    explicit = load_editor("toy", backbone="gan").edit(
        image=images[0], align=False, targets="face with bangs", strength=0.5, threshold=0.03, refine_steps=0
    )
    assert (explicit.strength, explicit.threshold) == (0.5, 0.03) and "refine" not in explicit.timings


def test_each_backbone_refines_at_its_own_configured_rate(monkeypatch):
    import dataclasses

    import deltaedit.pipelines.gan as gan
    from deltaedit import config
    from deltaedit.api import load_editor

    editor = load_editor("toy", backbone="gan")
    seen = []
    monkeypatch.setattr(gan, "refine_style_deltas", lambda *a, **k: seen.append(k["lr"]) or a[5])
    toy = config.load_domain_config("toy")
    custom = dataclasses.replace(
        toy,
        edit_defaults={
            "gan": dataclasses.replace(toy.defaults_for("gan"), refine_lr=0.5),
            "diffusion": dataclasses.replace(toy.defaults_for("diffusion"), refine_lr=0.25),
        },
    )
    monkeypatch.setattr(editor, "config", custom)
    codes = editor.sample(1)
    delta_t, _ = editor.text_deltas(["face with bangs"], "face")
    delta_s = editor.style_deltas(codes, delta_t, 0.1)
    editor.refined_style_deltas(codes, delta_t, delta_s, 0.85, 2)
    editor.refined_style_deltas(codes, delta_t, delta_s, 0.85, 2, backbone="diffusion")
    assert seen == [0.5, 0.25]


@pytest.fixture(scope="module")
def correlated_world():
    """Like `world`, but the attributes go together: 85 % of the blond-haired faces wear glasses,
    15 % of the others do. A split along the glasses direction then also separates hair values, so
    its subspace overlaps the hair subspace found before it."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    hair, glasses, text_only = basis[:, :4].T, basis[:, 4:6].T, basis[:, 9]
    base = 2.0 * basis[:, 10]

    def features(h, e):
        x = base + hair[h] + glasses[e]
        return _unit(x + 0.005 * torch.randn(x.shape, generator=g))

    n = 3000
    h = torch.randint(0, HAIR, (n,), generator=g)
    e = (torch.rand(n, generator=g) < torch.where(h == 1, 0.85, 0.15)).long()
    bank = FeatureBank(features(h, e))
    return dict(bank=bank, features=features, hair=hair, glasses=glasses, text_only=text_only)


@pytest.mark.parametrize(("target_hair", "source_hair"), [(2, 0), (3, 0), (0, 2)])
def test_two_correlated_attributes_are_swapped_once_each(correlated_world, target_hair, source_hair):
    w = correlated_world
    image = w["features"](torch.tensor([source_hair]), torch.tensor([0]))
    text = w["hair"][target_hair] - w["hair"].mean(0) + w["glasses"][1] - w["glasses"].mean(0)
    text = text + 0.8 * w["text_only"]
    found = w["bank"].attributes(text)
    assert len(found) == 2  # hair, then glasses: no third split on a doubly counted leftover
    # Each new subspace is orthogonal to the ones found before it ...
    (t1, h1), (t2, h2) = found
    assert float((h1.T @ h2).abs().max()) < 1e-4
    # ... so the grounded delta, read in each subspace, is that attribute's own swap and no more.
    grounded = w["bank"].ground(text[None], image)[0]
    for target, h in found:
        torch.testing.assert_close(h.T @ grounded, h.T @ (target - image[0]), atol=1e-5, rtol=1e-4)
    true = w["features"](torch.tensor([target_hair]), torch.tensor([1]))[0] - image[0]
    assert _cos(grounded, true) > 0.92
    for swap in (w["hair"][target_hair] - w["hair"][source_hair], w["glasses"][1] - w["glasses"][0]):
        assert 0.3 * float(true @ swap) < float(grounded @ swap) < 1.1 * float(true @ swap)


def test_shipped_toy_bank_keeps_the_subspaces_of_a_two_attribute_prompt_apart():
    """On the shipped bank the toy attributes are not independent, and the second split of these
    prompts overlaps the first unless it is orthogonalised (issue 31)."""
    from deltaedit.api import load_editor
    from deltaedit.toy.attributes import TWO_ATTRIBUTE_PROMPTS

    editor = load_editor("toy", backbone="gan")
    prompts = ["face with red hair and eyeglasses", "face with blond hair and a smile"]
    assert set(prompts) <= set(TWO_ATTRIBUTE_PROMPTS)
    delta_t, _ = editor.text_deltas(prompts, "face")
    for prompt, found in zip(prompts, editor.feature_bank.attributes_of_rows(delta_t.cpu())):
        assert len(found) >= 2, prompt
        spans = [h for _, h in found]
        for k, later in enumerate(spans):
            for earlier in spans[:k]:
                assert float((earlier.T @ later).abs().max()) < 1e-4, prompt
