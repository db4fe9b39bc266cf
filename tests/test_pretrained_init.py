"""`train-diffusion --init`: a public unconditional DDPM + zero-initialised style (and rendering) conditioning.

At step 0 the conditioned model must equal the public model exactly, for a tiny stand-in built with
`from_config` and for the official google/ddpm-ema-celebahq-256 shape (random weights); loading goes
through local folders and a fake hub cache, never the network.
"""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import UNet2DModel

from deltaedit import weights
from deltaedit.errors import InputError, WeightsError
from deltaedit.pipelines.diffusion import DiffusionBackbone
from deltaedit.training.diffusion import diffusion_loss, make_noise_scheduler, train_diffusion
from deltaedit.training.pretrained_init import (
    DDPM_EMA_CELEBAHQ_256_CONFIG,
    SplitInputConv,
    conditioned_from_pretrained,
    init_from_pretrained,
    load_pretrained_unet,
)

S = 12
FAST = dict(sample_every=0, checkpoint_every=0, progress=False, warmup_steps=0, batch_size=2)


def tiny_config(**overrides) -> dict:
    """The official config's kind (default time shift, one attention head, freq_shift 1), shrunk."""
    cfg = {
        **DDPM_EMA_CELEBAHQ_256_CONFIG,
        "sample_size": 16,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 4,
    }
    return {**cfg, **overrides}


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    torch.manual_seed(1)
    return UNet2DModel.from_config(tiny_config()).eval()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DELTAEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("DELTAEDIT_WEIGHTS_DIR", "HF_HUB_OFFLINE", "DELTAEDIT_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(weights, "_reachability", {})
    monkeypatch.setattr(weights, "TIMEOUT", 3.0)
    registry = dict(weights.REGISTRY)
    yield tmp_path
    weights.REGISTRY.clear()
    weights.REGISTRY.update(registry)  # drop repos registered on the fly


def _inputs(size: int, batch: int = 2, style_dim: int = S, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    s = torch.randn(batch, style_dim, generator=g) * 3
    render = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return x, t, s, render


def _assert_equals_pretrained(unet, model, size, style_dim=S):
    x, t, s, render = _inputs(size, style_dim=style_dim)
    with torch.no_grad():
        want = unet(x, t).sample
        got = model(x, t, s, render if model.config.render_channels else None)
        other = model(x, t, -s, -render if model.config.render_channels else None)
    assert torch.equal(got, want)
    assert torch.equal(other, want)  # whatever s and rendering: the conditioning is exactly zero


# ---- the zero-initialised conditioning ----------------------------------------------------------------------
@pytest.mark.parametrize("render_channels", [0, 3])
def test_tiny_stand_in_equals_pretrained_at_step_zero(tiny_unet, render_channels):
    model = conditioned_from_pretrained(tiny_unet, S, render_channels)
    assert not model.training
    assert model.config.time_scale_shift == "default"  # taken from the public model
    assert model.config.unet_extra["freq_shift"] == 1 and model.config.attention_head_dim is None
    _assert_equals_pretrained(tiny_unet, model, 16)
    # The test can fail: any non-zero conditioning weight changes the output.
    with torch.no_grad():
        model.style_proj[-1].bias.add_(0.1)
    x, t, s, render = _inputs(16)
    with torch.no_grad():
        assert not torch.equal(model(x, t, s, render if render_channels else None), tiny_unet(x, t).sample)


def test_rendering_channels_start_at_zero_and_are_wired(tiny_unet):
    model = conditioned_from_pretrained(tiny_unet, S, render_channels=3)
    conv = model.unet.conv_in
    assert isinstance(conv, SplitInputConv) and conv.weight.shape[1] == 6
    assert torch.equal(conv.weight[:, :3], tiny_unet.conv_in.weight)
    assert torch.count_nonzero(conv.weight[:, 3:]) == 0
    with torch.no_grad():
        conv.weight[:, 3:].normal_()
    x, t, s, render = _inputs(16)
    with torch.no_grad():
        assert not torch.equal(model(x, t, s, render), tiny_unet(x, t).sample)


def test_saved_conditioned_model_reloads_as_plain_style_unet(tiny_unet, tmp_path):
    model = conditioned_from_pretrained(tiny_unet, S, render_channels=3)
    model.save_pretrained(tmp_path / "m")
    back = DiffusionBackbone.from_pretrained(tmp_path / "m").unet
    assert back.config.render_channels == 3 and back.config.unet_extra == model.config.unet_extra
    x, t, s, render = _inputs(16)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, s, render), model(x, t, s, render), rtol=0, atol=1e-5)


