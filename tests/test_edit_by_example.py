"""Edits given by pictures instead of text (issue 28, part 1), on the shipped toy weights.

`editor.edit(example=(A, B))` does to a face what changes A into B; `reference=R` moves it toward R.
The toy renderer makes pairs that differ in one attribute only, and the toy classifier reads the
result, so these tests check what the edit does, not only that it runs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit import cli, weights
from deltaedit.errors import InputError
from deltaedit.toy.render import render_batch, render_many

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def toy():
    from deltaedit.api import load_editor
    from deltaedit.config import load_domain_config
    from deltaedit.toy.classifier import load_classifier

    try:
        editor = load_editor("toy", backbone="gan", device="cpu")
        classifier = load_classifier(weights.resolve(load_domain_config("toy").weights["classifier"], None))
    except Exception as exc:  # the toy weights are packaged; a checkout without them skips
        pytest.skip(f"toy weights unavailable: {exc}")
    return editor, classifier


def _pair(attrs, **change):
    """Pictures A and B of one face that differ only in `change` (B has it)."""
    return tuple(Image.fromarray(x) for x in render_many([attrs, attrs.replace(**change)]))


def test_an_example_pair_applies_its_change_and_nothing_else(toy):
    from deltaedit.toy.classifier import predict

    editor, classifier = toy
    images, attrs = render_batch(8, 2029)
    _, partners = render_batch(8, 2029 + 7919)
    hits = 0
    for i in range(8):
        hair = attrs[i].labels()["hair_color"]
        goal = "blond" if hair != "blond" else "black"
        a, b = _pair(partners[i].replace(hair_color=hair), hair_color=goal)
        result = editor.edit(image=Image.fromarray(images[i]), align=False, example=(a, b))
        assert result.targets == ["by example (A → B)"]
        before = predict(classifier, result.source_tensor)[0]
        after = predict(classifier, result.edited_tensor)[0]
        hits += after["hair_color"] == goal and all(after[k] == before[k] for k in after if k != "hair_color")
    assert hits >= 6, f"only {hits} of 8 example edits changed the hair alone"


def test_the_same_picture_twice_changes_nothing_and_says_so(toy):
    editor, _ = toy
    images, attrs = render_batch(1, 5)
    a = Image.fromarray(render_many([attrs[0]])[0])
    result = editor.edit(image=Image.fromarray(images[0]), align=False, example=(a, a.copy()))
    assert np.array_equal(np.asarray(result.edited_images[0]), np.asarray(result.source_image))
    assert any("look the same to CLIP" in n for n in result.notices)


def test_text_and_pictures_in_one_request(toy):
    editor, _ = toy
    images, attrs = render_batch(1, 11)
    face = Image.fromarray(images[0])
    pair = _pair(attrs[0].replace(smile="no"), smile="yes")
    reference = Image.fromarray(render_many([attrs[0].replace(hair_color="red", eyeglasses="yes")])[0])
    both = editor.edit(image=face, align=False, targets="face with eyeglasses", example=pair, reference=reference)
    assert both.targets == ["face with eyeglasses", "by example (A → B)", "toward the reference"]
    text = editor.edit(image=face, align=False, targets="face with eyeglasses")
    # The text row is the same edit whether or not pictures come with it (to 1e-3 in style units:
    # where the toy's delta_choices take the whole Δs, the refinement's Adam steps reach channels
    # whose gradient is near zero, and the batch's rounding of it can move one by ~1e-4).
    torch.testing.assert_close(both.delta_s[0], text.delta_s[0], atol=1e-3, rtol=0)
    by_example = editor.edit(image=face, align=False, example=pair)
    torch.testing.assert_close(both.delta_s[1], by_example.delta_s[0], atol=1e-3, rtol=0)
    assert float(both.delta_s[2].abs().sum()) > 0  # the reference moved something


def test_bad_examples_get_clear_messages(toy, tmp_path):
    editor, _ = toy
    images, _ = render_batch(1, 3)
    face = Image.fromarray(images[0])
    with pytest.raises(InputError, match=r"pair of images \(A, B\)"):
        editor.edit(image=face, align=False, example=face)
    text = tmp_path / "a.png"
    text.write_text("not a picture")
    with pytest.raises(InputError, match="not an image that can be read"):
        editor.edit(image=face, align=False, example=(text, face))
    with pytest.raises(InputError, match="target text is empty"):
        editor.edit(image=face, align=False)  # neither text nor pictures


def test_eval_by_example_scores_text_like_eval_and_reports_both(toy):
    from deltaedit.toy.evaluate import evaluate
    from deltaedit.toy.evaluate_examples import evaluate_by_example

    editor, classifier = toy
    report = evaluate_by_example(editor, classifier, n=3, seed=77, progress=False)
    plain = evaluate(editor, classifier, n=3, seed=77, progress=False)
    # The text half is exactly eval's standard group on the same faces.
    assert {p: s.means() for p, s in report.text.items()} == {p: s.means() for p, s in plain.standard.items()}
    # Every prompt asked by text was asked by example too, on the same faces.
    assert {p: s.n for p, s in report.analogy.items()} == {p: s.n for p, s in report.text.items()}
    summary = report.table().splitlines()[-1]
    values = dict(re.findall(r"(\w+)=([\d.]+)", summary))
    assert set(values) == {"example_success", "example_preservation", "text_success", "text_preservation"}
    assert float(values["text_success"]) == pytest.approx(report.overall(report.text)[0], abs=0.005)


def test_cli_edits_by_example_and_refuses_what_it_cannot_do(toy, tmp_path, capsys):
    images, attrs = render_batch(1, 21)
    face = tmp_path / "face.png"
    Image.fromarray(images[0]).save(face)
    a, b = _pair(attrs[0].replace(eyeglasses="no"), eyeglasses="yes")
    a.save(tmp_path / "a.png")
    b.save(tmp_path / "b.png")
    out = tmp_path / "out.png"
    argv = ["edit", "--domain", "toy", "--image", str(face), "--no-align", "--out", str(out)]
    assert cli.main([*argv, "--example", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    edited = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    assert np.abs(edited - np.asarray(Image.fromarray(images[0]), dtype=np.int16)).mean() > 0.5
    assert cli.main(argv) != 0
    assert "--example A.png B.png" in capsys.readouterr().err
    # DeltaEdit-D takes the same pictures (the same Δs, decoded by the diffusion model).
    out_d = tmp_path / "out_d.png"
    argv_d = [*argv[:-1], str(out_d), "--backbone", "diffusion", "--steps", "10"]
    assert cli.main([*argv_d, "--example", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    edited_d = np.asarray(Image.open(out_d).convert("RGB"), dtype=np.int16)
    assert np.abs(edited_d - np.asarray(Image.fromarray(images[0]), dtype=np.int16)).mean() > 0.5
