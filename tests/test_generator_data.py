"""`train-diffusion --data generator`: the seeded, resumable stream of (image, exact s) pairs from a StyleGAN2.

Uses the toy domain's shipped generator (offline) and small random generators.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from deltaedit.cli import main
from deltaedit.config import load_domain_config
from deltaedit.errors import InputError
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import decode_s
from deltaedit.pipelines.diffusion import DiffusionBackbone
from deltaedit.training.diffusion import PairDataset, train_diffusion, write_shard
from deltaedit.training.generator_data import GeneratorStream, domain_generator_stream, parse_truncations

SIZE = 16  # the tiny UNet's size; the toy generator's 64 px images are resized to it


@pytest.fixture(scope="module")
def toy_G():
    return domain_generator_stream("toy", SIZE).generator


def stream(G, **kwargs) -> GeneratorStream:
    return GeneratorStream(G, SIZE, **{"seed": 3, "decode_batch": 3, "stats_samples": 64, **kwargs})


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_same_seed_same_batches_other_seed_other_batches(toy_G):
    a, b = stream(toy_G).batches(4), stream(toy_G).batches(4)
    first = [next(a) for _ in range(3)]
    assert all(_equal(x, next(b)) for x in first)
    assert not _equal(first[0], first[1])  # batches differ from each other
    assert not _equal(first[0], next(stream(toy_G, seed=4).batches(4)))
    images, styles = first[0]
    assert images.shape == (4, 3, SIZE, SIZE) and styles.shape == (4, stream(toy_G).layout.total)
    assert images.min() >= -1 and images.max() <= 1


def test_resume_continues_exactly_where_it_stopped(toy_G):
    s = stream(toy_G)
    it = s.batches(4)
    drawn = [next(it) for _ in range(5)]
    assert s.state_dict() == {"seed": 3, "position": 5}

    resumed = stream(toy_G)
    resumed.load_state_dict({"seed": 3, "position": 2})
    it = resumed.batches(4, start=resumed.position)
    assert _equal(next(it), drawn[2]) and _equal(next(it), drawn[3])
    assert resumed.position == 4
    with pytest.raises(InputError, match="seed"):
        stream(toy_G, seed=9).load_state_dict({"seed": 3, "position": 2})


def test_processes_draw_disjoint_interleaved_batches(toy_G):
    s = stream(toy_G)
    one = [next(s.batches(4, start=k)) for k in range(4)]
    rank0, rank1 = s.batches(4, start=0, rank=0, world=2), s.batches(4, start=0, rank=1, world=2)
    assert _equal(next(rank0), one[0]) and _equal(next(rank1), one[1])
    assert _equal(next(rank0), one[2]) and _equal(next(rank1), one[3])


def test_codes_are_exact_and_images_decode_from_them(toy_G):
    """s is the generator's own code of each image: decoding s (fixed noise) gives the image."""
    s = stream(toy_G, noise="fixed", truncations=(1.0,))
    rng = torch.Generator().manual_seed(0)
    w_plus, codes = s._codes(5, rng)
    images = s._decode(w_plus, codes, rng, "fixed")
    want = F.interpolate(decode_s(toy_G, codes, w_plus), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    torch.testing.assert_close(images, want.clamp(-1, 1), rtol=0, atol=1e-5)  # chunks of 3 vs 5: rounding
    # random noise changes the pixels, not the code
    assert not torch.equal(s._decode(w_plus, codes, torch.Generator().manual_seed(0), "random"), images)


def test_truncation_levels_are_mixed(toy_G):
    def spread(levels):
        return stream(toy_G, truncations=levels, stats_samples=512).style_stats()[1].mean()

    assert spread((0.3,)) < spread((0.3, 1.0)) < spread((1.0,))
    assert parse_truncations("0.5, 0.7,1") == (0.5, 0.7, 1.0)
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(InputError, match="truncation"):
            parse_truncations(bad)


def test_photos_are_mixed_in_and_renders_come_along(toy_G):
    g = torch.Generator().manual_seed(1)
    n_style = stream(toy_G).layout.total
    photos = PairDataset(
        torch.rand(6, 3, SIZE, SIZE, generator=g) * 2 - 1,
        torch.randn(6, n_style, generator=g),
        torch.rand(6, 3, SIZE, SIZE, generator=g) * 2 - 1,
    )
    s = stream(toy_G, photos=photos, photo_fraction=0.5, renders=True)
    images, styles, renders = s.batch(0, 32)
    from_photos = [any(torch.equal(row, p) for p in photos.styles) for row in styles]
    assert 6 <= sum(from_photos) <= 26  # about half
    for i, is_photo in enumerate(from_photos):
        if is_photo:
            j = next(k for k, p in enumerate(photos.styles) if torch.equal(styles[i], p))
            assert torch.equal(images[i], photos.images[j]) and torch.equal(renders[i], photos.renders[j])
        else:  # a generator row: its rendering (fixed noise) differs from the image (random noise) a little
            assert 0 < (images[i] - renders[i]).abs().mean() < 0.5
    assert _equal(s.batch(0, 32), (images, styles, renders))

    with pytest.raises(InputError, match="renders"):
        stream(toy_G, photos=PairDataset(photos.images, photos.styles), photo_fraction=0.5, renders=True)
    with pytest.raises(InputError, match="zero"):
        stream(toy_G, renders=True, noise="fixed")
    with pytest.raises(InputError, match="photos"):
        stream(toy_G, photo_fraction=0.5)


def test_preview_and_stats_are_fixed(toy_G):
    s = stream(toy_G, preview=4)
    assert len(s) == 4 and torch.equal(s[3][1], stream(toy_G, preview=4)[3][1])
    with pytest.raises(IndexError):
        s[4]
    mean, std = s.style_stats()
    assert mean.shape == std.shape == (s.layout.total,) and (std >= 0).all()


def test_train_diffusion_on_the_stream_resumes_it(toy_G, tmp_path):
    s = stream(toy_G)
    drawn = []
    original = s.batch

    def recording(index, batch_size):
        drawn.append(index)
        return original(index, batch_size)

    s.batch = recording
    fast = dict(sample_every=0, progress=False, warmup_steps=0, batch_size=2, checkpoint_every=2)
    train_diffusion(s, "tiny", tmp_path / "run", steps=2, **fast)
    start = len(drawn)
    train_diffusion(s, "tiny", tmp_path / "run", steps=4, resume="latest", **fast)
    assert drawn == [0, 1, 2, 3] and start == 2  # no batch drawn twice or wasted
    assert s.position == 4
    assert DiffusionBackbone.from_pretrained(tmp_path / "run").style_dim == s.layout.total


def test_random_generator_weights_for_timing(toy_G):
    s = domain_generator_stream("toy", SIZE, random_weights=True, stats_samples=8)
    ref = Generator.from_config(load_domain_config("toy").generator)
    assert [p.shape for p in s.generator.parameters()] == [p.shape for p in ref.parameters()]
    again = domain_generator_stream("toy", SIZE, random_weights=True).generator
    assert torch.equal(again.input.input, s.generator.input.input)  # seeded
    assert not torch.equal(s.generator.input.input, toy_G.input.input)  # not the shipped weights


# ---- the command line -------------------------------------------------------------------------------------------
BASE = ["train-diffusion", "--domain", "toy", "--config", "tiny", "--batch-size", "2", "--warmup-steps", "0"]
BASE += ["--sample-every", "0", "--no-progress", "--decode-batch", "2"]


def test_cli_trains_on_generator_data_and_records_the_command(tmp_path):
    out = tmp_path / "run"
    assert main([*BASE, "--data", "generator", "--out", str(out), "--steps", "2"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith("python -m deltaedit train-diffusion")
    assert record["settings"]["data"] == ["generator"] and record["settings"]["steps"] == 2
    assert DiffusionBackbone.from_pretrained(out).image_size == SIZE


def test_cli_mixes_a_shard_folder(tmp_path, toy_G):
    n_style = stream(toy_G).layout.total
    write_shard(tmp_path / "shards", "s0", torch.rand(4, 3, SIZE, SIZE) * 2 - 1, torch.randn(4, n_style))
    out = tmp_path / "run"
    args = [*BASE, "--data", "generator", "--data", str(tmp_path / "shards"), "--data-mix", "0.5"]
    assert main([*args, "--out", str(out), "--steps", "1"]) == 0
    assert json.loads((out / "training.json").read_text())["settings"]["data_mix"] == 0.5


def test_cli_data_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--steps", "1"]
    assert main(["train-diffusion", "--data", "generator", *out]) == 2
    assert "--domain" in capsys.readouterr().err
    assert main([*BASE, "--data", str(tmp_path), "--data-mix", "0.3", *out]) == 2
    assert "--data-mix" in capsys.readouterr().err


def test_cli_estimate_prints_projected_hours_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "est"
    args = [*BASE, "--data", "generator", "--estimate", "2", "--steps", "36000", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "timed 2 steps at batch 2" in text and "s per step" in text
    per_step = float(text.split(" s per step")[0].split()[-1])
    hours = float(text.split("(--steps) = ")[1].split()[0])
    assert hours == pytest.approx(per_step * 36000 / 3600, rel=0.02, abs=0.06)
    assert not out.exists() and not any(p.name.startswith(".estimate") for p in tmp_path.iterdir())
