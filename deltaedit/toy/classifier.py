"""Attribute classifier for toy faces: scores edits (did the target attribute change, did the rest stay).

A small CNN with one softmax head per attribute, trained on fresh renders. It only judges edits; no
editing model uses it. Saved as safetensors with its JSON config both in the file's metadata (so one
weight file is enough) and in a sidecar `<name>.json` (for people reading it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..errors import InputError, WeightsError
from ..fileio import atomic_write, write_json
from .attributes import ATTRIBUTES, FaceAttributes
from .render import render_batch

log = logging.getLogger(__name__)


class ToyAttributeClassifier(nn.Module):
    """Patchify stem (4x4, stride 4) + stride-2 convs to 4x4 -> shared MLP -> one head per attribute.

    Kept to ~1.5 M multiply-adds per image so it trains in a minute or two on one CPU core.
    """

    def __init__(
        self,
        attributes: dict[str, tuple[str, ...] | list[str]] | None = None,
        image_size: int = 64,
        widths: tuple[int, ...] = (24, 48, 64),
        hidden: int = 128,
    ):
        super().__init__()
        self.attributes = {k: tuple(v) for k, v in (attributes or ATTRIBUTES).items()}
        self.image_size = image_size
        self.widths = tuple(widths)
        self.hidden = hidden
        layers, c_in = [], 3
        for i, w in enumerate(self.widths):
            conv = nn.Conv2d(c_in, w, 4, stride=4) if i == 0 else nn.Conv2d(c_in, w, 3, stride=2, padding=1)
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c_in = w
        self.features = nn.Sequential(*layers)
        side = image_size // (4 * 2 ** (len(self.widths) - 1))
        # Flatten (not global pooling): where a colour sits (hair vs. shirt vs. background) matters.
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(v)) for name, v in self.attributes.items()})

    def config(self) -> dict:
        return {
            "attributes": {k: list(v) for k, v in self.attributes.items()},
            "image_size": self.image_size,
            "widths": list(self.widths),
            "hidden": self.hidden,
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images float [B, 3, S, S] in [-1, 1] -> {attribute: logits [B, n_values]}."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise InputError(
                f"classifier expects images [B, 3, {self.image_size}, {self.image_size}], got {tuple(images.shape)}"
            )
        h = self.trunk(self.features(images))
        return {name: head(h) for name, head in self.heads.items()}


def _targets(attrs: list[FaceAttributes]) -> torch.Tensor:
    return torch.from_numpy(np.stack([a.to_vector() for a in attrs]))


def classifier_loss(
    model: ToyAttributeClassifier, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean over attributes of the cross-entropy; targets int64 [B, n_attributes]."""
    logits = model(images)
    losses = [F.cross_entropy(logits[name], targets[:, i]) for i, name in enumerate(model.attributes)]
    return torch.stack(losses).mean()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light noise and occasional blur, so generated (slightly blurry, noisy) faces read the same."""
    b = x.shape[0]
    blur = torch.rand(b, 1, 1, 1, generator=generator) < 0.3
    x = torch.where(blur, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False), x)
    sigma = torch.rand(b, 1, 1, 1, generator=generator) * 0.06
    return x + sigma * torch.randn(x.shape, generator=generator)


def train_classifier(
    n_images: int = 3000,
    steps: int = 700,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    augment: bool = True,
    model: ToyAttributeClassifier | None = None,
    progress: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> ToyAttributeClassifier:
    """Train on `n_images` renders (seed `seed`) for `steps` Adam steps; returns the model in eval mode."""
    if n_images < 1 or steps < 0 or batch_size < 1:
        raise InputError("train_classifier needs n_images >= 1, steps >= 0 and batch_size >= 1")
    torch.manual_seed(seed)
    model = (model or ToyAttributeClassifier()).to(device)
    t0 = time.perf_counter()
    images, attrs = render_batch(n_images, seed, size=model.image_size, as_tensor=True)
    targets = _targets(attrs)
    log.info("rendered %d training faces in %.1fs", n_images, time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n_images, (min(batch_size, n_images),), generator=gen)
        x = images[idx]
        if augment:
            x = _augment(x, gen)
        loss = classifier_loss(model, x.to(device), targets[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
        if step % 200 == 0 or step == steps - 1:
            log.info("classifier step %d/%d loss %.4f", step + 1, steps, loss.item())
    return model.eval()


@torch.no_grad()
def predict_indices(
    model: ToyAttributeClassifier, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Class index per attribute: int64 [B, n_attributes] in the model's attribute order."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        logits = model(chunk.to(device, torch.float32))
        out.append(torch.stack([logits[n].argmax(1) for n in model.attributes], 1).cpu())
    return torch.cat(out) if out else torch.empty(0, len(model.attributes), dtype=torch.long)


def predict(model: ToyAttributeClassifier, images: torch.Tensor) -> list[dict[str, str]]:
    """Per image, {attribute: value} read by the classifier; images float [B, 3, S, S] in [-1, 1]."""
    names = list(model.attributes)
    return [
        {n: model.attributes[n][int(i)] for n, i in zip(names, row, strict=True)}
        for row in predict_indices(model, images).tolist()
    ]


def evaluate_accuracy(
    model: ToyAttributeClassifier, n_images: int = 1000, seed: int = 12345
) -> dict[str, float]:
    """Per-attribute accuracy on fresh renders (use a seed the training did not)."""
    images, attrs = render_batch(n_images, seed, size=model.image_size, as_tensor=True)
    correct = predict_indices(model, images) == _targets(attrs)
    return {n: float(correct[:, i].float().mean()) for i, n in enumerate(model.attributes)}


def save_classifier(model: ToyAttributeClassifier, path: str | Path) -> Path:
    """Write `path` (.safetensors, config in its metadata) and the sidecar `path.with_suffix('.json')`."""
    path = Path(path)
    config = json.dumps(model.config())
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"config": config, "format": "deltaedit-toy-classifier"})
    write_json(path.with_suffix(".json"), model.config())
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ToyAttributeClassifier:
    """Read a classifier written by `save_classifier`; strict keys/shapes; returned in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"toy classifier weights {path} not found; train them with the toy training command"
            " or put the file there"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(
            f"{path} is not a readable safetensors file ({exc}); re-download or retrain it"
        ) from exc
    if "config" in meta:
        config = json.loads(meta["config"])
    elif path.with_suffix(".json").is_file():
        config = json.loads(path.with_suffix(".json").read_text())
    else:
        raise WeightsError(f"{path} has no classifier config (metadata or {path.with_suffix('.json').name})")
    model = ToyAttributeClassifier(
        attributes=config["attributes"],
        image_size=config["image_size"],
        widths=tuple(config["widths"]),
        hidden=config["hidden"],
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match the classifier config: {exc}") from exc
    return model.to(device).eval()
