"""Training DeltaEdit-D: a `StyleConditionedUNet` learns ε-prediction on (image, style code s) pairs.

Text-free like the mapper: every training image comes with its own StyleGAN style code s (for real
photos: encoder -> W+ -> S; for generated images: the code that rendered them). The UNet learns
p(x | s), so at edit time s + Δs from the Delta Mapper moves the decoded image.

Data (`train_diffusion(dataset=...)`, `training.diffusion_data`): a folder of shards
(`write_shard`), a folder of images plus a `style_fn` that gives each its s (encoded once into
shards), a `(images, styles[, renders])` tuple or any torch Dataset yielding such rows, or an
endless seeded batch stream (`training.generator_data`). No horizontal flips: s describes the
unflipped image.

Objective: standard DDPM ε-prediction MSE, ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, s)‖², t uniform over the
1000-step linear schedule (the schedule `deltaedit.pipelines.diffusion` inverts with). AdamW, EMA
weights (diffusers `EMAModel` with warm-up), gradient clipping, `accelerate` for multi-GPU (plain
CPU works too). The output folder holds the EMA weights (`save_pretrained`), `scheduler/`,
`samples/step_XXXXXX.png` (top row: training images, bottom row: sampled from their s),
`log.jsonl`, and `checkpoint/` (optimizer, EMA, random state, step) that `resume=` continues from.
`time_limit=` stops a run at a checkpoint when its time is up (`TrainingPaused`), so a job on a
machine lent for minutes at a time finishes over several calls of the same command.

Expected FFHQ cost at 256 px (`FFHQ_CONFIG`: 122M parameters). Measured with torch's FLOP counter:
497 GFLOP per image forward (2 FLOP per multiply-add), so ~1.5 TFLOP per image per training step
(backward ≈ 2x forward). On this project's 2-core CPU (~15-40 GFLOP/s sustained) that is over a minute
per image: CPU training is out of the question. Measured on one H200 (bf16 autocast, AdamW): 0.19 s
per step at batch 16 and 0.35 s at batch 32, i.e. ~11 ms per image (~135 TFLOP/s, 14% of the
card's dense bf16 peak); an H100 should be within ~20% of that. At batch 64 (~0.7 s per step):
100k steps ≈ 20 GPU-hours, the 500k steps of the DDPM CelebA-HQ-256 recipe ≈ 4 GPU-days (half a day
on 8 GPUs with `accelerate launch`). For scale: the toy preset (64 px, 3.3M parameters) trained
4000 steps at batch 64 in 3 minutes on the same card.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import InputError
from ..fileio import atomic_dir, atomic_write
from ..nn.style_unet import PRESETS, StyleConditionedUNet
from ..pipelines.diffusion import DEFAULT_SCHEDULER_CONFIG, ddim_sample, make_scheduler
from .diffusion_data import (  # noqa: F401 (the data's names stay importable from here)
    IMAGE_EXTENSIONS,
    IMAGES_SUFFIX,
    RENDERS_SUFFIX,
    STYLES_SUFFIX,
    PairDataset,
    ShardDataset,
    StyleFn,
    encode_image_folder,
    resolve_dataset,
    to_uint8_hwc,
    write_shard,
)
from .loop import (
    Every,
    Processes,
    TrainingLoop,
    drop_log_rows_after,
    rng_state,
    set_rng_state,
    write_files_into,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- model
def build_model(config, style_dim: int) -> StyleConditionedUNet:
    """`config`: a preset name (toy, ffhq, tiny), a dict of constructor arguments, or a config.json path."""
    if isinstance(config, str) and config == "tiny":
        return StyleConditionedUNet.tiny(style_dim)
    if isinstance(config, str) and config in PRESETS:
        return StyleConditionedUNet.from_preset(config, style_dim)
    if isinstance(config, str | Path) and Path(config).is_file():
        config = json.loads(Path(config).read_text())
    if not isinstance(config, dict):
        raise InputError(f"unknown UNet config {config!r}: use toy, ffhq, tiny, a dict or a config.json file")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if kwargs.setdefault("style_dim", style_dim) != style_dim:
        raise InputError(
            f"config style_dim {kwargs['style_dim']} but the data's style codes have {style_dim}"
        )
    return StyleConditionedUNet(**kwargs)


def config_sample_size(config) -> int:
    """The image size a UNet config (as accepted by `build_model`) works at."""
    if isinstance(config, str) and config == "tiny":
        return StyleConditionedUNet.tiny().config.sample_size
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]["sample_size"]
    if isinstance(config, str | Path) and Path(config).is_file():
        config = json.loads(Path(config).read_text())
    if isinstance(config, dict):
        return int(config.get("sample_size", 64))
    raise InputError(f"unknown UNet config {config!r}: use toy, ffhq, tiny, a dict or a config.json file")


def diffusion_loss(
    model, noise_scheduler, x0, s, noise, timesteps, render=None, residual_scale: float = 1.0
) -> torch.Tensor:
    """ε-prediction MSE at the given noise and timesteps. With `render` (R(s), for a model with
    `render_channels`) the diffused data is the residual residual_scale · (x0 − R(s)), and R(s)
    conditions the UNet."""
    if render is not None:
        x0 = (x0 - render) * residual_scale
    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    return F.mse_loss(model(noisy, timesteps, s, render).float(), noise.float())


def split_batch(batch, render_channels: int):
    """(x0, s, render or None) from a loader batch of pairs or triples, checked against the model."""
    if len(batch) not in (2, 3):
        raise InputError(f"training data must yield (image, s) or (image, s, render), got {len(batch)} items")
    x0, s, render = batch[0], batch[1], batch[2] if len(batch) == 3 else None
    if render_channels and render is None:
        raise InputError(
            "this UNet is conditioned on the generator's rendering (render_channels"
            f" {render_channels}) but the training data has none: pass (images, styles, renders)"
            f" or shards written with renders (*{RENDERS_SUFFIX})"
        )
    if not render_channels:
        render = None  # a plain UNet ignores renders the data happens to carry
    return x0, s, render


def make_noise_scheduler() -> DDPMScheduler:
    return make_scheduler(DDPMScheduler, DEFAULT_SCHEDULER_CONFIG)


def image_grid(rows: list[torch.Tensor]) -> Image.Image:
    """Rows of [N,3,H,W] images in [-1,1] -> one PIL image."""
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # [3, rows*H, N*W]
    return Image.fromarray(to_uint8_hwc(grid[None])[0])


# ---------------------------------------------------------------------------------------------- training
def train_diffusion(
    dataset,
    config="toy",
    out_dir: str | Path = "runs/diffusion",
    steps: int = 10000,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    resume: str | Path | None = None,
    sample_every: int = 1000,
    style_fn: StyleFn | None = None,
    progress: bool = True,
    checkpoint_every: int = 1000,
    warmup_steps: int = 0,
    ema_decay: float = 0.9999,
    grad_clip: float = 1.0,
    sample_steps: int = 25,
    num_samples: int = 8,
    mixed_precision: str = "no",
    num_workers: int = 0,
    init: StyleConditionedUNet | None = None,
    time_limit: float | None = None,
    lr_schedule: str = "constant_with_warmup",
) -> Path:
    """Train (or continue training) a StyleConditionedUNet; returns `out_dir` (loadable weights).

    `init`: the model to start from instead of a fresh `build_model(config)` (e.g. a public DDPM
    with zero-initialised conditioning, `training.pretrained_init`). `dataset` may also be an endless
    seeded batch stream (an object with `batches(batch_size, start, device, rank, world)`, e.g.
    `training.generator_data.GeneratorStream`): batch k of it is drawn at step k, so a resumed run
    continues the stream exactly where it stopped.

    `time_limit` (seconds): once a step ends past it, the run saves its checkpoint and raises
    `TrainingPaused`; `resume="latest"` continues from there.

    `lr_schedule`: a diffusers schedule name ("constant_with_warmup", "cosine", "linear"); the
    decaying ones reach zero at `steps`.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.perf_counter()
    out_dir = _output_folder(out_dir, steps, batch_size, lr)
    procs = Processes.of(Accelerator(mixed_precision=mixed_precision))
    set_seed(seed)
    data = resolve_dataset(dataset, out_dir, config_sample_size(config), style_fn, progress)
    model = _model_for(data, config, init)
    run = _DiffusionRun.create(model, lr, lr_schedule, warmup_steps, steps, ema_decay, out_dir / "checkpoint")
    start = 0 if resume is None else run.resume(resume)
    batches = run.prepare(procs, data, start, steps, batch_size, seed, num_workers)
    grids = _SampleGrids(data, run, num_samples, seed, sample_steps, out_dir / "samples", procs.device)
    loop = TrainingLoop(
        steps,
        procs,
        run.save,
        save_every=checkpoint_every,
        time_limit=time_limit,
        started=started,
        log_path=out_dir / "log.jsonl",
        checkpoint=run.checkpoint,
        progress=progress,
        desc="train-diffusion",
    )
    train_step = _diffusion_step(run, procs, batches, make_noise_scheduler(), grad_clip, loop)

    def write_samples(step: int) -> None:
        if procs.is_main:
            grids.write(step)

    def write_weights() -> None:  # the last step's samples (unless just written) and the EMA weights
        if sample_every and done % sample_every:
            grids.write(done)
        write_files_into(out_dir, run.write_final)

    run.model.train()
    done = loop.run(start, train_step, (Every(sample_every, write_samples, at_end=False),))
    loop.finish(done, write_weights)
    return out_dir


