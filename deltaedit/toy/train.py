"""Train every weight of the built-in toy domain from a seed: `python -m deltaedit toy train`.

Stages (each writes its artifact into the output folder and is skipped when it is already there,
so an interrupted run resumes):

1. renders  - procedural faces with their attributes (kept in memory, never written)
2. clip     - a small open_clip model trained contrastively on renders and varied captions, with
              linear attribute probes shared by both towers (see `AttributeProbe`)
3. autoencoder - our StyleGAN2 generator (64 px, constant ToRGB styles so that colour is
              editable in S) and an e4e-style encoder trained together to reconstruct renders
              (W+ = encoder(x) + latent_avg, image = G(W+)); then fine-tuned with a CLIP feature
              loss as well (e4e's perceptual term), which needs the CLIP: see `sharpen_autoencoder`
4. codes    - W+, S and CLIP image features of encoded renders (the generic `make-codes` tool)
5. mapper   - the Delta Mapper trained text-free on those codes (the generic `train-mapper` tool),
              then the refinement distilled into it (`train-mapper --distil`, text-free too: image
              deltas of code pairs; it selects channels with fs3, so relevance runs first)
6. relevance - fs3 of the toy generator (the generic `relevance` tool)
7. classifier - an attribute classifier used only to score edits

The mapper never sees a caption: captions are only used to train the toy CLIP, exactly as the
real domain's CLIP was trained by OpenAI on someone else's data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import load_domain_config
from ..domain import Domain
from ..fileio import atomic_dir, atomic_write, write_json
from ..nn.e4e import encode
from .render import images_to_tensor

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "toy"
# The DeltaEdit-D stage's run (checkpoint, log, samples) until it finishes: a paused run resumes it.
DIFFUSION_RUN = ".diffusion-run"


@dataclass(frozen=True)
class ToyBudget:
    n_images: int = 20000
    clip_steps: int = 1400
    clip_batch: int = 128
    ae_steps: int = 6500
    ae_batch: int = 8
    # Then the CLIP feature phase (`sharpen_autoencoder`): smile and big eyes reconstructed as
    # clearly as CLIP sees them in renders (docs/fast-toy-edits.md).
    ae_clip_steps: int = 1500
    ae_clip_lr: float = 3e-4
    ae_clip_weight: float = 1.0
    n_codes: int = 10000
    mapper_steps: int = 4000
    # Half the mapper's pairs take one of the 16 nearest codes in CLIP space as the partner: the
    # one-attribute deltas that grounded text deltas are (README, "The built-in toy domain").
    mapper_neighbours: int = 16
    mapper_delta_noise: float = 0.0
    # Then the refinement's objective is distilled into the mapper (`train-mapper --distil`;
    # docs/fast-toy-edits.md): one-pass success 0.84 -> 0.94-0.96, preservation 0.87 -> 0.87-0.89,
    # and two refinement steps (the toy default) close the rest at a tenth of twenty steps' cost.
    # Nearest-neighbour partners only: random partners (multi-attribute deltas) made the one-pass
    # edits of text prompts worse, not better.
    mapper_distil_steps: int = 1000
    mapper_distil_batch: int = 32
    mapper_distil_lr: float = 0.3
    mapper_distil_anchor: float = 1.0
    mapper_distil_random_fraction: float = 0.0
    # CLIP image features shipped as the feature bank (`deltaedit.grounding`).
    bank_size: int = 4096
    fs3_samples: int = 8
    classifier_steps: int = 700
    # DeltaEdit-D: run on its own (`--stages diffusion`), after the GAN stages it needs.
    # The residual design (diffused x 8, DIFFUSION_CONFIG), 2000 steps with a cosine schedule on
    # 10000 codes: about 19 minutes on one thread; docs/deltaedit-d.md has every variant measured.
    diffusion_steps: int = 2000
    diffusion_batch: int = 32
    diffusion_lr: float = 5e-4
    diffusion_codes: int = 10000  # encoded renders (x0, s, R(s)) the D stage trains on
    diffusion_lr_schedule: str = "cosine"


FULL = ToyBudget()
# The same stages with more steps, for a GPU (minutes instead of an hour).
GPU = ToyBudget(
    n_images=30000,
    clip_steps=2000,
    clip_batch=256,
    ae_steps=20000,
    ae_batch=16,
    n_codes=20000,
    mapper_steps=10000,
    fs3_samples=16,
    classifier_steps=1500,
    diffusion_steps=3000,
    diffusion_batch=64,
    diffusion_codes=20000,
)
SMOKE = ToyBudget(
    n_images=256,
    clip_steps=3,
    clip_batch=16,
    ae_steps=3,
    ae_batch=4,
    ae_clip_steps=2,
    n_codes=128,
    mapper_steps=3,
    mapper_distil_steps=2,
    mapper_distil_batch=4,
    fs3_samples=1,
    classifier_steps=3,
    diffusion_steps=2,
    diffusion_batch=4,
)


def _lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# DeltaEdit-D's UNet: the toy preset plus the generator's rendering R(s) as 3 input channels; the
# residual x0 − R(s) (RMS about 0.1) is diffused times 8, at about unit scale (docs/deltaedit-d.md).
DIFFUSION_CONFIG: dict = {"render_channels": 3, "residual_scale": 8.0}

RENDER_CHUNK = 2000
FS3_CODES = 1024  # encoded renders that fs3's samples and channel statistics come from


def _render_chunk(args):
    from .render import render_batch

    n, seed = args
    return render_batch(n, seed=seed)


def render_dataset(n: int, seed: int, workers: int | None = None):
    """(uint8 images [n, 64, 64, 3], attributes list) of the toy renderer.

    Rendered in chunks of RENDER_CHUNK with their own seeds, in worker processes: the result
    depends on (n, seed) only, not on the number of workers.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(min(RENDER_CHUNK, n - i), seed * 100_003 + k) for k, i in enumerate(range(0, n, RENDER_CHUNK))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    attrs = [a for p in parts for a in p[1]]
    return images, attrs


