"""The built-in toy domain: its training command, its shipped weights, `edit` and `eval` on it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit import cli, models
from deltaedit.pipelines.gan import GanEditor
from deltaedit.toy import train as toy_train

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "toy"
SHIPPED = [
    "generator.safetensors",
    "encoder.safetensors",
    "mapper.safetensors",
    "fs3.npy",
    "clip.safetensors",
]


def _shipped() -> bool:
    return all((ASSETS / name).is_file() for name in SHIPPED)


@pytest.fixture(autouse=True)
def _fresh_models():
    models.clear_cache()
    yield
    models.clear_cache()


def _fixed_batch(n: int = 16):
    images, attrs = toy_train.render_dataset(n, seed=5, workers=1)
    return images, attrs


def test_clip_trainer_lowers_the_contrastive_loss_on_a_fixed_batch():
    from deltaedit.toy.attributes import caption

    images, attrs = _fixed_batch(16)

    def fixed_caption(attributes, rng):  # one caption per face, the same at every step
        return caption(attributes, np.random.default_rng(1))

    _, _, losses = toy_train.train_clip(
        images, attrs, steps=20, batch=16, seed=0, lr=3e-3, progress=False, caption_fn=fixed_caption
    )
    assert np.mean(losses[-3:]) < losses[0] - 0.5


def test_autoencoder_trainer_lowers_the_reconstruction_loss_on_a_fixed_batch():
    images, _ = _fixed_batch(8)
    _, _, _, losses = toy_train.train_autoencoder(images, steps=12, batch=8, seed=0, progress=False)
    assert np.mean(losses[-3:]) < 0.7 * losses[0]


def test_render_dataset_does_not_depend_on_the_number_of_workers():
    a, attrs_a = toy_train.render_dataset(6, seed=3, workers=1)
    b, attrs_b = toy_train.render_dataset(6, seed=3, workers=2)
    assert np.array_equal(a, b) and attrs_a == attrs_b


def test_smoke_training_writes_a_domain_that_edits_through_the_generic_code(tmp_path):
    budget = dataclasses.replace(toy_train.SMOKE, n_images=96, n_codes=64, diffusion_steps=0)
    summary = toy_train.train_toy(tmp_path, seed=1, budget=budget, progress=False)
    for name in SHIPPED + ["classifier.safetensors", "train_log.json"]:
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob("*.train_state.pt")), "resumable training state must not be shipped"
    assert summary["timings"]["total"] > 0
    # The toy domain goes through exactly the loaders and the editor FFHQ uses.
    editor = GanEditor.from_weights("toy", "cpu", tmp_path)
    result = editor.edit(
        codes=editor.sample(seed=2), targets=["face with smile"], threshold=0.0, strength=3.0
    )
    assert result.edited_images[0].size == (64, 64)
    assert torch.isfinite(result.edited_tensor).all()
    assert not torch.equal(result.edited_tensor, result.source_tensor)


@pytest.mark.skipif(not _shipped(), reason="the toy weights are not in assets/toy")
def test_edit_cli_works_offline_on_the_shipped_toy_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("DELTAEDIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "edit.png"
    source = tmp_path / "source.png"
    code = cli.main(
        [
            "edit",
            "--backbone",
            "gan",
            "--domain",
            "toy",
            "--image",
            str(REPO / "assets/examples/toy_red_hair.png"),
            "--no-align",
            "--target",
            "face with blond hair",
            "--out",
            str(out),
            "--source-out",
            str(source),
        ]
    )
    assert code == 0
    edited, original = Image.open(out), Image.open(source)
    assert edited.size == original.size == (64, 64)
    assert np.abs(np.asarray(edited, np.int16) - np.asarray(original, np.int16)).mean() > 1.0


@pytest.mark.skipif(
    not (ASSETS / "classifier.safetensors").is_file() or not _shipped(), reason="no toy weights"
)
def test_eval_prints_per_prompt_scores_and_the_summary_line(capsys, monkeypatch):
    monkeypatch.delenv("DELTAEDIT_WEIGHTS_DIR", raising=False)
    assert cli.main(["eval", "--domain", "toy", "--backbone", "gan", "--n", "2", "--seed", "7"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"success=[01]\.\d\d preservation=[01]\.\d\d", out[-1])
    assert any(
        line.startswith("face with eyeglasses") or line.startswith("face with blond hair") for line in out
    )


def test_eval_refuses_a_domain_without_a_classifier(capsys):
    assert cli.main(["eval", "--domain", "ffhq", "--n", "1"]) == 2
    assert "classifier" in capsys.readouterr().err


@pytest.mark.skipif(not _shipped(), reason="the toy weights are not in assets/toy")
def test_edit_cli_picks_one_row_of_a_latents_batch_with_index(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DELTAEDIT_WEIGHTS_DIR", raising=False)
    editor = GanEditor.load("toy")
    batch = torch.cat([editor.sample(seed=s).w_plus for s in (1, 2, 3)]).numpy()  # [3, n_latent, style_dim]
    path = tmp_path / "batch.npy"
    np.save(path, batch)
    args = ["edit", "--domain", "toy", "--latents", str(path), "--target", "face with red hair"]
    assert cli.main([*args, "--out", str(tmp_path / "x.png")]) == 2
    assert "--index" in capsys.readouterr().err
    sources = []
    for i in (1, 2):
        out = tmp_path / f"row{i}.png"
        assert (
            cli.main(
                [*args, "--index", str(i), "--source-out", str(out), "--out", str(tmp_path / f"e{i}.png")]
            )
            == 0
        )
        sources.append(np.asarray(Image.open(out)))
    assert sources[0].shape == (64, 64, 3)
    assert not np.array_equal(sources[0], sources[1])  # different rows, different faces