def test_class_conditional_and_mismatched_models_are_refused():
    with pytest.raises(InputError, match="class-conditional"):
        conditioned_from_pretrained(UNet2DModel.from_config(tiny_config(num_class_embeds=10)), S)
    with pytest.raises(InputError, match="output channels"):
        conditioned_from_pretrained(UNet2DModel.from_config(tiny_config(out_channels=6)), S)
    with pytest.raises(WeightsError, match="does not fit"):
        conditioned_from_pretrained(
            UNet2DModel.from_config(tiny_config()), S, style_hidden_dim=4, layers_per_block=2
        )


# ---- loading: folders and the hub cache ---------------------------------------------------------------------
def test_loads_a_unet_folder_and_a_pipeline_folder(tiny_unet, tmp_path):
    tiny_unet.save_pretrained(tmp_path / "plain")
    tiny_unet.save_pretrained(tmp_path / "pipeline" / "unet")
    (tmp_path / "pipeline" / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    for folder in ("plain", "pipeline"):
        model = init_from_pretrained(tmp_path / folder, S, render_channels=3)
        _assert_equals_pretrained(tiny_unet, model, 16)


def test_a_folder_without_a_unet_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="UNet2DModel"):
        load_pretrained_unet(tmp_path / "empty")
    with pytest.raises(InputError, match="not a hub repo id"):
        load_pretrained_unet("no such folder")


def _fake_hub_snapshot(root, repo_id: str, unet: UNet2DModel, commit: str = "c" * 40):
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    unet.save_pretrained(snapshot)
    return snapshot


def test_hub_repo_from_the_hub_cache_offline(tiny_unet, tmp_path, monkeypatch):
    snapshot = _fake_hub_snapshot(tmp_path / "hf", "org/tiny-ddpm", tiny_unet)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = init_from_pretrained("org/tiny-ddpm", S)
    _assert_equals_pretrained(tiny_unet, model, 16)
    assert weights.resolve(weights.hub_folder_tag("org/tiny-ddpm")) == snapshot


def test_registered_public_model_found_in_weights_dir(tiny_unet, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_unet.save_pretrained(tmp_path / "w" / "ddpm-ema-celebahq-256")
    model = init_from_pretrained("google/ddpm-ema-celebahq-256", S, weights_dir=tmp_path / "w")
    _assert_equals_pretrained(tiny_unet, model, 16)


def test_hub_repo_offline_and_missing_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_pretrained_unet("google/ddpm-ema-celebahq-256")
    assert time.perf_counter() - t0 < 10
    message = str(info.value)
    assert "offline" in message and "hf download google/ddpm-ema-celebahq-256" in message
    assert "--weights-dir" in message


def test_hub_download_is_limited_to_the_unet_files(tiny_unet, tmp_path, monkeypatch):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, local_files_only=False, allow_patterns=None, revision=None, **kw):
        if local_files_only:
            raise FileNotFoundError("not cached")
        seen.update(repo_id=repo_id, allow_patterns=allow_patterns, revision=revision)
        return str(_fake_hub_snapshot(tmp_path / "hf", repo_id, tiny_unet))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(weights, "_check_reachable", lambda url: None)
    model = init_from_pretrained("org/other-ddpm@main", S)
    _assert_equals_pretrained(tiny_unet, model, 16)
    assert seen["repo_id"] == "org/other-ddpm" and seen["revision"] == "main"
    assert "unet/diffusion_pytorch_model.safetensors" in seen["allow_patterns"]
    assert not any(p.startswith("*") for p in seen["allow_patterns"])  # no whole-repo download


