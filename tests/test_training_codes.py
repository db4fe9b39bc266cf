"""make_codes / load_codes / `make-codes`: tiny seeded generator and a stand-in CLIP feature map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deltaedit import cli, models
from deltaedit.config import load_domain_config
from deltaedit.domain import Domain
from deltaedit.errors import InputError
from deltaedit.imageio import load_image, to_tensor
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import decode_s, layout_from_generator, w_plus_to_s
from deltaedit.toy.render import images_to_tensor
from deltaedit.training import codes as codes_mod
from deltaedit.training.codes import load_codes, make_codes, read_meta, shard_path

FEATURE_DIM = 12


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and immune to the contention of a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8}).eval()


class LinearFeatures:
    """Stand-in for DomainClip.image_features: a fixed random linear map of the 4x4-pooled image."""

    def __init__(self, dim: int = FEATURE_DIM, seed: int = 1):
        self.weight = torch.randn(3 * 4 * 4, dim, generator=torch.Generator().manual_seed(seed))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ self.weight


class TinyEncoder(nn.Module):
    def __init__(self, n_latent: int, style_dim: int):
        super().__init__()
        self.n_latent, self.style_dim = n_latent, style_dim
        self.linear = nn.Linear(3 * 4 * 4, n_latent * style_dim)

    def forward(self, x):
        flat = self.linear(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))
        return flat.view(-1, self.n_latent, self.style_dim)


@pytest.fixture
def G():
    return tiny_generator()


def test_sampled_codes_have_shapes_and_s_is_wplus_to_s(G, tmp_path):
    features = LinearFeatures()
    out = make_codes(
        G, features, tmp_path / "codes", n=10, batch_size=4, shard_size=4, seed=3, progress=False
    )
    wplus, s, c = load_codes(out)
    layout = layout_from_generator(G)
    assert wplus.shape == (10, G.n_latent, G.style_dim)
    assert s.shape == (10, layout.total)
    assert c.shape == (10, FEATURE_DIM)
    assert wplus.dtype == s.dtype == c.dtype == np.float32
    meta = read_meta(out)
    assert meta["shards"] == [4, 4, 2] and meta["complete"] and meta["n"] == 10
    assert meta["layout"]["widths"] == list(layout.widths)
    # Shards are plain arrays: no pickle needed.
    assert np.load(shard_path(out, "sspace", 2), allow_pickle=False).shape == (2, layout.total)

    with torch.no_grad():
        w = torch.from_numpy(wplus)
        s_list = w_plus_to_s(G, w)
        expected_s = torch.cat(s_list, dim=1)
        expected_c = features(decode_s(G, s_list, w))
    torch.testing.assert_close(torch.from_numpy(s), expected_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(c), expected_c, rtol=1e-4, atol=1e-4)
    # Sampled W+ repeats one w per row (z -> w, broadcast), and codes differ between images.
    assert np.allclose(wplus[:, 0], wplus[:, -1])
    assert not np.allclose(wplus[0], wplus[1])


def test_codes_depend_on_seed_not_on_batch_size(G, tmp_path):
    f = LinearFeatures()
    a = load_codes(make_codes(G, f, tmp_path / "a", n=6, batch_size=2, shard_size=4, seed=5, progress=False))
    b = load_codes(make_codes(G, f, tmp_path / "b", n=6, batch_size=5, shard_size=4, seed=5, progress=False))
    c = load_codes(make_codes(G, f, tmp_path / "c", n=6, batch_size=2, shard_size=4, seed=6, progress=False))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], c[0])


def test_truncation_pulls_codes_toward_the_mean(G, tmp_path):
    f = LinearFeatures()
    full = load_codes(
        make_codes(G, f, tmp_path / "a", n=8, shard_size=8, seed=1, truncation=1.0, progress=False)
    )[0]
    half = load_codes(
        make_codes(G, f, tmp_path / "b", n=8, shard_size=8, seed=1, truncation=0.5, progress=False)
    )[0]
    assert half[:, 0].std(0).mean() < full[:, 0].std(0).mean()


def test_resume_rewrites_only_the_missing_shard(G, tmp_path, monkeypatch):
    f = LinearFeatures()
    out = make_codes(G, f, tmp_path / "codes", n=10, batch_size=4, shard_size=4, seed=3, progress=False)
    before = load_codes(out)
    shard_path(out, "sspace", 1).unlink()  # as if killed while writing shard 1

    with pytest.raises(InputError, match="rerun"):
        load_codes(out)  # meta says complete, but a shard is gone

    written = []
    real_save = codes_mod._save_atomic

    def spy(path, array):
        written.append(path.name)
        real_save(path, array)

    monkeypatch.setattr(codes_mod, "_save_atomic", spy)
    make_codes(G, f, out, n=10, batch_size=4, shard_size=4, seed=3, progress=False)
    assert sorted(written) == ["cspace_00001.npy", "sspace_00001.npy", "wplus_00001.npy"]
    for x, y in zip(before, load_codes(out)):
        np.testing.assert_array_equal(x, y)
    assert not list(out.glob(".*.tmp"))


def test_truncated_shard_counts_as_missing(G, tmp_path):
    f = LinearFeatures()
    out = make_codes(G, f, tmp_path / "codes", n=8, shard_size=4, seed=0, progress=False)
    np.save(shard_path(out, "wplus", 0), np.zeros((1, G.n_latent, G.style_dim), np.float32))
    make_codes(G, f, out, n=8, shard_size=4, seed=0, progress=False)
    assert load_codes(out)[0].shape[0] == 8


def test_resume_with_other_settings_is_refused(G, tmp_path):
    f = LinearFeatures()
    out = make_codes(G, f, tmp_path / "codes", n=4, shard_size=4, seed=0, progress=False)
    with pytest.raises(InputError, match="seed"):
        make_codes(G, f, out, n=4, shard_size=4, seed=1, progress=False)


def test_bad_arguments_raise_input_error(G, tmp_path):
    f = LinearFeatures()
    with pytest.raises(InputError):
        make_codes(G, f, tmp_path / "a", n=None, progress=False)
    with pytest.raises(InputError, match="encoder"):
        make_codes(G, f, tmp_path / "b", images=torch.zeros(2, 3, 16, 16), progress=False)
    with pytest.raises(InputError, match="make-codes"):
        load_codes(tmp_path / "nothing")


def test_encoded_images_from_tensor_iterable_and_folder(G, tmp_path, monkeypatch):
    f = LinearFeatures()
    encoder = TinyEncoder(G.n_latent, G.style_dim).eval()
    latent_avg = torch.randn(G.n_latent, G.style_dim)
    images = torch.rand(5, 3, 16, 16) * 2 - 1

    out = make_codes(
        G,
        f,
        tmp_path / "t",
        shard_size=2,
        batch_size=2,
        encoder=encoder,
        latent_avg=latent_avg,
        images=images,
        progress=False,
    )
    wplus, s, c = load_codes(out)
    with torch.no_grad():
        expected = encoder(images) + latent_avg
        s_list = w_plus_to_s(G, expected)
        expected_c = f(decode_s(G, s_list, expected))
    torch.testing.assert_close(torch.from_numpy(wplus), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(s), torch.cat(s_list, 1), rtol=1e-5, atol=1e-5)
    # The CLIP feature comes from the image decoded from S, not from the input picture.
    torch.testing.assert_close(torch.from_numpy(c), expected_c, rtol=1e-4, atol=1e-4)
    assert read_meta(out)["source"] == "encode"

    # An iterable of uneven batches (e.g. toy renders) gives the same codes.
    batches = iter([images[:3], images[3:4], images[4]])
    out2 = make_codes(
        G,
        f,
        tmp_path / "it",
        shard_size=2,
        encoder=encoder,
        latent_avg=latent_avg,
        images=batches,
        progress=False,
    )
    np.testing.assert_allclose(load_codes(out2)[0], wplus, rtol=1e-5, atol=1e-6)
    assert read_meta(out2)["shards"] == [2, 2, 1]
    written = []
    monkeypatch.setattr(codes_mod, "_save_atomic", lambda path, array: written.append(path))
    again = iter([images[:3], images[3:]])
    make_codes(G, f, out2, shard_size=2, encoder=encoder, latent_avg=latent_avg, images=again, progress=False)
    assert written == []  # all shards already complete: nothing recomputed or rewritten
    monkeypatch.undo()

    # A folder of images: sorted files, resized to the encoder input size, capped by n.
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out3 = make_codes(
        G,
        f,
        tmp_path / "f",
        n=2,
        encoder=encoder,
        latent_avg=latent_avg,
        images=folder,
        input_size=16,
        progress=False,
    )
    x = torch.cat([to_tensor(load_image(folder / name), 16) for name in ("a.png", "b.png")])
    with torch.no_grad():
        expected = encoder(x) + latent_avg
    torch.testing.assert_close(torch.from_numpy(load_codes(out3)[0]), expected, rtol=1e-5, atol=1e-5)


def test_single_process_accelerator(G, tmp_path):
    from accelerate import Accelerator

    f = LinearFeatures()
    plain = load_codes(make_codes(G, f, tmp_path / "a", n=3, shard_size=2, seed=2, progress=False))
    accelerated = make_codes(
        G, f, tmp_path / "b", n=3, shard_size=2, seed=2, progress=False, accelerator=Accelerator(cpu=True)
    )
    np.testing.assert_array_equal(plain[1], load_codes(accelerated)[1])


class StubClip:
    def __init__(self):
        self.features = LinearFeatures()

    def image_features(self, images, image_size=None):
        return self.features(images)


def test_cli_make_codes_end_to_end(tmp_path, monkeypatch):
    G = tiny_generator()
    monkeypatch.setattr(models, "load_generator", lambda domain, device="cpu", weights_dir=None: G)
    monkeypatch.setattr(models, "load_clip", lambda domain, device="cpu", weights_dir=None: StubClip())
    out = tmp_path / "codes"
    argv = ["make-codes", "--domain", "ffhq", "--n", "5", "--out", str(out), "--batch-size", "2"]
    argv += ["--shard-size", "3", "--seed", "4", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    wplus, s, c = load_codes(out)
    assert wplus.shape[0] == s.shape[0] == c.shape[0] == 5
    meta = json.loads((out / "meta.json").read_text())
    assert meta["domain"] == "ffhq" and meta["source"] == "sample"
    assert meta["seed"] == 4 and meta["shards"] == [3, 2]
    # Neither --n nor --images: a clear error, exit code 2.
    assert cli.main(["make-codes", "--domain", "toy", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2


def test_cli_make_codes_toy_encodes_renders(tmp_path):
    """The toy generator has no z prior: `--n` codes are seeded renders through the toy encoder."""
    from deltaedit.toy.dataset import render_dataset

    out = tmp_path / "codes"
    argv = ["make-codes", "--domain", "toy", "--n", "6", "--out", str(out), "--batch-size", "4"]
    assert cli.main(argv + ["--seed", "3", "--device", "cpu", "--no-progress"]) == 0
    wplus, s, c = load_codes(out)
    assert json.loads((out / "meta.json").read_text())["source"] == "encode"
    encoder, latent_avg = models.load_encoder(Domain.open("toy"), "cpu")
    G = models.load_generator(Domain.open("toy"), "cpu")
    images, _ = render_dataset(6, 3)
    with torch.no_grad():
        expected = encoder(images_to_tensor(images)) + latent_avg[None]
    np.testing.assert_allclose(wplus, expected.numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        s, layout_from_generator(G).join(w_plus_to_s(G, expected)).numpy(), rtol=1e-5, atol=1e-3
    )
    assert c.shape == (6, load_domain_config("toy").clip.embed_dim)
