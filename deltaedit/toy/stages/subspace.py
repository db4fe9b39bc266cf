"""The style-subspace stage (after the autoencoder; nothing else reads it while training): the top
principal directions of the style codes of encoded renders, onto which the per-edit choice of Δs
also projects its candidates (`deltaedit.delta_choice`). Writes style_subspace.npy."""

from __future__ import annotations

import time

import numpy as np
import torch

from ...delta_choice import style_subspace
from ...fileio import atomic_write
from ...nn.stylespace import layout_from_generator, w_plus_to_s
from ..dataset import encoded_renders
from .common import Stage, StageContext

SUBSPACE_CODES = 1024  # encoded renders (seeded) whose codes the directions come from
SUBSPACE_DIMS = 128  # of the toy's 632 channels; measured against 64 and 256 in docs/deltaedit-d.md


@torch.no_grad()
def run(ctx: StageContext) -> dict:
    t = time.perf_counter()
    gan = ctx.gan
    w = encoded_renders(gan.encoder, gan.latent_avg, min(SUBSPACE_CODES, len(ctx.images)), ctx.seed, ctx.device)
    styles = layout_from_generator(gan.G).join(w_plus_to_s(gan.G, w))
    # A smoke run has fewer codes than directions: centred codes span at most N - 1 of them.
    basis = style_subspace(styles.cpu(), min(SUBSPACE_DIMS, styles.shape[0] - 1, styles.shape[1]))
    with atomic_write(ctx.out_dir / "style_subspace.npy") as tmp:
        np.save(tmp, basis.numpy())
    return {"timings": {"subspace": time.perf_counter() - t}}


STAGE = Stage("subspace", outputs=("style_subspace.npy",), settings=("n_images",), run=run)
