"""DomainClip: templates, fast text path, cache, notices, conditions, the authors' image preprocessing."""

from __future__ import annotations

import logging
import time

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from deltaedit.clip import DomainClip, build_clip_from_config, load_clip_model, save_clip_weights
from deltaedit.config import load_domain_config
from deltaedit.errors import InputError, WeightsError
from deltaedit.templates import TEMPLATES, format_prompts


@pytest.fixture(scope="module")
def toy_clip() -> DomainClip:
    torch.manual_seed(0)
    cfg = load_domain_config("toy")
    model, tokenizer = load_clip_model(cfg, None)  # untrained, from configs/clip_toy.json
    return DomainClip(model, tokenizer, cfg)


@pytest.fixture
def fresh_clip(toy_clip) -> DomainClip:
    """A DomainClip with an empty cache sharing the module's model."""
    return DomainClip(toy_clip.model, toy_clip.tokenizer, toy_clip.config)


def test_templates_are_openai_imagenet_minus_many():
    assert len(TEMPLATES) == 79
    assert "a photo of many {}." not in TEMPLATES
    all_80 = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(all_80) == 80
    assert list(TEMPLATES) == [t for t in all_80 if t != "a photo of many {}."]
    assert all(t.count("{}") == 1 for t in TEMPLATES)


def test_fast_text_path_equals_encode_text(toy_clip):
    prompts = ["a", "a photo of a face with smile.", "itap of my face with very long blond curly hair."]
    tokens = toy_clip.tokenizer(prompts)
    # The fast path must really run on a prefix for this to test anything.
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]
    with torch.no_grad():
        expected = toy_clip.model.encode_text(tokens)
        got = toy_clip._encode_tokens(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "phrase",
    [
        "face with smile",
        "Face With Bangs",
        "man's face",
        "face with 3",
        "a",
        "face with smile!",  # ends in punctuation: "!." is one word of the template's prompt
        "face &amp",  # HTML unescaping turns the end into "&"
        "café face",  # not ASCII: ftfy may repair it
        "face-with-smile",
        "face " + "very " * 80 + "long hair",  # cut at the context length
    ],
)
def test_spliced_template_tokens_equal_the_tokenizer(toy_clip, phrase):
    assert toy_clip._template_ids is not None  # the 79 templates can all be spliced
    tokens, notices = toy_clip._tokenize_phrase(phrase)
    assert torch.equal(tokens, toy_clip.tokenizer(format_prompts(phrase, toy_clip.templates)))
    assert bool(notices) == phrase.endswith("long hair")


def test_embedding_is_normalised_mean_of_normalised_templates(fresh_clip):
    emb = fresh_clip.embed_text("face with smile")
    tokens = fresh_clip.tokenizer([t.format("face with smile") for t in TEMPLATES])
    with torch.no_grad():
        feats = fresh_clip.model.encode_text(tokens)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    expected = feats.mean(0) / feats.mean(0).norm()
    assert emb.shape == (128,)
    assert abs(float(emb.norm()) - 1) < 1e-5
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fresh_clip.embed_text_naive("face with smile"), emb, atol=1e-5, rtol=0)


def test_cache_encodes_each_phrase_once(fresh_clip):
    calls = []
    hook = fresh_clip.model.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        d1 = fresh_clip.text_delta("face with smile")  # encodes target and the neutral "face"
        d2 = fresh_clip.text_delta("face with smile", "face")
        fresh_clip.text_delta("face with beard")  # only the new target
    finally:
        hook.remove()
    assert len(calls) == 3
    torch.testing.assert_close(d1, d2)
    # Whitespace differences are the same phrase.
    assert fresh_clip.text_embedding("  face   with smile ") is fresh_clip.text_embedding("face with smile")
    # Callers get copies: editing one in place cannot corrupt the cache.
    fresh_clip.embed_text("face with smile").mul_(0)
    assert abs(float(fresh_clip.embed_text("face with smile").norm()) - 1) < 1e-5


