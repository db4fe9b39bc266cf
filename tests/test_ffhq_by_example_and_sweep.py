"""Edits by example, the sweep and the live re-edit on the FFHQ path (issue 28), with random weights
in the official formats (tests/fixtures_ffhq.py): the same code as the real checkpoints run."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from deltaedit.api import load_editor

pytest_plugins = ["fixtures_ffhq"]  # tiny_ffhq
from fixtures_ffhq import tiny_latents  # noqa: E402


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def noise_picture(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_ffhq_edits_by_example_pair_and_reference(tiny_ffhq):
    editor = load_editor("ffhq", backbone="gan", device="cpu", weights_dir=tiny_ffhq.weights)
    w = tiny_latents(tiny_ffhq, seed=3)
    a, b = noise_picture(1), noise_picture(2)
    result = editor.edit(latents=w, example=(a, b), reference=b, threshold=0.0, align=False)
    assert result.targets == ["by example (A → B)", "toward the reference"]
    assert all(float(row.abs().sum()) > 0 for row in result.delta_s)
    size = editor.generator.size
    assert all(img.size == (size, size) for img in result.edited_images)
    assert np.abs(pixels(result.edited_images[0]) - pixels(result.source_image)).mean() > 0.1
    same = editor.edit(latents=w, example=(a, a.copy()), threshold=0.0, align=False)
    assert np.array_equal(pixels(same.edited_images[0]), pixels(same.source_image))
    assert any("look the same" in n for n in same.notices)


def test_ffhq_sweep_and_live_re_edit_decode_without_text_or_mapper(tiny_ffhq):
    editor = load_editor("ffhq", backbone="gan", device="cpu", weights_dir=tiny_ffhq.weights)
    w = tiny_latents(tiny_ffhq, seed=4)
    sweep = editor.sweep(latents=w, targets="face with smile", count=5, threshold=0.0)
    assert len(sweep.frames) == 5 and sweep.strengths[0] == 0.0
    plan = editor.plan(latents=w, targets="face with smile", threshold=0.0)
    source = editor.decode_plan(plan, strength=0.0)
    assert np.array_equal(pixels(sweep.frames[0]), pixels(source.source_image))
    assert np.abs(pixels(sweep.frames[-1]) - pixels(sweep.frames[0])).mean() > 0.1
    calls = {"mapper": 0, "text": 0}
    mapper_hook = editor.mapper.register_forward_hook(lambda *_: calls.__setitem__("mapper", calls["mapper"] + 1))
    real_text = editor.clip.text_embeddings

    def counted_text(*args, **kwargs):
        calls["text"] += 1
        return real_text(*args, **kwargs)

    editor.clip.text_embeddings = counted_text
    try:
        again = editor.decode_plan(plan, strength=1.7)
    finally:
        mapper_hook.remove()
        del editor.clip.text_embeddings
    assert calls == {"mapper": 0, "text": 0}
    full = editor.edit(latents=w, targets="face with smile", threshold=0.0, strength=1.7)
    assert np.abs(pixels(again.edited_images[0]) - pixels(full.edited_images[0])).max() <= 1
    torch.testing.assert_close(again.s_edited, full.s_edited)
