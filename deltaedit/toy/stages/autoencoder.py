"""The autoencoder stage: our StyleGAN2 generator (64 px, constant ToRGB styles so that colour is
editable in S) and an e4e-style encoder trained together to reconstruct renders (W+ = encoder(x) +
latent_avg, image = G(W+)); then fine-tuned with a CLIP feature loss as well (e4e's perceptual
term, `sharpen_autoencoder`), which needs the clip stage's weights.

Writes generator.safetensors and encoder.safetensors. The first (pixel-loss) phase is kept in
`.autoencoder-pixel/` until the second has finished: a rerun resumes from it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import load_domain_config
from ...domain import Domain
from ...nn.e4e import encode
from ..render import images_to_tensor
from .common import Stage, StageContext, cosine_lr, save_safetensors

AE_FILES = ("generator.safetensors", "encoder.safetensors")
# The autoencoder's first (pixel-loss) phase, kept until the CLIP feature phase has finished it.
AE_PIXEL_PHASE = ".autoencoder-pixel"


def train_autoencoder(
    images: np.ndarray,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 3e-3,
    progress=True,
    device="cpu",
    beta1: float = 0.9,
    edge_weight: float = 1.0,
):
    """Train G and the encoder so that G(encoder(x) + latent_avg) reconstructs renders.

    Plain reconstruction (L1 + L2 + an L1 on image gradients that keeps thin strokes), Adam with
    momentum: unlike GAN training there is no adversary to chase, and momentum learned features
    faster in our trials than StyleGAN's beta1 = 0.
    """
    from ...nn.e4e import Encoder4Editing
    from ...nn.stylegan2 import Generator

    cfg = load_domain_config("toy")
    torch.manual_seed(seed)
    G = Generator.from_config(cfg.generator).train().to(device)
    encoder = (
        Encoder4Editing.from_config(cfg.encoder, n_latent=G.n_latent, style_dim=G.style_dim)
        .train()
        .to(device)
    )
    latent_avg = torch.nn.Parameter(torch.zeros(G.n_latent, G.style_dim, device=device))
    params = list(G.parameters()) + list(encoder.parameters()) + [latent_avg]
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, 0.99))
    rng = np.random.default_rng(seed + 1)
    losses = []
    bar = tqdm(range(steps), desc="toy generator+encoder", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 50))
        x = images_to_tensor(images[rng.choice(len(images), size=batch, replace=False)]).to(device)
        w = encode(encoder, latent_avg, x)
        x_hat = G.synthesis(w)
        loss = _reconstruction_loss(x_hat, x, edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    G, encoder = G.eval().requires_grad_(False).cpu(), encoder.eval().requires_grad_(False).cpu()
    return G, encoder, latent_avg.detach().cpu(), losses


def sharpen_autoencoder(
    G,
    encoder,
    latent_avg: torch.Tensor,
    images: np.ndarray,
    clip,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 3e-4,
    feature_weight: float = 1.0,
    progress=True,
    device="cpu",
):
    """Fine-tune a trained G and encoder on the reconstruction loss plus `feature_weight` x
    |u(CLIP(G(W+))) - u(CLIP(x))|^2 (u: unit length), the frozen toy CLIP as perceptual loss.

    Pixel losses let a 2-pixel feature blur: reconstructions of smiles and big eyes were read
    right by the classifier only 95 % of the time, and their CLIP class centroids were 0.35 apart
    against 0.54 in the renders themselves, so every CLIP-space step after this one (neighbour
    partners, the refinement, the distillation) saw them barely. e4e adds LPIPS and an identity
    loss for the same reason. Only G, the encoder and latent_avg learn.
    Returns (G, encoder, latent_avg, [(pixel loss, feature loss)] per step).
    """
    G = G.to(device).train().requires_grad_(True)
    encoder = encoder.to(device).train().requires_grad_(True)
    latent_avg = torch.nn.Parameter(latent_avg.detach().clone().reshape(G.n_latent, G.style_dim).to(device))
    clip.model.requires_grad_(False).eval()
    params = list(G.parameters()) + list(encoder.parameters()) + [latent_avg]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed + 5)

    def unit_features(x):
        f = clip.image_features(x, image_size=G.size)
        return f / f.norm(dim=-1, keepdim=True)

    losses = []
    bar = tqdm(range(steps), desc="toy generator+encoder, CLIP features", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 50))
        x = images_to_tensor(images[rng.choice(len(images), size=batch, replace=False)]).to(device)
        x_hat = G.synthesis(encode(encoder, latent_avg, x))
        pixel = _reconstruction_loss(x_hat, x)
        with torch.no_grad():
            target = unit_features(x)
        feature = (unit_features(x_hat) - target).pow(2).sum(-1).mean()
        loss = pixel + feature_weight * feature
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append((pixel.item(), feature.item()))
        bar.set_postfix(pixel=f"{np.mean([p for p, _ in losses[-20:]]):.4f}", clip=f"{feature.item():.4f}")
    G, encoder = G.eval().requires_grad_(False).cpu(), encoder.eval().requires_grad_(False).cpu()
    return G, encoder, latent_avg.detach().cpu(), losses


@torch.no_grad()
def normalise_style_scale(G, encoder, latent_avg, images: torch.Tensor) -> list[float]:
    """Rescale each conv's modulation so that its styles have mean |s| = 1 on `images`.

    A demodulated convolution ignores a per-layer scale of s, so the pictures do not change; but
    an autoencoder with no prior on W+ drifts to styles in the tens, and the Delta Mapper (built
    for FFHQ's styles of order 1) and its MSE loss then learn badly. Returns the scales removed.
    """
    w = encode(encoder, latent_avg, images)
    scales = []
    for i, conv in enumerate(G.styled_convs()):
        modulation = conv.conv.modulation
        scale = float(modulation(w[:, G.conv_w_index(i)]).abs().mean())
        modulation.weight.div_(scale)
        modulation.bias.div_(scale)
        scales.append(scale)
    return scales


def _reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, edge_weight: float = 1.0) -> torch.Tensor:
    """L1 + L2 + `edge_weight` x the edge loss: the autoencoder's pixel loss, in both its phases."""
    loss = F.l1_loss(x_hat, x) + F.mse_loss(x_hat, x)
    if edge_weight:
        loss = loss + edge_weight * _edge_loss(x_hat, x)
    return loss


def _edge_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: keeps thin strokes (glasses, mouth, eyes) that L1/L2 alone blur."""

    def dx(t):
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t):
        return t[..., 1:, :] - t[..., :-1, :]

    return F.l1_loss(dx(x_hat), dx(x)) + F.l1_loss(dy(x_hat), dy(x))


def save_autoencoder(G, encoder, latent_avg, images, folder: Path) -> None:
    normalise_style_scale(G, encoder, latent_avg, images_to_tensor(images[:512]))
    save_safetensors(G.state_dict(), folder / AE_FILES[0])
    save_safetensors({**encoder.state_dict(), "latent_avg": latent_avg}, folder / AE_FILES[1])


def run_pixel_phase(ctx: StageContext) -> dict:
    """The first phase, into `.autoencoder-pixel/` (nothing to do if it is there already)."""
    t = time.perf_counter()
    pixel_dir = ctx.out_dir / AE_PIXEL_PHASE
    if all((pixel_dir / f).exists() for f in AE_FILES):  # resumed: only the CLIP phase is left
        return {"timings": {}}
    b = ctx.budget
    G, encoder, latent_avg, losses = train_autoencoder(
        ctx.images, b.ae_steps, b.ae_batch, ctx.seed, progress=ctx.progress, device=ctx.device
    )
    save_autoencoder(G, encoder, latent_avg, ctx.images, pixel_dir)
    return {
        "ae_loss": [losses[0], float(np.mean(losses[-20:]))],
        "timings": {"autoencoder": time.perf_counter() - t},
    }


def run_clip_phase(ctx: StageContext) -> dict:
    """The CLIP feature phase on the pixel phase's weights; writes the final files."""
    from ... import models
    from ...errors import InputError

    if not (ctx.out_dir / "clip.safetensors").exists():
        raise InputError(
            f"the autoencoder stage fine-tunes with the toy CLIP, and {ctx.out_dir} has no clip.safetensors: "
            "run the clip stage too (--stages clip autoencoder)"
        )
    t = time.perf_counter()
    pixel_dir = ctx.out_dir / AE_PIXEL_PHASE
    models.clear_cache()
    pixel_phase = Domain.open("toy", pixel_dir)
    G = models.load_generator(pixel_phase, ctx.device)
    encoder, latent_avg = models.load_encoder(pixel_phase, ctx.device)
    clip = models.load_clip(Domain.open("toy", ctx.out_dir), ctx.device)
    b = ctx.budget
    G, encoder, latent_avg, losses = sharpen_autoencoder(
        G, encoder, latent_avg, ctx.images, clip, b.ae_clip_steps, b.ae_batch, ctx.seed,
        lr=b.ae_clip_lr, feature_weight=b.ae_clip_weight, progress=ctx.progress, device=ctx.device,
    )  # fmt: skip
    models.clear_cache()
    save_autoencoder(G, encoder, latent_avg, ctx.images, ctx.out_dir)
    shutil.rmtree(pixel_dir, ignore_errors=True)

    def mean(rows):
        return [round(float(v), 5) for v in np.mean(rows, axis=0)]

    return {
        "ae_clip_loss": {
            "first_20": mean(losses[:20]),
            "last_20": mean(losses[-20:]),
            "columns": ["pixel", "clip"],
        },
        "timings": {"autoencoder_clip": time.perf_counter() - t},
    }


def run(ctx: StageContext) -> dict:
    """Both phases, one after the other (`deltaedit.toy.train` may run the first beside the clip stage)."""
    first = run_pixel_phase(ctx)
    second = run_clip_phase(ctx)
    return {**first, **second, "timings": {**first["timings"], **second["timings"]}}


STAGE = Stage(
    "autoencoder",
    outputs=AE_FILES,
    settings=("n_images", "ae_steps", "ae_batch", "ae_clip_steps", "ae_clip_lr", "ae_clip_weight"),
    run=run,
)