def test_new_phrases_are_encoded_in_one_batch_and_equal_one_by_one(fresh_clip, toy_clip):
    phrases = ["face with smile", "face with red hair and eyeglasses", "a", "face with smile"]
    fresh_clip.text_embedding("face")  # cached before: not encoded again
    long = " ".join(["very"] * 40) + " happy face"
    calls = []
    hook = fresh_clip.model.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        batch = fresh_clip.text_embeddings([*phrases, "face", long])
    finally:
        hook.remove()
    assert len(calls) == 1  # three new phrases (one repeated) and a long one: one encode
    assert batch[0] is batch[3] and batch[4] is fresh_clip.text_embedding("face")
    one_by_one = DomainClip(toy_clip.model, toy_clip.tokenizer, toy_clip.config)
    for phrase, emb in zip([*phrases, "face", long], batch):
        torch.testing.assert_close(emb.vector, one_by_one.embed_text(phrase), atol=1e-5, rtol=0)
    assert batch[-1].notices and not batch[0].notices  # notices stay with their phrase


def test_the_first_cached_vector_of_a_phrase_wins(fresh_clip, monkeypatch):
    # Another thread caches "face with smile" while this one is encoding it: both must then use
    # that one vector (a re-encode beside other phrases can differ in the last bits).
    earlier = DomainClip(fresh_clip.model, fresh_clip.tokenizer, fresh_clip.config).text_embedding(
        "face with smile"
    )
    real_encode = fresh_clip._encode_tokens

    def encode_while_another_thread_caches(tokens):
        fresh_clip._cache["face with smile"] = earlier
        return real_encode(tokens)

    monkeypatch.setattr(fresh_clip, "_encode_tokens", encode_while_another_thread_caches)
    (got,) = fresh_clip.text_embeddings(["face with smile"])
    assert got is earlier and fresh_clip.text_embedding("face with smile") is earlier
    monkeypatch.undo()
    assert torch.all(fresh_clip.text_delta(" face  with smile", "face with smile") == 0)


def test_text_delta_is_raw_difference(fresh_clip):
    delta = fresh_clip.text_delta("face with smile", "face")
    torch.testing.assert_close(
        delta, fresh_clip.embed_text("face with smile") - fresh_clip.embed_text("face")
    )
    assert torch.all(fresh_clip.text_delta("face", "face") == 0)


def test_empty_prompt_is_input_error(fresh_clip):
    for bad in ["", "   ", "\n"]:
        with pytest.raises(InputError):
            fresh_clip.embed_text(bad)
    with pytest.raises(InputError):
        fresh_clip.text_delta("face with smile", " ")


def test_long_prompt_is_truncated_with_notice(fresh_clip, caplog):
    long = " ".join(["very"] * 40) + " happy face"
    with caplog.at_level(logging.WARNING, logger="deltaedit.clip"):
        emb = fresh_clip.text_embedding(long)
    assert emb.notices and "too long" in emb.notices[0]
    assert any("too long" in r.message for r in caplog.records)
    assert torch.isfinite(emb.vector).all()
    assert fresh_clip.notices(long) and not fresh_clip.notices("face")
    assert fresh_clip.text_embedding("face").notices == ()


def test_condition_normalises_and_handles_zero_delta():
    i = torch.randn(3, 8) * 5
    cond = DomainClip.condition(i, torch.zeros(8))
    assert cond.shape == (3, 16)
    assert torch.isfinite(cond).all()
    assert torch.all(cond[:, 8:] == 0)
    torch.testing.assert_close(cond[:, :8].norm(dim=-1), torch.ones(3))
    dt = torch.randn(8)
    cond = DomainClip.condition(i, dt)
    torch.testing.assert_close(cond[:, 8:], (dt / dt.norm()).expand(3, -1))
    tiny = torch.full((8,), 1e-8)  # below the 1e-5 clamp: scaled, not blown up to unit length
    assert float(DomainClip.condition(i, tiny)[0, 8:].norm()) < 1e-2


def _authors_preprocess(images, pool):
    return torch.nn.AvgPool2d(kernel_size=pool)(torch.nn.Upsample(scale_factor=7)(images))


def test_image_features_use_authors_preprocessing(toy_clip):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    reference = _authors_preprocess(images, 7)  # toy: 64 px x7 -> pool 7 -> 64 px CLIP input
    torch.testing.assert_close(toy_clip.preprocess_images(images), reference, atol=1e-5, rtol=0)
    with torch.no_grad():
        expected = toy_clip.model.encode_image(reference)
    torch.testing.assert_close(toy_clip.image_features(images, image_size=64), expected, atol=1e-4, rtol=0)


