"""train_diffusion: loss goes down, resume continues, outputs load; shard and image-folder data; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deltaedit.errors import InputError
from deltaedit.nn.style_unet import StyleConditionedUNet
from deltaedit.pipelines.diffusion import DEFAULT_SCHEDULER_CONFIG, DiffusionBackbone, ddim_sample
from deltaedit.training.diffusion import (
    ShardDataset,
    diffusion_loss,
    make_noise_scheduler,
    to_uint8_hwc,
    train_diffusion,
    write_shard,
)

S = 16
FAST = dict(batch_size=8, seed=0, progress=False, sample_every=0, checkpoint_every=0)


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(5)
    # Smooth images (a colour per image plus a gradient) so a tiny model can learn something quickly.
    ramp = torch.linspace(-0.5, 0.5, 16)
    colors = torch.rand(8, 3, 1, 1, generator=g) - 0.5
    images = (colors + ramp.view(1, 1, 1, 16)).clamp(-1, 1).expand(8, 3, 16, 16).contiguous()
    styles = torch.randn(8, S, generator=g) * 2 + 1
    return images, styles


def _fixed_batch_loss(path, images, styles):
    unet = StyleConditionedUNet.from_pretrained(path).eval()
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, 1000, (len(images),), generator=g)
    with torch.no_grad():
        return diffusion_loss(unet, make_noise_scheduler(), images, styles, noise, t).item()


def test_training_lowers_the_loss_and_output_loads(pairs, tmp_path):
    images, styles = pairs
    before = train_diffusion(pairs, "tiny", tmp_path / "a", steps=0, lr=2e-3, **FAST)
    after = train_diffusion(pairs, "tiny", tmp_path / "b", steps=30, lr=2e-3, ema_decay=0.9, **FAST)
    loss_before = _fixed_batch_loss(before, images, styles)
    loss_after = _fixed_batch_loss(after, images, styles)
    assert loss_after < 0.8 * loss_before
    backbone = DiffusionBackbone.from_pretrained(after)
    assert (after / "scheduler" / "scheduler_config.json").is_file()
    # The training set's style statistics travel with the weights.
    assert torch.allclose(backbone.unet.style_mean, styles.mean(0), atol=1e-5)
    assert torch.allclose(backbone.unet.style_std, styles.std(0, unbiased=False), atol=1e-5)
    edit = backbone.edit(images[:1], styles[:1], styles[1:3] - styles[:1], steps=3)
    assert edit.edits.shape == (2, 3, 16, 16)


def test_resume_continues_the_step_count(pairs, tmp_path):
    out = train_diffusion(pairs, "tiny", tmp_path, steps=3, lr=1e-3, **FAST)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    train_diffusion(pairs, "tiny", tmp_path, steps=5, lr=1e-3, resume="latest", **FAST)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
    steps_logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4, 5]  # only the missing two steps ran
    ema = torch.load(out / "checkpoint" / "ema.pt", weights_only=True)
    assert ema["optimization_step"] == 5
    with pytest.raises(InputError, match="checkpoint"):
        train_diffusion(pairs, "tiny", tmp_path / "none", steps=1, resume=tmp_path / "none", **FAST)


class _SeededStream(torch.utils.data.Dataset):
    """Batch k is a pure function of k (as `GeneratorStream`'s): resumed runs see the same data."""

    def __init__(self, images, styles):
        self.images, self.styles = images, styles

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.styles[i]

    def batches(self, batch_size, start, stop, device, rank=0, world=1):
        for k in range(start, stop):
            rows = torch.randint(0, len(self), (batch_size,), generator=torch.Generator().manual_seed(k))
            yield self.images[rows].to(device), self.styles[rows].to(device)


def test_time_limit_pauses_at_a_checkpoint_and_the_resumed_run_equals_an_unbroken_one(pairs, tmp_path):
    from safetensors.torch import load_file

    from deltaedit.errors import TrainingPaused

    data = _SeededStream(*pairs)
    kwargs = dict(config="tiny", steps=4, lr=1e-3, **FAST)
    unbroken = train_diffusion(data, out_dir=tmp_path / "unbroken", **kwargs)
    with pytest.raises(TrainingPaused, match="step 1 of 4.*run the same command again") as paused:
        train_diffusion(data, out_dir=tmp_path / "paused", time_limit=0, **kwargs)
    assert (paused.value.step, paused.value.steps) == (1, 4)
    run = tmp_path / "paused"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    assert not (run / "config.json").exists()  # no final weights from a paused run
    train_diffusion(data, out_dir=run, resume="latest", **kwargs)
    steps_logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4]
    # Data by step and the saved random state (noise, timesteps): the same weights as never stopped.
    a = load_file(unbroken / "diffusion_pytorch_model.safetensors")
    b = load_file(run / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_log_rows_of_steps_after_the_checkpoint(pairs, tmp_path):
    """A run killed between checkpoints logged steps that the resumed run does again."""
    train_diffusion(pairs, "tiny", tmp_path, steps=2, lr=1e-3, **FAST)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0, "lr": 1e-3, "time": 0.0}) + "\n")
    train_diffusion(pairs, "tiny", tmp_path, steps=4, lr=1e-3, resume="latest", **FAST)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] != 9.0 for r in rows)


