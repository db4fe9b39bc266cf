"""Distillation of the refinement into the Delta Mapper, text-free (not in the paper).

`deltaedit.refine` corrects the mapper's Δs at inference with gradient steps
through the generator and CLIP (20 steps were 50x the cost of an edit on the toy domain). The same
objective can be trained into the mapper instead, text-free: for a code s1 and a partner s2, the
image delta d = î2 − î1 plays the text delta, grounded in î1 as inference grounds Δt (the
domain's feature bank); the relevance selection reads d as inference reads Δt; and the mapper's
edit s1 + strength · keep · M(s1, [î1, g]) is decoded and scored with the refinement's loss
|Δi − g|² (`deltaedit.refine.refinement_loss`). Backpropagating that loss into the mapper is
what the refinement does to one Δs, for every code at once. A small anchor keeps the mapper's
output near the one it started from (the refinement also starts from the mapper's Δs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..nn.mapper import DeltaMapper
from .loop import Every, Processes, TrainingLoop
from .mapper import (
    _SPLIT_KEYS,
    LossHistory,
    TrainResult,
    check_mapper_output,
    cpu_state,
    load_mapper_weights,
    load_training_state,
    save_mapper_weights,
    state_path_for,
    state_saver,
)
from .pairs import PairSampler, check_pairing, neighbour_table, pair_sampler, split_indices

log = logging.getLogger(__name__)

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
    ref.load_state_dict(cpu_state(mapper))
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




def _checked_models(models: DistilModels, mapper: DeltaMapper, s, c, device) -> DistilModels:
    """`models` with fs3 as a float tensor on `device`, after checking the codes fit the mapper."""
    if s.shape[1] != mapper.layout.total or c.shape[1] != mapper.clip_dim:
        raise InputError(
            f"the codes have {s.shape[1]} style values and {c.shape[1]}-value CLIP features; the mapper"
            f" needs {mapper.layout.total} and {mapper.clip_dim}: wrong domain?"
        )
    fs3 = torch.as_tensor(models.fs3, dtype=torch.float32)
    if tuple(fs3.shape) != (mapper.layout.total, mapper.clip_dim):
        raise InputError(f"fs3 is {tuple(fs3.shape)}, expected {(mapper.layout.total, mapper.clip_dim)}")
    return DistilModels(models.generator, models.clip, fs3.to(device), models.feature_bank)


def _fixed_validation_pairs(c, val_idx, count, seed, neighbours, min_distance, random_fraction):
    """At most `count` validation pairs, drawn once, as the training pairs are drawn (None: too few)."""
    if len(val_idx) < 2 or count <= 0:
        return None
    val_idx = val_idx[:count]
    k = min(neighbours, len(val_idx) - 1)
    table = neighbour_table(c[torch.from_numpy(val_idx)], k, min_distance) if k else None
    return PairSampler(val_idx, len(val_idx), seed + 1, table, random_fraction if k else 1.0).batch(0)


def _resume_distillation(resume, mapper, reference, optimizer, settings: dict) -> tuple[int, LossHistory]:
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
    log.info("resumed the distillation from %s at step %d", resume, int(state["step"]))
    return int(state["step"]), LossHistory.from_state(state)


def _check_distillation(
    out, steps, batch_size, strength, threshold, anchor, neighbours, min_distance, random_fraction
) -> None:
    check_mapper_output(out, steps, batch_size)
    if strength <= 0 or threshold < 0 or anchor < 0:
        raise InputError(
            f"distillation needs strength > 0, threshold >= 0 and anchor >= 0 (got {strength}, {threshold}, {anchor})"
        )
    check_pairing(neighbours, min_distance, random_fraction)


def _distil_step(
    mapper, reference, models, codes, sampler, optimizer, history, last, anchor, loss_kwargs, procs
) -> Callable[[int], None]:
    """`train_step(step)`: the refinement loss (plus the anchor) of the pairs of `step`, back-propagated
    into the mapper only; the refinement loss goes to `history`, the anchor loss to `last`."""
    w, s, c = codes
    params = [p for p in mapper.parameters() if p.requires_grad]

    def train_step(step: int) -> None:
        i, j = (torch.from_numpy(x) for x in sampler.batch(step))
        on = procs.device
        loss, refine, last["anchor"] = distil_batch(
            mapper, reference, models, w[i].to(on), s[i].to(on), c[i].to(on), c[j].to(on), anchor=anchor, **loss_kwargs
        )
        grads = torch.autograd.grad(loss, params)  # the generator's and CLIP's weights stay untouched
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        history.train.append(float(refine))

    return train_step


def _distil_validator(
    mapper, models, codes, fixed_val, history, device, loss_kwargs
) -> Callable[[int], None]:
    """`validate(step)`: the validation refinement loss on the fixed pairs, once per step, into `history`."""
    w, s, c = codes

    def validate(step: int) -> None:
        if fixed_val is not None and not any(v[0] == step for v in history.val):
            value = distil_validation(mapper, None, models, w, s, c, fixed_val, 64, device, **loss_kwargs)
            history.val.append((step, value))
            log.info("distillation step %d: validation refinement loss %.4f", step, value)

    return validate


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

    See the module's docstring. `codes`: a make-codes folder or (W+, S, CLIP) arrays; pairs are
    drawn as by `train_mapper` (`neighbours`, `min_distance`, `random_fraction`). `strength` and
    `threshold` are those the distilled mapper will be used with (the domain's edit defaults).
    The generator and CLIP are never changed. `val_losses` hold the validation refinement loss,
    the first at step 0 (the starting mapper). `resume`: this function's training state.
    """
    out = Path(out)
    _check_distillation(
        out, steps, batch_size, strength, threshold, anchor, neighbours, min_distance, random_fraction
    )
    procs = Processes.of(None, device)
    w, s, c = _as_code_arrays(codes)
    if isinstance(init, (str, os.PathLike)):
        init = load_mapper_weights(init)
    mapper = DeltaMapper(init.layout, init.clip_dim)
    mapper.load_state_dict(cpu_state(init))
    models = _checked_models(models, mapper, s, c, procs.device)
    settings = {"n": int(s.shape[0]), "seed": int(seed), "val_fraction": float(val_fraction)}
    settings |= {"batch_size": int(batch_size), "neighbours": int(neighbours), "min_distance": float(min_distance)}
    settings |= {"random_fraction": float(random_fraction), "strength": float(strength)}
    settings |= {"threshold": float(threshold), "anchor": float(anchor), "lr": float(lr), "distil": True}
    train_idx, val_idx = split_indices(s.shape[0], val_fraction, seed)
    sampler = pair_sampler(c, train_idx, batch_size, seed, neighbours, min_distance, random_fraction)
    fixed_val = _fixed_validation_pairs(c, val_idx, val_pairs, seed, neighbours, min_distance, random_fraction)
    reference = _frozen_copy(init)  # the anchor: the mapper the distillation starts from
    optimizer = torch.optim.Adam(mapper.parameters(), lr=lr)
    start, history = 0, LossHistory()
    if resume is not None:
        start, history = _resume_distillation(resume, mapper, reference, optimizer, settings)
    procs.prepare(mapper, optimizer, reference)
    state_path = state_path_for(out)
    save = state_saver(state_path, {"model": mapper, "reference": reference}, optimizer, settings, history)
    loop = TrainingLoop(steps, procs, save, save_every=save_every, progress=progress, desc="distil")
    loss_kwargs = dict(strength=strength, threshold=threshold, push=push)
    last: dict[str, torch.Tensor] = {}
    train_step = _distil_step(
        mapper, reference, models, (w, s, c), sampler, optimizer, history, last, anchor, loss_kwargs, procs
    )
    validate = _distil_validator(mapper, models, (w, s, c), fixed_val, history, procs.device, loss_kwargs)

    def log_line(done: int) -> None:
        recent = np.mean(history.train[-log_every:])
        loop.show(loss=f"{recent:.4f}")
        log.info("distillation step %d: refinement loss %.4f, anchor %.3g", done, recent, float(last["anchor"]))

    if start == 0:
        validate(0)
    mapper.train()
    done = loop.run(start, train_step, (Every(log_every, log_line), Every(val_every, validate)))
    loop.finish(done, lambda: save_mapper_weights(mapper.cpu().eval(), out))
    log.info("wrote %s and %s", out, state_path)
    return TrainResult(out, history.train, history.val, state_path, done)
