"""The live re-edit on DeltaEdit-D (issue 28, part 3): a kept plan holds the inverted input, so a
new strength costs one DDIM decoding pass, with no new inversion and no text or mapper work. On the
toy model (shipped weights) and on the FFHQ path (official-format random weights and a tiny UNet)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit.api import load_editor
from deltaedit.pipelines.diffusion import DEFAULT_SCHEDULER_CONFIG, DiffusionBackbone
from deltaedit.pipelines.plans import moved_to

pytest.importorskip("open_clip")
pytest_plugins = ["fixtures_ffhq"]  # tiny_ffhq
from fixtures_ffhq import tiny_latents  # noqa: E402


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class Counted:
    """Counts the calls that a redraw must not make: inversions, mapper runs, text encodings."""

    def __init__(self, editor, monkeypatch):
        self.calls = {"inversion": 0, "mapper": 0, "text": 0}
        gan = editor.gan
        for name, owner, attr in (
            ("inversion", editor.backbone, "invert_source"),
            ("text", gan.clip, "text_embeddings"),
        ):
            real = getattr(owner, attr)
            monkeypatch.setattr(owner, attr, self._counting(name, real))
        self._hook = gan.mapper.register_forward_hook(lambda *_: self._add("mapper"))

    def _add(self, name):
        self.calls[name] += 1

    def _counting(self, name, real):
        def counted(*args, **kwargs):
            self._add(name)
            return real(*args, **kwargs)

        return counted

    def close(self):
        self._hook.remove()


def test_inverting_then_decoding_is_the_edit_bit_for_bit(toy_d):
    codes = toy_d.gan.sample(2)
    backbone: DiffusionBackbone = toy_d.backbone
    x0 = toy_d._input_image(codes)
    delta_s = torch.zeros(2, codes.s.shape[1])
    delta_s[0, :40], delta_s[1, -40:] = 0.5, -0.5
    # R(s) and each R(s') in one generator pass, as the editor renders them.
    renders = toy_d.render_styles(codes, torch.cat([codes.s, codes.s + 1.3 * delta_s]))
    rule = {"residual": "shift", "change_threshold": 0.2}
    whole = backbone.edit(x0, codes.s, delta_s, 1.3, steps=8, render=renders, depth=0.5, **rule)
    inversion = backbone.invert_source(x0, codes.s, 8, render=renders[:1], depth=0.5)
    halves = backbone.decode_inversion(inversion, delta_s, 1.3, render=renders, **rule)
    assert torch.equal(whole.edits, halves.edits) and torch.equal(whole.reconstruction, halves.reconstruction)
    assert (halves.edits - x0).abs().amax() > 0.05  # the Δs did change the picture


def test_a_kept_diffusion_plan_redraws_with_one_decoding_pass(toy_d, monkeypatch):
    codes = toy_d.gan.sample(5)
    request = dict(codes=codes, targets="face with eyeglasses", steps=10, refine_steps=0)
    plan = toy_d.plan(**request)
    first = toy_d.decode_plan(plan)
    full = toy_d.edit(**request, strength=2.0)
    counted = Counted(toy_d, monkeypatch)
    try:
        again = toy_d.decode_plan(plan, strength=2.0)
        zero = toy_d.decode_plan(plan, strength=0.0)
    finally:
        counted.close()
    assert counted.calls == {"inversion": 0, "mapper": 0, "text": 0}
    assert again.strength == 2.0 and "decoding" in again.timings
    assert np.abs(pixels(again.edited_images[0]) - pixels(full.edited_images[0])).max() <= 1
    assert np.abs(pixels(again.edited_images[0]) - pixels(first.edited_images[0])).mean() > 0.5
    assert np.array_equal(pixels(zero.edited_images[0]), pixels(zero.source_image))  # strength 0: the input


def test_the_service_redraws_a_diffusion_edit_from_a_plan_that_crossed_a_process(monkeypatch):
    """As on ZeroGPU: the kept plan is CPU tensors, pickled into the GPU worker and back."""
    from deltaedit import service

    try:
        view = service.edit("diffusion", "toy", target="face with bangs", seed=4, steps=10, keep_plan=True)
    except Exception as exc:
        pytest.skip(f"toy DeltaEdit-D unavailable: {exc}")
    plan = view.extra["plan"]
    assert plan.inversion.x_T.device.type == "cpu" and plan.delta_s.device.type == "cpu"
    token = service.PLANS.keep("toy", plan)
    assert service.PLANS.backbone(token) == "diffusion"
    shipped = pickle.loads(pickle.dumps(plan))
    redrawn = service.redraw_plan("toy", shipped, view.strength)
    assert np.array_equal(pixels(redrawn.edited_images[0]), pixels(view.edited_images[0]))
    stronger = service.redraw(token, 2.2)
    assert stronger.backbone == "diffusion" and stronger.extra["mapper_runs"] == 0
    assert "**DeltaEdit-D**" in stronger.summary and "inversion work" in stronger.summary
    assert np.abs(pixels(stronger.edited_images[0]) - pixels(view.edited_images[0])).mean() > 0.3
    service.PLANS.drop(token)


def test_moved_to_copies_every_tensor_and_leaves_the_original():
    from dataclasses import dataclass
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: torch.Tensor
        b: str

    @dataclass
    class Box:
        pair: Pair
        items: list
        table: dict

    box = Box(Pair(torch.ones(2), "x"), [torch.zeros(1)], {"t": torch.full((1,), 3.0)})
    moved = moved_to(box, "meta")
    assert moved.pair.a.device.type == "meta" and moved.pair.b == "x"
    assert moved.items[0].device.type == "meta" and moved.table["t"].device.type == "meta"
    assert box.pair.a.device.type == "cpu"  # the original keeps its tensors


def test_ffhq_diffusion_by_example_sweep_and_redraw(tiny_ffhq, monkeypatch):
    """DeltaEdit-D on the FFHQ path: official-format random G, CLIP and mapper, W+ latents as
    input, and a tiny untrained UNet (no FFHQ DeltaEdit-D weights exist yet)."""
    from deltaedit.nn.style_unet import StyleConditionedUNet
    from deltaedit.pipelines.diffusion_editor import DiffusionEditor

    gan = load_editor("ffhq", backbone="gan", device="cpu", weights_dir=tiny_ffhq.weights)
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=gan.layout.total, sample_size=16)
    mild = {**DEFAULT_SCHEDULER_CONFIG, "beta_end": 0.002}  # an untrained UNet stays well conditioned
    editor = DiffusionEditor(gan, DiffusionBackbone(unet, mild))
    w = tiny_latents(tiny_ffhq, seed=6)
    rng = np.random.default_rng(1)
    a, b = (Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(2))
    by_example = editor.edit(latents=w, example=(a, b), threshold=0.0, align=False, steps=4)
    assert by_example.targets == ["by example (A → B)"] and float(by_example.delta_s.abs().sum()) > 0
    sweep = editor.sweep(latents=w, targets="face with smile", count=3, threshold=0.0, steps=4)
    assert len(sweep.frames) == 3 and sweep.strengths[0] == 0.0
    plan = editor.plan(latents=w, targets="face with smile", threshold=0.0, steps=4)
    counted = Counted(editor, monkeypatch)
    try:
        again = editor.decode_plan(plan, strength=sweep.strengths[-1])
    finally:
        counted.close()
    assert counted.calls == {"inversion": 0, "mapper": 0, "text": 0}
    assert np.abs(pixels(again.edited_images[0]) - pixels(sweep.frames[-1])).max() <= 1


def test_a_bad_change_ramp_is_refused_before_the_inversion(toy_d, monkeypatch):
    from deltaedit.errors import InputError

    counted = Counted(toy_d, monkeypatch)
    try:
        with pytest.raises(InputError, match="change_ramp"):
            toy_d.plan(
                codes=toy_d.gan.sample(1), targets=["face with a smile"], steps=4, change_ramp=(0.5, 0.1)
            )
    finally:
        counted.close()
    assert counted.calls["inversion"] == 0