# -- stage 2: CLIP ----------------------------------------------------------------------------------
class AttributeProbe(torch.nn.Module):
    """One linear classifier per attribute, read from unit CLIP embeddings of either tower.

    A 64 px contrastive batch is told apart by hair, skin, clothes and background alone, so
    CLIP alone learns to ignore 2-pixel features (smile, bangs, big eyes): their image and text
    deltas came out ~0.01 long and pointed nowhere. Classifying every attribute from the image
    embedding, and each attribute a caption names from the text embedding, with the *same*
    linear heads, makes each attribute a direction that both towers share: what DeltaSpace needs.
    The heads are thrown away after training; only the CLIP is kept.
    """

    def __init__(self, embed_dim: int):
        from .attributes import ATTRIBUTES

        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(embed_dim, len(v)) for v in ATTRIBUTES.values())

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over attributes; labels [B, n_attributes], -1 = not known (skipped)."""
        total = embeddings.new_zeros(())
        for k, head in enumerate(self.heads):
            known = labels[:, k] >= 0
            if known.any():
                # Scaled by the fraction of known rows: rare mentions weigh less than full labels.
                ce = F.cross_entropy(head(embeddings[known]), labels[known, k])
                total = total + ce * known.float().mean()
        return total


def caption_labels(text: str) -> np.ndarray:
    """Class index per attribute that `text` names, -1 where it says nothing (int64 [n_attributes])."""
    from ..errors import InputError
    from .attributes import ATTRIBUTE_NAMES, ATTRIBUTES, prompt_targets

    try:
        named = prompt_targets(text)
    except InputError:  # a caption outside the toy vocabulary names nothing we can check
        named = {}
    return np.array(
        [ATTRIBUTES[n].index(named[n]) if n in named else -1 for n in ATTRIBUTE_NAMES], dtype=np.int64
    )


def train_clip(
    images: np.ndarray,
    attrs,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 1e-3,
    progress=True,
    device="cpu",
    caption_fn=None,
    template_rate: float = 0.5,
    probe_weight: float = 1.0,
):
    """Contrastive (InfoNCE both ways) training of the toy CLIP on renders and random captions,
    plus `probe_weight` x the shared attribute-probe loss (`AttributeProbe`; 0 turns it off).

    Half of the captions are wrapped in one of the 79 prompt templates ("a bad photo of a {}."):
    DeltaEdit embeds every prompt through all of them, so the toy CLIP must know that wording,
    as OpenAI's CLIP did from web captions. Returns (model, tokenizer, contrastive losses).
    """
    import open_clip

    from ..clip import build_clip_from_config, build_tokenizer
    from ..templates import TEMPLATES
    from .attributes import caption

    caption_fn = caption_fn or caption  # (attributes, rng) -> text; default: a varied random caption

    cfg = load_domain_config("toy")
    torch.manual_seed(seed)
    model = build_clip_from_config(cfg.clip.model_config_file).to(device)
    probe = AttributeProbe(cfg.clip.embed_dim).to(device)
    tokenizer = build_tokenizer(cfg.clip.model_config_file)
    model.train()
    loss_fn = open_clip.ClipLoss()
    named = list(model.named_parameters()) + [(f"probe.{n}", p) for n, p in probe.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    rng = np.random.default_rng(seed)
    losses, probe_losses = [], []
    bar = tqdm(range(steps), desc="toy clip", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup=max(1, steps // 20))
        idx = rng.choice(len(images), size=batch, replace=False)
        x = images_to_tensor(images[idx]).to(device)
        captions = [caption_fn(attrs[i], rng) for i in idx]
        texts = [
            TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(t) if rng.random() < template_rate else t
            for t in captions
        ]
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokenizer(texts).to(device), normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        total = loss
        if probe_weight:
            image_labels = torch.from_numpy(np.stack([attrs[i].to_vector() for i in idx])).to(device)
            # Labelled from the bare caption: a template adds no attribute.
            text_labels = torch.from_numpy(np.stack([caption_labels(t) for t in captions])).to(device)
            probe_loss = probe.loss(img, image_labels) + probe.loss(txt, text_labels)
            total = loss + probe_weight * probe_loss
            probe_losses.append(probe_loss.item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(
            loss=f"{np.mean(losses[-20:]):.3f}", probe=f"{np.mean(probe_losses[-20:] or [0]):.3f}"
        )
    return model.eval().cpu(), tokenizer, losses


# -- stage 3: generator + encoder ------------------------------------------------------------------
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
    from ..nn.e4e import Encoder4Editing
    from ..nn.stylegan2 import Generator

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
            g["lr"] = _lr_at(step, steps, lr, warmup=max(1, steps // 50))
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
            g["lr"] = _lr_at(step, steps, lr, warmup=max(1, steps // 50))
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


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, half: bool = False) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()
    }
    with atomic_write(path) as tmp:
        save_file(state, str(tmp))


STAGES = ("clip", "autoencoder", "mapper", "relevance", "classifier", "diffusion")
GAN_STAGES = STAGES[:-1]  # everything DeltaEdit-G needs; DeltaEdit-D is trained afterwards
AE_FILES = ("generator.safetensors", "encoder.safetensors")
# The autoencoder's first (pixel-loss) phase, kept until the CLIP feature phase has finished it.
AE_PIXEL_PHASE = ".autoencoder-pixel"


def train_toy(
    out_dir: Path = ASSETS,
    seed: int = 0,
    budget: ToyBudget = FULL,
    force: bool = False,
    progress=True,
    stages: tuple[str, ...] = STAGES,
    device: str = "cpu",
    parallel: bool | None = None,
    time_limit: float | None = None,
) -> dict:
    """Run every stage; returns a summary (losses, timings, sizes) also written to train_log.json.

    `time_limit` (seconds, counted from the call): the DeltaEdit-D stage stops at a checkpoint in
    `out_dir/.diffusion-run/` when the time is up and raises `TrainingPaused`; the same call again
    continues it (for machines lent a few minutes at a time).
    """
    from ..clip import DomainClip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_domain_config("toy")
    summary: dict = {"seed": seed, "budget": asdict(budget), "timings": {}}
    t0 = time.perf_counter()

    def done(name):
        return (out_dir / name).exists() and not force

    def skip(stage):  # stages not asked for are left as they are
        return stage not in stages

    images, attrs = render_dataset(budget.n_images, seed)
    summary["timings"]["renders"] = time.perf_counter() - t0

    first = [
        stage
        for stage, files in (("clip", ("clip.safetensors",)), ("autoencoder", AE_FILES))
        if not skip(stage) and not all(done(f) for f in files)
    ]
    if parallel is None:  # two independent stages, at least two cores: one process each
        parallel = device == "cpu" and (os.cpu_count() or 1) >= 2
    if len(first) == 2 and parallel:
        results = _run_side_by_side(first, images, attrs, budget, seed, out_dir, progress)
    else:
        results = [_run_stage(s, images, attrs, budget, seed, out_dir, device, progress) for s in first]
    if "autoencoder" in first:  # its pixel phase ran (or was there); the CLIP phase finishes it
        results.append(_sharpen_toy_autoencoder(out_dir, images, budget, seed, device, progress))
    for result in results:
        summary["timings"].update(result.pop("timings"))
        summary.update(result)

    # Later stages use the saved weights through the same loaders as every other domain.
    from .. import models

    if not {"mapper", "relevance", "classifier", "diffusion"} & set(stages):
        return _finish(summary, out_dir, t0)

    models.clear_cache()
    toy = Domain.open("toy", out_dir)
    G = models.load_generator(toy, device)
    encoder, latent_avg = models.load_encoder(toy, device)
    clip = models.load_clip(toy, device)
    assert isinstance(clip, DomainClip)

    # Relevance runs before the mapper: the mapper's distillation selects channels with fs3.
    t = time.perf_counter()
    if not skip("relevance") and not done("fs3.npy"):
        from ..relevance import compute_fs3

        # The toy generator has no z prior: perturb encoded renders (as `relevance --domain toy`).
        w = encoded_renders(encoder, latent_avg, min(FS3_CODES, len(images)), seed, device)
        fs3 = compute_fs3(
            G, clip, n_samples=budget.fs3_samples, batch_size=64, seed=seed, progress=progress, codes=w
        )
        fs3 = fs3.cpu().numpy() if torch.is_tensor(fs3) else np.asarray(fs3)
        with atomic_write(out_dir / "fs3.npy") as tmp:
            np.save(tmp, fs3.astype(np.float32))
        summary["timings"]["relevance"] = time.perf_counter() - t  # stages that ran only

    t = time.perf_counter()
    if not skip("mapper") and not done("mapper.safetensors"):
        codes_dir = Path(tempfile.mkdtemp(prefix="deltaedit-toy-codes-"))
        from ..training.codes import load_codes, make_codes

        n = min(budget.n_codes, len(images))
        make_codes(
            G,
            lambda x: clip.image_features(x, image_size=G.size),
            codes_dir,
            n=n,
            batch_size=64,
            shard_size=4096,
            seed=seed,
            encoder=encoder,
            latent_avg=latent_avg,
            images=(images_to_tensor(images[i : min(i + 64, n)]) for i in range(0, n, 64)),
            progress=progress,
            domain="toy",
        )
        summary["timings"]["codes"] = time.perf_counter() - t
        t = time.perf_counter()
        from ..nn.stylespace import layout_from_generator
        from ..training.mapper import train_mapper

        _, s, c = load_codes(codes_dir)
        bank = c[: budget.bank_size]
        bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        with atomic_write(out_dir / "feature_bank.npy") as tmp:
            np.save(tmp, bank.astype(np.float16))
        result = train_mapper(
            (s, c),
            layout_from_generator(G),
            cfg.clip.embed_dim,
            codes_dir / "mapper_base.safetensors",
            steps=budget.mapper_steps,
            seed=seed,
            progress=progress,
            device=device,
            delta_noise=budget.mapper_delta_noise,
            neighbours=budget.mapper_neighbours,
        )
        summary["mapper_loss"] = [result.train_losses[0], result.train_losses[-1]]
        summary["mapper_val_loss"] = result.val_losses[-1] if result.val_losses else None
        summary["timings"]["mapper"] = time.perf_counter() - t  # stages that ran only
        t = time.perf_counter()
        summary.update(_distil_toy_mapper(codes_dir, G, clip, out_dir, budget, seed, device, progress))
        shutil.rmtree(codes_dir, ignore_errors=True)
        summary["timings"]["mapper_distil"] = time.perf_counter() - t

    t = time.perf_counter()
    if not skip("classifier") and not done("classifier.safetensors"):
        from .classifier import save_classifier, train_classifier

        clf = train_classifier(
            n_images=min(6000, budget.n_images), steps=budget.classifier_steps, seed=seed + 7, device=device
        )
        save_classifier(clf.cpu(), out_dir / "classifier.safetensors")
        summary["timings"]["classifier"] = time.perf_counter() - t  # stages that ran only

    t = time.perf_counter()
    if not skip("diffusion") and budget.diffusion_steps > 0 and not done("diffusion"):
        from ..nn.style_unet import TOY_CONFIG
        from ..training.diffusion import train_diffusion

        # DeltaEdit-D is text-free too: renders x0, the style codes s of their encodings and the
        # generator's rendering R(s) of those codes (decoded as the GAN editor decodes). The UNet
        # diffuses the residual x0 − R(s) with R(s) as extra input channels (docs/deltaedit-d.md).
        n = min(budget.diffusion_codes, budget.n_codes, len(images))
        x = images_to_tensor(images[:n])
        with torch.no_grad():
            pairs = [
                _style_codes_and_renders(G, encoder, latent_avg, x[i : i + 256].to(device))
                for i in range(0, n, 256)
            ]
        s_codes = torch.cat([s for s, _ in pairs])
        renders = torch.cat([r for _, r in pairs])
        run_dir = out_dir / DIFFUSION_RUN
        settings = {"seed": seed, "codes": n, "config": DIFFUSION_CONFIG} | {
            k: v for k, v in asdict(budget).items() if k.startswith("diffusion_")
        }
        run, resume = _diffusion_run(run_dir, settings)
        threads = torch.get_num_threads()
        t_train = time.perf_counter()
        try:
            train_diffusion(
                (x, s_codes, renders),
                config={**TOY_CONFIG, **DIFFUSION_CONFIG},
                out_dir=run_dir,
                steps=budget.diffusion_steps,
                batch_size=budget.diffusion_batch,
                lr=budget.diffusion_lr,
                warmup_steps=min(100, budget.diffusion_steps // 10),
                seed=seed,
                progress=progress,
                sample_every=max(budget.diffusion_steps // 4, 1),
                checkpoint_every=max(budget.diffusion_steps // 10, 1),
                ema_decay=0.999,
                resume="latest" if resume else None,
                time_limit=None if time_limit is None else max(time_limit - (t_train - t0), 0.0),
                lr_schedule=budget.diffusion_lr_schedule,
            )
        finally:  # paused or done: this call's training time counts
            run["calls"] += 1
            run["train_seconds"] += time.perf_counter() - t_train
            write_json(run_dir / "run.json", run)
        summary["diffusion"] = {
            "design": "residual: x0 - R(s) diffused, R(s) as input channels, s as vector condition",
            "config": DIFFUSION_CONFIG,
            "device": device,
            "torch_threads": threads,
            "train_seconds": round(run["train_seconds"], 1),
            "calls": run["calls"],  # > 1: resumed after a --time-limit pause
            "residual_rms": round(float((x - renders).pow(2).mean().sqrt()), 4),
            "loss_curve": _loss_curve(run_dir / "log.jsonl"),
        }
        _copy_diffusion_weights(run_dir, out_dir / "diffusion")
        shutil.rmtree(run_dir, ignore_errors=True)
        summary["timings"]["diffusion"] = time.perf_counter() - t  # stages that ran only
    models.clear_cache()
    return _finish(summary, out_dir, t0)


def _run_stage(stage, images, attrs, budget, seed, out_dir, device, progress) -> dict:
    """Train and save one of the two independent first stages; returns its summary entries."""
    t = time.perf_counter()
    if stage == "clip":
        model, _, losses = train_clip(
            images, attrs, budget.clip_steps, budget.clip_batch, seed, progress=progress, device=device
        )
        _save_safetensors(model.state_dict(), out_dir / "clip.safetensors", half=True)
    else:
        pixel_dir = out_dir / AE_PIXEL_PHASE
        if all((pixel_dir / f).exists() for f in AE_FILES):  # resumed: only the CLIP phase is left
            return {"timings": {}}
        G, encoder, latent_avg, losses = train_autoencoder(
            images, budget.ae_steps, budget.ae_batch, seed, progress=progress, device=device
        )
        _save_autoencoder(G, encoder, latent_avg, images, pixel_dir)
    key = "clip_loss" if stage == "clip" else "ae_loss"
    return {key: [losses[0], float(np.mean(losses[-20:]))], "timings": {stage: time.perf_counter() - t}}


def _save_autoencoder(G, encoder, latent_avg, images, folder: Path) -> None:
    normalise_style_scale(G, encoder, latent_avg, images_to_tensor(images[:512]))
    _save_safetensors(G.state_dict(), folder / AE_FILES[0])
    _save_safetensors({**encoder.state_dict(), "latent_avg": latent_avg}, folder / AE_FILES[1])


def _sharpen_toy_autoencoder(out_dir: Path, images, budget: ToyBudget, seed, device, progress) -> dict:
    """The autoencoder's CLIP feature phase on the pixel phase's weights; writes the final files."""
    from .. import models
    from ..errors import InputError

    if not (out_dir / "clip.safetensors").exists():
        raise InputError(
            f"the autoencoder stage fine-tunes with the toy CLIP, and {out_dir} has no clip.safetensors: "
            "run the clip stage too (--stages clip autoencoder)"
        )
    t = time.perf_counter()
    pixel_dir = out_dir / AE_PIXEL_PHASE
    models.clear_cache()
    G = models.load_generator(Domain.open("toy", pixel_dir), device)
    encoder, latent_avg = models.load_encoder(Domain.open("toy", pixel_dir), device)
    clip = models.load_clip(Domain.open("toy", out_dir), device)
    G, encoder, latent_avg, losses = sharpen_autoencoder(
        G,
        encoder,
        latent_avg,
        images,
        clip,
        budget.ae_clip_steps,
        budget.ae_batch,
        seed,
        lr=budget.ae_clip_lr,
        feature_weight=budget.ae_clip_weight,
        progress=progress,
        device=device,
    )
    models.clear_cache()
    _save_autoencoder(G, encoder, latent_avg, images, out_dir)
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


def _stage_in_subprocess(stage, images_path, attrs, budget, seed, out_dir, progress, threads) -> dict:
    torch.set_num_threads(threads)
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    return _run_stage(stage, images, attrs, budget, seed, out_dir, "cpu", progress)


def _run_side_by_side(stages, images, attrs, budget, seed, out_dir, progress) -> list[dict]:
    """CLIP and the autoencoder do not depend on each other: train them in two processes at once,
    each with half the cores (two small models scale poorly past one core each)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // 2)
    with tempfile.TemporaryDirectory(prefix="deltaedit-toy-renders-") as tmp:
        images_path = Path(tmp) / "renders.npy"
        np.save(images_path, images)  # memory-mapped by both workers instead of pickled twice
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        with ProcessPoolExecutor(len(stages), mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _stage_in_subprocess, stage, images_path, attrs, budget, seed, out_dir, progress, threads
                )
                for stage in stages
            ]
            return [f.result() for f in futures]