def test_sample_grids_are_written(pairs, tmp_path):
    out = train_diffusion(
        pairs, "tiny", tmp_path, steps=2, lr=1e-3, **{**FAST, "sample_every": 1}, sample_steps=2
    )
    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert grids == ["step_000001.png", "step_000002.png"]
    with Image.open(out / "samples" / grids[0]) as im:
        assert im.size == (8 * 16, 2 * 16)  # a row of training images above a row of samples


def test_shards_round_trip_and_train(pairs, tmp_path):
    images, styles = pairs
    write_shard(tmp_path / "shards", "part_a", images[:5], styles[:5])
    write_shard(tmp_path / "shards", "part_b", images[5:], styles[5:])
    data = ShardDataset(tmp_path / "shards")
    assert len(data) == 8
    image, style = data[6]
    assert torch.allclose(image, images[6], atol=1 / 127.5)
    assert torch.equal(style, styles[6])
    mean, std = data.style_stats()
    assert torch.allclose(mean, styles.mean(0), atol=1e-5)
    out = train_diffusion(tmp_path / "shards", "tiny", tmp_path / "run", steps=1, lr=1e-3, **FAST)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


def test_bad_shards_raise(tmp_path):
    np.save(tmp_path / "x.images.npy", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="x.styles.npy"):
        ShardDataset(tmp_path)
    np.save(tmp_path / "x.styles.npy", np.zeros((3, S), np.float32))
    with pytest.raises(InputError, match="styles"):
        ShardDataset(tmp_path)
    with pytest.raises(InputError, match="uint8"):
        write_shard(tmp_path, "y", np.zeros((2, 3, 16, 16), np.uint8), np.zeros((2, S)))


