"""Training DeltaEdit-D: a `StyleConditionedUNet` learns ε-prediction on (image, style code s) pairs.

Text-free like the mapper: every training image comes with its own StyleGAN style code s (for real
photos: encoder -> W+ -> S; for generated images: the code that rendered them). The UNet learns
p(x | s), so at edit time s + Δs from the Delta Mapper moves the decoded image.

Data (`train_diffusion(dataset=...)`):
- a folder of shards: pairs `NAME.images.npy` (uint8 [N, H, W, 3]) + `NAME.styles.npy` (float32 or
  float16 [N, S]), row i of one matching row i of the other; write them with `write_shard`;
- a folder of images (png/jpg/webp) plus a `style_fn(images [B,3,H,W] in [-1,1]) -> s [B,S]`: the
  images are encoded once into shards under `OUT/shards/` (`encode_image_folder`);
- a `(images [N,3,H,W] in [-1,1], styles [N,S])` tuple, or any torch Dataset yielding such pairs.
No horizontal flips: s describes the unflipped image.

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

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..fileio import atomic_dir, atomic_write
from ..nn.style_unet import PRESETS, StyleConditionedUNet
from ..pipelines.diffusion import DEFAULT_SCHEDULER_CONFIG, ddim_sample, make_scheduler
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

IMAGES_SUFFIX = ".images.npy"
STYLES_SUFFIX = ".styles.npy"
RENDERS_SUFFIX = ".renders.npy"  # optional: the generator's rendering R(s) of each row's style code
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
StyleFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- data
def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> uint8 [N,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_shard(folder: str | Path, name: str, images, styles, renders=None) -> Path:
    """Write one shard: images ([N,3,H,W] float in [-1,1] or uint8 [N,H,W,3]), styles [N,S] and,
    for a rendering-conditioned UNet, renders R(s) ([N,3,H,W] float in [-1,1], kept as float16)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        images = to_uint8_hwc(images)
    images = np.asarray(images)
    styles = np.asarray(styles.detach().cpu() if isinstance(styles, torch.Tensor) else styles, np.float32)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"shard images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if styles.ndim != 2 or styles.shape[0] != images.shape[0]:
        raise InputError(f"shard styles must be [{images.shape[0]}, S], got {styles.shape}")
    arrays = [(IMAGES_SUFFIX, images), (STYLES_SUFFIX, styles)]
    if renders is not None:
        renders = torch.as_tensor(renders).detach().float().cpu()
        want = (images.shape[0], 3, images.shape[1], images.shape[2])
        if tuple(renders.shape) != want:
            raise InputError(
                f"shard renders must be {list(want)} floats in [-1, 1], got {tuple(renders.shape)}"
            )
        arrays.append((RENDERS_SUFFIX, renders.clamp(-1, 1).half().numpy()))
    # Each file appears whole. A shard cut off between the two has images and no styles, which
    # ShardDataset reports by name (encode_image_folder also swaps its whole folder in at once).
    for suffix, array in arrays:
        with atomic_write(folder / f"{name}{suffix}") as tmp:
            np.save(tmp, array)
    return folder


class ShardDataset(Dataset):
    """(image [3,H,W] in [-1,1], s [S]) pairs read lazily (memory-mapped) from a folder of shards;
    (image, s, render [3,H,W]) triples when every shard has its `.renders.npy`."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        image_files = sorted(folder.glob(f"*{IMAGES_SUFFIX}"))
        if not image_files:
            raise InputError(f"no *{IMAGES_SUFFIX} shards in {folder}; write them with write_shard()")
        self.images, self.styles, self.renders = [], [], []
        for path in image_files:
            style_path = path.with_name(path.name[: -len(IMAGES_SUFFIX)] + STYLES_SUFFIX)
            if not style_path.is_file():
                raise InputError(f"shard {path.name} has no matching {style_path.name}")
            images, styles = (
                np.load(path, mmap_mode="r", allow_pickle=False),
                np.load(style_path, mmap_mode="r", allow_pickle=False),
            )
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise InputError(
                    f"{path.name}: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
                )
            if styles.ndim != 2 or styles.shape[0] != images.shape[0]:
                raise InputError(
                    f"{style_path.name}: expected [{images.shape[0]}, S] styles, got {styles.shape}"
                )
            self.images.append(images)
            self.styles.append(styles)
            render_path = path.with_name(path.name[: -len(IMAGES_SUFFIX)] + RENDERS_SUFFIX)
            if render_path.is_file():
                renders = np.load(render_path, mmap_mode="r", allow_pickle=False)
                want = (images.shape[0], 3, *images.shape[1:3])
                if renders.shape != want:
                    raise InputError(
                        f"{render_path.name}: expected renders {list(want)}, got {list(renders.shape)}"
                    )
                self.renders.append(renders)
        if self.renders and len(self.renders) != len(self.images):
            raise InputError(
                f"only {len(self.renders)} of the {len(self.images)} shards in {folder} have *{RENDERS_SUFFIX}:"
                " write every shard with its renders, or none"
            )
        shapes = {(a.shape[1:], b.shape[1]) for a, b in zip(self.images, self.styles)}
        if len(shapes) != 1:
            raise InputError(f"shards in {folder} disagree on image size or style size: {sorted(shapes)}")
        self.offsets = np.cumsum([0] + [len(a) for a in self.images])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int):
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        row = index - int(self.offsets[shard])
        image = torch.from_numpy(np.array(self.images[shard][row])).permute(2, 0, 1).float() / 127.5 - 1
        style = torch.from_numpy(np.array(self.styles[shard][row], dtype=np.float32))
        if not self.renders:
            return image, style
        return image, style, torch.from_numpy(np.array(self.renders[shard][row], dtype=np.float32))

    def style_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean/std of s, accumulated in float64 shard by shard."""
        total = sum(np.asarray(s, np.float64).sum(0) for s in self.styles)
        squares = sum(np.square(np.asarray(s, np.float64)).sum(0) for s in self.styles)
        mean = total / len(self)
        std = np.sqrt(np.maximum(squares / len(self) - mean**2, 0))
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


