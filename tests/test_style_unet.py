"""StyleConditionedUNet: conditioning path, standardisation, presets, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from deltaedit.errors import InputError
from deltaedit.nn.style_unet import FFHQ_CONFIG, TOY_CONFIG, StyleConditionedUNet


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return StyleConditionedUNet.tiny(style_dim=16, sample_size=16).eval()


def _inputs(batch=2, size=16, style_dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, style_dim, generator=g)


@torch.no_grad()
def test_output_shape_and_style_conditioning(unet):
    x, s = _inputs()
    out = unet(x, 500, s)
    assert out.shape == x.shape
    assert torch.equal(out, unet(x, 500, s.clone()))  # same s: bit-exact
    other = unet(x, 500, s + torch.randn_like(s))
    assert (other - out).abs().max() > 1e-3  # s reaches the output


@torch.no_grad()
def test_style_changes_every_resnet_scale_shift(unet):
    """s enters through the time embedding, which every residual block turns into scale and shift."""
    x, s = _inputs(batch=1)
    seen = {}
    hooks = [
        m.time_emb_proj.register_forward_hook(lambda mod, i, o, name=n: seen.setdefault(name, []).append(o))
        for n, m in unet.named_modules()
        if hasattr(m, "time_emb_proj") and m.time_emb_proj is not None
    ]
    unet(x, 10, s)
    unet(x, 10, s + 1)
    for h in hooks:
        h.remove()
    assert len(seen) >= 4
    assert all(m.time_embedding_norm == "scale_shift" for m in unet.modules() if hasattr(m, "time_emb_proj"))
    for outputs in seen.values():
        assert not torch.allclose(outputs[0], outputs[1])


@torch.no_grad()
def test_patch_size_keeps_full_resolution():
    torch.manual_seed(0)
    m = StyleConditionedUNet(
        style_dim=8, sample_size=16, patch_size=2, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    ).eval()  # fmt: skip
    x, s = _inputs(batch=1, style_dim=8)
    assert m(x, 3, s).shape == x.shape
    assert m.unet.config.sample_size == 8 and m.unet.config.in_channels == 12


@torch.no_grad()
def test_style_standardisation(unet):
    mean, std = torch.randn(16), torch.rand(16) + 0.5
    std[3] = 0.0  # a constant channel must not divide by zero
    unet.set_style_stats(mean, std)
    assert unet.style_std[3] == 1.0
    # The mean code maps to the projection of the zero vector.
    assert torch.allclose(unet.embed_style(mean[None]), unet.style_proj(torch.zeros(1, 16)), atol=1e-6)
    # Scaling a channel's deviation by its std is undone by the standardisation.
    s = mean + std * torch.randn(16)
    z = (s - unet.style_mean) / unet.style_std
    assert torch.allclose(unet.embed_style(s[None]), unet.style_proj(z[None]), atol=1e-6)


def test_save_load_round_trip(unet, tmp_path):
    unet.set_style_stats(torch.randn(16), torch.rand(16) + 0.1)
    unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "StyleConditionedUNet" and config["style_dim"] == 16
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = StyleConditionedUNet.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, StyleConditionedUNet)
    ref, got = unet.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # includes style_mean / style_std buffers
    x, s = _inputs()
    with torch.no_grad():
        # Same weights; freshly loaded tensors may take another conv kernel path (last-bit differences).
        assert torch.allclose(unet(x, 7, s), loaded(x, 7, s), atol=1e-5)


def test_bad_style_shape_raises(unet):
    x, s = _inputs()
    with pytest.raises(InputError, match="style code"):
        unet(x, 1, s[:, :5])
    with pytest.raises(InputError, match="batch mismatch"):
        unet(x, 1, s[:1])


def test_toy_preset_is_small_and_ffhq_preset_is_256px():
    torch.manual_seed(0)
    toy = StyleConditionedUNet.from_preset("toy", style_dim=1024)
    size_bytes = sum(p.numel() * p.element_size() for p in toy.state_dict().values())
    assert size_bytes < 15e6
    assert toy.config.sample_size == 64 == TOY_CONFIG["sample_size"]
    with torch.no_grad():
        assert toy(torch.zeros(1, 3, 64, 64), 1, torch.zeros(1, 1024)).shape == (1, 3, 64, 64)
    assert FFHQ_CONFIG["sample_size"] == 256
    with pytest.raises(InputError, match="preset"):
        StyleConditionedUNet.from_preset("nope", style_dim=4)