def test_image_folder_is_encoded_with_style_fn(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    calls = []

    def style_fn(x):
        calls.append(x.shape)
        return x.mean((2, 3)).repeat(1, S // 3 + 1)[:, :S]

    with pytest.raises(InputError, match="style_fn"):
        train_diffusion(folder, "tiny", tmp_path / "run", steps=1, **FAST)
    out = train_diffusion(folder, "tiny", tmp_path / "run", steps=1, style_fn=style_fn, **FAST)
    assert calls and calls[0][1:] == (3, 16, 16)  # resized to the UNet's size before encoding
    assert len(ShardDataset(out / "shards")) == 3


def test_image_size_mismatch_raises(pairs, tmp_path):
    images, styles = pairs
    with pytest.raises(InputError, match="px"):
        train_diffusion((images[:, :, :8, :8], styles), "tiny", tmp_path, steps=1, **FAST)


def test_cli_trains_from_shards(pairs, tmp_path):
    from deltaedit.cli import main

    write_shard(tmp_path / "shards", "s0", *pairs)
    args = ["train-diffusion", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "out")]
    args += ["--config", "tiny", "--steps", "2", "--batch-size", "4", "--warmup-steps", "0"]
    args += ["--sample-every", "0", "--no-progress"]
    assert main(args) == 0
    assert DiffusionBackbone.from_pretrained(tmp_path / "out").style_dim == S


# ---- the rendering-conditioned (residual) model ----------------------------------------------------
def _residual_config() -> dict:
    return dict(StyleConditionedUNet.tiny(S, render_channels=3).config)


@pytest.fixture
def triples(pairs):
    images, styles = pairs
    # A "generator" that gets each image nearly right: the residual is small and structured.
    renders = (images * 0.9 + 0.05 * torch.tanh(styles[:, :3]).view(-1, 3, 1, 1)).clamp(-1, 1)
    return images, styles, renders


def test_residual_loss_is_the_epsilon_loss_of_the_residual_given_the_rendering(triples):
    images, styles, renders = triples
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(S, render_channels=3)
    scheduler = make_noise_scheduler()
    noise, t = torch.randn(images.shape), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, images, styles, noise, t, renders)
        noisy = scheduler.add_noise(images - renders, noise, t)
        expected = torch.nn.functional.mse_loss(unet(noisy, t, styles, renders), noise)
        # Not the full-image loss, and the rendering is an input, not only a subtraction.
        full = torch.nn.functional.mse_loss(
            unet(scheduler.add_noise(images, noise, t), t, styles, renders), noise
        )
        blind = torch.nn.functional.mse_loss(unet(noisy, t, styles, renders * 0), noise)
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, full) and not torch.allclose(loss, blind)


def test_residual_training_lowers_the_loss_and_the_output_edits_with_renders(triples, tmp_path):
    images, styles, renders = triples
    config = _residual_config()
    before = train_diffusion(triples, config, tmp_path / "a", steps=0, lr=2e-3, **FAST)
    after = train_diffusion(triples, config, tmp_path / "b", steps=30, lr=2e-3, ema_decay=0.9, **FAST)

    def fixed_loss(path):
        unet = StyleConditionedUNet.from_pretrained(path).eval()
        g = torch.Generator().manual_seed(11)
        noise, t = torch.randn(images.shape, generator=g), torch.randint(0, 1000, (8,), generator=g)
        with torch.no_grad():
            return diffusion_loss(unet, make_noise_scheduler(), images, styles, noise, t, renders).item()

    assert fixed_loss(after) < 0.8 * fixed_loss(before)
    backbone = DiffusionBackbone.from_pretrained(after)
    assert backbone.render_channels == 3
    out = backbone.edit(images[:1], styles[:1], styles[1:3] - styles[:1], steps=3, render=renders[:3])
    assert out.edits.shape == (2, 3, 16, 16)


def test_residual_model_needs_renders_in_its_data(pairs, triples, tmp_path):
    with pytest.raises(InputError, match="render_channels 3.*renders"):
        train_diffusion(pairs, _residual_config(), tmp_path, steps=1, **FAST)
    # A plain model trains on data that carries renders, ignoring them (the old objective).
    out = train_diffusion(triples, "tiny", tmp_path / "plain", steps=1, lr=1e-3, **FAST)
    assert DiffusionBackbone.from_pretrained(out).render_channels == 0


