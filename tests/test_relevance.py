"""Relevance (fs3): channel selection as the authors do it, loading, and computing it for a generator."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from deltaedit.clip import DomainClip, build_clip_from_config, build_tokenizer
from deltaedit.config import ClipConfig, load_domain_config
from deltaedit.domain import Domain
from deltaedit.errors import InputError, WeightsError
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import decode_s, layout_from_generator
from deltaedit.relevance import compute_fs3, load_fs3, select_channels


# ---- select_channels ---------------------------------------------------------------------------
def test_select_channels_hand_built_case():
    fs3 = np.array([[1.0, 0.0], [0.0, 1.0], [0.01, 0.0], [-1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    dt = np.array([0.05, 0.02], dtype=np.float32)
    # products: 0.05, 0.02, 0.0005, -0.05, 0.046 -> keep |.| >= 0.03
    assert select_channels(fs3, dt, 0.03).tolist() == [True, False, False, True, True]
    # Δt is used raw: scaling it changes the selection (a normalised Δt would not)
    assert select_channels(fs3, dt * 10, 0.03).tolist() == [True, True, False, True, True]
    assert select_channels(fs3, dt, 0.0).all()


def test_select_channels_matches_independent_numpy_and_torch():
    rng = np.random.default_rng(1)
    fs3 = rng.normal(size=(300, 16)).astype(np.float32)
    fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
    dt = rng.normal(scale=0.02, size=16).astype(np.float32)
    expected = np.array([abs(sum(float(a) * float(b) for a, b in zip(row, dt))) >= 0.03 for row in fs3])
    assert 0 < expected.sum() < len(expected)  # a meaningful split
    got = select_channels(fs3, dt, 0.03)
    assert got.dtype == np.bool_ and np.array_equal(got, expected)
    got_t = select_channels(torch.from_numpy(fs3), torch.from_numpy(dt), 0.03)
    assert got_t.dtype == torch.bool and np.array_equal(got_t.numpy(), expected)


def test_select_channels_rejects_bad_shapes():
    with pytest.raises(InputError):
        select_channels(np.zeros((4, 3)), np.zeros(5))
    with pytest.raises(InputError):
        select_channels(np.zeros((4, 3)), np.zeros(3), threshold=-1)


# ---- load_fs3 ----------------------------------------------------------------------------------
def test_load_fs3(tmp_path):
    fs3 = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float64)
    path = tmp_path / "fs3.npy"
    np.save(path, fs3)
    got = load_fs3(path, n_channels=10, clip_dim=4)
    assert got.dtype == np.float32 and np.allclose(got, fs3)
    with pytest.raises(WeightsError, match="fs3.npy"):
        load_fs3(path, n_channels=6048)
    np.save(path, np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="fs3.npy"):
        load_fs3(path)  # pickled objects are refused
    np.save(path, np.full((2, 2), np.nan))
    with pytest.raises(WeightsError, match="NaN"):
        load_fs3(path)


# ---- compute_fs3 -------------------------------------------------------------------------------
TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 56, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    cfg = dataclasses.replace(
        load_domain_config("toy"),
        clip=ClipConfig(model_name="tiny", pretrained=None, embed_dim=16, image_size=56, upsample=7),
    )
    clip = DomainClip(build_clip_from_config(path), build_tokenizer(path), cfg)
    G = Generator(size=16, style_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 8}).eval()
    return G, clip


IGNORED = (2, 3)  # (S layer, channel) whose weights are zeroed below


def test_compute_fs3_ignored_channel_gets_zero_relevance(tiny):
    G, clip = tiny
    layout = layout_from_generator(G)
    with torch.no_grad():
        G.styled_convs()[IGNORED[0]].conv.weight[:, :, IGNORED[1]] = 0  # the decoder ignores it
    ignored = layout.offsets[IGNORED[0]] + IGNORED[1]
    channels = [0, 5, ignored, ignored + 1, layout.total - 1]
    decoded = []

    def decode(s, w):
        decoded.append(len(s))
        return decode_s(G, s, w)

    stats = {}
    fs3 = compute_fs3(
        G,
        clip,
        n_samples=3,
        batch_size=4,
        n_stats=200,
        channels=channels,
        progress=False,
        decode=decode,
        stats=stats,
    )
    assert fs3.shape == (layout.total, 16) and torch.isfinite(fs3).all()
    norms = fs3.norm(dim=1)
    assert float(norms[ignored]) < 1e-6
    others = [c for c in channels if c != ignored]
    torch.testing.assert_close(norms[others], torch.ones(len(others)))  # StyleCLIP's unit rows
    assert float(norms[[c for c in range(layout.total) if c not in channels]].abs().max()) == 0
    assert sum(decoded) == 2 * len(channels) * 3  # ± for every (channel, sample)
    assert stats["batches"] == stats["batches_run"] == len(channels) * 3 // 2 + 1
    assert stats["seconds_per_batch"] > 0 and stats["projected_seconds"] > 0
    assert stats["images_per_batch"] == 4


def test_compute_fs3_short_run_estimates_cost(tiny):
    G, clip = tiny
    stats = {}
    compute_fs3(G, clip, n_samples=4, batch_size=8, n_stats=100, max_batches=2, progress=False, stats=stats)
    total = layout_from_generator(G).total
    assert stats["batches_run"] == 2
    assert stats["batches"] == total * 4 // 4
    assert stats["projected_seconds"] == pytest.approx(stats["seconds_per_batch"] * stats["batches"])


# ---- the `relevance` command -------------------------------------------------------------------


@pytest.fixture
def captured_codes(monkeypatch):
    """Run `relevance` for one batch and keep the W+ codes it handed to compute_fs3."""
    from deltaedit import relevance

    seen = {}
    real = relevance.compute_fs3

    def spy(*args, **kwargs):
        seen["codes"] = kwargs.get("codes")
        return real(*args, **kwargs)

    monkeypatch.setattr(relevance, "compute_fs3", spy)
    return seen


def test_cli_relevance_toy_perturbs_encoded_renders(captured_codes, tmp_path, capsys):
    """The toy generator has no z prior: fs3 samples must be encoded renders, not z draws."""
    from deltaedit import cli, models
    from deltaedit.toy.dataset import render_dataset
    from deltaedit.toy.render import images_to_tensor
    from deltaedit.toy.stages.relevance import FS3_CODES

    argv = ["relevance", "--domain", "toy", "--out", str(tmp_path / "fs3.npy"), "--device", "cpu"]
    assert cli.main(argv + ["--seed", "2", "--estimate", "1"]) == 0
    assert "projected" not in capsys.readouterr().err
    codes = captured_codes["codes"]
    G = models.load_generator(Domain.open("toy"), "cpu")
    assert codes.shape == (FS3_CODES, G.n_latent, G.style_dim)
    encoder, latent_avg = models.load_encoder(Domain.open("toy"), "cpu")
    images, _ = render_dataset(3, 2)
    with torch.no_grad():
        expected = encoder(images_to_tensor(images)) + latent_avg[None]
    torch.testing.assert_close(codes[:3], expected, atol=1e-3, rtol=1e-5)


def test_cli_relevance_takes_codes_folder(captured_codes, tmp_path):
    from deltaedit import cli, models
    from deltaedit.training.codes import load_codes

    codes_dir = tmp_path / "codes"
    argv = ["make-codes", "--domain", "toy", "--n", "4", "--out", str(codes_dir), "--device", "cpu"]
    assert cli.main(argv + ["--no-progress"]) == 0
    out = tmp_path / "fs3.npy"
    argv = ["relevance", "--domain", "toy", "--out", str(out), "--codes", str(codes_dir), "--device", "cpu"]
    assert cli.main(argv + ["--estimate", "1"]) == 0
    np.testing.assert_array_equal(captured_codes["codes"].numpy(), load_codes(codes_dir)[0])
    assert not out.exists()  # --estimate only times batches

    # W+ of another generator's shape: a clear error (exit 2), no output file.
    G = models.load_generator(Domain.open("toy"), "cpu")
    bad = tmp_path / "bad"
    (bad).mkdir()
    meta = json.loads((codes_dir / "meta.json").read_text())
    meta["n_latent"] = G.n_latent + 1
    for f in codes_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    wplus = np.load(codes_dir / "wplus_00000.npy")
    np.save(bad / "wplus_00000.npy", np.concatenate([wplus, wplus[:, :1]], axis=1))
    (bad / "meta.json").write_text(json.dumps(meta))
    argv = ["relevance", "--domain", "toy", "--out", str(out), "--codes", str(bad), "--device", "cpu"]
    assert cli.main(argv) == 2
    assert not out.exists()


def test_select_channels_batch_equals_one_selection_per_target():
    from deltaedit.relevance import select_channels_batch

    g = torch.Generator().manual_seed(3)
    fs3, deltas = torch.randn(300, 16, generator=g) * 0.05, torch.randn(5, 16, generator=g) * 0.3
    batch = select_channels_batch(fs3, deltas, 0.03)
    assert batch.shape == (5, 300) and batch.dtype == torch.bool
    singles = torch.stack([select_channels(fs3, dt, 0.03) for dt in deltas])
    # The same masks, except where |fs3 · Δt| sits within rounding of the threshold.
    products = (deltas @ fs3.T).abs()
    differ = batch != singles
    assert all(abs(float(p) - 0.03) < 1e-6 for p in products[differ])
    assert 0 < int(batch.sum()) < batch.numel()
    with pytest.raises(InputError, match="Δt \\[T, D\\]"):
        select_channels_batch(fs3, deltas[0], 0.03)
    with pytest.raises(InputError, match="threshold"):
        select_channels_batch(fs3, deltas, -0.1)
