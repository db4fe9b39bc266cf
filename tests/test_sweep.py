"""The strength sweep and the live re-edit (issue 28, parts 2 and 3, library and CLI), toy DeltaEdit-G.

A sweep is one plan (text, mapper, refinement once) decoded at several strengths in one batch; a
re-edit decodes a kept plan at a new strength. Both must give the same pictures as full edits at
those strengths, and must not touch the text encoder or the mapper again.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deltaedit import cli
from deltaedit.errors import InputError
from deltaedit.imageio import save_animation
from deltaedit.toy.render import render_batch

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def editor(toy_g):
    return toy_g


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def forbid_text_and_mapper(editor, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder or the mapper ran again")

    monkeypatch.setattr(editor.clip, "text_embeddings", refuse)
    monkeypatch.setattr(editor.clip, "text_delta", refuse)
    monkeypatch.setattr(editor, "mapper", refuse)


def test_a_sweep_is_the_edit_at_each_strength_from_zero_to_twice_the_default(editor, monkeypatch):
    codes = editor.sample(3)
    target = "face with eyeglasses"
    default = editor.config.defaults_for("gan").strength
    sweep = editor.sweep(codes=codes, targets=target)
    assert sweep.strengths == pytest.approx(list(np.linspace(0, 2 * default, 7)))
    assert len(sweep.frames) == 7 and sweep.target == target
    edit = editor.edit(codes=codes, targets=target)
    assert np.array_equal(pixels(sweep.frames[0]), pixels(edit.source_image))  # strength 0: the source
    assert np.abs(pixels(sweep.frames[3]) - pixels(edit.edited_images[0])).max() <= 1  # the default
    # The picture moves further from the source as the strength grows.
    distance = [np.abs(pixels(f) - pixels(sweep.frames[0])).mean() for f in sweep.frames]
    assert distance == sorted(distance) and distance[-1] > distance[3] > 1.0


def test_a_kept_plan_redraws_at_a_new_strength_without_text_or_mapper(editor, monkeypatch):
    codes = editor.sample(4)
    plan = editor.plan(codes=codes, targets="face with a smile", refine_steps=0)
    full = editor.edit(codes=codes, targets="face with a smile", refine_steps=0, strength=1.6)
    forbid_text_and_mapper(editor, monkeypatch)
    again = editor.decode_plan(plan, strength=1.6)
    assert np.abs(pixels(again.edited_images[0]) - pixels(full.edited_images[0])).max() <= 1
    assert again.strength == 1.6 and set(again.timings) >= {"decode", "pil"}
    zero = editor.decode_plan(plan, strength=0)
    assert np.array_equal(pixels(zero.edited_images[0]), pixels(zero.source_image))
    with pytest.raises(InputError, match="strength"):
        editor.decode_plan(plan, strength=float("nan"))
    monkeypatch.undo()
    sweep = editor.sweep(codes=codes, targets="face", strengths=[0.5, 1.0])  # nothing to change
    assert all(np.array_equal(pixels(f), pixels(zero.source_image)) for f in sweep.frames)


def test_bad_sweeps_are_refused(editor):
    codes = editor.sample(5)
    with pytest.raises(InputError, match="count"):
        editor.sweep(codes=codes, targets="face with bangs", count=1)
    with pytest.raises(InputError, match="strength must be between"):
        editor.sweep(codes=codes, targets="face with bangs", strengths=[0.5, 99])


def test_cli_writes_the_frames_and_a_looping_animation(editor, tmp_path):
    images, _ = render_batch(1, 9)
    face = tmp_path / "face.png"
    Image.fromarray(images[0]).save(face)
    out = tmp_path / "sweep.png"
    argv = ["edit", "--domain", "toy", "--image", str(face), "--no-align", "--target", "face with eyeglasses"]
    assert cli.main([*argv, "--sweep", "5", "--out", str(out)]) == 0
    frames = [Image.open(tmp_path / f"sweep_{i}.png") for i in range(5)]
    with Image.open(tmp_path / "sweep.gif") as gif:
        assert gif.n_frames == 8  # forward and back: 5 + 3
    assert np.abs(pixels(frames[-1].convert("RGB")) - pixels(frames[0].convert("RGB"))).mean() > 1.0
    # DeltaEdit-D sweeps too: one inversion, the strengths decoded as rows of one DDIM pass.
    out_d = tmp_path / "d.png"
    assert cli.main([*argv, "--sweep", "3", "--backbone", "diffusion", "--steps", "10", "--out", str(out_d)]) == 0
    d_frames = [pixels(Image.open(tmp_path / f"d_{i}.png").convert("RGB")) for i in range(3)]
    assert np.abs(d_frames[2] - d_frames[0]).mean() > 1.0


def test_animations_are_gif_or_webp_and_written_whole(tmp_path):
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    for name in ("a.gif", "a.webp"):
        path = save_animation(frames, tmp_path / name)
        with Image.open(path) as anim:
            assert anim.n_frames == 6
            anim.seek(3)
            assert anim.convert("RGB").getpixel((0, 0))[0] == pytest.approx(120, abs=8)
    with pytest.raises(InputError, match=".gif or .webp"):
        save_animation(frames, tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.webp"]  # no temp files left


def test_a_diffusion_sweep_is_its_edit_at_each_strength():
    from deltaedit.api import load_editor

    try:
        d = load_editor("toy", backbone="diffusion", device="cpu")
    except Exception as exc:
        pytest.skip(f"toy DeltaEdit-D weights unavailable: {exc}")
    codes = d.gan.sample(3)
    default = d.config.defaults_for("diffusion").strength
    sweep = d.sweep(codes=codes, targets="face with eyeglasses\nface with bangs", count=3, steps=10)
    assert sweep.strengths == pytest.approx([0.0, default, 2 * default]) and sweep.target == "face with eyeglasses"
    edit = d.edit(codes=codes, targets="face with eyeglasses", steps=10)
    assert np.abs(pixels(sweep.frames[0]) - pixels(edit.source_image)).max() <= 1
    assert np.abs(pixels(sweep.frames[1]) - pixels(edit.edited_images[0])).max() <= 1
    assert np.abs(pixels(sweep.frames[2]) - pixels(sweep.frames[0])).mean() > 1.0


def test_a_redraw_times_its_own_decode_not_the_wait_since_the_plan(editor):
    import time

    plan = editor.plan(codes=editor.sample(6), targets="face with bangs", refine_steps=0)
    laps = dict(plan.clock.timings)
    time.sleep(0.5)  # the page sat idle before the slider moved
    again = editor.decode_plan(plan, strength=1.2)
    assert again.timings["decode"] < 0.5
    assert plan.clock.timings == laps  # the kept plan's clock is not moved by a redraw
