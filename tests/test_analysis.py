"""DeltaSpace analysis: the report's numbers, the random pairs, the files, the CLI and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit import analysis, cli
from deltaedit.errors import InputError

# Cheap t-SNE for tests: 30 pairs -> 60 points, the minimum number of iterations.
FAST_TSNE = ["--tsne-points", "60", "--tsne-iter", "300"]


# ---------------------------------------------------------------- independent reference


def reference_numbers(image, text) -> dict:
    """Paired cosine, unpaired cosine and top-1/top-5 image->text retrieval, computed from scratch."""
    image = np.asarray(image, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    a = image / np.sqrt((image**2).sum(axis=1))[:, None]
    b = text / np.sqrt((text**2).sum(axis=1))[:, None]
    sims = np.einsum("id,jd->ij", a, b)
    n = len(sims)
    order = np.argsort(-sims, axis=1, kind="stable")
    position = np.nonzero(order == np.arange(n)[:, None])[1]
    off = ~np.eye(n, dtype=bool)
    return {
        "cosine": float(np.trace(sims) / n),
        "cosine_unpaired": float(sims[off].mean()),
        "top1": float(np.mean(position == 0)),
        "top5": float(np.mean(position < 5)),
    }


@pytest.fixture(scope="module")
def celeba(shared_dir):
    folder = shared_dir / "data" / "deltaspace"
    names = ("i", "t", "deltai", "deltat")
    paths = {n: folder / f"celeba_{n}.npy" for n in names}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip("deltaspace CelebA features are absent")
    return paths


def _load(paths):
    return [np.load(paths[n]) for n in ("i", "t", "deltai", "deltat")]


# ---------------------------------------------------------------- the real CelebA features


def test_celeba_report_matches_numpy_and_deltas_align_better(celeba):
    i, t, di, dt = _load(celeba)
    report = analysis.alignment_report(i, t, di, dt)
    assert report["n"] == 1500 and report["dim"] == 512 and report["delta_source"] == "given"
    for kind, (a, b) in (("raw", (i, t)), ("delta", (di, dt))):
        ref = reference_numbers(a, b)
        for key, value in ref.items():
            assert report[f"{kind}_{key}"] == pytest.approx(value, abs=1e-9), (kind, key)
    # The paper's claim: differences retrieve their captions far better than raw features do.
    assert report["delta_top1"] > 3 * report["raw_top1"]
    assert report["delta_top5"] > 3 * report["raw_top5"]
    # Paired minus unpaired cosine: raw features are all alike across modalities, deltas are not.
    gap = {k: report[f"{k}_cosine"] - report[f"{k}_cosine_unpaired"] for k in ("raw", "delta")}
    assert gap["delta"] > 3 * gap["raw"]
    # The figures measured when the data set was prepared.
    assert report["raw_top1"] == pytest.approx(0.009, abs=0.003)
    assert report["delta_top1"] == pytest.approx(0.075, abs=0.01)


def test_cli_end_to_end_on_celeba(celeba, tmp_path, capsys):
    out = tmp_path / "nested" / "report"
    argv = ["analyze", "--image-features", str(celeba["i"]), "--text-features", str(celeba["t"])]
    argv += ["--delta-image", str(celeba["deltai"]), "--delta-text", str(celeba["deltat"])]
    assert cli.main([*argv, "--out", str(out), *FAST_TSNE]) == 0

    report = json.loads((out / "report.json").read_text())
    i, t, di, dt = _load(celeba)
    assert report["delta_top1"] == pytest.approx(reference_numbers(di, dt)["top1"], abs=1e-9)
    assert report["raw_top5"] == pytest.approx(reference_numbers(i, t)["top5"], abs=1e-9)
    for name in ("raw_tsne.png", "delta_tsne.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG"
            img.verify()
        with Image.open(out / name) as img:
            # Not a blank canvas: both colours of points were drawn.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 10
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    table = capsys.readouterr().out
    assert f"{report['delta_top1']:.4f}" in table and f"{report['raw_top1']:.4f}" in table


# ---------------------------------------------------------------- synthetic features


def _gap_features(n=40, dim=16, seed=1):
    """A modality gap: each modality adds its own large constant to shared content z.

    Raw image->text similarity is dominated by the image offset, so ranking ignores z; the offsets
    cancel in differences, which are identical across modalities.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    return z + 20.0 * rng.normal(size=dim), z + 20.0 * rng.normal(size=dim)


