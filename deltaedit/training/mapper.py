"""Text-free training of the Delta Mapper on pairs of latent codes (DeltaEdit, CVPR 2023, Sec. 3.3).

As in the authors' `scripts/train.py` and `datasets/train_dataset.py`: each sample pairs code i with
a uniformly random partner j; the condition is [c_i, normalize(c_j - c_i)] with c_i, c_j
L2-normalised first (the delta's norm clamped at 1e-5); the target is Δs = s_j - s_i; the loss is
1.0 * MSE + 1.0 * (1 - mean cosine similarity over the flat Δs); Adam, lr 0.5 (the layers scale it
by lr_mul 0.01), batch 64. We add a seeded held-out split for a validation loss (pairs never cross
the split) and resumable training state.

Batches are a pure function of (seed, step) (`training.pairs`): a resumed run sees exactly the
batches an uninterrupted one would.

Weights: a `.pth` output is a plain `torch.save(state_dict)`, the `net_face.pth` format the
official code loads; a `.safetensors` output gets a JSON sidecar (same stem) with the style layout
and CLIP width. The training state (model + optimizer + step + losses) goes to
`<out stem>.train_state.pt` and is what `resume` takes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..fileio import atomic_write, write_json
from ..nn.mapper import DeltaMapper
from ..nn.stylespace import StyleLayout
from .loop import Every, Processes, TrainingLoop
from .pairs import (  # noqa: F401 (the pairs' names stay importable from here)
    PairSampler,
    check_pairing,
    neighbour_table,
    pair_sampler,
    split_indices,
    validation_pairs,
)

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"
# Settings that fix the train/validation split and the pairs; a resumed run must keep them.
_SPLIT_KEYS = ("n", "seed", "val_fraction", "neighbours", "min_distance", "random_fraction")


@dataclass
class TrainResult:
    path: Path  # the mapper weights
    train_losses: list[float]  # one per step, from step 0 (resumed runs include the earlier steps)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    state_path: Path | None = None  # training state for `resume`
    steps: int = 0


# ---- objective ----------------------------------------------------------------------------------


def mapper_condition(c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """[c1/|c1|, normalize(c2/|c2| - c1/|c1|)] -> [B, 2D], the image-pair stand-in for the text delta."""
    c1 = c1 / c1.norm(dim=-1, keepdim=True)
    c2 = c2 / c2.norm(dim=-1, keepdim=True)
    delta = c2 - c1
    return torch.cat([c1, delta / delta.norm(dim=-1, keepdim=True).clamp(min=1e-5)], dim=-1)


def mapper_loss(
    pred: torch.Tensor, target: torch.Tensor, l2_lambda: float = 1.0, cos_lambda: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, MSE, 1 - mean cosine similarity) of predicted vs true Δs [B, S]."""
    l2 = F.mse_loss(pred, target)
    cos = 1 - F.cosine_similarity(pred, target, dim=-1).mean()
    return l2_lambda * l2 + cos_lambda * cos, l2, cos


# ---- data ---------------------------------------------------------------------------------------


def _batch_tensors(
    s: torch.Tensor, c: torch.Tensor, first, partner, device, delta_noise: float = 0.0, generator=None
) -> tuple[torch.Tensor, ...]:
    first, partner = torch.from_numpy(first), torch.from_numpy(partner)
    s1, s2 = s[first].to(device), s[partner].to(device)
    c1, c2 = c[first].to(device), c[partner].to(device)
    cond = mapper_condition(c1, c2)
    if delta_noise:
        cond = noisy_delta(cond, delta_noise, generator)
    return s1, cond, s2 - s1


def noisy_delta(cond: torch.Tensor, scale: float, generator=None) -> torch.Tensor:
    """The condition with `scale` x a random unit vector added to its unit delta half, renormalised.

    At inference the mapper gets a text delta, which points only roughly where image deltas do
    (the modality gap). Training on perturbed image deltas teaches it to read the direction it
    can trust, as LAFITE (Zhou et al., CVPR 2022) perturbs image features for text-free training.
    """
    image, delta = cond.chunk(2, dim=-1)
    noise = torch.randn(delta.shape, generator=generator, dtype=delta.dtype).to(delta.device)
    delta = delta + scale * F.normalize(noise, dim=-1)
    return torch.cat([image, F.normalize(delta, dim=-1)], dim=-1)


