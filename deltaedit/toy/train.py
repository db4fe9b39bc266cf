"""Train every weight of the built-in toy domain from a seed: `python -m deltaedit toy train`.

The stages, in the order they run, one module each under `deltaedit/toy/stages/` (each writes
its files into the output folder and is skipped when they are already there, so an interrupted
run resumes):

1. renders     - procedural faces with their attributes (`toy/dataset.py`; kept in memory)
2. clip        - a small open_clip model trained contrastively on renders and captions
3. autoencoder - our StyleGAN2 generator and an e4e-style encoder that reconstruct renders, then
                 fine-tuned with a CLIP feature loss (so it needs the clip stage)
4. relevance   - fs3 of the toy generator (the generic `relevance` tool)
5. subspace    - the top principal directions of encoded renders' style codes (the per-edit
                 choice of Δs also weighs its candidates projected onto them)
6. mapper      - codes of encoded renders (`make-codes`), the Delta Mapper trained text-free on
                 them (`train-mapper`), then the refinement distilled into it (uses fs3)
7. classifier  - an attribute classifier used only to score edits
8. diffusion   - DeltaEdit-D's residual UNet (run on its own with --stages diffusion on a CPU)
9. prior       - DeltaEdit-D's image prior, a full-image UNet (--stages prior)

clip and the autoencoder's first phase do not depend on each other: on a CPU with two cores or
more they train side by side in two processes. The mapper never sees a caption.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..domain import Domain
from ..fileio import write_json
from .budget import FULL, GPU, SMOKE, ToyBudget, smoke_budget
from .dataset import render_dataset
from .stages import autoencoder, classifier, clip, diffusion, mapper, prior, relevance, subspace
from .stages.common import GanModels, StageContext

__all__ = [
    "ASSETS",
    "FULL",
    "GAN_STAGES",
    "GPU",
    "PIPELINE",
    "SMOKE",
    "STAGES",
    "ToyBudget",
    "smoke_budget",
    "train_toy",
]

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "toy"
PIPELINE = (
    clip.STAGE, autoencoder.STAGE, relevance.STAGE, subspace.STAGE, mapper.STAGE, classifier.STAGE,
    diffusion.STAGE, prior.STAGE,
)  # fmt: skip
STAGES = tuple(stage.name for stage in PIPELINE)
GAN_STAGES = STAGES[:-2]  # everything DeltaEdit-G needs; DeltaEdit-D (and its prior) afterwards
# The stages after these read the GAN's weights through the same loaders as every other domain.
INDEPENDENT = ("clip", "autoencoder")


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
    """Run the asked `stages` in order; returns a summary (losses, timings, sizes) also written to
    train_log.json. Stages not asked for are left as they are.

    `time_limit` (seconds, counted from the call): the DeltaEdit-D stage stops at a checkpoint in
    `out_dir/.diffusion-run/` when the time is up and raises `TrainingPaused`; the same call again
    continues it (for machines lent a few minutes at a time).
    """
    from .. import models

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seed": seed, "budget": asdict(budget), "timings": {}}
    t0 = time.perf_counter()
    images, attrs = render_dataset(budget.n_images, seed)
    summary["timings"]["renders"] = time.perf_counter() - t0
    ctx = StageContext(out_dir, images, attrs, budget, seed, device, progress, t0, time_limit)

    todo = [stage for stage in PIPELINE if stage.name in stages and (force or not stage.done(out_dir))]
    first = [stage for stage in todo if stage.name in INDEPENDENT]
    for result in _run_independent_stages(first, ctx, parallel):
        _record(summary, result)
    if not set(stages) - set(INDEPENDENT):
        return _finish(summary, out_dir, t0)
    ctx.gan = _load_gan(out_dir, device)
    for stage in todo:
        if stage not in first:
            _record(summary, stage.run(ctx))
    models.clear_cache()
    return _finish(summary, out_dir, t0)


def _run_independent_stages(first, ctx: StageContext, parallel: bool | None) -> list[dict]:
    if parallel is None:  # two independent stages, at least two cores: one process each
        parallel = ctx.device == "cpu" and (os.cpu_count() or 1) >= 2
    if len(first) == 2 and parallel:
        results = _run_side_by_side(ctx)
        results.append(autoencoder.run_clip_phase(ctx))  # the second phase needs the CLIP
        return results
    return [stage.run(ctx) for stage in first]


def _record(summary: dict, result: dict) -> None:
    summary["timings"].update(result.pop("timings"))
    summary.update(result)


def _load_gan(out_dir: Path, device: str) -> GanModels:
    from .. import models
    from ..clip import DomainClip

    models.clear_cache()
    toy = Domain.open("toy", out_dir)
    G = models.load_generator(toy, device)
    encoder, latent_avg = models.load_encoder(toy, device)
    clip_model = models.load_clip(toy, device)
    assert isinstance(clip_model, DomainClip)
    return GanModels(G, encoder, latent_avg, clip_model)


def _independent_stage_in_subprocess(
    name, images_path, attrs, budget, seed, out_dir, progress, threads
) -> dict:
    torch.set_num_threads(threads)
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    ctx = StageContext(out_dir, images, attrs, budget, seed, "cpu", progress)
    return clip.run(ctx) if name == "clip" else autoencoder.run_pixel_phase(ctx)


def _run_side_by_side(ctx: StageContext) -> list[dict]:
    """CLIP and the autoencoder's first phase do not depend on each other: train them in two
    processes at once, each with half the cores (two small models scale poorly past one core each)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // 2)
    with tempfile.TemporaryDirectory(prefix="deltaedit-toy-renders-") as tmp:
        images_path = Path(tmp) / "renders.npy"
        np.save(images_path, ctx.images)  # memory-mapped by both workers instead of pickled twice
        process = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        with ProcessPoolExecutor(len(INDEPENDENT), mp_context=process) as pool:
            args = (images_path, ctx.attrs, ctx.budget, ctx.seed, ctx.out_dir, ctx.progress, threads)
            futures = [pool.submit(_independent_stage_in_subprocess, name, *args) for name in INDEPENDENT]
            return [f.result() for f in futures]


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
