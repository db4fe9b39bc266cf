"""e4e encoder: official key layout at the FFHQ config, the tiny toy variant, e4e's W+ semantics."""

from __future__ import annotations

import pytest
import torch
from official_formats import random_state_dict, read_listing

from deltaedit.config import EncoderConfig, load_domain_config
from deltaedit.nn.e4e import Encoder4Editing, encode

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def e4e_listing(checkpoint_formats):
    return checkpoint_formats / "e4e_ffhq_encode.pt.keys.txt"


def _encoder_rows(listing):
    return {
        k[len("encoder.") :]: (shape, dtype)
        for k, shape, dtype in read_listing(listing)
        if k.startswith("encoder.")
    }


@pytest.fixture(scope="module")
def ffhq_meta_encoder():
    # The FFHQ encoder has ~267M parameters: build it without memory to compare the layout.
    with torch.device("meta"):
        return Encoder4Editing.from_config(load_domain_config("ffhq").encoder, n_latent=18, style_dim=512)


@pytest.fixture
def toy_encoder():
    torch.manual_seed(0)
    enc = Encoder4Editing.from_config(load_domain_config("toy").encoder, n_latent=10, style_dim=128)
    return enc.eval()


# The W+ semantics do not depend on sizes: check them on a smaller net (32 px, widths 16-32).
TINY = EncoderConfig(input_size=32, num_layers=0, widths=(16, 16, 32, 32))


@pytest.fixture
def tiny_encoder():
    torch.manual_seed(0)
    return Encoder4Editing.from_config(TINY, n_latent=10, style_dim=16).eval()


# --- official layout -------------------------------------------------------------------------


def test_ffhq_state_dict_matches_official_listing(ffhq_meta_encoder, e4e_listing):
    rows = _encoder_rows(e4e_listing)
    ours = ffhq_meta_encoder.state_dict()
    assert set(ours) == set(rows)
    for key, tensor in ours.items():
        shape, dtype = rows[key]
        assert tuple(tensor.shape) == shape, key
        assert tensor.dtype == _DTYPES[dtype], key


def test_ffhq_strict_load_of_official_keys(ffhq_meta_encoder, e4e_listing):
    # Lazily allocated zeros stand in for the weights; strict=True checks names and shapes.
    state = {k: torch.zeros(shape, dtype=_DTYPES[d]) for k, (shape, d) in _encoder_rows(e4e_listing).items()}
    result = ffhq_meta_encoder.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(RuntimeError):
        ffhq_meta_encoder.load_state_dict({**state, "extra.weight": torch.zeros(1)}, strict=True, assign=True)


def test_ffhq_structure(ffhq_meta_encoder):
    enc = ffhq_meta_encoder
    assert len(enc.body) == 24 and len(enc.styles) == 18
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in s.convs) for s in enc.styles]
    assert convs == [4] * 3 + [5] * 4 + [6] * 11  # 16, 32, 64 px pyramid levels
    assert sum(p.numel() for p in enc.parameters()) > 250_000_000


@pytest.mark.slow
def test_ffhq_random_official_weights_encode(e4e_listing):
    """Strict load of seeded official-format weights and one real-size forward (1-2 min of CPU)."""
    state = {}
    for key, value in random_state_dict(e4e_listing).items():
        if key.startswith("encoder."):
            # Conv kernels scaled by fan-in so 24 residual units stay finite (EqualLinear scales itself).
            if value.ndim == 4:
                value = value / value[0].numel() ** 0.5
            state[key[len("encoder.") :]] = value
    enc = Encoder4Editing.from_config(load_domain_config("ffhq").encoder, 18, 512)
    enc.load_state_dict(state, strict=True)
    with torch.no_grad():
        w = encode(enc.eval(), torch.randn(18, 512), torch.rand(1, 3, 256, 256) * 2 - 1)
    assert w.shape == (1, 18, 512) and torch.isfinite(w).all()


# --- the toy variant -------------------------------------------------------------------------


def test_toy_forward_shape_and_pyramid(toy_encoder):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = toy_encoder(x)
    assert out.shape == (2, 10, 128) and torch.isfinite(out).all()
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in s.convs) for s in toy_encoder.styles]
    assert convs == [2] * 3 + [3] * 4 + [4] * 3  # 4, 8, 16 px pyramid levels at 64 px input
    assert sum(p.numel() for p in toy_encoder.parameters()) < 6_000_000
    assert not torch.allclose(out[0], out[1])  # depends on the image


def test_gradients_reach_every_parameter(tiny_encoder):
    enc = tiny_encoder.train()
    out = enc(torch.rand(2, 3, 32, 32) * 2 - 1)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


def test_wrong_input_size_is_rejected(tiny_encoder):
    with pytest.raises(ValueError, match="32"):
        tiny_encoder(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    "config", [EncoderConfig(num_layers=34), EncoderConfig(num_layers=0), EncoderConfig(mode="resnet")]
)
def test_bad_configs_are_rejected(config):
    with pytest.raises(ValueError):
        Encoder4Editing.from_config(config, 18, 512)


def test_plain_ir_mode_has_no_se_units():
    cfg = EncoderConfig(input_size=32, num_layers=0, mode="ir", widths=(16, 16, 32, 32))
    enc = Encoder4Editing.from_config(cfg, 10, 16)
    assert not any("fc1" in k for k in enc.state_dict())
    assert enc(torch.zeros(1, 3, 32, 32)).shape == (1, 10, 16)


# --- e4e's W+ semantics ----------------------------------------------------------------------


def _zero_linear(block, bias=None):
    with torch.no_grad():
        block.linear.weight.zero_()
        block.linear.bias.copy_(bias if bias is not None else torch.zeros_like(block.linear.bias))


def _c3(enc, x):
    h = enc.input_layer(x)
    for unit in enc.body:
        h = unit(h)
    return h


def test_latent_zero_is_shared_and_others_add_deltas(tiny_encoder):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    b = torch.randn(16)
    for i, block in enumerate(tiny_encoder.styles):
        if i:
            _zero_linear(block, b if i == 5 else None)
    with torch.no_grad():
        out = tiny_encoder(x)
        w0 = tiny_encoder.styles[0](_c3(tiny_encoder, x))  # style 0 reads the top level c3
    for i in range(10):
        torch.testing.assert_close(out[:, i], w0 + b if i == 5 else w0)


@pytest.mark.parametrize("layer, first_changed", [("latlayer1", 3), ("latlayer2", 7)])
def test_pyramid_levels_feed_medium_and_fine_latents(tiny_encoder, layer, first_changed):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = tiny_encoder(x)
        getattr(tiny_encoder, layer).bias.add_(1.0)
        after = tiny_encoder(x)
    diff = (after - before).abs().amax(dim=(0, 2))
    assert diff[:first_changed].max() == 0
    assert (diff[first_changed:] > 1e-4).all()


def test_encode_adds_latent_avg(tiny_encoder):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        offsets = tiny_encoder(x)
        per_layer = torch.randn(10, 16)
        one_w = torch.randn(16)
        for latent_avg, full in (
            (per_layer, per_layer),
            (per_layer[None], per_layer),
            (one_w, one_w.repeat(10, 1)),
            (one_w[None], one_w.repeat(10, 1)),
        ):
            # pSp.forward with start_from_latent_avg: codes + latent_avg.repeat(B, 1, 1)
            torch.testing.assert_close(encode(tiny_encoder, latent_avg, x), offsets + full.repeat(3, 1, 1))