def _as_arrays(codes) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(codes, (str, os.PathLike)):
        from .codes import load_codes

        _, s, c = load_codes(codes)
    else:
        s, c = codes
    s = torch.as_tensor(np.asarray(s, dtype=np.float32))
    c = torch.as_tensor(np.asarray(c, dtype=np.float32))
    if s.ndim != 2 or c.ndim != 2 or s.shape[0] != c.shape[0]:
        raise InputError(
            f"codes must be S [N, total] and CLIP [N, D] with equal N, got {tuple(s.shape)}, {tuple(c.shape)}"
        )
    return s, c


# ---- weights and training state -----------------------------------------------------------------


def state_path_for(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".train_state.pt")


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: saved tensors must not share storage with views of bigger ones
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_mapper_weights(mapper: DeltaMapper, path: str | os.PathLike) -> Path:
    """`.pth`/`.pt`: plain state dict (net_face.pth format); `.safetensors`: + JSON sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = cpu_state(mapper)
    if path.suffix in TORCH_SUFFIXES:
        _torch_save_atomic(state, path)
    elif path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        layout = mapper.layout
        info = {
            "widths": list(layout.widths),
            "resolutions": list(layout.resolutions),
            "clip_dim": mapper.clip_dim,
        }
        with atomic_write(path) as tmp:
            save_file(state, str(tmp), metadata={"deltaedit": json.dumps(info)})
        write_json(path.with_suffix(".json"), info)
    else:
        raise InputError(
            f"mapper weights must end in .pth (official format) or .safetensors, got {path.name}"
        )
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling code."""
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InputError(f"{path} is not a mapper checkpoint")
    return state


def load_mapper_weights(
    path: str | os.PathLike, layout: StyleLayout | None = None, clip_dim: int | None = None
) -> DeltaMapper:
    """A DeltaMapper from `save_mapper_weights` output; a .pth needs `layout` and `clip_dim`."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX and (layout is None or clip_dim is None):
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise InputError(f"{sidecar} (the mapper's layout) is missing; pass layout and clip_dim")
        info = json.loads(sidecar.read_text())
        layout = layout or StyleLayout(info["widths"], info["resolutions"])
        clip_dim = clip_dim or info["clip_dim"]
    if layout is None or clip_dim is None:
        raise InputError(f"{path.name} holds no layout; pass the style layout and CLIP width")
    mapper = DeltaMapper(layout, clip_dim)
    mapper.load_state_dict(_read_weights(path), strict=True)
    return mapper


def load_training_state(path: str | os.PathLike) -> dict:
    """A training state (or a bare mapper state dict, for fine-tuning from released weights)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"resume checkpoint {path} does not exist")
    state = _read_weights(path)
    return state if "model" in state else {"model": state}


# ---- training -----------------------------------------------------------------------------------


@dataclass
class LossHistory:
    """A run's losses so far: one per step (from step 0) and (step, value) validation losses."""

    train: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)  # still on the device: one sync per log line

    @classmethod
    def from_state(cls, state: dict) -> LossHistory:
        train = [float(x) for x in state.get("train_losses", [])]
        return cls(train, [(int(a), float(b)) for a, b in state.get("val_losses", [])])

    def flush(self) -> None:
        if self.pending:
            self.train += torch.stack(self.pending).float().cpu().tolist()
            self.pending = []

    def as_state(self) -> dict:
        return {"train_losses": self.train, "val_losses": [list(v) for v in self.val]}


def state_saver(path: Path, models: dict, optimizer, settings: dict, history: LossHistory):
    """`save(step)`: the resumable state of a mapper run (its `models` by key, the optimizer, the
    step, the settings that must not change and the losses so far), written whole."""

    def save(step: int) -> None:
        history.flush()
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {key: cpu_state(model) for key, model in models.items()}
        state |= {"optimizer": optimizer.state_dict(), "step": step, "settings": settings}
        _torch_save_atomic(state | history.as_state(), path)

    return save