# ---- training from the initialisation ------------------------------------------------------------------------
@pytest.mark.parametrize("render_channels", [0, 3])
def test_train_diffusion_starts_from_init(tiny_unet, tmp_path, render_channels):
    model = conditioned_from_pretrained(tiny_unet, S, render_channels)
    g = torch.Generator().manual_seed(0)
    data = [torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, S, generator=g)]
    if render_channels:
        data.append(torch.rand(4, 3, 16, 16, generator=g) * 2 - 1)
    out = train_diffusion(tuple(data), dict(model.config), tmp_path / "run", steps=2, init=model, **FAST)
    trained = DiffusionBackbone.from_pretrained(out).unet
    assert trained.config.time_scale_shift == "default"
    # Both new parts left zero: the conditioning is being learned.
    assert torch.count_nonzero(trained.style_proj[-1].weight) > 0
    if render_channels:
        assert torch.count_nonzero(trained.unet.conv_in.weight[:, 3:]) > 0


def test_init_with_the_wrong_style_size_is_refused(tiny_unet, tmp_path):
    model = conditioned_from_pretrained(tiny_unet, S + 1)
    data = (torch.zeros(2, 3, 16, 16), torch.zeros(2, S))
    with pytest.raises(InputError, match="style values"):
        train_diffusion(data, "tiny", tmp_path / "run", steps=1, init=model, **FAST)


# ---- the official shape ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_unet() -> UNet2DModel:
    torch.manual_seed(2)
    return UNet2DModel.from_config(DDPM_EMA_CELEBAHQ_256_CONFIG).eval()


def test_official_shape_equals_pretrained_and_trains_one_step(official_unet):
    """google/ddpm-ema-celebahq-256's architecture (random weights): exact at step 0, then one CPU
    training step at batch 1. The UNet is fully convolutional, so this runs at 64 px (attention at
    4 px instead of 16) to stay fast; the 256 px run is the slow test below."""
    assert sum(p.numel() for p in official_unet.parameters()) == pytest.approx(113.7e6, rel=1e-3)
    style_dim = 6048
    model = conditioned_from_pretrained(official_unet, style_dim, render_channels=3)
    _assert_equals_pretrained(official_unet, model, 64, style_dim)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, s, render = _inputs(64, batch=1, style_dim=style_dim)
    loss = diffusion_loss(model, make_noise_scheduler(), x, s, torch.randn_like(x), t, render)
    loss.backward()
    assert model.style_proj[-1].weight.grad.abs().sum() > 0
    assert model.unet.conv_in.weight.grad[:, 3:].abs().sum() > 0
    optimizer.step()
    assert torch.isfinite(loss) and torch.count_nonzero(model.style_proj[-1].weight) > 0


@pytest.mark.slow
def test_official_shape_at_256_px_through_train_diffusion(official_unet, tmp_path):
    """The full-size path on CPU: exact equality at 256 px and one train_diffusion step at batch 1
    (about 4 minutes on one thread of this project's 2-core machine)."""
    style_dim = 6048
    model = conditioned_from_pretrained(official_unet, style_dim, render_channels=3)
    _assert_equals_pretrained(official_unet, model, 256, style_dim)
    g = torch.Generator().manual_seed(0)
    data = (
        torch.rand(1, 3, 256, 256, generator=g) * 2 - 1,
        torch.randn(1, style_dim, generator=g),
        torch.rand(1, 3, 256, 256, generator=g) * 2 - 1,
    )
    fast = {**FAST, "batch_size": 1}
    out = train_diffusion(data, dict(model.config), tmp_path / "run", steps=1, init=model, **fast)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
