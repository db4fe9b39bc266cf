"""Optional CLIP-guided refinement of the Delta Mapper's Δs (not in the paper; off by default).

`train-mapper --distil` (`deltaedit.training.distil.distil_mapper`) trains the same loss into the
mapper instead, so that edits need fewer or no steps (docs/fast-toy-edits.md: on the toy domain
success rose to 0.94-0.96 in one pass, preservation to 0.87-0.89, and the toy default now runs 2
steps at lr 0.02 instead of 20 at 0.01).

The mapper predicts Δs in one pass. On the toy domain its Δs for a one-attribute prompt carries a
large component that changes other attributes (README, "Where the mapper goes wrong"). A few
gradient steps through the generator and CLIP take out what moves the edit's CLIP image feature
away from the text direction, and push along it:

    loss(e) = |Δi(e) − (Δi(e)·d)d|² − push · Δi(e)·d,   Δi(e) = î(G(s + e)) − î(G(s)),   d = Δt/|Δt|

where î is the unit CLIP image feature and e = strength · Δs is the change actually applied.
With a feature bank (`deltaedit.grounding`) the text direction is replaced by a target: the
grounded delta g says where the edit's feature should land, and

    loss(e) = |Δi(e) − g|²,   g = ground(Δt, î(G(s)))

asks for the attribute swap and for nothing else to move (on the toy domain's base mapper,
`eval --n 50`: success 0.84 -> 0.93 and preservation 0.87 -> 0.91 with 20 steps). Adam starts from the
mapper's e and moves only the channels the relevance selection kept, so the refinement corrects
the mapper's prediction rather than replacing it (as StyleCLIP's latent optimisation would).
Each step decodes and backpropagates through the generator and CLIP once per target: cheap at
64 px, a GPU job at 1024 px.
"""

from __future__ import annotations

import torch

from . import progress
from .nn.stylespace import decode_s

DEFAULT_LR = 0.01  # in style values; the toy domain's styles have mean |s| = 1
DEFAULT_PUSH = 0.5


def unit_image_features(clip, images: torch.Tensor) -> torch.Tensor:
    f = clip.image_features(images.clamp(-1, 1)).float()
    return f / f.norm(dim=-1, keepdim=True)


@torch.no_grad()
def loss_references(
    clip, source_image: torch.Tensor, delta_t: torch.Tensor, feature_bank=None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """What `refinement_loss` compares an edit with, for text deltas Δt [T, D] on the source image
    [1, 3, H, W]: the source's unit CLIP feature [1, D], the grounded targets [T, D] (None without
    a feature bank) and the unit text directions [T, D] (zero for a zero Δt)."""
    source = unit_image_features(clip, source_image)
    target = None
    if feature_bank is not None:
        target = feature_bank.ground(delta_t.float(), source).to(source.device)
    direction = delta_t.float() / delta_t.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return source, target, direction


def refinement_loss(
    delta_i: torch.Tensor,
    target: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
    push: float = DEFAULT_PUSH,
) -> torch.Tensor:
    """The refinement's loss per row [B] for the edits' CLIP image changes Δi [B, D].

    With a grounded `target` g [B, D]: |Δi − g|². Without one, the unit text `direction` d [B, D]:
    |Δi − (Δi·d)d|² − push · Δi·d. Mapper distillation (`deltaedit.training.distil.distil_mapper`)
    trains on the same loss.
    """
    if target is not None:
        return (delta_i - target).pow(2).sum(dim=-1)
    if direction is None:
        raise ValueError("refinement_loss needs a grounded target or a text direction")
    along = (delta_i * direction).sum(dim=-1)
    across = delta_i - along[:, None] * direction
    return across.pow(2).sum(dim=-1) - push * along


def refine_style_deltas(
    generator,
    clip,
    layout,
    s: torch.Tensor,
    w_plus: torch.Tensor,
    delta_s: torch.Tensor,
    delta_t: torch.Tensor,
    strength: float,
    steps: int,
    lr: float = DEFAULT_LR,
    push: float = DEFAULT_PUSH,
    source_image: torch.Tensor | None = None,
    feature_bank=None,
) -> torch.Tensor:
    """Refined Δs [T, S] for the source s [1, S] (W+ w_plus [1, L, D]) and text deltas Δt [T, D].

    Rows whose Δs is all zero (nothing selected, or target == source) and strength 0 are returned
    as they are. Only the generator's and CLIP's inputs get gradients, never their weights.
    `source_image`: the source already decoded from s and w_plus (else it is decoded here).
    `feature_bank`: a `FeatureBank`; with it the loss matches the grounded delta (see above).
    """
    if steps <= 0 or strength == 0:
        return delta_s
    active = (delta_s != 0).any(dim=1)
    if not active.any():
        return delta_s
    keep = (delta_s[active] != 0).to(delta_s.dtype)
    rows = int(active.sum())
    w = w_plus.expand(rows, -1, -1)
    with torch.no_grad():
        if source_image is None:
            source_image = decode_s(generator, layout.split(s), w_plus)
    source, target, d = loss_references(clip, source_image, delta_t[active].to(delta_s.device), feature_bank)
    change = (strength * delta_s[active]).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([change], lr=lr)
    with torch.enable_grad():
        for _ in progress.steps(range(steps), "refinement"):
            images = decode_s(generator, layout.split(s + change * keep), w)
            delta_i = unit_image_features(clip, images) - source
            loss = refinement_loss(
                delta_i, target=target, direction=d, push=push
            ).sum()  # rows are independent
            (grad,) = torch.autograd.grad(loss, [change])
            change.grad = grad
            optimizer.step()
    out = delta_s.clone()
    out[active] = (change.detach() * keep / strength).to(delta_s.dtype)
    return out
