"""Text-free training of the Delta Mapper on pairs of latent codes (DeltaEdit, CVPR 2023, Sec. 3.3).

As in the authors' `scripts/train.py` and `datasets/train_dataset.py`: each sample pairs code i with
a uniformly random partner j; the condition is [c_i, normalize(c_j - c_i)] with c_i, c_j
L2-normalised first (the delta's norm clamped at 1e-5); the target is Δs = s_j - s_i; the loss is
1.0 * MSE + 1.0 * (1 - mean cosine similarity over the flat Δs); Adam, lr 0.5 (the layers scale it
by lr_mul 0.01), batch 64. We add a seeded held-out split for a validation loss (pairs never cross
the split) and resumable training state.

Batches are a pure function of (seed, step): step k takes positions k*B .. k*B+B-1 of an endless
stream of seeded per-epoch permutations, and partners come from a generator seeded with
(seed, step). A resumed run therefore sees exactly the batches an uninterrupted one would.

Weights: a `.pth` output is a plain `torch.save(state_dict)`, the `net_face.pth` format the
official code loads; a `.safetensors` output gets a JSON sidecar (same stem) with the style layout
and CLIP width. The training state (model + optimizer + step + losses) goes to
`<out stem>.train_state.pt` and is what `resume` takes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import atomic_write, write_json
from ..nn.mapper import DeltaMapper
from ..nn.stylespace import StyleLayout

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


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) code indices from a permutation seeded by `seed`."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 4:
        n_val = max(n_val, 2)  # a pair needs two codes
    if n - n_val < 2:
        raise InputError(f"{n} codes leave fewer than 2 for training; make more codes or lower val_fraction")
    order = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class PairSampler:
    """Index pairs (i, partner) for step k, a pure function of (seed, k): resumable exactly.

    With a `neighbours` table [n, K] (positions into `indices`, see `neighbour_table`) each pair
    takes one of i's K nearest partners, except a `random_fraction` of them that keep the authors'
    uniformly random partner.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        seed: int,
        neighbours: np.ndarray | None = None,
        random_fraction: float = 1.0,
    ):
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.neighbours = neighbours
        self.random_fraction = random_fraction
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.indices))
        return self._perms[epoch]

    def batch(self, step: int, slot: int = 0, slots: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Batch `slot` of `slots` (one per process) at `step`."""
        n = len(self.indices)
        positions = (step * slots + slot) * self.batch_size + np.arange(self.batch_size)
        first = np.array([self._perm(int(p // n))[p % n] for p in positions])
        partner = np.random.default_rng([self.seed, 2, step, slot]).integers(0, n, self.batch_size)
        if self.neighbours is not None:
            rng = np.random.default_rng([self.seed, 4, step, slot])
            near = self.neighbours[first, rng.integers(0, self.neighbours.shape[1], self.batch_size)]
            partner = np.where(rng.random(self.batch_size) < self.random_fraction, partner, near)
        return self.indices[first], self.indices[partner]


def neighbour_table(features: torch.Tensor, k: int, min_distance: float, chunk: int = 1024) -> np.ndarray:
    """[n, k] positions of each row's k nearest rows among unit `features` [n, D], skipping itself
    and rows closer than `min_distance` (the same image content up to jitter: a delta of noise)."""
    if not 1 <= k < len(features):
        raise InputError(f"neighbours must be between 1 and {len(features) - 1}, got {k}")
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rows = []
    for start in range(0, len(x), chunk):
        distance = torch.cdist(x[start : start + chunk], x)
        distance[distance < min_distance] = float("inf")
        distance[torch.arange(len(distance)), torch.arange(start, start + len(distance))] = float("inf")
        rows.append(distance.topk(k, largest=False).indices)
    return torch.cat(rows).numpy()


def validation_pairs(indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (i, partner) pairs inside the validation split, each code once as i."""
    partner = np.random.default_rng([seed, 3]).integers(0, len(indices), len(indices))
    return indices, indices[partner]


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


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: saved tensors must not share storage with views of bigger ones
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_mapper_weights(mapper: DeltaMapper, path: str | os.PathLike) -> Path:
    """`.pth`/`.pt`: plain state dict (net_face.pth format); `.safetensors`: + JSON sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _cpu_state(mapper)
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


# ---- training loop ------------------------------------------------------------------------------


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
    if out.suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise InputError(f"--out must end in .pth (official format) or .safetensors, got {out.name}")
    if steps < 0 or batch_size < 1:
        raise InputError(f"steps must be >= 0 and batch size >= 1 (got {steps}, {batch_size})")
    if delta_noise < 0:
        raise InputError(f"delta_noise must be >= 0, got {delta_noise}")
    if neighbours < 0 or min_distance < 0 or not 0 <= random_fraction <= 1:
        raise InputError(
            "neighbours and min_distance must be >= 0 and random_fraction between 0 and 1"
            f" (got {neighbours}, {min_distance}, {random_fraction})"
        )
    s, c = _as_arrays(codes)
    if s.shape[1] != layout.total:
        raise InputError(
            f"the codes have {s.shape[1]} style values but the layout needs {layout.total}; wrong domain?"
        )
    if c.shape[1] != clip_dim:
        raise InputError(
            f"the codes have {c.shape[1]}-value CLIP features but the domain's CLIP has {clip_dim}"
        )

    settings = {
        "n": int(s.shape[0]),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "batch_size": int(batch_size),
        "delta_noise": float(delta_noise),
        "neighbours": int(neighbours),
        "min_distance": float(min_distance),
        "random_fraction": float(random_fraction),
    }
    train_idx, val_idx = split_indices(s.shape[0], val_fraction, seed)
    table = None
    if neighbours:
        table = neighbour_table(c[torch.from_numpy(train_idx)], neighbours, min_distance)
    sampler = PairSampler(train_idx, batch_size, seed, table, random_fraction if neighbours else 1.0)
    val_pairs = validation_pairs(val_idx, seed) if len(val_idx) else None

    torch.manual_seed(seed)  # same initial weights for the same seed
    mapper = DeltaMapper(layout, clip_dim)
    optimizer = torch.optim.Adam(mapper.parameters(), lr=lr)
    start, train_losses, val_losses = 0, [], []
    if resume is not None:
        state = load_training_state(resume)
        mapper.load_state_dict(state["model"], strict=True)
        if "optimizer" in state:
            old = state.get("settings", {})
            diff = [k for k in _SPLIT_KEYS if k in old and old[k] != settings[k]]
            if diff:
                raise InputError(
                    f"{resume} was trained with other {', '.join(diff)}; resume with the same codes and settings"
                )
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            train_losses = [float(x) for x in state.get("train_losses", [])]
            val_losses = [(int(a), float(b)) for a, b in state.get("val_losses", [])]
        log.info("resumed from %s at step %d", resume, start)

    if accelerator is not None:
        mapper, optimizer = accelerator.prepare(mapper, optimizer)
        device, rank, world, is_main = (
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.is_main_process,
        )
        unwrap = accelerator.unwrap_model
    else:
        device = torch.device(device or "cpu")
        mapper.to(device)
        _optimizer_to(optimizer, device)
        rank, world, is_main = 0, 1, True
        unwrap = lambda m: m  # noqa: E731
    state_path = state_path_for(out)

    def save_state(step: int) -> None:
        if not is_main:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": _cpu_state(unwrap(mapper)),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "settings": settings,
            "train_losses": train_losses,
            "val_losses": [list(v) for v in val_losses],
        }
        _torch_save_atomic(state, state_path)

    def validate(step: int) -> None:
        if val_pairs is None:
            return
        value = validation_loss(unwrap(mapper), s, c, val_pairs, batch_size, device, l2_lambda, cos_lambda)
        val_losses.append((step, value))

    pending: list[torch.Tensor] = []  # per-step losses still on the device (one sync per log line)
    mapper.train()
    bar = tqdm(
        range(start, steps), initial=start, total=steps, desc="mapper", disable=not (progress and is_main)
    )
    for step in bar:
        first, partner = sampler.batch(step, rank, world)
        noise_rng = (
            torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + rank) if delta_noise else None
        )
        s1, cond, target = _batch_tensors(s, c, first, partner, device, delta_noise, noise_rng)
        loss, l2, cos = mapper_loss(mapper(s1, cond), target, l2_lambda, cos_lambda)
        l2, cos = l2.detach(), cos.detach()
        optimizer.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        optimizer.step()
        pending.append(loss.detach())

        done = step + 1
        if done % log_every == 0 or done == steps:
            train_losses += torch.stack(pending).float().cpu().tolist()
            pending = []
            if done % val_every == 0 or done == steps:
                validate(done)
            val_text = f" val {val_losses[-1][1]:.4f}" if val_losses and val_losses[-1][0] == done else ""
            bar.set_postfix(loss=f"{train_losses[-1]:.4f}")
            if is_main:
                log.info(
                    "step %d train %.4f (mse %.4g, cos %.4f)%s",
                    done,
                    train_losses[-1],
                    l2.item(),
                    cos.item(),
                    val_text,
                )
        if done % save_every == 0 and done != steps:
            train_losses += torch.stack(pending).float().cpu().tolist() if pending else []
            pending = []
            save_state(done)
    bar.close()

    if accelerator is not None:
        accelerator.wait_for_everyone()
    return _final_result(
        unwrap(mapper).cpu(),
        out,
        save_state,
        state_path,
        max(steps, start),
        train_losses,
        val_losses,
        is_main,
    )


def _final_result(
    mapper, out: Path, save_state, state_path: Path, steps: int, train_losses, val_losses, write: bool = True
) -> TrainResult:
    """The end of a mapper run: its weights and resumable state written (by the main process only,
    `write`), and what the run did."""
    if write:
        save_mapper_weights(mapper, out)
        save_state(steps)
        log.info("wrote %s and %s", out, state_path)
    return TrainResult(
        path=out, train_losses=train_losses, val_losses=val_losses, state_path=state_path, steps=steps
    )


def _optimizer_to(optimizer: torch.optim.Optimizer, device) -> None:
    """Move loaded optimizer moments to the model's device (they load on the CPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


# ---- distillation of the refinement -------------------------------------------------------------
#
# Not in the paper. `deltaedit.refine` corrects the mapper's Δs at inference with gradient steps
# through the generator and CLIP (20 steps were 50x the cost of an edit on the toy domain). The same
# objective can be trained into the mapper instead, text-free: for a code s1 and a partner s2, the
# image delta d = î2 − î1 plays the text delta, grounded in î1 as inference grounds Δt (the
# domain's feature bank); the relevance selection reads d as inference reads Δt; and the mapper's
# edit s1 + strength · keep · M(s1, [î1, g]) is decoded and scored with the refinement's loss
# |Δi − g|² (`deltaedit.refine.refinement_loss`). Backpropagating that loss into the mapper is
# what the refinement does to one Δs, for every code at once. A small anchor keeps the mapper's
# output near the one it started from (the refinement also starts from the mapper's Δs).

DISTIL_LR = 0.3  # Adam; the mapper's layers scale it by lr_mul 0.01
DISTIL_ANCHOR = 1.0
DISTIL_STEPS = 1000
DISTIL_BATCH = 32
# Settings of a distillation that a resumed run must keep.
_DISTIL_KEYS = (*_SPLIT_KEYS, "strength", "threshold")


@dataclass
class DistilModels:
    """The frozen models the distillation decodes and scores through (the editor's own)."""

    generator: torch.nn.Module
    clip: object  # a DomainClip: image_features and condition
    fs3: torch.Tensor  # [S, D] relevance matrix
    feature_bank: object | None = None  # a FeatureBank; None: the text-direction loss


def _as_code_arrays(codes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W+ [N, L, D], S [N, total], CLIP [N, D]) from a codes folder or a triple of arrays."""
    if isinstance(codes, (str, os.PathLike)):
        from .codes import load_codes

        codes = load_codes(codes)
    if len(codes) != 3:
        raise InputError("distillation needs W+, S and CLIP codes (a make-codes folder)")
    w, s, c = (torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in codes)
    if w.ndim != 3 or s.ndim != 2 or c.ndim != 2 or not w.shape[0] == s.shape[0] == c.shape[0]:
        raise InputError(
            "codes must be W+ [N, n_latent, style_dim], S [N, total] and CLIP [N, D] with equal N,"
            f" got {tuple(w.shape)}, {tuple(s.shape)}, {tuple(c.shape)}"
        )
    return w, s, c


def _frozen_copy(mapper: DeltaMapper) -> DeltaMapper:
    ref = DeltaMapper(mapper.layout, mapper.clip_dim)
    ref.load_state_dict(_cpu_state(mapper))
    return ref.eval().requires_grad_(False)


def distil_batch(
    mapper: DeltaMapper,
    reference: DeltaMapper | None,
    models: DistilModels,
    w: torch.Tensor,
    s1: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    strength: float,
    threshold: float,
    anchor: float,
    push: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, refinement loss, anchor loss) of one batch of code pairs (rows: s1 → partner).

    The pair's image delta d = î2 − î1 is the text delta: grounded in î1 for the mapper's
    condition and the loss's target, and read by the relevance selection, as at inference.
    """
    from ..nn.stylespace import decode_s, layout_from_generator
    from ..refine import refinement_loss, unit_image_features

    c1 = F.normalize(c1, dim=-1)
    delta = F.normalize(c2, dim=-1) - c1
    bank = models.feature_bank
    grounded = bank.ground(delta, c1) if bank is not None else delta
    cond = models.clip.condition(c1, grounded)
    keep = (delta @ models.fs3.to(delta).T).abs() >= threshold
    raw = mapper(s1, cond)
    change = strength * raw * keep.to(raw.dtype)
    G = models.generator
    images = decode_s(G, layout_from_generator(G).split(s1 + change), w)
    delta_i = unit_image_features(models.clip, images) - c1
    moved = delta.norm(dim=-1) > 1e-6  # a code paired with itself asks for nothing
    per_row = refinement_loss(
        delta_i,
        target=grounded if bank is not None else None,
        direction=F.normalize(delta, dim=-1),
        push=push,
    )
    refine = (per_row * moved).sum() / moved.sum().clamp(min=1)
    anchored = raw.new_zeros(())
    if reference is not None and anchor > 0:
        with torch.no_grad():
            start = reference(s1, cond)
        anchored = F.mse_loss(raw, start)
    return refine + anchor * anchored, refine.detach(), anchored.detach()


@torch.no_grad()
def distil_validation(mapper, reference, models, w, s, c, pairs, batch_size, device, **kwargs) -> float:
    """Mean refinement loss of `mapper` on fixed validation pairs (anchor excluded)."""
    was_training = mapper.training
    mapper.eval()
    first, partner = (torch.from_numpy(p) for p in pairs)
    total = 0.0
    for start in range(0, len(first), batch_size):
        i, j = first[start : start + batch_size], partner[start : start + batch_size]
        _, refine, _ = distil_batch(
            mapper,
            None,
            models,
            w[i].to(device),
            s[i].to(device),
            c[i].to(device),
            c[j].to(device),
            anchor=0.0,
            **kwargs,
        )
        total += float(refine) * len(i)
    mapper.train(was_training)
    return total / max(len(first), 1)


def distil_mapper(
    codes,
    models: DistilModels,
    init: DeltaMapper | str | os.PathLike,
    out: str | os.PathLike,
    steps: int = DISTIL_STEPS,
    batch_size: int = DISTIL_BATCH,
    lr: float = DISTIL_LR,
    strength: float = 0.85,
    threshold: float = 0.1,
    anchor: float = DISTIL_ANCHOR,
    push: float = 0.5,
    val_fraction: float = 0.05,
    seed: int = 0,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    log_every: int = 100,
    val_every: int = 500,
    save_every: int = 500,
    device: str | torch.device | None = None,
    neighbours: int = 16,
    min_distance: float = 0.25,
    random_fraction: float = 0.0,
    val_pairs: int = 128,
) -> TrainResult:
    """Fine-tune the mapper `init` (weights or a path) on the refinement's own objective, text-free.

    See the section comment above. `codes`: a make-codes folder or (W+, S, CLIP) arrays; pairs are
    drawn as by `train_mapper` (`neighbours`, `min_distance`, `random_fraction`). `strength` and
    `threshold` are those the distilled mapper will be used with (the domain's edit defaults).
    The generator and CLIP are never changed. `val_losses` hold the validation refinement loss,
    the first at step 0 (the starting mapper). `resume`: this function's training state.
    """
    out = Path(out)
    if out.suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise InputError(f"--out must end in .pth (official format) or .safetensors, got {out.name}")
    if steps < 0 or batch_size < 1:
        raise InputError(f"steps must be >= 0 and batch size >= 1 (got {steps}, {batch_size})")
    if strength <= 0 or threshold < 0 or anchor < 0:
        raise InputError(
            f"distillation needs strength > 0, threshold >= 0 and anchor >= 0 (got {strength}, {threshold}, {anchor})"
        )
    if neighbours < 0 or min_distance < 0 or not 0 <= random_fraction <= 1:
        raise InputError(
            "neighbours and min_distance must be >= 0 and random_fraction between 0 and 1"
            f" (got {neighbours}, {min_distance}, {random_fraction})"
        )
    device = torch.device(device or "cpu")
    w, s, c = _as_code_arrays(codes)
    if isinstance(init, (str, os.PathLike)):
        init = load_mapper_weights(init)
    mapper = DeltaMapper(init.layout, init.clip_dim)
    mapper.load_state_dict(_cpu_state(init))
    if s.shape[1] != mapper.layout.total or c.shape[1] != mapper.clip_dim:
        raise InputError(
            f"the codes have {s.shape[1]} style values and {c.shape[1]}-value CLIP features; the mapper"
            f" needs {mapper.layout.total} and {mapper.clip_dim}: wrong domain?"
        )
    fs3 = torch.as_tensor(models.fs3, dtype=torch.float32)
    if tuple(fs3.shape) != (mapper.layout.total, mapper.clip_dim):
        raise InputError(f"fs3 is {tuple(fs3.shape)}, expected {(mapper.layout.total, mapper.clip_dim)}")
    models = DistilModels(models.generator, models.clip, fs3.to(device), models.feature_bank)

    settings = {
        "n": int(s.shape[0]),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "batch_size": int(batch_size),
        "neighbours": int(neighbours),
        "min_distance": float(min_distance),
        "random_fraction": float(random_fraction),
        "strength": float(strength),
        "threshold": float(threshold),
        "anchor": float(anchor),
        "lr": float(lr),
        "distil": True,
    }
    train_idx, val_idx = split_indices(s.shape[0], val_fraction, seed)
    table = neighbour_table(c[torch.from_numpy(train_idx)], neighbours, min_distance) if neighbours else None
    sampler = PairSampler(train_idx, batch_size, seed, table, random_fraction if neighbours else 1.0)
    fixed_val = None
    if len(val_idx) >= 2 and val_pairs > 0:
        val_idx = val_idx[:val_pairs]
        k = min(neighbours, len(val_idx) - 1)
        val_table = neighbour_table(c[torch.from_numpy(val_idx)], k, min_distance) if k else None
        fixed_val = PairSampler(
            val_idx, len(val_idx), seed + 1, val_table, random_fraction if k else 1.0
        ).batch(0)

    reference = _frozen_copy(init)  # the anchor: the mapper the distillation starts from
    optimizer = torch.optim.Adam(mapper.parameters(), lr=lr)
    start, train_losses, val_losses = 0, [], []
    if resume is not None:
        state = load_training_state(resume)
        if not state.get("settings", {}).get("distil"):
            raise InputError(f"{resume} is not a distillation state; pass it as the starting mapper instead")
        old = state["settings"]
        diff = [k for k in _DISTIL_KEYS if old.get(k) != settings[k]]
        if diff:
            raise InputError(
                f"{resume} was distilled with other {', '.join(diff)}; resume with the same codes and settings"
            )
        mapper.load_state_dict(state["model"], strict=True)
        reference.load_state_dict(state["reference"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        train_losses = [float(x) for x in state.get("train_losses", [])]
        val_losses = [(int(a), float(b)) for a, b in state.get("val_losses", [])]
        log.info("resumed the distillation from %s at step %d", resume, start)
    mapper.to(device)
    reference.to(device)
    _optimizer_to(optimizer, device)
    state_path = state_path_for(out)
    params = [p for p in mapper.parameters() if p.requires_grad]
    loss_kwargs = dict(strength=strength, threshold=threshold, push=push)

    def validate(step: int) -> None:
        if fixed_val is not None and not any(v[0] == step for v in val_losses):
            value = distil_validation(mapper, None, models, w, s, c, fixed_val, 64, device, **loss_kwargs)
            val_losses.append((step, value))
            log.info("distillation step %d: validation refinement loss %.4f", step, value)

    def save_state(step: int) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": _cpu_state(mapper),
            "reference": _cpu_state(reference),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "settings": settings,
            "train_losses": train_losses,
            "val_losses": [list(v) for v in val_losses],
        }
        _torch_save_atomic(state, state_path)

    if start == 0:
        validate(0)
    mapper.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="distil", disable=not progress)
    for step in bar:
        first, partner = (torch.from_numpy(x) for x in sampler.batch(step))
        loss, refine, anchored = distil_batch(
            mapper,
            reference,
            models,
            w[first].to(device),
            s[first].to(device),
            c[first].to(device),
            c[partner].to(device),
            anchor=anchor,
            **loss_kwargs,
        )
        grads = torch.autograd.grad(loss, params)  # the generator's and CLIP's weights stay untouched
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        train_losses.append(float(refine))
        done = step + 1
        if done % log_every == 0 or done == steps:
            recent = np.mean(train_losses[-log_every:])
            bar.set_postfix(loss=f"{recent:.4f}")
            log.info("distillation step %d: refinement loss %.4f, anchor %.3g", done, recent, float(anchored))
        if done % val_every == 0 or done == steps:
            validate(done)
        if done % save_every == 0 and done != steps:
            save_state(done)
    bar.close()
    return _final_result(
        mapper.cpu().eval(), out, save_state, state_path, max(steps, start), train_losses, val_losses
    )
