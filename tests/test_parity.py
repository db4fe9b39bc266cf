"""Parity of `python -m deltaedit edit` (DeltaEdit-G) with the authors' inference scripts.

`authors_edit` below re-implements, independently of `deltaedit.pipelines` / `deltaedit.clip` /
`deltaedit.nn.stylespace`, the sequence of the official `scripts/inference.py` (W+ latents) and
`scripts/inference_real.py` (photos), as described in DESIGN.md and docs/parity.md. Only the
networks are borrowed (our StyleGAN2 / DeltaMapper / e4e modules hold the weights); every step
around them is written out here:

- weights read straight from the official containers (`g_ema`, bare mapper state, e4e's
  `encoder.*` + `latent_avg`, fs3 .npy, an open_clip safetensors state dict);
- S = conv modulations of W+ (`encoder_latent`), 17 layers at 1024;
- CLIP image feature: nn.Upsample(scale_factor=7) + nn.AvgPool2d(size*7 // clip size) +
  `encode_image` on the source rendering (latents) or on the 256 px encoder input (photos);
- Δt: 79 templates, full 77-token `model.encode_text`, per-row L2 norm, mean, L2 norm, difference
  (`map_tool.GetDt`); select = |fs3 · Δt_raw| < threshold (`GetBoundary`);
- condition = cat(i/|i|, Δt / max(|Δt|, 1e-5)); Δs = mapper(s, condition); Δs[select] = 0;
- `decoder_validate`: modulated convs from S (`conv_warper`), ToRGB from W+ rows 1, 3, 5, ...,
  the generator's fixed noise buffers; both images saved by torchvision `save_image(normalize=True,
  value_range=(-1, 1))` as one strip.

The CLI's PNGs must equal the reference pixels up to 8-bit rounding (max difference 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from fixtures_ffhq import (
    CLIP_FILE,
    E4E_FILE,
    FFHQ_CLIP,
    FS3_FILE,
    GENERATOR_FILE,
    MAPPER_FILE,
    tiny_latents,
)
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image
from torchvision import transforms
from torchvision.utils import save_image

from deltaedit import cli
from deltaedit.config import EncoderConfig
from deltaedit.nn.e4e import Encoder4Editing
from deltaedit.nn.mapper import DeltaMapper
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import StyleLayout

pytest_plugins = ["fixtures_ffhq"]  # tiny_ffhq, ffhq_weights, ffhq_weights_with_e4e

PHOTO = "data/photos/aligned_face_256.jpg"
NEUTRAL = "face"  # hard-coded in the authors' scripts
# utils/map_tool.py: OpenAI's ImageNet templates with 'a photo of many {}.' commented out.
AUTHORS_TEMPLATES = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES if t("{}") != "a photo of many {}."]


# ---- the authors' sequence -------------------------------------------------------------------
@dataclass
class AuthorsNets:
    G: Generator
    mapper: DeltaMapper
    clip: torch.nn.Module
    clip_size: int
    fs3: np.ndarray
    encoder: Encoder4Editing | None = None
    latent_avg: torch.Tensor | None = None
    encoder_size: int = 256


def load_authors_nets(weights: Path, gen_kwargs: dict, clip_model, encoder_cfg=None) -> AuthorsNets:
    G = Generator(**gen_kwargs)
    G.load_state_dict(torch.load(weights / GENERATOR_FILE, weights_only=True)["g_ema"], strict=True)
    G.eval()
    widths = [G.conv1.conv.in_channel] + [c.conv.in_channel for c in G.convs]
    resolutions = [4] + [4 * 2 ** (k // 2 + 1) for k in range(len(G.convs))]
    mapper = DeltaMapper(StyleLayout(widths, resolutions), clip_dim=clip_model.text_projection.shape[1])
    mapper.load_state_dict(torch.load(weights / MAPPER_FILE, weights_only=True), strict=True)
    mapper.eval()
    from safetensors.torch import load_file

    clip_model.load_state_dict(load_file(str(weights / CLIP_FILE)), strict=True)
    clip_model.eval()
    nets = AuthorsNets(G, mapper, clip_model, clip_model.visual.image_size[0], np.load(weights / FS3_FILE))
    if encoder_cfg is not None:
        ckpt = torch.load(weights / E4E_FILE, weights_only=True)
        enc = Encoder4Editing(encoder_cfg, G.n_latent, G.style_dim)
        # inference_real.py get_keys(ckpt, 'encoder'): keys after 'encoder.'
        enc.load_state_dict(
            {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")},
            strict=True,
        )
        nets.encoder, nets.latent_avg, nets.encoder_size = (
            enc.eval(),
            ckpt["latent_avg"],
            encoder_cfg.input_size,
        )
    return nets


def zeroshot_embedding(model, phrase: str) -> torch.Tensor:
    texts = [t.format(phrase) for t in AUTHORS_TEMPLATES]
    tokens = open_clip.tokenize(texts)  # the full 77-token context, as clip.tokenize
    emb = model.encode_text(tokens)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    mean = emb.mean(dim=0)
    return mean / mean.norm()


def get_dt(model, target: str, neutral: str) -> np.ndarray:
    return (zeroshot_embedding(model, target) - zeroshot_embedding(model, neutral)).numpy()


def encoder_latent(G, w: torch.Tensor) -> torch.Tensor:
    styles = [G.conv1.conv.modulation(w[:, 0])]
    for i, conv in enumerate(G.convs):
        styles.append(conv.conv.modulation(w[:, i + 1]))
    return torch.cat(styles, dim=1)


def conv_warper(layer, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    conv = layer.conv
    batch, in_channel, height, width = x.shape
    weight = conv.scale * conv.weight * style.view(batch, 1, in_channel, 1, 1)
    if conv.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * demod.view(batch, conv.out_channel, 1, 1, 1)
    k = conv.kernel_size
    x = x.reshape(1, batch * in_channel, height, width)
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(batch * in_channel, conv.out_channel, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
        out = conv.blur(out.view(batch, conv.out_channel, *out.shape[2:]))
    else:
        out = F.conv2d(
            x, weight.reshape(batch * conv.out_channel, in_channel, k, k), padding=k // 2, groups=batch
        )
        out = out.view(batch, conv.out_channel, *out.shape[2:])
    return layer.activate(layer.noise(out, noise=noise))


def decoder_validate(G, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    widths = [G.conv1.conv.in_channel] + [c.conv.in_channel for c in G.convs]
    styles = list(torch.split(s, widths, dim=1))
    noise = [getattr(G.noises, f"noise_{i}") for i in range(len(widths))]
    out = G.input.input.repeat(w.shape[0], 1, 1, 1)
    out = conv_warper(G.conv1, out, styles[0], noise[0])
    skip = G.to_rgb1(out, w[:, 1])
    i = 1
    for conv1, conv2, noise1, noise2, to_rgb in zip(
        G.convs[::2], G.convs[1::2], noise[1::2], noise[2::2], G.to_rgbs
    ):
        out = conv_warper(conv1, out, styles[i], noise1)
        out = conv_warper(conv2, out, styles[i + 1], noise2)
        skip = to_rgb(out, w[:, i + 2], skip)
        i += 2
    return skip


def clip_image_feature(model, image: torch.Tensor, clip_size: int) -> torch.Tensor:
    size = image.shape[-1]
    x = torch.nn.Upsample(scale_factor=7)(image)
    x = torch.nn.AvgPool2d(kernel_size=size * 7 // clip_size)(x)
    return model.encode_image(x)


@torch.no_grad()
def authors_edit(nets: AuthorsNets, out: Path, *, target: str, latent=None, photo=None, threshold=0.03):
    """The strip [source | edit] as the scripts save it, read back as uint8 [H, 2W, 3]; plus facts."""
    dt = get_dt(nets.clip, target, NEUTRAL)
    select = np.abs(np.dot(nets.fs3, dt)) < threshold
    dt = torch.Tensor(dt)
    dt = dt / dt.norm(dim=-1, keepdim=True).float().clamp(min=1e-5)

    if photo is not None:  # inference_real.py
        tf = transforms.Compose(
            [
                transforms.Resize(nets.encoder_size),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        input_img = tf(Image.open(photo).convert("RGB")).unsqueeze(0)
        latent_w = nets.encoder(input_img)
        latent_w = latent_w + nets.latent_avg.repeat(latent_w.shape[0], 1, 1)
        latent_s = encoder_latent(nets.G, latent_w)
        c = clip_image_feature(nets.clip, input_img, nets.clip_size)
        c = c / c.norm(dim=-1, keepdim=True).float()
        delta_c = torch.cat((c, dt.unsqueeze(0)), dim=1)
    else:  # inference.py with generate_codes.py's precomputed CLIP feature
        latent_w = torch.as_tensor(latent, dtype=torch.float32).reshape(1, nets.G.n_latent, -1)
        latent_s = encoder_latent(nets.G, latent_w)
        # generate_codes.py's feature of the image decoded from S (the same image as img_ori)
        img_ori = decoder_validate(nets.G, latent_s, latent_w)
        c = clip_image_feature(nets.clip, img_ori, nets.clip_size)
        c = c / c.norm(dim=-1, keepdim=True)
        delta_c = torch.cat([c, c], dim=1)
        delta_c[0, c.shape[1] :] = dt

    fake_delta_s = nets.mapper(latent_s, delta_c)
    ds = fake_delta_s[0].clone()
    ds[torch.from_numpy(select)] = 0
    if photo is not None:
        img_ori = decoder_validate(nets.G, latent_s, latent_w)
    img_gen = decoder_validate(nets.G, latent_s + ds.unsqueeze(0), latent_w)
    save_image(torch.cat([img_ori, img_gen], dim=3), out, normalize=True, value_range=(-1, 1))
    strip = np.asarray(Image.open(out).convert("RGB")).astype(np.int16)
    return strip, {"select": select, "delta_s": ds}


# ---- comparing -------------------------------------------------------------------------------
def read_png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGB", (img.format, img.mode)
    return np.asarray(img).astype(np.int16)


def assert_pixels_match(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"
    assert (diff > 0).mean() < 0.01, f"{(diff > 0).mean():.2%} of the values differ by one level"


def check_cli_against_reference(tmp_path, argv_source, strip, info, extra_args=(), weights=None, target=""):
    out, src = tmp_path / "edit.png", tmp_path / "source.png"
    argv = ["edit", "--backbone", "gan", "--domain", "ffhq", "--weights-dir", str(weights)]
    argv += [*argv_source, "--target", target, "--device", "cpu", "--out", str(out), "--source-out", str(src)]
    assert cli.main([*argv, *extra_args]) == 0
    width = strip.shape[1] // 2
    source_ref, edit_ref = strip[:, :width], strip[:, width:]
    assert_pixels_match(read_png(src), source_ref)
    assert_pixels_match(read_png(out), edit_ref)
    # Not vacuous: the selection keeps some channels and zeroes others, and the edit shows.
    assert 0 < info["select"].sum() < info["select"].size
    assert np.abs(edit_ref - source_ref).mean() > 1.0
    return out, src


# ---- the tiny FFHQ domain (fast) -------------------------------------------------------------
def tiny_nets(domain, with_encoder: bool = False) -> AuthorsNets:
    raw = json.loads((domain.config_dir / "ffhq.json").read_text())
    gen = raw["generator"]
    gen_kwargs = dict(
        size=gen["size"],
        style_dim=gen["style_dim"],
        n_mlp=gen["n_mlp"],
        channel_multiplier=gen["channel_multiplier"],
        channels={int(k): v for k, v in gen["channels"].items()},
    )
    clip_model = open_clip.CLIP(**json.loads(domain.clip_json.read_text()))
    enc = raw["encoder"]
    encoder_cfg = EncoderConfig(enc["input_size"], enc["num_layers"], enc["mode"], tuple(enc["widths"]))
    return load_authors_nets(domain.weights, gen_kwargs, clip_model, encoder_cfg if with_encoder else None)


def test_tiny_latents_cli_equals_authors_sequence(tiny_ffhq, tmp_path):
    nets = tiny_nets(tiny_ffhq)
    w = tiny_latents(tiny_ffhq, seed=3)
    np.save(tmp_path / "w.npy", w[None].numpy())  # [1, n_latent, style_dim]
    target = "face with blond hair"
    strip, info = authors_edit(nets, tmp_path / "ref.png", target=target, latent=w, threshold=0.05)
    check_cli_against_reference(
        tmp_path,
        ["--latents", str(tmp_path / "w.npy")],
        strip,
        info,
        extra_args=["--threshold", "0.05"],
        weights=tiny_ffhq.weights,
        target=target,
    )


def test_tiny_photo_cli_equals_authors_sequence(tiny_ffhq, shared_dir, tmp_path):
    nets = tiny_nets(tiny_ffhq, with_encoder=True)
    photo = shared_dir / PHOTO
    target = "face with eyeglasses"
    strip, info = authors_edit(nets, tmp_path / "ref.png", target=target, photo=photo)
    out, _ = check_cli_against_reference(
        tmp_path,
        ["--image", str(photo), "--no-align"],
        strip,
        info,
        weights=tiny_ffhq.weights,
        target=target,
    )
    assert Image.open(out).size == (64, 64)  # the generator's resolution, not the photo's


# ---- the real FFHQ shapes --------------------------------------------------------------------
def ffhq_nets(weights: Path, with_encoder: bool = False) -> AuthorsNets:
    torch.manual_seed(0)
    clip_model = open_clip.create_model(FFHQ_CLIP, pretrained=None)
    encoder_cfg = EncoderConfig(input_size=256, num_layers=50, mode="ir_se") if with_encoder else None
    return load_authors_nets(weights, dict(size=1024, style_dim=512, n_mlp=8), clip_model, encoder_cfg)


def test_ffhq_latents_cli_equals_authors_sequence(ffhq_weights, ffhq_examples, tmp_path):
    """The key test: a real FFHQ W+ row, 1024 px, official shapes (about a minute of CPU)."""
    nets = ffhq_nets(ffhq_weights)
    w = np.load(ffhq_examples / "wplus_img_feat.npy")[5]  # [18, 512]
    np.save(tmp_path / "w.npy", w)
    target = "face with smile"
    strip, info = authors_edit(nets, tmp_path / "ref.png", target=target, latent=w)
    assert strip.shape == (1024, 2048, 3)
    del nets
    out, src = check_cli_against_reference(
        tmp_path, ["--latents", str(tmp_path / "w.npy")], strip, info, weights=ffhq_weights, target=target
    )
    assert Image.open(out).size == (1024, 1024) and Image.open(src).size == (1024, 1024)


@pytest.mark.slow
def test_ffhq_photo_cli_equals_authors_sequence(ffhq_weights_with_e4e, shared_dir, tmp_path):
    """Full-size e4e (267M parameters) on the real aligned photo, --no-align (minutes of CPU)."""
    nets = ffhq_nets(ffhq_weights_with_e4e, with_encoder=True)
    photo = shared_dir / PHOTO
    target = "face with beard"
    strip, info = authors_edit(nets, tmp_path / "ref.png", target=target, photo=photo)
    del nets
    check_cli_against_reference(
        tmp_path,
        ["--image", str(photo), "--no-align"],
        strip,
        info,
        weights=ffhq_weights_with_e4e,
        target=target,
    )
