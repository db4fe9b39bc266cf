"""DeltaEdit-G through the Python API (`deltaedit.load_editor`) on a tiny FFHQ-format domain.

The contract (issue 2): one shared editor per (domain, device, weights); photo or W+ sources; one
or several targets (several = one generator pass, equal to separate edits); source text,
strength, threshold; clear errors for bad input; re-edits do no CLIP work.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_ffhq import (
    FS3_FILE,
    GENERATOR_FILE,
    MAPPER_FILE,
    copy_weights,
    tiny_latents,
)
from PIL import Image

import deltaedit
from deltaedit import load_editor
from deltaedit.errors import InputError, WeightsError
from deltaedit.pipelines.gan import EditResult

pytest_plugins = ["fixtures_ffhq"]  # tiny_ffhq, ffhq_weights, ffhq_weights_with_e4e

PHOTO = "data/photos/aligned_face_256.jpg"


def editor_for(domain, weights=None):
    return load_editor("ffhq", backbone="gan", device="cpu", weights_dir=weights or domain.weights)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


@contextlib.contextmanager
def count_calls(module: torch.nn.Module):
    """Number of forward calls of `module` while the block runs (a list holding one int)."""
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def clip_work(editor):
    """Counts of CLIP text/image work: tower forwards and encode_text / encode_image calls."""
    model = editor.clip.model
    counts = {"encode_text": 0, "encode_image": 0}
    for name in counts:
        original = getattr(model, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(model, name, counted)  # an instance attribute shadows the method
    try:
        with count_calls(model.transformer) as text, count_calls(model.visual) as image:
            yield counts, text, image
    finally:
        for name in counts:
            delattr(model, name)  # back to the class methods


# ---- loading ---------------------------------------------------------------------------------
def test_load_editor_loads_once_and_shares(tiny_ffhq):
    a = editor_for(tiny_ffhq)
    b = load_editor("ffhq", "gan", "cpu", str(tiny_ffhq.weights))  # str or Path: same editor
    assert a is b
    assert deltaedit.load_editor is load_editor
    assert a.generator.size == tiny_ffhq.size
    with pytest.raises(InputError, match="backbone"):
        load_editor("ffhq", backbone="vae", weights_dir=tiny_ffhq.weights)
    with pytest.raises(InputError, match="domain"):
        load_editor("no-such-domain", weights_dir=tiny_ffhq.weights)


def test_clear_cache_forgets_the_editor_too(tiny_ffhq, tmp_path):
    """After replacing weight files and `models.clear_cache()`, load_editor serves the new ones."""
    from deltaedit import models

    folder = copy_weights(tiny_ffhq.weights, tmp_path / "weights")
    old = editor_for(tiny_ffhq, folder)
    ckpt = torch.load(folder / GENERATOR_FILE, weights_only=True)
    ckpt["g_ema"]["input.input"] = ckpt["g_ema"]["input.input"] + 1.0
    # Replaced, not rewritten in place: the loaded weights may be memory-mapped from the old file.
    torch.save(ckpt, folder / "new.pt")
    os.replace(folder / "new.pt", folder / GENERATOR_FILE)
    models.clear_cache()
    new = editor_for(tiny_ffhq, folder)
    assert new is not old
    torch.testing.assert_close(new.generator.input.input, old.generator.input.input + 1.0)


def test_generator_from_e4e_file_alone(tiny_ffhq):
    """Without stylegan2-ffhq-config-f.pt the generator comes from e4e's `decoder.` weights."""
    assert not (tiny_ffhq.e4e_only / GENERATOR_FILE).exists()
    full, e4e_only = editor_for(tiny_ffhq), editor_for(tiny_ffhq, tiny_ffhq.e4e_only)
    assert full is not e4e_only
    for (k, a), (k2, b) in zip(full.generator.state_dict().items(), e4e_only.generator.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    w = tiny_latents(tiny_ffhq, seed=21)
    r1 = full.edit(latents=w, targets="face with a hat")
    r2 = e4e_only.edit(latents=w, targets="face with a hat")
    np.testing.assert_array_equal(pixels(r1.edited_images[0]), pixels(r2.edited_images[0]))


# ---- the result ------------------------------------------------------------------------------
def test_edit_latents_result_carries_images_and_codes(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=1)
    result = editor.edit(latents=w, targets="face with smile")
    assert isinstance(result, EditResult)
    size = (tiny_ffhq.size, tiny_ffhq.size)
    assert result.source_image.size == size and result.source_image.mode == "RGB"
    assert len(result.edited_images) == 1 and result.edited_images[0].size == size
    assert result.targets == ["face with smile"] and result.source_text == "face"  # the default
    assert result.strength == 1.0 and result.threshold == pytest.approx(0.03)
    torch.testing.assert_close(result.w_plus, w[None])
    n_s = result.s_source.shape[1]
    assert result.s_edited.shape == (1, n_s) and result.delta_s.shape == (1, n_s)
    assert torch.isfinite(result.s_edited).all()
    # The edit moved the image, and the source is the unedited decode of the latents.
    assert np.abs(pixels(result.edited_images[0]) - pixels(result.source_image)).mean() > 1
    again = editor.edit(latents=w[None], targets="face with smile")  # [1, n, d] works too
    np.testing.assert_array_equal(pixels(again.source_image), pixels(result.source_image))


def test_edit_photo_without_alignment(tiny_ffhq, shared_dir):
    editor = editor_for(tiny_ffhq)
    photo = shared_dir / PHOTO
    result = editor.edit(image=photo, align=False, targets=["face with bangs"])
    assert result.source_image.size == (tiny_ffhq.size, tiny_ffhq.size)
    assert result.w_plus.shape == (1, tiny_ffhq.n_latent, tiny_ffhq.style_dim)
    # Bytes and a PIL image of the same photo give the same codes.
    from_bytes = editor.edit(image=photo.read_bytes(), align=False, targets=["face with bangs"])
    torch.testing.assert_close(from_bytes.s_edited, result.s_edited)
    from_pil = editor.edit(image=Image.open(photo), align=False, targets=["face with bangs"])
    torch.testing.assert_close(from_pil.s_edited, result.s_edited)


def test_several_targets_share_one_generator_pass_and_equal_single_edits(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=2)
    targets = ["face with blond hair", "face with beard", "chubby face"]
    singles = [editor.edit(latents=w, targets=t) for t in targets]  # also caches the source
    with count_calls(editor.generator.input) as passes:
        batched = editor.edit(latents=w, targets=targets)
    assert passes[0] == 1, "several targets must be decoded in one batched generator pass"
    assert batched.targets == targets and len(batched.edited_images) == 3
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched.delta_s[i], single.delta_s[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.edited_tensor[i], single.edited_tensor[0], atol=1e-4, rtol=1e-4)
        diff = np.abs(pixels(batched.edited_images[i]) - pixels(single.edited_images[0]))
        assert diff.max() <= 1
    # Each target got its own edit.
    assert not torch.allclose(batched.edited_tensor[0], batched.edited_tensor[1])
    # A multi-line string is one target per line.
    lines = editor.edit(latents=w, targets="face with blond hair\nface with beard\n")
    assert lines.targets == targets[:2]


# ---- strength, threshold, source text ------------------------------------------------------
def test_strength_scales_the_style_delta(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=4)
    one = editor.edit(latents=w, targets="face with red hair", strength=1.0)
    two = editor.edit(latents=w, targets="face with red hair", strength=2.0)
    neg = editor.edit(latents=w, targets="face with red hair", strength=-0.5)
    zero = editor.edit(latents=w, targets="face with red hair", strength=0.0)
    step = one.s_edited - one.s_source
    assert step.abs().max() > 0
    torch.testing.assert_close(two.s_edited - two.s_source, 2 * step)
    torch.testing.assert_close(neg.s_edited - neg.s_source, -0.5 * step)
    np.testing.assert_array_equal(pixels(zero.edited_images[0]), pixels(zero.source_image))
    for bad in (float("nan"), float("inf"), "strong", 1e6):
        with pytest.raises(InputError, match="strength"):
            editor.edit(latents=w, targets="face with red hair", strength=bad)


def authors_relevant(fs3: np.ndarray, clip, target: str, source: str) -> np.ndarray:
    """|fs3 · Δt_raw| with Δt from full-context encode_text over the 79 templates."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES if t("{}") != "a photo of many {}."]

    def emb(phrase):
        import open_clip

        with torch.no_grad():
            e = clip.model.encode_text(open_clip.tokenize([t.format(phrase) for t in templates]))
        e = e / e.norm(dim=-1, keepdim=True)
        return (e.mean(0) / e.mean(0).norm()).numpy()

    return np.abs(fs3 @ (emb(target) - emb(source)))


def test_threshold_zeroes_exactly_the_irrelevant_channels(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=5)
    target = "face with eyeglasses"
    relevance = authors_relevant(np.load(tiny_ffhq.weights / FS3_FILE), editor.clip, target, "face")
    everything = editor.edit(latents=w, targets=target, threshold=0.0)
    assert (everything.delta_s != 0).float().mean() > 0.99  # nothing removed
    for threshold in (0.02, 0.05):
        result = editor.edit(latents=w, targets=target, threshold=threshold)
        zeroed = (result.delta_s[0] == 0).numpy()
        expected = relevance < threshold
        assert 0 < expected.sum() < expected.size
        np.testing.assert_array_equal(zeroed, expected)
        kept = ~expected
        torch.testing.assert_close(result.delta_s[0][kept], everything.delta_s[0][kept])
    nothing = editor.edit(latents=w, targets=target, threshold=1.0)
    assert relevance.max() < 1.0 and torch.all(nothing.delta_s == 0)
    np.testing.assert_array_equal(pixels(nothing.edited_images[0]), pixels(nothing.source_image))
    for bad in (-0.1, 2.0, float("nan")):
        with pytest.raises(InputError, match="threshold"):
            editor.edit(latents=w, targets=target, threshold=bad)


def test_source_text_defaults_to_face_and_changes_the_direction(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=6)
    default = editor.edit(latents=w, targets="smiling face")
    explicit = editor.edit(latents=w, targets="smiling face", source="face")
    other = editor.edit(latents=w, targets="smiling face", source="sad face")
    assert default.source_text == "face" and other.source_text == "sad face"
    torch.testing.assert_close(default.s_edited, explicit.s_edited)
    assert not torch.allclose(default.delta_s, other.delta_s)


# ---- edge cases ------------------------------------------------------------------------------
def test_target_equal_to_source_is_no_edit_with_notice(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=7)
    for target, source in (("face", None), ("a person", "a person")):
        result = editor.edit(latents=w, targets=target, source=source, threshold=0.0)
        assert torch.all(result.delta_s == 0) and torch.isfinite(result.s_edited).all()
        np.testing.assert_array_equal(pixels(result.edited_images[0]), pixels(result.source_image))
        assert any("nothing to edit" in n or "equals" in n for n in result.notices), result.notices


def test_prompt_over_77_tokens_is_truncated_with_notice(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=8)
    words = " ".join(["a"] * 90)  # 90 tokens in 180 characters: within the 300-character line limit
    a = editor.edit(latents=w, targets=f"face with {words} long hair")
    b = editor.edit(latents=w, targets=f"face with {words} short beard")
    assert any("too long" in n or "trunc" in n or "cut" in n for n in a.notices), a.notices
    assert torch.isfinite(a.s_edited).all()
    # Only the first 77 tokens count: prompts that differ after them give the same edit.
    np.testing.assert_array_equal(pixels(a.edited_images[0]), pixels(b.edited_images[0]))


@pytest.mark.parametrize("targets", ["", "   ", [], ["", "  "], None])
def test_empty_prompt_is_input_error(tiny_ffhq, targets):
    editor = editor_for(tiny_ffhq)
    with pytest.raises(InputError, match="empty"):
        editor.edit(latents=tiny_latents(tiny_ffhq), targets=targets)


def bad_latents(domain) -> dict[str, torch.Tensor]:
    n, d = domain.n_latent, domain.style_dim
    nan = torch.zeros(n, d)
    nan[3, 4] = float("nan")
    inf = torch.zeros(n, d)
    inf[0, 0] = float("inf")
    return {
        "too few rows": torch.zeros(n - 1, d),
        "too wide": torch.zeros(n, d + 1),
        "a batch of two": torch.zeros(2, n, d),
        "flat": torch.zeros(n * d),
        "nan": nan,
        "inf": inf,
    }


def test_bad_latents_are_input_errors(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    for what, latents in bad_latents(tiny_ffhq).items():
        with pytest.raises(InputError) as err:
            editor.edit(latents=latents, targets="face with smile")
        message = str(err.value)
        assert "NaN" in message or "shape" in message, (what, message)


def test_unreadable_images_are_input_errors(tiny_ffhq, shared_dir, tmp_path):
    editor = editor_for(tiny_ffhq)
    data = (shared_dir / PHOTO).read_bytes()
    cases = {
        "truncated.jpg": data[: len(data) // 3],
        "notes.png": b"this is not an image\n",
        "empty.jpg": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError, match=name):
            editor.edit(image=path, align=False, targets="face with smile")
    with pytest.raises(InputError, match="does not exist"):
        editor.edit(image=tmp_path / "missing.jpg", align=False, targets="face with smile")
    with pytest.raises(InputError, match="exactly one"):
        editor.edit(image=shared_dir / PHOTO, latents=tiny_latents(tiny_ffhq), targets="face with smile")


# ---- caching -----------------------------------------------------------------------------------
def test_re_edit_with_other_strength_or_threshold_does_no_clip_work(tiny_ffhq):
    editor = editor_for(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=9)
    with clip_work(editor) as (calls, text, image):
        first = editor.edit(latents=w, targets="face with freckles")
    assert text[0] >= 1 and image[0] == 1  # embedded the new phrase, featurised the new source
    with clip_work(editor) as (calls, text, image):
        second = editor.edit(latents=w, targets="face with freckles", strength=1.7, threshold=0.01)
        third = editor.edit(latents=w, targets="face with freckles", strength=0.3, threshold=0.08)
    assert calls == {"encode_text": 0, "encode_image": 0} and text[0] == 0 and image[0] == 0
    assert not torch.equal(second.s_edited, first.s_edited) and not torch.equal(
        third.s_edited, first.s_edited
    )
    # A new target on the same source embeds text but does not featurise the source again.
    with clip_work(editor) as (calls, text, image):
        editor.edit(latents=w, targets="face with a scar")
    assert text[0] >= 1 and image[0] == 0 and calls["encode_image"] == 0


# ---- weight files ------------------------------------------------------------------------------
def test_weight_file_with_wrong_keys_or_shapes_names_file_and_key(tiny_ffhq, tmp_path):
    bad_keys = copy_weights(tiny_ffhq.weights, tmp_path / "bad-keys")
    state = torch.load(bad_keys / MAPPER_FILE, weights_only=True)
    first = next(iter(state))
    state["renamed." + first] = state.pop(first)
    torch.save(state, bad_keys / MAPPER_FILE)
    with pytest.raises(WeightsError) as err:
        editor_for(tiny_ffhq, bad_keys)
    assert MAPPER_FILE in str(err.value) and first in str(err.value)

    bad_shape = copy_weights(tiny_ffhq.weights, tmp_path / "bad-shape")
    ckpt = torch.load(bad_shape / GENERATOR_FILE, weights_only=True)
    ckpt["g_ema"]["input.input"] = torch.zeros(1, 3, 4, 4)
    torch.save(ckpt, bad_shape / GENERATOR_FILE)
    with pytest.raises(WeightsError) as err:
        editor_for(tiny_ffhq, bad_shape)
    assert GENERATOR_FILE in str(err.value) and "input.input" in str(err.value)

    bad_fs3 = copy_weights(tiny_ffhq.weights, tmp_path / "bad-fs3")
    fs3 = np.load(bad_fs3 / FS3_FILE)
    np.save(bad_fs3 / FS3_FILE, fs3[:-5])
    with pytest.raises(WeightsError, match=FS3_FILE):
        editor_for(tiny_ffhq, bad_fs3)


def test_truncated_weight_file_is_weights_error(tiny_ffhq, tmp_path):
    folder = copy_weights(tiny_ffhq.weights, tmp_path / "truncated")
    path: Path = folder / MAPPER_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=MAPPER_FILE):
        editor_for(tiny_ffhq, folder)


def test_timings_cover_every_stage_and_the_source_picture_is_made_once(tiny_ffhq, monkeypatch):
    import deltaedit.pipelines.results as results  # where an edit's pictures are made

    editor = editor_for(tiny_ffhq)
    codes = editor.encode_latents(tiny_latents(tiny_ffhq, seed=31))
    converted = []
    real = results.tensors_to_pixels
    monkeypatch.setattr(results, "tensors_to_pixels", lambda x: converted.append(x.shape[0]) or real(x))
    first = editor.edit(codes=codes, targets=["face with smile"], threshold=0.0)
    second = editor.edit(codes=codes, targets=["face with smile", "old face"], threshold=0.0)
    stages = {"encode", "text", "mapper", "decode", "transfer", "pil"}
    for result in (first, second):
        assert stages <= set(result.timings)
        parts = sum(result.timings[k] for k in stages)
        assert result.timings["total"] == pytest.approx(parts, abs=5e-3)
    # The first edit transfers the source with its edit; the re-edit only its two edits.
    assert converted == [2, 2]
    assert pixels(second.source_image).tolist() == pixels(first.source_image).tolist()
    assert second.source_image is not first.source_image  # callers get their own copy
    assert second.source_image is not codes.image_pil