def check_mapper_output(out: Path, steps: int, batch_size: int) -> None:
    if out.suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise InputError(f"--out must end in .pth (official format) or .safetensors, got {out.name}")
    if steps < 0 or batch_size < 1:
        raise InputError(f"steps must be >= 0 and batch size >= 1 (got {steps}, {batch_size})")


@torch.no_grad()
def validation_loss(mapper, s, c, pairs, batch_size: int, device, l2_lambda=1.0, cos_lambda=1.0) -> float:
    was_training = mapper.training
    mapper.eval()
    first, partner = pairs
    total = 0.0
    for start in range(0, len(first), batch_size):
        s1, cond, target = _batch_tensors(
            s, c, first[start : start + batch_size], partner[start : start + batch_size], device
        )
        loss, _, _ = mapper_loss(mapper(s1, cond), target, l2_lambda, cos_lambda)
        total += float(loss) * s1.shape[0]
    mapper.train(was_training)
    return total / max(len(first), 1)


def _checked_codes(codes, layout: StyleLayout, clip_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    s, c = _as_arrays(codes)
    if s.shape[1] != layout.total:
        raise InputError(
            f"the codes have {s.shape[1]} style values but the layout needs {layout.total}; wrong domain?"
        )
    if c.shape[1] != clip_dim:
        raise InputError(
            f"the codes have {c.shape[1]}-value CLIP features but the domain's CLIP has {clip_dim}"
        )
    return s, c


def _mapper_settings(
    s, seed, val_fraction, batch_size, delta_noise, neighbours, min_distance, random_fraction
) -> dict:
    """The settings a mapper run's state keeps (those of `_SPLIT_KEYS` must not change on resume)."""
    return {
        "n": int(s.shape[0]),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "batch_size": int(batch_size),
        "delta_noise": float(delta_noise),
        "neighbours": int(neighbours),
        "min_distance": float(min_distance),
        "random_fraction": float(random_fraction),
    }


def _mapper_step(
    mapper, optimizer, procs, sampler, s, c, history, last, seed, delta_noise, l2_lambda, cos_lambda
) -> Callable[[int], None]:
    """`train_step(step)`: one optimiser step on this process's pairs of `step` (with `delta_noise`,
    noise seeded by (seed, step, process)); its loss goes to `history`, its MSE and cosine parts to
    `last` (for the log line)."""

    def train_step(step: int) -> None:
        first, partner = sampler.batch(step, procs.rank, procs.world)
        noise_rng = (
            torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + procs.rank) if delta_noise else None
        )
        s1, cond, target = _batch_tensors(s, c, first, partner, procs.device, delta_noise, noise_rng)
        loss, l2, cos = mapper_loss(mapper(s1, cond), target, l2_lambda, cos_lambda)
        last.update(l2=l2.detach(), cos=cos.detach())
        optimizer.zero_grad(set_to_none=True)
        procs.backward(loss)
        optimizer.step()
        history.pending.append(loss.detach())

    return train_step


def _resume_mapper(resume, mapper, optimizer, settings: dict) -> tuple[int, LossHistory]:
    """The step and losses a run resumes from; `resume` may also be bare weights (step 0)."""
    state = load_training_state(resume)
    mapper.load_state_dict(state["model"], strict=True)
    start, history = 0, LossHistory()
    if "optimizer" in state:
        old = state.get("settings", {})
        diff = [k for k in _SPLIT_KEYS if k in old and old[k] != settings[k]]
        if diff:
            raise InputError(
                f"{resume} was trained with other {', '.join(diff)}; resume with the same codes and settings"
            )
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), LossHistory.from_state(state)
    log.info("resumed from %s at step %d", resume, start)
    return start, history