def test_sample_grids_of_a_residual_model_add_the_rendering(triples, tmp_path):
    images, styles, renders = triples
    config = {**_residual_config(), "residual_scale": 4.0}
    out = train_diffusion(
        triples, config, tmp_path, steps=1, lr=1e-3, **{**FAST, "sample_every": 1}, sample_steps=2
    )
    with Image.open(out / "samples" / "step_000001.png") as im:
        assert im.size == (8 * 16, 2 * 16)
        grid = np.asarray(im.convert("RGB"), np.int16)
    # Row 1 is each shown example's image: R(s) + the residual its code decodes to from the grid's
    # fixed noise, divided by the residual scale (the weights saved after this one step are the
    # EMA weights the grid was drawn with).
    unet = StyleConditionedUNet.from_pretrained(out).eval()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(FAST["seed"]))
    residual = ddim_sample(unet, DEFAULT_SCHEDULER_CONFIG, noise, styles, 2, render=renders)
    want = np.concatenate(list(to_uint8_hwc(renders + residual / 4.0)), axis=1).astype(np.int16)
    assert np.abs(grid[16:] - want).max() <= 1
    # Without the rendering (the residual alone) or without the scale the row would differ.
    wrong = np.concatenate(list(to_uint8_hwc(residual / 4.0)), axis=1).astype(np.int16)
    assert np.abs(grid[16:] - wrong).max() > 20
    unscaled = np.concatenate(list(to_uint8_hwc(renders + residual)), axis=1).astype(np.int16)
    assert np.abs(grid[16:] - unscaled).max() > 5


def test_residual_scale_multiplies_the_diffused_residual(triples):
    images, styles, renders = triples
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(S, render_channels=3, residual_scale=8.0)
    scheduler = make_noise_scheduler()
    noise, t = torch.randn(images.shape), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, images, styles, noise, t, renders, residual_scale=8.0)
        noisy = scheduler.add_noise((images - renders) * 8.0, noise, t)
        expected = torch.nn.functional.mse_loss(unet(noisy, t, styles, renders), noise)
        unscaled = diffusion_loss(unet, scheduler, images, styles, noise, t, renders)
    assert torch.allclose(loss, expected) and not torch.allclose(loss, unscaled)


def test_shards_carry_renders(triples, tmp_path):
    images, styles, renders = triples
    write_shard(tmp_path / "shards", "part_a", images[:5], styles[:5], renders[:5])
    write_shard(tmp_path / "shards", "part_b", images[5:], styles[5:], renders[5:])
    data = ShardDataset(tmp_path / "shards")
    image, style, render = data[6]
    assert torch.allclose(image, images[6], atol=1 / 127.5)
    assert torch.equal(style, styles[6])
    assert torch.allclose(render, renders[6], atol=1e-3)  # stored as float16, not quantised to uint8
    assert (tmp_path / "shards" / "part_a.renders.npy").is_file()
    out = train_diffusion(tmp_path / "shards", _residual_config(), tmp_path / "run", steps=1, lr=1e-3, **FAST)
    assert DiffusionBackbone.from_pretrained(out).render_channels == 3


def test_bad_renders_raise(triples, tmp_path):
    images, styles, renders = triples
    with pytest.raises(InputError, match="renders must be"):
        write_shard(tmp_path, "x", images, styles, renders[:, :, :8])
    write_shard(tmp_path / "mixed", "a", images[:4], styles[:4], renders[:4])
    write_shard(tmp_path / "mixed", "b", images[4:], styles[4:])
    with pytest.raises(InputError, match="only 1 of the 2 shards"):
        ShardDataset(tmp_path / "mixed")
    np.save(tmp_path / "mixed" / "b.renders.npy", np.zeros((4, 3, 8, 8), np.float16))
    with pytest.raises(InputError, match="b.renders.npy"):
        ShardDataset(tmp_path / "mixed")
    with pytest.raises(InputError, match="renders must match"):
        train_diffusion(
            (images, styles, renders[:, :, :8]), _residual_config(), tmp_path / "r", steps=1, **FAST
        )


def test_a_negative_time_limit_is_refused_before_any_work(tmp_path, capsys):
    from deltaedit.cli import main

    for argv in (
        ["train-diffusion", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        ["toy", "train", "--stages", "diffusion", "--out", str(tmp_path / "toy")],
    ):
        assert main([*argv, "--time-limit", "-1"]) == 2
        assert "--time-limit is in minutes and must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "toy").exists()