class PairDataset(Dataset):
    """In-memory (images [N,3,H,W] in [-1,1], styles [N,S]) and optionally renders [N,3,H,W] (R(s))."""

    def __init__(self, images: torch.Tensor, styles: torch.Tensor, renders: torch.Tensor | None = None):
        if images.ndim != 4 or images.shape[1] != 3 or styles.ndim != 2 or len(images) != len(styles):
            raise InputError(
                f"expected images [N,3,H,W] and styles [N,S], got {tuple(images.shape)} and {tuple(styles.shape)}"
            )
        if renders is not None and tuple(renders.shape) != tuple(images.shape):
            raise InputError(
                f"renders must match the images {tuple(images.shape)}, got {tuple(renders.shape)}"
            )
        self.images, self.styles = images.float(), styles.float()
        self.renders = None if renders is None else renders.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.renders is None:
            return self.images[index], self.styles[index]
        return self.images[index], self.styles[index], self.renders[index]

    def style_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.styles.mean(0), self.styles.std(0, unbiased=False)


def _load_image(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1


def encode_image_folder(
    folder: str | Path,
    style_fn: StyleFn,
    out_dir: str | Path,
    image_size: int,
    batch_size: int = 16,
    shard_size: int = 1000,
    progress: bool = True,
) -> Path:
    """Encode every image of `folder` (resized to image_size) with `style_fn` into shards in out_dir.

    The shards appear in out_dir together when all are written: an interrupted run leaves none,
    so the next run encodes again instead of training on part of the folder.
    """
    from tqdm.auto import tqdm

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for first in tqdm(range(0, len(paths), shard_size), desc="encoding shards", disable=not progress):
            chunk = paths[first : first + shard_size]
            images, styles = [], []
            for i in range(0, len(chunk), batch_size):
                batch = torch.stack([_load_image(p, image_size) for p in chunk[i : i + batch_size]])
                with torch.no_grad():
                    styles.append(style_fn(batch).float().cpu())
                images.append(to_uint8_hwc(batch))
            write_shard(tmp, f"shard_{first // shard_size:05d}", np.concatenate(images), torch.cat(styles))
    return out_dir


def resolve_dataset(dataset, out_dir: Path, image_size: int, style_fn: StyleFn | None, progress=True):
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, tuple | list) and len(dataset) in (2, 3):
        return PairDataset(*dataset)
    if isinstance(dataset, str | Path):
        folder = Path(dataset)
        if not folder.is_dir():
            raise InputError(f"training data folder {folder} does not exist")
        if any(folder.glob(f"*{IMAGES_SUFFIX}")):
            return ShardDataset(folder)
        if style_fn is None:
            raise InputError(
                f"{folder} holds no *{IMAGES_SUFFIX} shards; to train on plain images pass style_fn "
                "(CLI: --domain) so each image gets its style code"
            )
        shards = out_dir / "shards"
        if not any(shards.glob(f"*{IMAGES_SUFFIX}")):
            encode_image_folder(folder, style_fn, shards, image_size, progress=progress)
        return ShardDataset(shards)
    raise InputError(
        f"unsupported training data {type(dataset).__name__}: pass a folder, a Dataset, (images, styles)"
        " or (images, styles, renders)"
    )


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
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise InputError(f"need steps >= 0, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes.of(Accelerator(mixed_precision=mixed_precision))
    set_seed(seed)
    data = resolve_dataset(dataset, out_dir, config_sample_size(config), style_fn, progress)
    model = _model_for(data, config, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-6)
    lr_scheduler = get_scheduler(
        lr_schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(steps, 1)
    )
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    run = _DiffusionRun(model, optimizer, lr_scheduler, ema, out_dir / "checkpoint")
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
    noise_scheduler = make_noise_scheduler()

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

    def write_weights() -> None:
        if sample_every and done % sample_every:
            grids.write(done)
        write_files_into(out_dir, run.write_final)

    run.model.train()
    def write_samples(step: int) -> None:
        if procs.is_main:
            grids.write(step)

    done = loop.run(start, train_step, (Every(sample_every, write_samples, at_end=False),))
    loop.finish(done, write_weights)
    return out_dir


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
