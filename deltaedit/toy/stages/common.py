"""What every toy training stage shares: `Stage`, `StageContext`, the learning-rate ramp, the writer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...fileio import atomic_write
from ..budget import ToyBudget


@dataclass
class GanModels:
    """The trained GAN stages' weights, loaded once for the stages after them."""

    G: torch.nn.Module
    encoder: torch.nn.Module
    latent_avg: torch.Tensor
    clip: object  # deltaedit.clip.DomainClip


@dataclass
class StageContext:
    """A stage's inputs: where it writes, the renders, the budget, the seed and where to train.

    `started` is when the whole run began (time.perf_counter), so a time limit counts from there;
    `gan` holds the GAN models once the stages that need them begin."""

    out_dir: Path
    images: np.ndarray
    attrs: list
    budget: ToyBudget
    seed: int
    device: str = "cpu"
    progress: bool = True
    started: float = 0.0
    time_limit: float | None = None
    gan: GanModels | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Stage:
    """One stage. Resuming: a stage that can stop part-way keeps its partial work in a hidden
    folder of `out_dir` (`.autoencoder-pixel`, `.diffusion-run`, `.prior-run`) and continues from it."""

    name: str
    outputs: tuple[str, ...]  # files or folders under out_dir; all there (and no --force): done
    settings: tuple[str, ...]  # the ToyBudget fields it depends on (n_images: through the renders)
    run: Callable[[StageContext], dict]  # trains, writes `outputs`; returns summary entries + "timings"

    def done(self, out_dir: Path) -> bool:
        return all((Path(out_dir) / name).exists() for name in self.outputs)


def cosine_lr(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base`, then a cosine decay to 0 at `steps`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def save_safetensors(state: dict[str, torch.Tensor], path: Path, half: bool = False) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()
    }
    with atomic_write(path) as tmp:
        save_file(state, str(tmp))
