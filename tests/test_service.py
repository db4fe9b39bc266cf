"""deltaedit.service, the app's gradio-free layer, with a fake editor (no weights needed)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit import service, vocabulary
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
        return SimpleNamespace(input_image=torch.full((1, 3, 8, 8), 0.5), image=None)

    def edit(self, *, codes, targets, source, strength, threshold, align, steps=None):
        self.calls.append(("edit", targets, source, strength, threshold, steps))
        lines = [t.strip() for t in targets.splitlines() if t.strip()]
        notices = ["target 'face' equals the source text"] if "face" in lines else []
        return SimpleNamespace(
            source_image=Image.new("RGB", (8, 8)),
            edited_images=[Image.new("RGB", (8, 8), (8 * len(t) % 256, 0, 0)) for t in lines],
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


def test_compare_shows_the_input_and_lets_each_backbone_use_its_defaults(fake):
    view = service.compare("ffhq", image="photo.png", target="face with smile", steps=7)
    # The encoded input (0.5 grey here), not the backbone's reconstruction (black in the fake).
    assert view.source_image.getpixel((0, 0)) == (191, 191, 191)
    edits = [c for c in fake.calls if c[0] == "edit"]
    assert [c[3:5] for c in edits] == [(None, None), (None, None)]
    assert "| strength | threshold | time |" in view.summary


def test_compare_labels_read_what_each_picture_is_and_its_time_from_the_summary(fake):
    view = service.compare("ffhq", image=None, target="face with smile", steps=7, seed=4)
    shown, g_label, d_label = service.compare_labels(view.summary)
    assert shown == "Input (random sample, seed 4)"
    assert g_label == f"DeltaEdit-G · {view.gan.seconds:.2f} s"
    assert d_label == f"DeltaEdit-D · {view.diffusion.seconds:.2f} s"
    view = service.compare("toy", image="photo.png", target="face with smile", steps=7)  # no D here
    assert service.compare_labels(view.summary)[0] == "Input (the photo)"
    assert service.compare_labels(view.summary)[2] == "DeltaEdit-D · not available"
    assert service.compare_labels("") == ("Input", "DeltaEdit-G", "DeltaEdit-D")


def test_defaults_note_and_align_follow_the_domain_config():
    assert "DeltaEdit-G strength" in service.defaults_note("toy")
    assert "DeltaEdit-D strength" in service.defaults_note("toy")
    assert service.aligns_faces("ffhq") and not service.aligns_faces("toy")


# ---------------------------------------------------------------- vocabulary, "nothing changed"


def test_the_toy_domain_offers_its_vocabulary_and_ffhq_none():
    phrases = service.known_phrases("toy")
    for phrase in ("face with blond hair", "face with a smile", "face with eyeglasses", "chubby face"):
        assert phrase in phrases
    assert service.known_phrases("ffhq") == []


@pytest.mark.parametrize(
    "prompt, nearest",
    [
        ("smiling face", "face with a smile"),
        ("happy face", "face with a smile"),
        ("face wearing spectacles", "face with eyeglasses"),
        ("face with yellow hair", "face with blond hair"),
        ("face with ginger hair", "face with red hair"),
        ("face with dark skin", "face with tanned skin"),
        ("face with a fringe", "face with bangs"),
        ("wide face", "chubby face"),
    ],
)
def test_words_the_toy_model_does_not_know_map_to_the_nearest_known_phrase(prompt, nearest):
    assert not vocabulary.is_known("toy", prompt)
    assert vocabulary.nearest_phrases(prompt, vocabulary.known_phrases("toy"))[0] == nearest


class UnchangedEditor(FakeEditor):
    """Returns the source unchanged, with a zero Δs: what an unknown word does."""

    def edit(self, **kwargs):
        result = super().edit(**kwargs)
        result.edited_images = [result.source_image.copy() for _ in result.targets]
        result.delta_s = torch.zeros(len(result.targets), 16)
        return result


@pytest.mark.parametrize("domain", ["toy", "ffhq"])
def test_an_edit_that_changes_nothing_says_so(monkeypatch, domain):
    monkeypatch.setattr(service, "load_editor", lambda *a: UnchangedEditor())
    view = service.edit("gan", domain, target="face with yellow hair", threshold=0.1)
    assert len(view.notices) == 1 and "changed nothing" in view.notices[0]
    assert "threshold 0.1" in view.notices[0] and view.notices[0] in view.summary
    if domain == "toy":
        assert "face with blond hair" in view.notices[0]
    else:
        assert "nearest known" not in view.notices[0]


def test_a_visible_edit_and_a_target_equal_to_the_source_add_no_such_notice(fake):
    assert service.edit("gan", "toy", target="face with smile").notices == []
    view = service.edit("gan", "toy", target="face")  # the library's own notice covers it
    assert not any("changed nothing" in n for n in view.notices)


def test_unchanged_targets_reads_delta_s_and_pixels():
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    moved = grey.copy()
    moved.paste((255, 0, 0), (0, 0, 20, 20))
    result = SimpleNamespace(
        source_image=grey,
        edited_images=[grey.copy(), moved, moved],
        delta_s=torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
    )
    assert vocabulary.unchanged_targets(result) == [0, 2]  # 2: the picture moved, but Δs is zero
    del result.delta_s
    assert vocabulary.unchanged_targets(result) == [0]


# ---------------------------------------------------------------- the page's examples, real weights


def _toy_weights_or_skip():
    from deltaedit import weights

    if weights.find_local("toy-generator") is None or weights.find_local("toy-classifier") is None:
        pytest.skip("toy weights are absent: build them with `python -m deltaedit toy train`")


def _classify(image):
    from deltaedit import weights
    from deltaedit.imageio import to_tensor
    from deltaedit.toy.classifier import load_classifier, predict

    classifier = load_classifier(weights.resolve("toy-classifier"))
    return predict(classifier, to_tensor(image.convert("RGB"), classifier.image_size))[0]


def _reached(image, target: str) -> bool:
    from deltaedit.toy.attributes import prompt_targets

    read = _classify(image)
    return all(read[name] == value for name, value in prompt_targets(target).items())


def test_every_example_file_exists_and_its_source_differs_from_its_targets():
    from deltaedit.toy.attributes import prompt_targets

    for kind in service.EXAMPLES:
        for path, source, targets in service.examples(kind):
            assert path.is_file(), f"{path}: run scripts/make_toy_examples.py"
            for target in targets.splitlines():
                assert target.strip() != source.strip()
                prompt_targets(target)  # in the toy vocabulary


def test_each_gan_example_reaches_its_target_and_the_input_did_not_have_it_already():
    _toy_weights_or_skip()
    for path, source, targets in service.examples("gan"):
        with Image.open(path) as img:
            before = img.convert("RGB")
        for target in targets.splitlines():
            assert not _reached(before, target), f"{path.name} already shows {target!r}"
        view = service.edit("gan", "toy", image=str(path), source=source, target=targets, seed=0)
        for target, edited in zip(view.targets, view.edited_images):
            assert _reached(edited, target), f"{path.name}: {target!r} was not reached"
            assert vocabulary.changed_fraction(before, edited) > 0.02


def _diffusion_or_skip():
    from deltaedit import weights

    _toy_weights_or_skip()
    if weights.find_local("toy-diffusion") is None:
        pytest.skip("toy DeltaEdit-D weights are absent")


def test_each_diffusion_and_compare_example_changes_the_picture_visibly():
    _diffusion_or_skip()
    for kind in ("diffusion", "compare"):
        for path, source, target in service.examples(kind):
            with Image.open(path) as img:
                before = img.convert("RGB")
            if kind == "compare":
                view = service.compare("toy", image=str(path), source=source, target=target, seed=0)
                results = [view.gan, view.diffusion]
            else:
                results = [service.edit("diffusion", "toy", image=str(path), source=source, target=target)]
            for result in results:
                changed = vocabulary.changed_fraction(before, result.edited_images[0])
                assert changed > 0.02, f"{kind} {path.name} {target!r} ({result.backbone}): {changed:.3f}"


def test_each_diffusion_and_compare_example_reaches_its_target_with_deltaedit_d():
    _diffusion_or_skip()
    for kind in ("diffusion", "compare"):
        for path, source, target in service.examples(kind):
            view = service.edit("diffusion", "toy", image=str(path), source=source, target=target)
            assert _reached(view.edited_images[0], target), f"{kind} {path.name}: {target!r}"


def test_an_odd_sized_photo_is_cropped_to_its_centre_not_squashed_and_the_summary_says_so():
    """A 300 x 200 photo with a round dot in the middle: the toy model's input (the picture the page
    shows as the input) keeps the dot round, and the summary names the crop."""
    rng = np.random.default_rng(0)
    photo = np.full((200, 300, 3), 200, dtype=np.uint8)
    yy, xx = np.mgrid[:200, :300]
    photo[(yy - 100) ** 2 + (xx - 150) ** 2 <= 60**2] = (20, 20, 20)
    photo = np.clip(photo.astype(int) + rng.integers(-3, 4, photo.shape), 0, 255).astype(np.uint8)
    view = service.edit("gan", "toy", image=Image.fromarray(photo), target="face with a smile")
    shown = np.asarray(view.input_image.convert("L")) < 110
    rows, cols = np.flatnonzero(shown.any(axis=1)), np.flatnonzero(shown.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert abs(int(height) - int(width)) <= 2, (height, width)  # squashed: about 38 x 26
    assert "300 x 200" in view.summary and "200 x 200" in view.summary


def test_missing_ffhq_weights_are_one_short_sentence_and_the_status_says_how_to_add_them(monkeypatch, tmp_path):
    from fixtures_ffhq import isolate_weights_env

    isolate_weights_env(monkeypatch, tmp_path)
    with pytest.raises(WeightsError) as info:
        service.edit("gan", "ffhq", target="face with a smile")
    message = str(info.value)
    assert "\n" not in message and len(message) < 300 and "stylegan2-ffhq-config-f.pt" in message
    with pytest.raises(WeightsError) as info:
        service.edit("diffusion", "ffhq", target="face with a smile", steps=5)
    assert "neither are DeltaEdit-G's" in str(info.value) and "\n" not in str(info.value)
    status = service.domain_status("ffhq")
    assert "```" not in status  # prose and a list, so every line wraps on the page
    assert "DELTAEDIT_WEIGHTS_DIR" in status and "python -m deltaedit download --domain ffhq" in status
    for page_text in (status, service.diffusion_status("ffhq"), message):
        assert "--weights-dir" not in page_text
    assert "still works" not in service.diffusion_status("ffhq")
    for source in service.missing_weights("ffhq"):
        assert f"`{source.filename}`" in status


def test_page_messages_name_the_folder_the_app_reads_not_a_command_line_option():
    text = (
        "Put them, with these file names, in a folder and pass --weights-dir DIR or set"
        " DELTAEDIT_WEIGHTS_DIR=DIR; `python -m deltaedit download --domain ffhq --weights-dir DIR` fetches"
        " them, or put the folder as deltaedit-d-ffhq/ in --weights-dir"
    )
    page = service.for_the_page(text)
    assert "--weights-dir" not in page
    assert "set DELTAEDIT_WEIGHTS_DIR=DIR" in page and "`python -m deltaedit download --domain ffhq`" in page
    assert "deltaedit-d-ffhq/ in the DELTAEDIT_WEIGHTS_DIR folder" in page


def test_one_vocabulary_in_the_readme_the_page_and_the_configs():
    """Prompts the README, the page's placeholder and the configs suggest are spelled as the toy
    model's known phrases (the chips): "face with a smile", never "face with smile" in one place."""
    import re

    from deltaedit.config import load_domain_config

    repo = service.REPO_ROOT
    phrases = set(service.known_phrases("toy"))
    quoted = re.findall(r"[\"“]((?:face with|chubby|thin)[^\"”]*)[\"”]", (repo / "README.md").read_text())
    quoted += re.findall(r'placeholder="((?:face with)[^"]*)"', (repo / "app.py").read_text())
    quoted += [p for domain in ("toy", "ffhq") for p in load_domain_config(domain).example_prompts]
    quoted += [t for kind in service.EXAMPLES.values() for _, src, tgt in kind for t in (src, *tgt.splitlines())]
    assert quoted
    for prompt in quoted:
        # A phrase the toy model knows in another spelling would be a second vocabulary.
        assert prompt in phrases or prompt == "face" or not vocabulary.is_known("toy", prompt), prompt


