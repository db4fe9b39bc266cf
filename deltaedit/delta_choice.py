"""How much of the mapper's Δs each edit applies, chosen per edit by CLIP (not in the paper).

The relevance selection (|fs3 · Δt| ≥ threshold) keeps the channels that carry a colour change
well, but a shape change ("chubby face") spreads over many channels it drops: on the toy domain
the kept part of Δs lies at cosine 0.36 to the true change and the generator draws it as a
cross-fade of two outlines, while the mapper's whole Δs (cosine 0.87) at a lower strength draws
a clean, wider face. No single threshold and strength serves both kinds of prompt, so a domain may
list alternatives (`extra.delta_choices`: [threshold factor, strength factor] pairs, relative to
the request's threshold and the backbone's default strength). Every alternative is decoded once,
at the default strength, and the one whose CLIP image change lies closest to what the text asks
for is kept (judged at one strength, so that the chosen Δs scales with the strength slider as the
mapper's own does, and a sweep or a re-edit equals the edit at that strength), and only where it
beats the request's own Δs by `extra.delta_choice_margin` (a factor on its loss): the refinement's own loss
(`deltaedit.refine.refinement_loss`: |Δi − g|² against the grounded target g with a feature
bank). No labels and no classifier are involved. Measured in docs/deltaedit-d.md ("sixth round").

A domain may also ship a style subspace (weights role `style_subspace`: the top principal
directions of its generator's style codes, `toy train --stages subspace`). Each candidate then
also enters projected onto it: the part of a Δs that no face's code varies along is what the
generator draws as smear, and where the projection brings the edit closer to the text it wins
by the same rule ("seventh round").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import WeightsError
from .nn.stylespace import decode_s
from .refine import loss_references, refinement_loss, unit_image_features
from .weight_files import load_npy_matrix


@dataclass(frozen=True)
class DeltaChoice:
    """An alternative to the request's Δs: the channels kept at `threshold_factor` x the request's
    threshold, applied at `strength_factor` x its strength."""

    threshold_factor: float
    strength_factor: float


def parse_delta_choices(raw) -> tuple[DeltaChoice, ...]:
    """`extra.delta_choices` as DeltaChoice values: a list of [threshold factor, strength factor]
    pairs of finite numbers, thresholds ≥ 0 and strengths > 0; None or [] for none."""
    if not raw:
        return ()
    choices = []
    for pair in raw:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ValueError(f"delta_choices holds [threshold factor, strength factor] pairs, got {pair!r}")
        t, s = (float(v) for v in pair)
        if not (math.isfinite(t) and math.isfinite(s) and t >= 0 and s > 0):
            raise ValueError(f"delta_choices needs a threshold factor >= 0 and a strength factor > 0, got {pair!r}")
        choices.append(DeltaChoice(t, s))
    return tuple(choices)


def parse_delta_choice_margin(raw) -> float:
    """`extra.delta_choice_margin`: a finite factor > 0 on the request's own loss (None: 1, the
    lowest loss wins)."""
    margin = 1.0 if raw is None else float(raw)
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"delta_choice_margin must be a number > 0, got {raw!r}")
    return margin


@torch.no_grad()
def choose_style_deltas(
    generator,
    clip,
    layout,
    s: torch.Tensor,
    w_plus: torch.Tensor,
    candidates: torch.Tensor,
    delta_t: torch.Tensor,
    strength: float,
    source_image: torch.Tensor,
    feature_bank=None,
    margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δs [T, S], index [T]): for each row t, the candidate Δs of `candidates` [C, T, S] whose edit
    s + strength·Δs has the lowest `refinement_loss`, and which candidate that was. Candidate 0 is
    the request's own Δs and wins ties; an alternative must bring the loss below `margin` x
    candidate 0's to be taken. `source_image` is the source decoded from s and w_plus."""
    count, rows = candidates.shape[:2]
    source, target, direction = loss_references(clip, source_image, delta_t, feature_bank)
    flat = candidates.reshape(count * rows, -1)
    images = decode_s(generator, layout.split(s + strength * flat), w_plus.expand(count * rows, -1, -1))
    delta_i = unit_image_features(clip, images) - source
    loss = refinement_loss(
        delta_i,
        target=None if target is None else target.repeat(count, 1),
        direction=direction.to(delta_i.device).repeat(count, 1),
    ).view(count, rows)
    loss[0] = loss[0] * margin  # the request's own Δs unless an alternative is clearly better
    index = loss.argmin(dim=0)  # the first of equal losses: the request's own Δs
    chosen = candidates[index, torch.arange(rows, device=candidates.device)]
    return chosen, index


def style_subspace(styles: torch.Tensor, dims: int) -> torch.Tensor:
    """[dims, S]: orthonormal rows spanning the top `dims` principal directions of style codes
    `styles` [N, S] (their mean removed), each signed so that its largest entry is positive (so
    that one set of codes always gives one file)."""
    if styles.ndim != 2 or not 1 <= dims <= min(styles.shape):
        raise ValueError(f"need codes [N, S] and 1 <= dims <= min(N, S), got {tuple(styles.shape)} and {dims}")
    centred = styles.double() - styles.double().mean(0)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    basis = vt[:dims]
    peak = basis.gather(1, basis.abs().argmax(1, keepdim=True))
    return (basis * peak.sign()).float()


def project_onto(delta_s: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`delta_s` [..., S] projected onto the span of the orthonormal rows of `basis` [K, S]."""
    basis = basis.to(delta_s.dtype)
    return (delta_s @ basis.T) @ basis


def load_style_subspace(path, n_channels: int) -> torch.Tensor:
    """A style subspace [K, S] float32 from a .npy file (no pickles), checked: S = `n_channels`,
    finite, orthonormal rows."""
    basis = torch.from_numpy(load_npy_matrix(path, "style subspace", "K, S").astype("float32"))
    if basis.shape[1] != n_channels or basis.shape[0] > n_channels:
        raise WeightsError(
            f"{path} has shape {list(basis.shape)}, expected [K <= {n_channels}, {n_channels}]; is it the right file?"
        )
    if not torch.isfinite(basis).all():
        raise WeightsError(f"{path} contains NaN or infinite values; recompute it (toy train --stages subspace)")
    gram = basis @ basis.T
    if not torch.allclose(gram, torch.eye(basis.shape[0]), atol=1e-4):
        raise WeightsError(f"{path} does not hold orthonormal rows; recompute it (toy train --stages subspace)")
    return basis
