"""The mapper stage (codes, then the mapper): W+, S and CLIP image features of encoded renders (the generic
`make-codes` tool), the Delta Mapper trained text-free on them (`train-mapper`), then the
refinement distilled into it (`train-mapper --distil`, text-free too: image deltas of code pairs;
it selects channels with fs3, so the relevance stage runs first). Writes mapper.safetensors (and
mapper.json) and feature_bank.npy, CLIP image features of the first codes (`deltaedit.grounding`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ...config import load_domain_config
from ...domain import Domain
from ...fileio import atomic_write
from ..render import images_to_tensor
from .common import Stage, StageContext


def make_toy_codes(ctx: StageContext, codes_dir: Path) -> None:
    """The codes of the first `n_codes` renders, through the generic `make-codes` tool."""
    from ...training.codes import make_codes

    gan, images = ctx.gan, ctx.images
    n = min(ctx.budget.n_codes, len(images))
    make_codes(
        gan.G,
        lambda x: gan.clip.image_features(x, image_size=gan.G.size),
        codes_dir,
        n=n,
        batch_size=64,
        shard_size=4096,
        seed=ctx.seed,
        encoder=gan.encoder,
        latent_avg=gan.latent_avg,
        images=(images_to_tensor(images[i : min(i + 64, n)]) for i in range(0, n, 64)),
        progress=ctx.progress,
        domain="toy",
    )


def train_base_mapper(ctx: StageContext, codes_dir: Path) -> dict:
    """The feature bank, then the mapper on the codes, into `codes_dir/mapper_base.safetensors`."""
    from ...nn.stylespace import layout_from_generator
    from ...training.codes import load_codes
    from ...training.mapper import train_mapper

    _, s, c = load_codes(codes_dir)
    bank = c[: ctx.budget.bank_size]
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    with atomic_write(ctx.out_dir / "feature_bank.npy") as tmp:
        np.save(tmp, bank.astype(np.float16))
    result = train_mapper(
        (s, c),
        layout_from_generator(ctx.gan.G),
        load_domain_config("toy").clip.embed_dim,
        codes_dir / "mapper_base.safetensors",
        steps=ctx.budget.mapper_steps,
        seed=ctx.seed,
        progress=ctx.progress,
        device=ctx.device,
        delta_noise=ctx.budget.mapper_delta_noise,
        neighbours=ctx.budget.mapper_neighbours,
    )
    return {
        "mapper_loss": [result.train_losses[0], result.train_losses[-1]],
        "mapper_val_loss": result.val_losses[-1] if result.val_losses else None,
    }


def run(ctx: StageContext) -> dict:
    timings = {}
    t = time.perf_counter()
    codes_dir = Path(tempfile.mkdtemp(prefix="deltaedit-toy-codes-"))
    make_toy_codes(ctx, codes_dir)
    timings["codes"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = train_base_mapper(ctx, codes_dir)
    timings["mapper"] = time.perf_counter() - t
    t = time.perf_counter()
    summary.update(distil_toy_mapper(ctx, codes_dir))
    shutil.rmtree(codes_dir, ignore_errors=True)
    timings["mapper_distil"] = time.perf_counter() - t
    return {**summary, "timings": timings}


def distil_toy_mapper(ctx: StageContext, codes_dir: Path) -> dict:
    """The refinement distilled into the base mapper (`codes_dir/mapper_base.safetensors`), written
    to `out_dir/mapper.safetensors`: the generic `train-mapper --distil` on the stage's codes, with
    the toy domain's generator, CLIP, fs3, feature bank and DeltaEdit-G edit defaults."""
    from ... import models
    from ...errors import InputError
    from ...training.codes import load_codes
    from ...training.distil import DistilModels, distil_mapper
    from ...training.mapper import load_mapper_weights, save_mapper_weights

    G, clip, out_dir, budget = ctx.gan.G, ctx.gan.clip, ctx.out_dir, ctx.budget
    seed, device, progress = ctx.seed, ctx.device, ctx.progress
    base = codes_dir / "mapper_base.safetensors"
    if budget.mapper_distil_steps <= 0:
        save_mapper_weights(load_mapper_weights(base), out_dir / "mapper.safetensors")
        return {"mapper_distil": None}
    if not (out_dir / "fs3.npy").is_file():
        raise InputError(
            f"the mapper's distillation needs {out_dir / 'fs3.npy'}: run the relevance stage too"
        )
    toy = Domain.open("toy", out_dir)
    defaults = toy.config.defaults_for("gan")
    result = distil_mapper(
        load_codes(codes_dir),
        DistilModels(
            G,
            clip,
            models.load_relevance(toy),
            models.load_feature_bank(toy),
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


STAGE = Stage(
    "mapper",
    outputs=("mapper.safetensors",),
    settings=(
        "n_images", "n_codes", "bank_size", "mapper_steps", "mapper_neighbours", "mapper_delta_noise",
        "mapper_distil_steps", "mapper_distil_batch", "mapper_distil_lr", "mapper_distil_anchor", "mapper_distil_random_fraction",
    ),
    run=run,
)  # fmt: skip
