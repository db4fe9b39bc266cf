"""deltaedit.service, the app's gradio-free layer, with a fake editor (no weights needed)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from deltaedit import service
from deltaedit.errors import InputError, WeightsError


class FakeEditor:
    """Records what the service asks; 'edits' by tinting the source by the target's length."""

    def __init__(self):
        self.calls = []

    def sample(self, seed):
        self.calls.append(("sample", seed))
        return SimpleNamespace(input_image=None, image=torch.full((1, 3, 8, 8), seed / 10 - 1))

    def encode_image(self, image, align=True):
        self.calls.append(("encode", image, align))
        return SimpleNamespace(input_image=torch.zeros(1, 3, 8, 8), image=None)

    def edit(self, *, codes, targets, source, strength, threshold, align, steps=None):
        self.calls.append(("edit", targets, source, strength, threshold, steps))
        lines = [t.strip() for t in targets.splitlines() if t.strip()]
        notices = ["target 'face' equals the source text"] if "face" in lines else []
        return SimpleNamespace(
            source_image=Image.new("RGB", (8, 8)),
            edited_images=[Image.new("RGB", (8, 8), (len(t), 0, 0)) for t in lines],
            targets=lines,
            source_text=source or "face",
            strength=1.0 if strength is None else strength,  # a real editor takes the domain's defaults
            threshold=0.03 if threshold is None else threshold,
            notices=notices,
            timings={"total": 0.01},
        )


@pytest.fixture
def fake(monkeypatch):
    editor = FakeEditor()

    def load(domain, backbone, device):
        if backbone == "diffusion" and domain == "toy":
            raise WeightsError("could not get diffusion (toy-diffusion): missing")
        return editor

    monkeypatch.setattr(service, "load_editor", load)
    return editor


def test_domain_choices_pair_page_labels_with_api_ids():
    choices = dict(service.domain_choices())
    assert choices["Toy faces (built-in)"] == "toy"
    assert choices["FFHQ faces"] == "ffhq"
    assert service.domain_choices()[0][1] == "toy"  # the default, packaged domain first


@pytest.mark.parametrize("seed", [-1, 1.5, "x", None, 2**31])
def test_bad_seeds_are_input_errors(seed):
    with pytest.raises(InputError, match="seed"):
        service.check_seed(seed)


def test_seed_accepts_whole_floats_from_number_fields():
    assert service.check_seed(7.0) == 7


def test_unknown_domain_is_an_input_error(fake):
    with pytest.raises(InputError, match="unknown domain"):
        service.edit("gan", "cats", target="face with smile")


def test_empty_target_is_refused_before_any_model_work(fake):
    with pytest.raises(InputError, match="target text is empty"):
        service.edit("gan", "toy", target=" \n ")
    assert fake.calls == []


def test_no_image_edits_the_seeded_sample_and_the_summary_says_so(fake):
    view = service.edit("gan", "toy", image=None, target="face with smile\nface with bangs", seed=5)
    assert ("sample", 5) in fake.calls and not any(c[0] == "encode" for c in fake.calls)
    assert [caption for _, caption in view.gallery] == ["face with smile", "face with bangs"]
    assert "seed 5" in view.summary and "2 edit(s)" in view.summary


def test_an_image_is_encoded_with_the_align_choice(fake):
    service.edit("gan", "toy", image="photo.png", target="face with smile", align=False)
    assert ("encode", "photo.png", False) in fake.calls


def test_notices_reach_the_summary(fake):
    view = service.edit("gan", "toy", target="face")
    assert view.notices and view.notices[0] in view.summary


def test_diffusion_without_weights_says_so_plainly(fake):
    with pytest.raises(WeightsError, match=service.D_UNAVAILABLE):
        service.edit("diffusion", "toy", target="face with smile", steps=5)
    assert service.diffusion_status("toy").startswith(f"**{service.D_UNAVAILABLE}")
    assert service.diffusion_status("ffhq") == ""  # the fake has "weights" for ffhq


def test_compare_shows_g_and_explains_a_missing_d(fake):
    view = service.compare("toy", target="face with smile\nface with bangs", steps=5)
    assert view.diffusion is None
    assert view.gan.targets == ["face with smile"]  # the first line only, and the page says so
    assert "first target line" in view.summary
    assert service.D_UNAVAILABLE in view.summary
    assert "DeltaEdit-G |" in view.summary


def test_compare_times_both_backbones_when_d_exists(fake):
    view = service.compare("ffhq", target="face with smile", steps=7)
    assert view.diffusion is not None
    # No strength or threshold given: the editor takes its domain's defaults.
    assert ("edit", "face with smile", None, None, None, 7) in fake.calls
    assert "DeltaEdit-D (7 steps)" in view.summary


def test_output_store_writes_pngs_and_prunes_old_ones(tmp_path, monkeypatch):
    store = service.OutputStore(max_age_s=60)
    monkeypatch.setattr(store, "_dir", tmp_path)
    first = store.save(Image.new("RGB", (4, 4)), "face with smile / ../x")
    second = store.save(Image.new("RGB", (4, 4)), "face with smile / ../x")
    assert first != second and first.parent == second.parent == tmp_path
    assert "/" not in first.name.replace(str(tmp_path), "") and ".." not in first.name
    old = time.time() - 120
    os.utime(first, (old, old))
    store.save(Image.new("RGB", (4, 4)), "next")
    assert not first.exists() and second.exists()
