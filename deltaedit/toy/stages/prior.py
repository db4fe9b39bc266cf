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

from ..render import images_to_tensor
from .common import Stage, StageContext
from .diffusion import copy_diffusion_weights, diffusion_run, loss_curve, style_codes, train_in_run_folder

PRIOR_RUN = ".prior-run"


def training_data(ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, s) of the first `prior_images` renders."""
    gan = ctx.gan
    x = images_to_tensor(ctx.images[: min(ctx.budget.prior_images, len(ctx.images))])
    with torch.no_grad():
        s = [
            style_codes(gan.G, gan.encoder, gan.latent_avg, x[i : i + 256].to(ctx.device))
            for i in range(0, len(x), 256)
        ]
    return x, torch.cat(s)


def run(ctx: StageContext) -> dict:
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
    # The toy preset as it is (no rendering input), with a cosine schedule.
    train_in_run_folder(
        ctx, data, run_dir, record, resume, config={}, steps=b.prior_steps, batch_size=b.prior_batch,
        lr_schedule="cosine",
    )  # fmt: skip
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
