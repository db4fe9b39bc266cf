"""The clip stage: a small open_clip model trained contrastively on renders and varied captions,
with linear attribute probes shared by both towers (`AttributeProbe`). Writes clip.safetensors.

Captions are only used here, to train the toy CLIP, exactly as the real domain's CLIP was trained
by OpenAI on someone else's data: the mapper never sees one.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import load_domain_config
from ..render import images_to_tensor
from .common import Stage, StageContext, cosine_lr, save_safetensors


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
        from ..attributes import ATTRIBUTES

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
    from ...errors import InputError
    from ..attributes import ATTRIBUTE_NAMES, ATTRIBUTES, prompt_targets

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

    from ...clip import build_clip_from_config, build_tokenizer
    from ...templates import TEMPLATES
    from ..attributes import caption

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
            g["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
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


def run(ctx: StageContext) -> dict:
    t = time.perf_counter()
    b = ctx.budget
    model, _, losses = train_clip(
        ctx.images, ctx.attrs, b.clip_steps, b.clip_batch, ctx.seed, progress=ctx.progress, device=ctx.device
    )
    save_safetensors(model.state_dict(), ctx.out_dir / "clip.safetensors", half=True)
    return {
        "clip_loss": [losses[0], float(np.mean(losses[-20:]))],
        "timings": {"clip": time.perf_counter() - t},
    }


STAGE = Stage(
    "clip", outputs=("clip.safetensors",), settings=("n_images", "clip_steps", "clip_batch"), run=run
)