def _start_mapper(layout, clip_dim: int, lr: float, seed: int, resume, settings: dict):
    """(mapper, its Adam optimizer, the step and losses so far): a fresh mapper, seeded (the same
    initial weights for the same seed), or the state `resume` holds."""
    torch.manual_seed(seed)
    mapper = DeltaMapper(layout, clip_dim)
    optimizer = torch.optim.Adam(mapper.parameters(), lr=lr)
    start, history = 0, LossHistory()
    if resume is not None:
        start, history = _resume_mapper(resume, mapper, optimizer, settings)
    return mapper, optimizer, start, history


def train_mapper(
    codes,
    layout: StyleLayout,
    clip_dim: int,
    out: str | os.PathLike,
    steps: int,
    batch_size: int = 64,
    lr: float = 0.5,
    val_fraction: float = 0.05,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    log_every: int = 1000,
    val_every: int = 5000,
    save_every: int = 10000,
    l2_lambda: float = 1.0,
    cos_lambda: float = 1.0,
    accelerator=None,
    device: str | torch.device | None = None,
    delta_noise: float = 0.0,
    neighbours: int = 0,
    min_distance: float = 0.25,
    random_fraction: float = 0.5,
) -> TrainResult:
    """Train a DeltaMapper for `steps` optimiser steps in total (a resumed run continues to `steps`).

    `codes` is a codes folder (`make_codes`) or a pair of arrays (S [N, total], CLIP [N, D]).
    `delta_noise` > 0 perturbs the training deltas (`noisy_delta`); 0 is the authors' objective.
    `neighbours` > 0 pairs codes with one of their nearest codes in CLIP space (farther than
    `min_distance`) except a `random_fraction` of random partners (`PairSampler`); 0 is the
    authors' random partners.
    With an accelerate `accelerator` every process draws its own batch (global batch = B x
    processes); otherwise training runs on `device` (default CPU).
    """
    out = Path(out)
    check_mapper_output(out, steps, batch_size)
    if delta_noise < 0:
        raise InputError(f"delta_noise must be >= 0, got {delta_noise}")
    check_pairing(neighbours, min_distance, random_fraction)
    s, c = _checked_codes(codes, layout, clip_dim)
    settings = _mapper_settings(
        s, seed, val_fraction, batch_size, delta_noise, neighbours, min_distance, random_fraction
    )
    train_idx, val_idx = split_indices(s.shape[0], val_fraction, seed)
    sampler = pair_sampler(c, train_idx, batch_size, seed, neighbours, min_distance, random_fraction)
    val_pairs = validation_pairs(val_idx, seed) if len(val_idx) else None
    mapper, optimizer, start, history = _start_mapper(layout, clip_dim, lr, seed, resume, settings)
    procs = Processes.of(accelerator, device)
    mapper, optimizer = procs.prepare(mapper, optimizer)
    state_path = state_path_for(out)
    save = state_saver(state_path, {"model": procs.unwrap(mapper)}, optimizer, settings, history)
    loop = TrainingLoop(steps, procs, save, save_every=save_every, progress=progress, desc="mapper")
    last: dict[str, torch.Tensor] = {}
    train_step = _mapper_step(
        mapper, optimizer, procs, sampler, s, c, history, last, seed, delta_noise, l2_lambda, cos_lambda
    )

    def log_line(done: int) -> None:
        history.flush()
        if (done % val_every == 0 or done == steps) and val_pairs is not None:
            value = validation_loss(
                procs.unwrap(mapper), s, c, val_pairs, batch_size, procs.device, l2_lambda, cos_lambda
            )
            history.val.append((done, value))
        val = history.val[-1] if history.val and history.val[-1][0] == done else None
        loop.show(loss=f"{history.train[-1]:.4f}")
        if procs.is_main:
            log.info(
                "step %d train %.4f (mse %.4g, cos %.4f)%s",
                *(done, history.train[-1], last["l2"].item(), last["cos"].item()),
                f" val {val[1]:.4f}" if val else "",
            )

    mapper.train()
    done = loop.run(start, train_step, (Every(log_every, log_line),))
    loop.finish(done, lambda: save_mapper_weights(procs.unwrap(mapper).cpu(), out))
    if procs.is_main:
        log.info("wrote %s and %s", out, state_path)
    return TrainResult(out, history.train, history.val, state_path, done)
