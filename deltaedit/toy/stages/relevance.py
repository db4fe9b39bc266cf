"""The relevance stage (run before the mapper, whose distillation selects channels with it): fs3 of
the toy generator, the generic `relevance` tool on encoded renders. Writes fs3.npy."""

from __future__ import annotations

import time

import numpy as np
import torch

from ...fileio import atomic_write
from ..dataset import encoded_renders
from .common import Stage, StageContext

FS3_CODES = 1024  # encoded renders that fs3's samples and channel statistics come from


def run(ctx: StageContext) -> dict:
    from ...relevance import compute_fs3

    t = time.perf_counter()
    gan = ctx.gan
    # The toy generator has no z prior: perturb encoded renders (as `relevance --domain toy`).
    w = encoded_renders(gan.encoder, gan.latent_avg, min(FS3_CODES, len(ctx.images)), ctx.seed, ctx.device)
    fs3 = compute_fs3(
        gan.G, gan.clip, n_samples=ctx.budget.fs3_samples, batch_size=64, seed=ctx.seed,
        progress=ctx.progress, codes=w,
    )  # fmt: skip
    fs3 = fs3.cpu().numpy() if torch.is_tensor(fs3) else np.asarray(fs3)
    with atomic_write(ctx.out_dir / "fs3.npy") as tmp:
        np.save(tmp, fs3.astype(np.float32))
    return {"timings": {"relevance": time.perf_counter() - t}}


STAGE = Stage("relevance", outputs=("fs3.npy",), settings=("n_images", "fs3_samples"), run=run)
