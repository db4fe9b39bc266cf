"""The app's public gradio_client API against `python app.py` on localhost, toy domain.

Edits use threshold 0 (keep every channel) and strength 3 so that even barely trained toy weights
change the picture; the packaged weights change it at the defaults too.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_server import REPO, app_url  # noqa: F401 - the session's server fixture
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

TOY_SIZE = 64  # deltaedit/configs/toy.json generator size
EXAMPLE = REPO / "assets" / "examples" / "toy_black_hair.png"
EDIT = dict(domain="toy", source="face", strength=3.0, threshold=0.0)
ENDPOINTS = {
    "/edit_gan": ["domain", "image", "source", "target", "strength", "threshold", "seed", "align"],
    "/edit_diffusion": [
        "domain",
        "image",
        "source",
        "target",
        "strength",
        "threshold",
        "steps",
        "seed",
        "align",
    ],
    "/compare": ["domain", "image", "source", "target", "strength", "threshold", "steps", "seed", "align"],
    "/sample": ["domain", "seed"],
    "/edit_by_example": [
        "domain", "image", "example_a", "example_b", "reference", "source", "target", "strength",
        "threshold", "steps", "seed", "align", "backbone",
    ],
    "/sweep": [
        "domain", "image", "source", "target", "strength", "threshold", "steps", "seed", "align", "backbone",
        "frames",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def client(app_url):  # noqa: F811 - the fixture imported above
    return Client(app_url, verbose=False)


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def assert_edited(before, after):
    a, b = pixels(before), pixels(after)
    assert a.shape == b.shape == (TOY_SIZE, TOY_SIZE, 3)
    assert np.abs(a - b).mean() > 0.5, "the edit left the image unchanged"


def diffusion_weights_present() -> bool:
    from deltaedit import weights

    return weights.find_local("toy-diffusion") is not None


def test_public_endpoints_and_their_keyword_parameters(client):
    api = client.view_api(print_info=False, return_format="dict")
    named = {
        name: [p["parameter_name"] for p in info["parameters"]]
        for name, info in api["named_endpoints"].items()
    }
    assert named == ENDPOINTS  # UI-only events (domain change, examples, DeltaSpace tab) stay private
    assert api["unnamed_endpoints"] == {}


def test_edit_gan_edits_an_uploaded_photo(client):
    before_after, gallery, files, summary = client.predict(
        image=handle_file(EXAMPLE), target="face with smile", seed=0, api_name="/edit_gan", **EDIT
    )
    before, after = before_after
    assert_edited(before, after)
    assert_edited(EXAMPLE, after)
    assert [g["caption"] for g in gallery] == ["face with smile"]
    assert len(files) == 1 and pixels(files[0]).shape == (TOY_SIZE, TOY_SIZE, 3)
    assert "DeltaEdit-G" in summary and " s" in summary


def test_edit_gan_without_image_edits_the_seeded_sample_with_one_result_per_target(client):
    common = dict(image=None, target="face with smile\nface with blond hair", api_name="/edit_gan", **EDIT)
    (before, after), gallery, files, summary = client.predict(seed=3, **common)
    assert_edited(before, after)
    assert [g["caption"] for g in gallery] == ["face with smile", "face with blond hair"]
    assert len(files) == 2
    assert "seed 3" in summary
    (before_again, _), *_ = client.predict(seed=3, **common)
    (other_before, _), *_ = client.predict(seed=4, **common)
    assert np.array_equal(pixels(before), pixels(before_again))
    assert not np.array_equal(pixels(before), pixels(other_before))


def test_sample_is_seeded(client):
    first = client.predict(domain="toy", seed=11, api_name="/sample")
    again = client.predict(domain="toy", seed=11, api_name="/sample")
    other = client.predict(domain="toy", seed=12, api_name="/sample")
    assert pixels(first).shape == (TOY_SIZE, TOY_SIZE, 3)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_edit_diffusion_edits_or_says_its_weights_are_missing(client):
    request = dict(
        image=handle_file(EXAMPLE), target="face with smile", steps=5, seed=0, api_name="/edit_diffusion"
    )
    if diffusion_weights_present():
        (before, after), gallery, files, _ = client.predict(**request, **EDIT)
        assert_edited(before, after)
        assert len(files) == 1
    else:
        with pytest.raises(AppError, match="DeltaEdit-D weights are not available for this domain"):
            client.predict(**request, **EDIT)


def test_compare_runs_both_backbones_side_by_side(client):
    source, gan, diffusion, summary = client.predict(
        image=handle_file(EXAMPLE),
        target="face with eyeglasses",
        steps=5,
        seed=0,
        api_name="/compare",
        **EDIT,
    )
    assert_edited(source, gan)
    # The first picture is the input both backbones edited (the upload), not a reconstruction.
    assert np.array_equal(pixels(source), pixels(EXAMPLE))
    assert "DeltaEdit-G" in summary and "| strength | threshold | time |" in summary
    if diffusion_weights_present():
        assert_edited(source, diffusion)
        assert "DeltaEdit-D (5 steps)" in summary
    else:
        assert diffusion is None
        assert "DeltaEdit-D weights are not available for this domain" in summary


def test_bad_requests_give_messages_and_the_next_request_still_works(client, tmp_path):
    with pytest.raises(AppError, match="target text is empty"):
        client.predict(image=handle_file(EXAMPLE), target="  \n ", seed=0, api_name="/edit_gan", **EDIT)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(
            image=handle_file(corrupt), target="face with smile", seed=0, api_name="/edit_gan", **EDIT
        )
    with pytest.raises(AppError, match="minimum"):  # gradio checks the seed field's bounds
        client.predict(image=None, target="face with smile", seed=-5, api_name="/edit_gan", **EDIT)
    (before, after), *_ = client.predict(
        image=handle_file(EXAMPLE), target="face with bangs", seed=0, api_name="/edit_gan", **EDIT
    )
    assert_edited(before, after)


def test_source_equal_to_target_is_a_notice_not_an_error(client):
    (before, after), _, _, summary = client.predict(
        image=handle_file(EXAMPLE), target="face", seed=0, api_name="/edit_gan", **EDIT
    )
    assert "nothing to edit" in summary
    assert np.array_equal(pixels(before), pixels(after))


def test_ffhq_without_weights_is_a_clear_message(client):
    from deltaedit import weights

    if weights.find_local("stylegan2-ffhq-config-f") is not None:
        pytest.skip("FFHQ weights are present here")
    with pytest.raises(AppError) as info:
        client.predict(
            domain="ffhq", image=None, source="face", target="face with smile", strength=1.0,
            threshold=0.03, seed=0, api_name="/edit_gan",
        )  # fmt: skip
    message = str(info.value)
    assert "stylegan2-ffhq-config-f" in message and "Traceback" not in message


def test_compare_without_a_photo_shows_the_seeds_sample(client):
    source, _, _, summary = client.predict(
        image=None, target="face with bangs", steps=5, seed=7, api_name="/compare", **EDIT
    )
    sample = client.predict(domain="toy", seed=7, api_name="/sample")
    assert np.array_equal(pixels(source), pixels(sample))
    assert "seed 7" in summary


def test_an_edit_that_changes_nothing_says_so_and_suggests_known_phrases(client):
    (before, after), _, _, summary = client.predict(
        domain="toy",
        image=handle_file(EXAMPLE),
        source="face",
        target="face with yellow hair",
        strength=0.85,
        threshold=0.1,
        seed=0,
        api_name="/edit_gan",
    )
    assert np.array_equal(pixels(before), pixels(after))
    assert "changed nothing" in summary
    assert "face with blond hair" in summary  # "yellow" is not in the toy vocabulary; "blond" is


@pytest.mark.parametrize("backbone", ["gan", "diffusion"])
def test_edit_by_example_applies_a_pair_of_pictures(client, backbone):
    if backbone == "diffusion" and not diffusion_weights_present():
        pytest.skip("no toy DeltaEdit-D weights")
    pairs = REPO / "assets" / "examples"
    (before, after), gallery, files, summary = client.predict(
        domain="toy", image=handle_file(EXAMPLE), example_a=handle_file(pairs / "toy_pair_glasses_a.png"),
        example_b=handle_file(pairs / "toy_pair_glasses_b.png"), reference=None, source="face", target="",
        strength=0.85, threshold=0.1, steps=10, seed=0, align=False, backbone=backbone,
        api_name="/edit_by_example",
    )  # fmt: skip
    assert [item["caption"] for item in gallery] == ["by example (A → B)"]
    assert_edited(before, after)
    with pytest.raises(AppError, match="both pictures"):
        client.predict(
            domain="toy", image=None, example_a=handle_file(pairs / "toy_pair_glasses_a.png"), example_b=None,
            reference=None, source="face", target="", strength=0.85, threshold=0.1, steps=10, seed=0,
            align=False, backbone=backbone, api_name="/edit_by_example",
        )  # fmt: skip


def test_edit_by_example_compares_both_backbones_side_by_side(client):
    if not diffusion_weights_present():
        pytest.skip("no toy DeltaEdit-D weights")
    pairs = REPO / "assets" / "examples"
    (g_edit, d_edit), gallery, files, summary = client.predict(
        domain="toy", image=handle_file(EXAMPLE), example_a=handle_file(pairs / "toy_pair_blond_a.png"),
        example_b=handle_file(pairs / "toy_pair_blond_b.png"), reference=None, source="face", target="",
        strength=0.85, threshold=0.1, steps=10, seed=0, align=False, backbone="compare",
        api_name="/edit_by_example",
    )  # fmt: skip
    assert [item["caption"] for item in gallery] == ["Input", "DeltaEdit-G", "DeltaEdit-D"]
    shown_input = gallery[0]["image"]
    assert_edited(shown_input, g_edit)
    assert_edited(shown_input, d_edit)
    assert np.array_equal(pixels(gallery[1]["image"]), pixels(g_edit))
    assert np.array_equal(pixels(gallery[2]["image"]), pixels(d_edit))
    assert len(files) == 2 and "| DeltaEdit-G |" in summary and "| DeltaEdit-D (10 steps) |" in summary
    assert "DeltaEdit-G (left) | DeltaEdit-D (right)" in summary


def test_sweep_returns_its_frames_and_an_animation(client):
    frames, animation, summary = client.predict(
        domain="toy", image=None, source="face", target="face with eyeglasses", strength=0.85, threshold=0.1,
        steps=10, seed=0, align=False, backbone="gan", frames=5, api_name="/sweep",
    )  # fmt: skip
    assert [item["caption"] for item in frames] == [f"{a:.2f}" for a in np.linspace(0, 1.7, 5)]
    first, last = pixels(frames[0]["image"]), pixels(frames[-1]["image"])
    assert np.abs(first - last).mean() > 0.5
    with Image.open(animation) as gif:
        assert gif.n_frames == 8
    assert "5 strengths" in summary