def _output_folder(out_dir: str | Path, steps: int, batch_size: int, lr: float) -> Path:
    """`out_dir`, made, once the run's sizes are checked."""
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise InputError(f"need steps >= 0, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _diffusion_step(
    run: _DiffusionRun, procs: Processes, batches, noise_scheduler, grad_clip: float, loop: TrainingLoop
) -> Callable[[int], dict]:
    """`train_step(step)`: one optimiser step of `run` on the next batch (ε-prediction loss at
    random noise and timesteps, gradient clipping, the schedule and the EMA); returns the log row."""

    def train_step(step: int) -> dict:
        x0, s, render = split_batch(next(batches), run.render_channels)
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        with procs.accelerator.autocast():
            loss = diffusion_loss(run.model, noise_scheduler, x0, s, noise, t, render, run.residual_scale)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        procs.backward(loss)
        if grad_clip:
            procs.accelerator.clip_grad_norm_(run.model.parameters(), grad_clip)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.ema.step(run.unwrapped.parameters())
        loop.show(loss=f"{loss.item():.4f}")
        return {"loss": loss.item(), "lr": run.lr_scheduler.get_last_lr()[0]}

    return train_step


def _model_for(data, config, init: StyleConditionedUNet | None) -> StyleConditionedUNet:
    """The UNet to train (`init` or a fresh one), checked against the data, with its style statistics."""
    if len(data) == 0:
        raise InputError("the training data is empty")
    first = data[0]
    first_image, first_style = first[0], first[1]
    model = build_model(config, int(first_style.shape[-1])) if init is None else init
    if model.config.style_dim != first_style.shape[-1]:
        raise InputError(
            f"the UNet is conditioned on {model.config.style_dim} style values but the data's codes"
            f" have {first_style.shape[-1]}"
        )
    split_batch(first, int(model.config.render_channels))  # a rendering-conditioned UNet needs renders
    if first_image.shape[-1] != model.config.sample_size:
        raise InputError(
            f"training images are {first_image.shape[-1]} px but the UNet expects {model.config.sample_size} px"
        )
    if hasattr(data, "style_stats"):
        model.set_style_stats(*data.style_stats())
    return model


