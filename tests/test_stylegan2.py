"""StyleGAN2 generator: official key layout, shapes, determinism, latents, the modulated conv maths."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from official_formats import random_state_dict

from deltaedit.config import load_domain_config
from deltaedit.errors import InputError
from deltaedit.nn.stylegan2 import Generator, ModulatedConv2d

TINY = dict(size=32, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


def tiny_generator(noise_strength: float = 0.0) -> Generator:
    G = Generator(**TINY).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(noise_strength)
    return G


def test_official_ffhq_state_dict_strict_loads(checkpoint_formats):
    G = Generator(1024)
    sd = random_state_dict(checkpoint_formats / "stylegan2-ffhq-config-f.pt.keys.txt")
    G.load_state_dict(sd, strict=True)
    assert G.n_latent == 18 and G.num_layers == 17
    torch.testing.assert_close(G.noises.noise_16, sd["noises.noise_16"])
    sd.pop("noises.noise_3")
    with pytest.raises(RuntimeError):
        G.load_state_dict(sd, strict=True)


def test_tiny_generator_shapes():
    G = tiny_generator()
    assert (G.n_latent, G.num_layers) == (8, 7)
    w = G.sample_w_plus(3, truncation=1.0, seed=1)
    assert w.shape == (3, 8, 16)
    with torch.no_grad():
        img = G.synthesis(w)
    assert img.shape == (3, 3, 32, 32) and torch.isfinite(img).all()


def test_from_toy_config():
    cfg = load_domain_config("toy").generator
    G = Generator.from_config(cfg)
    assert (G.size, G.style_dim) == (cfg.size, cfg.style_dim)
    assert G.n_latent == 2 * cfg.size.bit_length() - 4  # 2 * log2(size) - 2
    assert G.channels == cfg.channels
    assert G.style[1].lr_mul == cfg.lr_mlp
    assert len(G.style) == 1 + cfg.n_mlp


def test_fixed_noise_is_deterministic_random_noise_is_not():
    G = tiny_generator(noise_strength=1.0)
    w = G.sample_w_plus(2, truncation=1.0, seed=0)
    with torch.no_grad():
        a, b = G.synthesis(w), G.synthesis(w, noise="fixed")
        r1, r2 = G(w, noise="random"), G(w, noise="random")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(r1, r2)
    # A batch of identical codes gives identical images with fixed noise.
    with torch.no_grad():
        same = G.synthesis(w[:1].repeat(2, 1, 1))
    torch.testing.assert_close(same[0], same[1])


def test_sample_w_plus_seeding_and_truncation():
    G = tiny_generator()
    with torch.no_grad():
        a = G.sample_w_plus(4, truncation=0.7, seed=5)
        b = G.sample_w_plus(4, truncation=0.7, seed=torch.Generator().manual_seed(5))
        c = G.sample_w_plus(4, truncation=0.7, seed=6)
        mean = G.mean_latent(512)
        z = G.sample_w_plus(2, truncation=0.0, seed=1, mean_latent=mean)
        full = G.sample_w_plus(2, truncation=1.0, seed=1)
        half = G.sample_w_plus(2, truncation=0.5, seed=1, mean_latent=mean)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert (a == a[:, :1]).all(), "w must be broadcast to every W+ row"
    torch.testing.assert_close(z, mean.expand(2, G.n_latent, -1))
    torch.testing.assert_close(half, mean + 0.5 * (full - mean))


def test_bad_inputs_raise_input_error():
    G = tiny_generator()
    with pytest.raises(InputError, match="W\\+ must have shape"):
        G.synthesis(torch.zeros(1, 7, 16))
    with pytest.raises(InputError):
        G.synthesis(torch.zeros(1, 8, 16), noise="loud")
    with pytest.raises(InputError):
        Generator(48)
    with pytest.raises(InputError, match="lacks widths"):
        Generator(32, style_dim=8, channels={4: 8, 8: 8})


def test_no_mutable_default_arguments():
    for fn in (Generator.__init__, ModulatedConv2d.__init__):
        for p in inspect.signature(fn).parameters.values():
            assert not isinstance(p.default, (list, dict, set)), f"{fn.__qualname__}({p.name}=...) is mutable"


def test_gradients_flow_to_w_plus_and_weights():
    G = tiny_generator(noise_strength=0.1).train()
    w = G.sample_w_plus(2, truncation=1.0, seed=0).detach().requires_grad_(True)
    G(w, noise="random").square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert G.convs[-1].conv.weight.grad.abs().sum() > 0


def test_modulated_conv_equals_per_sample_convolution():
    torch.manual_seed(3)
    conv = ModulatedConv2d(6, 5, 3, style_dim=4)
    x, w = torch.randn(2, 6, 7, 7), torch.randn(2, 4)
    got = conv(x, w)
    s = conv.modulation(w)
    for i in range(2):
        weight = conv.scale * conv.weight[0] * s[i].view(1, 6, 1, 1)
        weight = weight / (weight.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(
            got[i : i + 1], F.conv2d(x[i : i + 1], weight, padding=1), atol=1e-5, rtol=1e-5
        )


def test_upsampling_conv_doubles_resolution():
    conv = ModulatedConv2d(4, 3, 3, style_dim=4, upsample=True)
    assert conv(torch.randn(2, 4, 5, 5), torch.randn(2, 4)).shape == (2, 3, 10, 10)
