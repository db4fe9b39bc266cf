"""The optional CLIP-guided refinement of Δs (`deltaedit.refine`), on the shipped toy weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit import cli, load_editor, models
from deltaedit.errors import InputError
from deltaedit.nn.stylespace import decode_s
from deltaedit.refine import DEFAULT_PUSH
from deltaedit.toy.render import render_batch

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toy"
pytestmark = pytest.mark.skipif(
    not (ASSETS / "mapper.safetensors").is_file(), reason="the toy weights are not in assets/toy"
)
TARGETS = ["face with red hair", "face with a smile", "face"]  # the last one is no edit


@pytest.fixture(scope="module")
def editor():
    models.clear_cache()
    yield load_editor("toy", backbone="gan")
    models.clear_cache()


@pytest.fixture(scope="module")
def faces(editor):
    images, _ = render_batch(3, seed=4242)
    return [editor.encode_image(Image.fromarray(im), align=False) for im in images]


def objective(editor, codes, delta_s, delta_t) -> torch.Tensor:
    """The refinement's loss per target, evaluated independently: with the editor's feature bank
    |Δi − g|² (g the grounded delta), without one |Δi across d|² − push · Δi·d."""
    G, clip, layout = editor.generator, editor.clip, editor.layout
    with torch.no_grad():
        batch = torch.cat([codes.s, codes.s + delta_s])
        f = clip.image_features(decode_s(G, layout.split(batch), codes.w_plus.expand(len(batch), -1, -1)))
    f = f / f.norm(dim=-1, keepdim=True)
    delta_i = f[1:] - f[:1]
    if editor.feature_bank is not None:
        return (delta_i - editor.feature_bank.ground(delta_t, f[:1])).pow(2).sum(-1)
    d = delta_t / delta_t.norm(dim=-1, keepdim=True)
    along = (delta_i * d).sum(-1)
    return (delta_i - along[:, None] * d).pow(2).sum(-1) - DEFAULT_PUSH * along


@pytest.fixture(params=["grounded", "text direction"])
def refining_editor(request, editor):
    """The toy editor with its feature bank (grounded target) and without (the text's direction)."""
    bank = editor.feature_bank
    assert bank is not None
    if request.param == "text direction":
        editor.feature_bank = None
    yield editor
    editor.feature_bank = bank


def test_refinement_lowers_its_objective_and_keeps_the_selection(refining_editor, faces):
    editor = refining_editor
    delta_t, _ = editor.text_deltas(TARGETS[:2], "face")
    params = dict(editor.generator.named_parameters())
    for codes in faces:
        plain = editor.style_deltas(codes, delta_t, threshold=0.1)
        refined = editor.refined_style_deltas(codes, delta_t, plain, strength=1.0, steps=10)
        assert (objective(editor, codes, refined, delta_t) < objective(editor, codes, plain, delta_t)).all()
        assert not torch.equal(refined, plain)
        assert ((refined != 0) <= (plain != 0)).all()  # only channels the relevance selection kept
    assert all(p.grad is None for p in params.values())  # inputs get gradients, weights never


def test_edit_with_refinement_changes_the_edit_not_the_no_edit_row(editor, faces):
    codes = faces[0]
    plain = editor.edit(codes=codes, targets=TARGETS, refine_steps=0)
    refined = editor.edit(codes=codes, targets=TARGETS, refine_steps=5)
    assert "refine" in refined.timings and "refine" not in plain.timings
    assert not torch.equal(refined.delta_s[:2], plain.delta_s[:2])
    assert torch.count_nonzero(refined.delta_s[2]) == 0  # target == source stays the source
    assert np.array_equal(np.asarray(refined.edited_images[2]), np.asarray(plain.edited_images[2]))
    zero = editor.edit(codes=codes, targets=TARGETS[:1], refine_steps=5, strength=0.0)
    assert np.array_equal(np.asarray(zero.edited_images[0]), np.asarray(zero.source_image))


@pytest.mark.parametrize("steps", [-1, 201, 2.5, "many"])
def test_bad_refine_steps_are_input_errors(editor, faces, steps):
    with pytest.raises(InputError, match="refine_steps"):
        editor.edit(codes=faces[0], targets=TARGETS[:1], refine_steps=steps)


def test_diffusion_backbone_applies_the_same_refined_delta(editor, faces):
    diffusion = load_editor("toy", backbone="diffusion")
    codes = faces[1]
    d = diffusion.edit(codes=codes, targets=TARGETS[:1], steps=2, refine_steps=3)
    g = editor.edit(codes=codes, targets=TARGETS[:1], refine_steps=3)
    torch.testing.assert_close(d.delta_s, g.delta_s)


def test_cli_edit_refine_steps(tmp_path):
    face = tmp_path / "face.png"
    Image.fromarray(render_batch(1, seed=7)[0][0]).save(face)
    common = ["edit", "--domain", "toy", "--image", str(face), "--no-align", "--device", "cpu"]
    common += ["--target", "face with red hair"]
    assert cli.main(common + ["--out", str(tmp_path / "plain.png"), "--refine-steps", "0"]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "refined.png"), "--refine-steps", "5"]) == 0
    plain, refined = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "refined"))
    assert plain.shape == refined.shape and not np.array_equal(plain, refined)
    assert cli.main(common + ["--out", str(tmp_path / "x.png"), "--refine-steps", "-3"]) == 2
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("name", "value"), [("steps", 2.5), ("steps", 0), ("refine_steps", 1.5)])
def test_diffusion_edit_step_counts_must_be_whole_numbers(faces, name, value):
    diffusion = load_editor("toy", backbone="diffusion")
    with pytest.raises(InputError, match=name):
        diffusion.edit(codes=faces[0], targets=TARGETS[:1], **{name: value})


def test_a_refined_edit_decodes_the_source_once(editor, monkeypatch):
    import deltaedit.pipelines.gan as gan_module
    import deltaedit.refine as refine_module

    decoded = []

    def counting(module):
        real = module.decode_s

        def decode(generator, s_list, w_plus):
            decoded.append(s_list[0].shape[0])
            return real(generator, s_list, w_plus)

        return decode

    monkeypatch.setattr(gan_module, "decode_s", counting(gan_module))
    monkeypatch.setattr(refine_module, "decode_s", counting(refine_module))
    codes = editor.encode_image(Image.fromarray(render_batch(1, 5)[0][0]), align=False)  # not rendered yet
    editor.edit(codes=codes, targets=["face with red hair"], threshold=0.0, refine_steps=2)
    # The source once, two refinement steps, the edit: no second decode of the source.
    assert sum(decoded) == 4, decoded