class _DiffusionRun:
    """What a diffusion run trains and keeps: the UNet, its optimizer, schedule and EMA, and their
    checkpoint (`checkpoint/`: six files that replace the previous ones together)."""

    def __init__(self, model, optimizer, lr_scheduler, ema: EMAModel, checkpoint: Path):
        self.model, self.unwrapped = model, model
        self.optimizer, self.lr_scheduler, self.ema = optimizer, lr_scheduler, ema
        self.checkpoint = checkpoint
        self.render_channels = int(model.config.render_channels)
        self.residual_scale = float(getattr(model.config, "residual_scale", 1.0) or 1.0)

    @classmethod
    def create(
        cls, model, lr, lr_schedule: str, warmup_steps: int, steps: int, ema_decay: float, checkpoint: Path
    ) -> _DiffusionRun:
        """A fresh run of `model`: AdamW, its learning-rate schedule (over `steps`) and the EMA weights."""
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-6)
        lr_scheduler = get_scheduler(
            lr_schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(steps, 1)
        )
        ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
        return cls(model, optimizer, lr_scheduler, ema, checkpoint)

    def resume(self, resume: str | Path) -> int:
        """Load a checkpoint ("latest": this run's own); returns its step."""
        folder = self.checkpoint if str(resume) == "latest" else Path(resume)
        if not (folder / "state.json").is_file():
            raise InputError(f"{folder} is not a training checkpoint (no state.json); pass a checkpoint/ folder")
        step = json.loads((folder / "state.json").read_text())["step"]
        self.model.load_state_dict(_load_file(folder / "model.safetensors"))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(folder / "lr_scheduler.pt", weights_only=True))
        self.ema.load_state_dict(torch.load(folder / "ema.pt", weights_only=True))
        if (folder / "rng.pt").is_file():  # noise and timesteps go on as if never stopped
            set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
        drop_log_rows_after(self.checkpoint.parent / "log.jsonl", step)
        log.info("resumed from %s at step %d", folder, step)
        return step

    def prepare(self, procs: Processes, data, start: int, steps: int, batch_size: int, seed: int, workers: int):
        """Hand the run to accelerate; returns its batches from step `start` on."""
        if hasattr(data, "batches"):  # an endless seeded stream: batch k at step k, on this process's device
            batches = data.batches(
                batch_size, start=start, stop=steps, device=procs.device, rank=procs.rank, world=procs.world
            )
            self.model, self.optimizer, self.lr_scheduler = procs.prepare(self.model, self.optimizer, self.lr_scheduler)
        else:
            # The loader's shuffling depends on (seed, step) so a resumed run does not replay the same order.
            loader = DataLoader(
                data,
                batch_size=batch_size,
                shuffle=True,
                drop_last=len(data) >= batch_size,
                generator=torch.Generator().manual_seed(seed * 1_000_003 + start),
                num_workers=workers,
            )
            self.model, self.optimizer, loader, self.lr_scheduler = procs.prepare(
                self.model, self.optimizer, loader, self.lr_scheduler
            )
            batches = _epochs(loader)
        self.ema.to(procs.device)
        self.unwrapped = procs.unwrap(self.model)
        return iter(batches)

    def with_ema(self, fn):
        """fn() with the EMA weights in the model."""
        self.ema.store(self.unwrapped.parameters())
        self.ema.copy_to(self.unwrapped.parameters())
        try:
            return fn()
        finally:
            self.ema.restore(self.unwrapped.parameters())

    def save(self, step: int) -> None:
        from safetensors.torch import save_file

        # All six files replace the previous checkpoint together: an interrupted save leaves the
        # previous one whole, never weights of one step beside an optimizer of another.
        with atomic_dir(self.checkpoint) as tmp:
            state = {k: v.contiguous() for k, v in self.unwrapped.state_dict().items()}
            save_file(state, tmp / "model.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
            torch.save(self.ema.state_dict(), tmp / "ema.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step}))

    def write_final(self, folder: Path) -> None:
        """The EMA weights (`save_pretrained`) and the DDIM scheduler the editor samples with."""
        self.with_ema(lambda: self.unwrapped.save_pretrained(folder))
        make_scheduler(DDIMScheduler, DEFAULT_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")


def _epochs(loader):
    """The loader's batches, epoch after epoch (each epoch a new shuffle of its generator)."""
    while True:
        yield from loader


class _SampleGrids:
    """`samples/step_XXXXXX.png`: fixed training examples on top, sampled from their codes (EMA
    weights, fixed starting noise) below."""

    def __init__(self, data, run: _DiffusionRun, count: int, seed: int, sample_steps: int, folder: Path, device):
        shown = [split_batch(data[i], run.render_channels) for i in range(min(count, len(data)))]
        self.images = torch.stack([x for x, _, _ in shown])
        self.styles = torch.stack([s for _, s, _ in shown])
        self.renders = torch.stack([r for _, _, r in shown]) if run.render_channels else None
        self.noise = torch.randn(self.images.shape, generator=torch.Generator().manual_seed(seed))
        self.run, self.sample_steps, self.folder, self.device = run, sample_steps, folder, device

    def write(self, step: int) -> None:
        model = self.run.unwrapped
        model.eval()
        device = self.device
        render = None if self.renders is None else self.renders.to(device)
        samples = self.run.with_ema(
            lambda: ddim_sample(
                model,
                DEFAULT_SCHEDULER_CONFIG,
                self.noise.to(device),
                self.styles.to(device),
                self.sample_steps,
                render=render,
            )
        )
        if render is not None:  # the model samples (scaled) residuals: the image is R(s) + residual
            samples = samples / self.run.residual_scale + render
        model.train()
        with atomic_write(self.folder / f"step_{step:06d}.png") as tmp:
            image_grid([self.images, samples.clamp(-1, 1).cpu()]).save(tmp)


def _load_file(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)
