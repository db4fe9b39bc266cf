"""The DeltaEdit-D image prior stage, prior (after diffusion): a full-image UNet (no rendering
input) conditioned on the style code s, trained on renders and the codes of their encodings. At
edit time it redraws each edit inside the change mask, SDEdit-style (`PriorCleanup`), which takes
away part of the generator's smear where R(s') draws the edit (docs/deltaedit-d.md, fourth round).
Text-free, like every stage. Writes the folder diffusion-prior/.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict

import torch

from ...fileio import write_json
from ...nn.e4e import encode
from ...nn.stylespace import layout_from_generator, w_plus_to_s
from ..render import images_to_tensor
from .common import Stage, StageContext
from .diffusion import copy_diffusion_weights, diffusion_run, loss_curve

PRIOR_RUN = ".prior-run"


def training_data(ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, s) of the first `prior_images` renders."""
    G, encoder, latent_avg = ctx.gan.G, ctx.gan.encoder, ctx.gan.latent_avg
    layout = layout_from_generator(G)
    x = images_to_tensor(ctx.images[: min(ctx.budget.prior_images, len(ctx.images))])
    with torch.no_grad():
        s = [
            layout.join(w_plus_to_s(G, encode(encoder, latent_avg, x[i : i + 256].to(ctx.device)))).cpu()
            for i in range(0, len(x), 256)
        ]
    return x, torch.cat(s)


def run(ctx: StageContext) -> dict:
    from ...nn.style_unet import TOY_CONFIG
    from ...training.diffusion import train_diffusion

    b = ctx.budget
    if b.prior_steps <= 0:  # a budget without the prior
        return {"timings": {}}
    t = time.perf_counter()
    data = training_data(ctx)
    run_dir = ctx.out_dir / PRIOR_RUN
    identity = {"seed": ctx.seed, "images": len(data[0])} | {
        k: v for k, v in asdict(b).items() if k.startswith("prior_") or k == "diffusion_lr"
    }
    record, resume = diffusion_run(run_dir, identity)
    t_train = time.perf_counter()
    try:
        train_diffusion(
            data,
            config=dict(TOY_CONFIG),
            out_dir=run_dir,
            steps=b.prior_steps,
            batch_size=b.prior_batch,
            lr=b.diffusion_lr,
            warmup_steps=min(100, b.prior_steps // 10),
            seed=ctx.seed,
            progress=ctx.progress,
            sample_every=max(b.prior_steps // 4, 1),
            checkpoint_every=max(b.prior_steps // 10, 1),
            ema_decay=0.999,
            resume="latest" if resume else None,
            time_limit=None if ctx.time_limit is None else max(ctx.time_limit - (t_train - ctx.started), 0.0),
            lr_schedule="cosine",
        )
    finally:  # paused or done: this call's training time counts
        record["calls"] += 1
        record["train_seconds"] += time.perf_counter() - t_train
        write_json(run_dir / "run.json", record)
    summary = {
        "design": "image prior: full-image UNet conditioned on s, no rendering input",
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(record["train_seconds"], 1),
        "calls": record["calls"],
        "loss_curve": loss_curve(run_dir / "log.jsonl"),
    }
    copy_diffusion_weights(run_dir, ctx.out_dir / "diffusion-prior")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"diffusion_prior": summary, "timings": {"diffusion_prior": time.perf_counter() - t}}


STAGE = Stage(
    "prior",
    outputs=("diffusion-prior",),
    settings=("n_images", "prior_steps", "prior_batch", "prior_images", "diffusion_lr"),
    run=run,
)