def test_shared_offset_cancels_in_deltas():
    image, text = _gap_features()
    report = analysis.alignment_report(image, text, seed=3)
    assert report["delta_source"] == "random_pairs" and report["pairs_seed"] == 3
    # Same partner for both modalities, so every text delta equals its image delta exactly.
    assert report["delta_top1"] == 1.0 and report["delta_cosine"] == pytest.approx(1.0)
    assert report["raw_top1"] < 0.5
    ref = reference_numbers(image, text)
    assert report["raw_top1"] == pytest.approx(ref["top1"]) and report["raw_cosine"] == pytest.approx(
        ref["cosine"]
    )


def test_pair_deltas_use_one_partner_other_than_self():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    di, dt = analysis.pair_deltas(image, text, seed=5)
    # Recover each partner from the image delta, then check the text delta used the same one.
    partner_rows = image - di
    partners = np.array([np.argmin(np.abs(image - row).sum(axis=1)) for row in partner_rows])
    np.testing.assert_allclose(image[partners], partner_rows, atol=1e-12)
    assert (partners != np.arange(30)).all()
    np.testing.assert_allclose(dt, text - text[partners], atol=1e-12)


def test_random_pairs_are_seeded():
    image, text = np.random.default_rng(2).normal(size=(2, 50, 8))
    a = analysis.pair_deltas(image, text, seed=7)
    b = analysis.pair_deltas(image, text, seed=7)
    c = analysis.pair_deltas(image, text, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert analysis.alignment_report(image, text, seed=7) == analysis.alignment_report(image, text, seed=7)


def test_cli_random_pairs_seeded(tmp_path):
    image, text = _gap_features(n=12)
    np.save(tmp_path / "i.npy", image.astype(np.float32))
    np.save(tmp_path / "t.npy", text.astype(np.float32))
    base = [
        "analyze",
        "--image-features",
        str(tmp_path / "i.npy"),
        "--text-features",
        str(tmp_path / "t.npy"),
    ]
    reports = []
    for seed, name in ((4, "a"), (4, "b"), (9, "c")):
        argv = [*base, "--pairs-seed", str(seed), "--out", str(tmp_path / name), "--no-plots"]
        assert cli.main(argv) == 0
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
        assert not (tmp_path / name / "raw_tsne.png").exists()
    assert reports[0] == reports[1]
    assert reports[2]["pairs_seed"] == 9 and reports[0]["pairs_seed"] == 4


def test_format_table_and_plot(tmp_path):
    image, text = _gap_features(n=20)
    report = analysis.alignment_report(image, text)
    table = analysis.format_table(report)
    assert "raw" in table and "delta" in table and f"{report['raw_cosine']:.4f}" in table
    written = analysis.write_report(report, tmp_path / "x", raw=(image, text), max_points=20)
    assert set(written) == {"raw_tsne", "report"}
    with Image.open(written["raw_tsne"]) as img:
        assert img.size[0] > 100
    assert json.loads(written["report"].read_text()) == report


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        (np.zeros((10, 4)), np.zeros((10, 5)), "shape"),
        (np.zeros((10, 4)), np.zeros((9, 4)), "shape"),
        (np.zeros(10), np.zeros(10), "2-D"),
        (np.zeros((10, 4, 2)), np.zeros((10, 4, 2)), "2-D"),
        (np.ones((5, 4)), np.ones((5, 4)), "at least 6"),
        (np.full((10, 4), np.nan), np.ones((10, 4)), "NaN"),
        (np.ones((10, 4)), np.full((10, 4), np.inf), "Inf"),
        (np.array([["a"] * 4] * 10), np.ones((10, 4)), "numbers"),
    ],
)
def test_bad_features_raise_input_error(image, text, match):
    with pytest.raises(InputError, match=match):
        analysis.alignment_report(image, text)


