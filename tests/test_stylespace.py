"""Style space S: layout numbers, split/join, S encode/decode against plain synthesis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaedit.errors import InputError
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import StyleLayout, decode_s, layout_from_generator, w_plus_to_s

TINY = dict(size=32, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


@pytest.fixture(scope="module")
def ffhq_generator() -> Generator:
    return Generator(1024).eval()


def tiny_generator() -> Generator:
    G = Generator(**TINY).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)  # make the fixed noise buffers matter
    return G


def test_ffhq_layout_numbers(ffhq_generator):
    layout = layout_from_generator(ffhq_generator)
    assert layout.n_layers == 17 and layout.total == 6048
    assert layout.widths == (512,) * 10 + (256, 256, 128, 128, 64, 64, 32)
    groups = layout.groups()
    assert len(groups["coarse"]) == 3 and len(groups["medium"]) == 4
    assert {layout.resolutions[i] for i in groups["coarse"]} == {4, 8}
    assert sum(layout.widths[i] for i in groups["fine"]) == 2464
    assert layout.group_slice("fine") == slice(7 * 512, 6048)
    assert layout.offsets[:3] == (0, 512, 1024) and layout.offsets[-1] == 6048 - 32


def test_split_join_round_trip():
    layout = StyleLayout(widths=(4, 4, 3, 2), resolutions=(4, 8, 8, 16))
    flat = torch.randn(5, 13)
    parts = layout.split(flat)
    assert [p.shape[1] for p in parts] == [4, 4, 3, 2]
    torch.testing.assert_close(parts[2], flat[:, 8:11])
    torch.testing.assert_close(layout.join(parts), flat)
    with pytest.raises(InputError):
        layout.split(torch.randn(5, 12))
    with pytest.raises(InputError):
        layout.join(parts[::-1])


def test_decode_of_encoded_w_plus_equals_synthesis():
    G = tiny_generator()
    w = G.sample_w_plus(3, truncation=1.0, seed=2)
    with torch.no_grad():
        s = w_plus_to_s(G, w)
        layout = layout_from_generator(G)
        assert [t.shape[1] for t in s] == list(layout.widths)
        want = G.synthesis(w, noise="fixed")
        torch.testing.assert_close(decode_s(G, s, w), want, atol=1e-5, rtol=1e-5)
        # The flat form decodes the same.
        torch.testing.assert_close(decode_s(G, layout.join(s), w), want, atol=1e-5, rtol=1e-5)
        # Per-row W+ (not broadcast) also round-trips: each conv reads its own row.
        w_mixed = w + 0.3 * torch.randn_like(w)
        torch.testing.assert_close(
            decode_s(G, w_plus_to_s(G, w_mixed), w_mixed), G.synthesis(w_mixed), atol=1e-5, rtol=1e-5
        )


def test_editing_s_changes_image_and_to_rgb_reads_w_plus():
    G = tiny_generator()
    w1 = G.sample_w_plus(1, truncation=1.0, seed=3)
    w2 = G.sample_w_plus(1, truncation=1.0, seed=4)
    with torch.no_grad():
        s = w_plus_to_s(G, w1)
        base = decode_s(G, s, w1)
        edited = [t.clone() for t in s]
        edited[4][:, 0] += 5.0
        assert not torch.allclose(decode_s(G, edited, w1), base)
        assert not torch.allclose(decode_s(G, s, w2), base), "ToRGB must use the modulation of w_plus"
        # Silence every ToRGB modulation: then w_plus no longer matters, S alone drives the convs.
        for rgb in [G.to_rgb1, *G.to_rgbs]:
            rgb.conv.modulation.weight.zero_()
        torch.testing.assert_close(decode_s(G, s, w1), decode_s(G, s, w2))


def test_decode_shares_a_single_w_plus_over_a_batch_of_codes():
    G = tiny_generator()
    w = G.sample_w_plus(1, truncation=1.0, seed=1)
    with torch.no_grad():
        s = torch.cat([torch.cat(w_plus_to_s(G, w), 1)] * 2)
        s[1, :16] += 1.0
        img = decode_s(G, s, w)
    assert img.shape[0] == 2 and not torch.allclose(img[0], img[1])


def test_real_ffhq_latents_match_the_layout(ffhq_examples, ffhq_generator):
    wplus = torch.from_numpy(np.load(ffhq_examples / "wplus_img_feat.npy"))
    s_real = np.load(ffhq_examples / "sspace_img_feat.npy")
    G = ffhq_generator
    assert tuple(wplus.shape[1:]) == (G.n_latent, G.style_dim)
    with torch.no_grad():
        s = w_plus_to_s(G, wplus)
    layout = layout_from_generator(G)
    assert torch.cat(s, 1).shape == s_real.shape
    assert layout.total == s_real.shape[1]
    parts = layout.split(torch.from_numpy(s_real))
    assert [p.shape[1] for p in parts] == list(layout.widths)