def test_preprocessing_matches_ffhq_encoder_input_size(toy_clip):
    ffhq = DomainClip(toy_clip.model, toy_clip.tokenizer, load_domain_config("ffhq"))
    assert ffhq.config.clip_pool(256) == 8 and ffhq.config.clip_pool(1024) == 32
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    out = ffhq.preprocess_images(images)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out, _authors_preprocess(images, 8), atol=1e-5, rtol=0)


def test_bad_image_sizes_are_input_errors(toy_clip):
    with pytest.raises(InputError):
        toy_clip.image_features(torch.zeros(1, 3, 50, 50))  # 350 px is not a multiple of 64
    with pytest.raises(InputError):
        toy_clip.image_features(torch.zeros(1, 3, 64, 32))
    with pytest.raises(InputError):
        toy_clip.image_features(torch.zeros(1, 3, 64, 64), image_size=128)


def test_ffhq_architecture_uses_quickgelu_without_weights():
    assert open_clip.get_model_config("ViT-B-32-quickgelu")["quick_gelu"] is True
    with torch.device("meta"):  # structure only: no memory, no weights
        model = build_clip_from_config("ViT-B-32-quickgelu")
        plain = build_clip_from_config("ViT-B-32")
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not isinstance(plain.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert load_domain_config("ffhq").clip.model_name == "ViT-B-32-quickgelu"


def test_toy_clip_weights_round_trip(toy_clip, tmp_path):
    cfg = toy_clip.config
    assert isinstance(toy_clip.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    path = tmp_path / "clip.safetensors"
    save_clip_weights(toy_clip.model, path)
    loaded, _ = load_clip_model(cfg, path)
    tokens = toy_clip.tokenizer(["a face"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), toy_clip.model.encode_text(tokens))

    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["text_projection"] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="text_projection"):
        load_clip_model(cfg, path)


@pytest.mark.slow
def test_fast_path_is_3x_faster_at_vit_b32_width():
    torch.manual_seed(0)
    cfg = load_domain_config("ffhq")
    model, tokenizer = load_clip_model(cfg, None)
    clip = DomainClip(model, tokenizer, cfg)
    clip.embed_text_naive("warm up")
    t = time.perf_counter()
    naive = clip.embed_text_naive("face with smile")
    t_naive = time.perf_counter() - t
    t = time.perf_counter()
    fast = clip.embed_text("face with smile")
    t_fast = time.perf_counter() - t
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    assert t_naive / t_fast >= 3, (t_naive, t_fast)


@pytest.mark.gpu
def test_cuda_matches_cpu(toy_clip):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import copy

    cuda = DomainClip(copy.deepcopy(toy_clip.model).cuda(), toy_clip.tokenizer, toy_clip.config)
    emb = cuda.embed_text("face with smile")
    assert emb.is_cuda
    torch.testing.assert_close(emb.cpu(), toy_clip.embed_text("face with smile"), atol=1e-4, rtol=0)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = cuda.image_features(images.cuda())
    torch.testing.assert_close(feats.cpu(), toy_clip.image_features(images), atol=1e-3, rtol=0)
    cond = cuda.condition(feats, cuda.text_delta("face with smile"))
    assert cond.is_cuda and torch.isfinite(cond).all()


def test_architecture_files_resolve_from_the_package_whatever_the_domains_folder(tmp_path):
    # deltaedit.clip once copied config.CONFIG_DIR at import: imported while a test had pointed it
    # at a temporary folder, it looked for clip_toy.json there for the rest of the session.
    import subprocess
    import sys

    code = (
        "import pathlib, sys; from deltaedit import config; "
        f"config.CONFIG_DIR = pathlib.Path({str(tmp_path)!r}); "
        "from deltaedit.clip import clip_model_config; "
        "config.CONFIG_DIR = pathlib.Path(config.__file__).with_name('configs'); "
        "sys.exit(0 if clip_model_config('clip_toy.json')['embed_dim'] > 0 else 1)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
