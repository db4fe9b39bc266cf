"""The DeltaEdit-D stage, diffusion (run on its own, after the GAN stages it needs): renders x0, the
style codes s of their encodings and the generator's rendering R(s) of those codes (decoded as the
GAN editor decodes); the UNet diffuses the residual x0 − R(s) with R(s) as extra input channels
(docs/deltaedit-d.md). Text-free, like every stage. Writes the folder diffusion/.

It trains in `.diffusion-run/` (checkpoints, log, samples, run.json): a run stopped by a time
limit (`TrainingPaused`) continues from its checkpoint when the same call comes again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ...fileio import atomic_dir, write_json
from ...nn.e4e import encode
from ..render import images_to_tensor
from .common import Stage, StageContext

log = logging.getLogger(__name__)

# DeltaEdit-D's UNet: the toy preset plus the generator's rendering R(s) as 3 input channels; the
# residual x0 − R(s) (RMS about 0.1) is diffused times 8, at about unit scale (docs/deltaedit-d.md).
DIFFUSION_CONFIG: dict = {"render_channels": 3, "residual_scale": 8.0}
# The stage's run (checkpoint, log, samples) until it finishes: a paused run resumes it.
DIFFUSION_RUN = ".diffusion-run"


def training_data(ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, s, R(s)) of the first `diffusion_codes` renders."""
    gan = ctx.gan
    n = min(ctx.budget.diffusion_codes, ctx.budget.n_codes, len(ctx.images))
    x = images_to_tensor(ctx.images[:n])
    with torch.no_grad():
        pairs = [
            style_codes_and_renders(gan.G, gan.encoder, gan.latent_avg, x[i : i + 256].to(ctx.device))
            for i in range(0, n, 256)
        ]
    return x, torch.cat([s for s, _ in pairs]), torch.cat([r for _, r in pairs])


def train_in_run_folder(
    ctx: StageContext,
    data,
    run_dir: Path,
    record: dict,
    resume: bool,
    config: dict | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr_schedule: str | None = None,
) -> None:
    """`train_diffusion` in `run_dir`, counting this call's training time in `record` (paused or done).
    `config`, `steps`, `batch_size`, `lr_schedule`: another model's (the image prior's); None: the D
    stage's (DIFFUSION_CONFIG and the budget's diffusion_* fields)."""
    from ...nn.style_unet import TOY_CONFIG
    from ...training.diffusion import train_diffusion

    b = ctx.budget
    steps = b.diffusion_steps if steps is None else steps
    t_train = time.perf_counter()
    try:
        train_diffusion(
            data,
            config={**TOY_CONFIG, **(DIFFUSION_CONFIG if config is None else config)},
            out_dir=run_dir,
            steps=steps,
            batch_size=b.diffusion_batch if batch_size is None else batch_size,
            lr=b.diffusion_lr,
            warmup_steps=min(100, steps // 10),
            seed=ctx.seed,
            progress=ctx.progress,
            sample_every=max(steps // 4, 1),
            checkpoint_every=max(steps // 10, 1),
            ema_decay=0.999,
            resume="latest" if resume else None,
            time_limit=None if ctx.time_limit is None else max(ctx.time_limit - (t_train - ctx.started), 0.0),
            lr_schedule=b.diffusion_lr_schedule if lr_schedule is None else lr_schedule,
        )
    finally:  # paused or done: this call's training time counts
        record["calls"] += 1
        record["train_seconds"] += time.perf_counter() - t_train
        write_json(run_dir / "run.json", record)


def run(ctx: StageContext) -> dict:
    if ctx.budget.diffusion_steps <= 0:  # a budget without DeltaEdit-D
        return {"timings": {}}
    t = time.perf_counter()
    x, s_codes, renders = training_data(ctx)
    run_dir = ctx.out_dir / DIFFUSION_RUN
    run_identity = {"seed": ctx.seed, "codes": len(x), "config": DIFFUSION_CONFIG} | {
        k: v for k, v in asdict(ctx.budget).items() if k.startswith("diffusion_")
    }
    record, resume = diffusion_run(run_dir, run_identity)
    threads = torch.get_num_threads()
    train_in_run_folder(ctx, (x, s_codes, renders), run_dir, record, resume)
    summary = {
        "design": "residual: x0 - R(s) diffused, R(s) as input channels, s as vector condition",
        "config": DIFFUSION_CONFIG,
        "device": ctx.device,
        "torch_threads": threads,
        "train_seconds": round(record["train_seconds"], 1),
        "calls": record["calls"],  # > 1: resumed after a --time-limit pause
        "residual_rms": round(float((x - renders).pow(2).mean().sqrt()), 4),
        "loss_curve": loss_curve(run_dir / "log.jsonl"),
    }
    copy_diffusion_weights(run_dir, ctx.out_dir / "diffusion")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"diffusion": summary, "timings": {"diffusion": time.perf_counter() - t}}


def style_codes_and_renders(G, encoder, latent_avg, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [B, S], R(s) [B, 3, H, W]) of encoded renders: R decodes s exactly as the GAN editor does
    (convs from s, ToRGB from the same W+, fixed noise), so training sees the rendering edits use."""
    from ...nn.stylespace import decode_s, layout_from_generator, w_plus_to_s

    w = encode(encoder, latent_avg, x)
    s_list = w_plus_to_s(G, w)
    return layout_from_generator(G).join(s_list).cpu(), decode_s(G, s_list, w).clamp(-1, 1).cpu()


def style_codes(G, encoder, latent_avg, x: torch.Tensor) -> torch.Tensor:
    """s [B, S] of encoded renders, as `style_codes_and_renders` gives them, without the renders."""
    from ...nn.stylespace import layout_from_generator, w_plus_to_s

    return layout_from_generator(G).join(w_plus_to_s(G, encode(encoder, latent_avg, x))).cpu()


def loss_curve(log_jsonl: Path, points: int = 60) -> list[list[float]]:
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


def diffusion_run(run_dir: Path, settings: dict) -> tuple[dict, bool]:
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


def copy_diffusion_weights(run_dir: Path, target: Path) -> None:
    """Keep only what `DiffusionBackbone.from_pretrained` reads (no optimizer state, no samples)."""
    from ...pipelines.diffusion import DiffusionBackbone

    with atomic_dir(target) as tmp:
        backbone = DiffusionBackbone.from_pretrained(run_dir)
        # Shipped in float16 (half the size); loading casts to the inference dtype, and the style
        # statistics stay float32 (StyleConditionedUNet._apply).
        backbone.unet.half()
        backbone.save_pretrained(tmp)


STAGE = Stage(
    "diffusion",
    outputs=("diffusion",),
    settings=(
        "n_images",
        "n_codes",
        "diffusion_steps",
        "diffusion_batch",
        "diffusion_lr",
        "diffusion_codes",
        "diffusion_lr_schedule",
    ),
    run=run,
)