def test_half_given_deltas_are_refused():
    image, text = _gap_features(n=10)
    with pytest.raises(InputError, match="both"):
        analysis.alignment_report(image, text, delta_image=image)


def test_load_features_refuses_pickles_and_missing_files(tmp_path):
    obj = np.empty((8, 2), dtype=object)
    obj[:] = 1.0
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    with pytest.raises(InputError, match=r"\.npy"):
        analysis.load_features(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(InputError):
        analysis.load_features(tmp_path / "junk.npy")
    with pytest.raises(InputError, match="does not exist"):
        analysis.load_features(tmp_path / "absent.npy")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    np.save(tmp_path / "i.npy", np.ones((10, 4), dtype=np.float32))
    np.save(tmp_path / "t.npy", np.ones((10, 3), dtype=np.float32))
    argv = [
        "analyze",
        "--image-features",
        str(tmp_path / "i.npy"),
        "--text-features",
        str(tmp_path / "t.npy"),
    ]
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "shape" in capsys.readouterr().err
    assert not (tmp_path / "o" / "report.json").exists()
    assert cli.main(["analyze", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to analyse" in capsys.readouterr().err
    assert (
        cli.main(["analyze", "--image-features", str(tmp_path / "i.npy"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "--text-features" in capsys.readouterr().err


# ---------------------------------------------------------------- pictures + captions (CLIP faked)


class FakeClip:
    """Stands in for DomainClip: colour means as image features, a seeded vector per caption."""

    def __init__(self):
        self.image_sizes = []

    def image_features(self, images, image_size):
        self.image_sizes.append((tuple(images.shape), image_size))
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)

    def embed_text(self, phrase):
        seed = sum(map(ord, phrase))
        return torch.from_numpy(np.random.default_rng(seed).normal(size=6)).float()


@pytest.fixture
def fake_clip(monkeypatch):
    fake = FakeClip()
    calls = []

    def load_clip(domain, device="cpu"):
        calls.append(domain.id)  # the loaders take a resolved Domain
        return fake

    monkeypatch.setattr("deltaedit.models.load_clip", load_clip)
    fake.calls = calls
    return fake


def _write_pictures(folder, n=7):
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = ["# filename<TAB>caption", ""]
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)).save(folder / f"p{k}.png")
        lines.append(f"p{k}.png\tface number {k}")
    return lines


def test_images_and_captions_path(tmp_path, fake_clip):
    lines = _write_pictures(tmp_path / "pics")
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    argv = ["analyze", "--images", str(tmp_path / "pics"), "--captions", str(tmp_path / "captions.txt")]
    out = tmp_path / "out"
    assert cli.main([*argv, "--domain", "toy", "--batch-size", "3", "--out", str(out), "--no-plots"]) == 0
    assert fake_clip.calls == ["toy"]
    # Batched 3 + 3 + 1, every picture resized to the toy domain's 64 px input.
    assert [s[0][0] for s in fake_clip.image_sizes] == [3, 3, 1]
    assert all(s[0][2:] == (64, 64) and s[1] == 64 for s in fake_clip.image_sizes)
    saved = np.load(out / "text_features.npy")
    np.testing.assert_allclose(saved[4], fake_clip.embed_text("face number 4").numpy(), rtol=1e-6)
    assert json.loads((out / "report.json").read_text())["n"] == 7
    # Row k of both files belongs to picture k and its caption, across the batches.
    from deltaedit.imageio import load_image, to_tensor

    pictures = torch.cat([to_tensor(load_image(tmp_path / "pics" / f"p{k}.png"), 64) for k in range(7)])
    expected_image = FakeClip().image_features(pictures, 64).numpy()
    np.testing.assert_allclose(np.load(out / "image_features.npy"), expected_image, rtol=1e-5, atol=1e-6)
    expected_text = np.stack([fake_clip.embed_text(f"face number {k}").numpy() for k in range(7)])
    np.testing.assert_allclose(saved, expected_text, rtol=1e-6)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("p0.png face without tab", "filename<TAB>caption"),
        ("missing.png\tface", "does not exist"),
        ("p0.png\t", "filename<TAB>caption"),
    ],
)
def test_bad_captions_file(tmp_path, fake_clip, capsys, line, match):
    lines = _write_pictures(tmp_path / "pics")
    (tmp_path / "captions.txt").write_text("\n".join([*lines, line]) + "\n")
    argv = ["analyze", "--images", str(tmp_path / "pics"), "--captions", str(tmp_path / "captions.txt")]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert match in capsys.readouterr().err


def test_duplicate_caption_lines(tmp_path, fake_clip, capsys):
    lines = _write_pictures(tmp_path / "pics")
    (tmp_path / "captions.txt").write_text("\n".join([*lines, "p1.png\tagain"]) + "\n")
    argv = ["analyze", "--images", str(tmp_path / "pics"), "--captions", str(tmp_path / "captions.txt")]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "already captioned" in capsys.readouterr().err


def test_toy_render_path(tmp_path, fake_clip):
    pytest.importorskip("deltaedit.toy.render")
    out = tmp_path / "toy"
    argv = [
        "analyze",
        "--domain",
        "toy",
        "--count",
        "8",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--no-plots",
    ]
    assert cli.main(argv) == 0
    assert fake_clip.image_sizes[0] == ((8, 3, 64, 64), 64)
    assert np.load(out / "image_features.npy").shape == (8, 6)
    assert json.loads((out / "report.json").read_text())["n"] == 8
    _assert_toy_features(out, FakeClip(), count=8)


def _assert_toy_features(out, clip, count, seed=0):
    """The saved features are `clip`'s of the faces `render_batch(count, seed)` draws and of the
    captions of those same faces, row for row."""
    from deltaedit.toy.attributes import captions
    from deltaedit.toy.render import render_batch

    images, attrs = render_batch(count, seed, as_tensor=True)
    with torch.inference_mode():
        expected_image = clip.image_features(images, images.shape[-1]).float().numpy()
        expected_text = torch.stack([clip.embed_text(c).float() for c in captions(attrs, seed)]).numpy()
    np.testing.assert_allclose(np.load(out / "image_features.npy"), expected_image, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "text_features.npy"), expected_text, rtol=1e-4, atol=1e-5)
    # Different faces and captions give different rows: not one row repeated, not a constant.
    assert len(np.unique(expected_image.round(4), axis=0)) > 1
    assert len(np.unique(expected_text.round(4), axis=0)) > 1


def test_toy_path_with_real_domain_clip(tmp_path, monkeypatch):
    """The DomainClip contract itself (untrained toy-architecture CLIP): shapes and dims agree."""
    clip_mod = pytest.importorskip("deltaedit.clip")
    pytest.importorskip("deltaedit.toy.render")
    from deltaedit.config import load_domain_config

    config = load_domain_config("toy")
    model, tokenizer = clip_mod.load_clip_model(config, None)
    clip = clip_mod.DomainClip(model, tokenizer, config)
    monkeypatch.setattr("deltaedit.models.load_clip", lambda domain, device="cpu", weights_dir=None: clip)
    out = tmp_path / "toy"
    argv = ["analyze", "--domain", "toy", "--count", "6", "--batch-size", "4"]  # two batches
    argv += ["--out", str(out), "--no-plots"]
    assert cli.main(argv) == 0
    dim = config.clip.embed_dim
    assert np.load(out / "image_features.npy").shape == (6, dim)
    assert np.load(out / "text_features.npy").shape == (6, dim)
    assert json.loads((out / "report.json").read_text())["dim"] == dim
    _assert_toy_features(out, clip, count=6)