def test_the_d_notice_says_g_works_only_when_g_loads(monkeypatch):
    def load(domain, backbone, device):
        if backbone == "diffusion" or domain == "toy":
            raise WeightsError(f"could not get {backbone} ({domain}): missing; try --weights-dir DIR")
        return FakeEditor()

    monkeypatch.setattr(service, "load_editor", load)
    works = service.diffusion_status("ffhq")
    assert "DeltaEdit-G still works" in works and "--weights-dir" not in works
    with pytest.raises(WeightsError, match="The DeltaEdit-D tab says more"):
        service.edit("diffusion", "ffhq", target="face with a smile", steps=5)
    neither = service.diffusion_status("toy")
    assert "neither are DeltaEdit-G's" in neither and "still works" not in neither


def test_ffhq_sample_examples_need_no_files_and_are_offered_only_with_weights(monkeypatch, tmp_path):
    from fixtures_ffhq import isolate_weights_env

    rows = [row for kind in ("gan", "compare") for row in service.sample_examples("ffhq", kind)]
    assert rows and all(isinstance(seed, int) for seed, _, _ in rows)
    assert any("\n" in target for _, _, target in rows)  # several targets
    assert any(source != service.neutral_text("ffhq") for _, source, _ in rows)  # a source -> target pair
    assert service.sample_examples("toy", "gan") == []
    isolate_weights_env(monkeypatch, tmp_path)
    assert not service.samples_available("ffhq")