def rendered_batches(n: int, seed: int, batch_size: int = 256):
    """Tensors [b, 3, 64, 64] in [-1, 1] of `render_dataset(n, seed)`, batch by batch.

    The toy generator is trained as a decoder, so it has no z prior to sample from: its codes
    (for `make-codes`, `relevance`) come from encoding renders, as photos are for FFHQ.
    """
    images, _ = render_dataset(n, seed)
    for start in range(0, n, batch_size):
        yield images_to_tensor(images[start : start + batch_size])


@torch.no_grad()
def encoded_renders(
    encoder, latent_avg, n: int, seed: int, device="cpu", batch_size: int = 256
) -> torch.Tensor:
    """W+ [n, L, D] of `n` encoded renders (seeded): the toy generator's stand-in for sampled codes."""
    return torch.cat(
        [encode(encoder, latent_avg, x.to(device)) for x in rendered_batches(n, seed, batch_size)]
    )


def _distil_toy_mapper(
    codes_dir: Path, G, clip, out_dir: Path, budget: ToyBudget, seed, device, progress
) -> dict:
    """The refinement distilled into the base mapper (`codes_dir/mapper_base.safetensors`), written
    to `out_dir/mapper.safetensors`: the generic `train-mapper --distil` on the stage's codes, with
    the toy domain's generator, CLIP, fs3, feature bank and DeltaEdit-G edit defaults."""
    from .. import models
    from ..errors import InputError
    from ..training.codes import load_codes
    from ..training.distil import DistilModels, distil_mapper
    from ..training.mapper import load_mapper_weights, save_mapper_weights

    base = codes_dir / "mapper_base.safetensors"
    if budget.mapper_distil_steps <= 0:
        save_mapper_weights(load_mapper_weights(base), out_dir / "mapper.safetensors")
        return {"mapper_distil": None}
    if not (out_dir / "fs3.npy").is_file():
        raise InputError(
            f"the mapper's distillation needs {out_dir / 'fs3.npy'}: run the relevance stage too"
        )
    defaults = load_domain_config("toy").defaults_for("gan")
    result = distil_mapper(
        load_codes(codes_dir),
        DistilModels(
            G,
            clip,
            models.load_relevance(Domain.open("toy", out_dir)),
            models.load_feature_bank(Domain.open("toy", out_dir)),
        ),
        base,
        out_dir / "mapper.safetensors",
        steps=budget.mapper_distil_steps,
        batch_size=budget.mapper_distil_batch,
        lr=budget.mapper_distil_lr,
        anchor=budget.mapper_distil_anchor,
        strength=defaults.strength,
        threshold=defaults.threshold,
        seed=seed,
        progress=progress,
        device=device,
        neighbours=budget.mapper_neighbours,
        random_fraction=budget.mapper_distil_random_fraction,
        log_every=max(1, budget.mapper_distil_steps // 10),
        val_every=max(1, budget.mapper_distil_steps // 2),
        save_every=10**9,
    )
    Path(result.state_path).unlink(missing_ok=True)  # resumable state: not part of the shipped weights
    return {
        "mapper_distil": {
            "strength": defaults.strength,
            "threshold": defaults.threshold,
            "train_refinement_loss": [result.train_losses[0], result.train_losses[-1]],
            "val_refinement_loss": result.val_losses,
        }
    }


def _style_codes_and_renders(G, encoder, latent_avg, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [B, S], R(s) [B, 3, H, W]) of encoded renders: R decodes s exactly as the GAN editor does
    (convs from s, ToRGB from the same W+, fixed noise), so training sees the rendering edits use."""
    from ..nn.stylespace import decode_s, layout_from_generator, w_plus_to_s

    w = encode(encoder, latent_avg, x)
    s_list = w_plus_to_s(G, w)
    return layout_from_generator(G).join(s_list).cpu(), decode_s(G, s_list, w).clamp(-1, 1).cpu()


def _loss_curve(log_jsonl: Path, points: int = 60) -> list[list[float]]:
    """[[step, mean loss over the steps since the previous point], ...] from train_diffusion's log."""
    if not log_jsonl.is_file():
        return []
    rows = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    every = max(1, len(rows) // points)
    return [
        [
            rows[min(i + every, len(rows)) - 1]["step"],
            round(float(np.mean([r["loss"] for r in rows[i : i + every]])), 5),
        ]
        for i in range(0, len(rows), every)
    ]


def _diffusion_run(run_dir: Path, settings: dict) -> tuple[dict, bool]:
    """(run record, resume?) for the D stage: an unfinished run with the same settings and a
    checkpoint is continued; anything else in `run_dir` is cleared and the run starts again.
    The record's `train_seconds` sums the calls that ended in Python (a killed call's time is lost)."""
    record = run_dir / "run.json"
    if record.is_file():
        run = json.loads(record.read_text())
        if run.get("settings") == settings and (run_dir / "checkpoint" / "state.json").is_file():
            log.info("continuing the unfinished DeltaEdit-D run in %s", run_dir)
            return run, True
        log.warning("%s holds an unfinished DeltaEdit-D run with other settings: starting again", run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    run = {"settings": settings, "calls": 0, "train_seconds": 0.0}
    write_json(record, run)
    return run, False


def _copy_diffusion_weights(run_dir: Path, target: Path) -> None:
    """Keep only what `DiffusionBackbone.from_pretrained` reads (no optimizer state, no samples)."""
    from ..pipelines.diffusion import DiffusionBackbone

    with atomic_dir(target) as tmp:
        backbone = DiffusionBackbone.from_pretrained(run_dir)
        # Shipped in float16 (half the size); loading casts to the inference dtype, and the style
        # statistics stay float32 (StyleConditionedUNet._apply).
        backbone.unet.half()
        backbone.save_pretrained(tmp)


def _finish(summary: dict, out_dir: Path, t0: float) -> dict:
    summary["timings"]["total"] = time.perf_counter() - t0
    summary["files_mb"] = {
        str(p.relative_to(out_dir)): round(p.stat().st_size / 2**20, 2)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != "train_log.json" and not p.relative_to(out_dir).parts[0].startswith(".")
    }
    log_path = out_dir / "train_log.json"
    previous = json.loads(log_path.read_text()) if log_path.exists() else {}
    previous.update({k: v for k, v in summary.items() if k != "timings"})
    previous.setdefault("timings", {}).update(summary["timings"])
    write_json(log_path, previous)
    return summary


def smoke_budget(**overrides) -> ToyBudget:
    return replace(SMOKE, **overrides)
