"""Toy faces: attribute schema, captions, prompt parsing and the procedural renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaedit.errors import InputError
from deltaedit.toy.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    EXTRA_PROMPTS,
    NEUTRAL_TEXT,
    SOURCE_TARGET_PAIRS,
    TWO_ATTRIBUTE_PROMPTS,
    FaceAttributes,
    Jitter,
    caption,
    captions,
    prompt_target,
    prompt_targets,
    standard_prompt,
    standard_prompts,
)
from deltaedit.toy.render import images_to_tensor, render, render_batch, save_contact_sheet, tensor_to_images

BASE = FaceAttributes()  # no jitter: attribute changes are the only differences


def _pixels(attrs: FaceAttributes) -> np.ndarray:
    return np.asarray(render(attrs), dtype=np.int16)


def _changed(a: FaceAttributes, b: FaceAttributes, threshold: int = 24) -> np.ndarray:
    return np.abs(_pixels(a) - _pixels(b)).max(axis=2) > threshold


# ---- attributes ------------------------------------------------------------------------------------


def test_sample_is_deterministic_and_covers_every_value():
    a = [FaceAttributes.sample(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    many = [FaceAttributes.sample(rng) for _ in range(300)]
    for name, values in ATTRIBUTES.items():
        assert {getattr(f, name) for f in many} == set(values)
    assert len({f.jitter for f in many}) == 300  # jitter varies per face


def test_vector_round_trip_and_excludes_jitter():
    rng = np.random.default_rng(1)
    for _ in range(20):
        f = FaceAttributes.sample(rng)
        v = f.to_vector()
        assert v.shape == (len(ATTRIBUTE_NAMES),)
        assert FaceAttributes.from_vector(v, f.jitter) == f
        assert np.array_equal(f.replace(jitter=Jitter()).to_vector(), v)


def test_unknown_value_is_an_input_error():
    with pytest.raises(InputError, match="hair_color"):
        FaceAttributes(hair_color="green")


def test_captions_mention_only_true_attributes():
    rng = np.random.default_rng(0)
    faces = [FaceAttributes.sample(rng) for _ in range(200)]
    texts = captions(faces, seed=5)
    assert texts == captions(faces, seed=5)  # deterministic given the seed
    assert len(set(texts)) > 150  # varied
    mentioned = set()
    for face, text in zip(faces, texts):
        said = prompt_targets(text)  # captions use the prompt vocabulary
        mentioned |= set(said)
        for name, value in said.items():
            assert getattr(face, name) == value, (text, face)
    assert mentioned == set(ATTRIBUTE_NAMES)


def test_caption_names_everything_when_asked_often_enough():
    face = FaceAttributes(hair_color="red", eyeglasses="yes", smile="yes", face_width="chubby")
    rng = np.random.default_rng(0)
    texts = [caption(face, rng) for _ in range(100)]
    assert any(
        prompt_targets(t).items() >= {"hair_color": "red", "eyeglasses": "yes", "smile": "yes"}.items()
        for t in texts
    )
    assert any(t.startswith("chubby face") for t in texts)
    assert all("eyes" not in t and "bangs" not in t for t in texts)  # absent attributes never said


# ---- prompts ---------------------------------------------------------------------------------------


def test_every_standard_prompt_round_trips():
    prompts = standard_prompts(include_clothes_and_background=True)
    for name, values in ATTRIBUTES.items():
        for value in values:
            try:
                p = standard_prompt(name, value)
            except InputError:
                continue
            assert p in prompts
            assert prompt_target(p) == (name, value)
    assert "face with blond hair" in standard_prompts()
    assert prompt_target("chubby face") == ("face_width", "chubby")
    assert prompt_target("face with smile") == prompt_target("face with a smile") == ("smile", "yes")
    for p in EXTRA_PROMPTS:
        assert len(prompt_targets(p)) == 1


def test_binary_absent_states_and_default_width_have_no_prompt():
    for name in ("bangs", "smile", "eyeglasses", "big_eyes"):
        with pytest.raises(InputError):
            standard_prompt(name, "no")
    with pytest.raises(InputError):
        standard_prompt("face_width", "normal")


def test_pairs_and_two_attribute_prompts_parse():
    for source, target in SOURCE_TARGET_PAIRS:
        (sa, sv), (ta, tv) = prompt_target(source), prompt_target(target)
        assert sa == ta and sv != tv
    for p in TWO_ATTRIBUTE_PROMPTS:
        assert len(prompt_targets(p)) == 2
    assert prompt_targets("face with red hair and eyeglasses") == {"hair_color": "red", "eyeglasses": "yes"}
    assert prompt_targets(NEUTRAL_TEXT) == {}


@pytest.mark.parametrize("bad", ["face with a hat", "face with red hair and blond hair", "dog"])
def test_bad_prompts_are_input_errors(bad):
    with pytest.raises(InputError):
        prompt_targets(bad)
    with pytest.raises(InputError):
        prompt_target("face with red hair and eyeglasses")  # two attributes, not one


# ---- renderer --------------------------------------------------------------------------------------


def test_render_is_rgb_and_deterministic():
    img = render(BASE)
    assert img.mode == "RGB" and img.size == (64, 64)
    a, attrs_a = render_batch(6, seed=7)
    b, attrs_b = render_batch(6, seed=7)
    c, _ = render_batch(6, seed=8)
    assert a.dtype == np.uint8 and a.shape == (6, 64, 64, 3)
    assert np.array_equal(a, b) and attrs_a == attrs_b
    assert not np.array_equal(a, c)
    assert render(BASE, size=32).size == (32, 32)


def test_tensor_output_in_range_and_round_trips():
    imgs, _ = render_batch(3, seed=0)
    t, _ = render_batch(3, seed=0, as_tensor=True)
    assert t.shape == (3, 3, 64, 64) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_images(t), imgs)
    assert torch.equal(images_to_tensor(imgs), t)


def _rows_cols(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max(), xs.min(), xs.max()


# (changes, region the difference must stay inside: y0, y1, x0, x1 in pixels of a 64 image)
LOCAL_EDITS = {
    "eyeglasses": ({"eyeglasses": "yes"}, (22, 38, 14, 50)),
    "big_eyes": ({"big_eyes": "yes"}, (24, 36, 20, 44)),
    "smile": ({"smile": "yes"}, (33, 46, 24, 40)),
    "bangs": ({"bangs": "yes"}, (17, 28, 17, 47)),
}


@pytest.mark.parametrize("name", list(LOCAL_EDITS))
def test_local_attributes_change_only_their_region(name):
    changes, (y0, y1, x0, x1) = LOCAL_EDITS[name]
    mask = _changed(BASE, BASE.replace(**changes))
    assert mask.sum() >= 15, "the attribute must be visible at 64 px"
    top, bottom, left, right = _rows_cols(mask)
    assert y0 <= top and bottom <= y1 and x0 <= left and right <= x1, (top, bottom, left, right)


@pytest.mark.parametrize(
    "changes",
    [
        {"hair_color": "blond"},
        {"hair_color": "red"},
        {"hair_color": "brown"},
        {"skin_tone": "pale"},
        {"skin_tone": "tanned"},
        {"face_width": "chubby"},
        {"face_width": "thin"},
        {"clothes_color": "orange"},
        {"background_color": "pink"},
    ],
)
def test_every_other_attribute_visibly_changes_pixels(changes):
    mask = _changed(BASE, BASE.replace(**changes))
    assert mask.sum() >= 40


def test_region_attributes_touch_the_expected_parts():
    # Clothes live in the bottom rows, the background reaches the corners, hair not below the jaw.
    clothes = _changed(BASE, BASE.replace(clothes_color="green"))
    assert _rows_cols(clothes)[0] >= 48
    background = _changed(BASE, BASE.replace(background_color="white"))
    assert background[0, 0] and background[0, 63] and not background[32, 32]
    hair = _changed(BASE, BASE.replace(hair_color="blond"))
    assert _rows_cols(hair)[1] < 46 and not hair[30, 32]  # the face centre stays


def test_jitter_moves_the_face_but_keeps_attributes():
    moved = BASE.replace(jitter=Jitter(angle=8, dx=0.04, dy=-0.04, scale=1.08))
    assert _changed(BASE, moved).sum() > 100
    assert np.array_equal(moved.to_vector(), BASE.to_vector())


def test_bad_render_size_is_an_input_error():
    with pytest.raises(InputError):
        render(BASE, size=4)


def test_contact_sheet(tmp_path):
    from PIL import Image

    path = save_contact_sheet(tmp_path / "sheet.png", n=4, seed=0)
    sheet = Image.open(path)
    assert sheet.size[0] > 128 and sheet.size[1] > 128
