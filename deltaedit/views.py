"""What the page shows of an edit, a sweep and a comparison, and the files it offers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .domain_info import BACKBONE_NAMES
from .outputs import OUTPUTS
from .request_checks import shorten


@dataclass
class EditView:
    """An edit as the page shows it."""

    backbone: str
    source_image: Image.Image
    edited_images: list[Image.Image]
    targets: list[str]
    files: list[Path]
    notices: list[str]
    seconds: float
    summary: str = ""
    extra: dict = field(default_factory=dict)
    input_image: Image.Image | None = None  # what was edited: the photo as the model saw it, or the sample
    strength: float | None = None  # the values the edit used (the domain's defaults when given None)
    threshold: float | None = None

    @property
    def gallery(self) -> list[tuple[Image.Image, str]]:
        return list(zip(self.edited_images, self.targets))


def summary_text(view: EditView, source_text: str, strength: float, threshold: float, steps) -> str:
    name = BACKBONE_NAMES[view.backbone]
    knobs = f"strength {strength:g}, threshold {threshold:g}" + (f", {steps} DDIM steps" if steps else "")
    lines = [
        f"**{name}**: {len(view.targets)} edit(s) in **{view.seconds:.2f} s** ({knobs}; source text “{shorten(source_text)}”)."
    ]
    lines += [f"- ⚠️ {shorten(n)}" for n in view.notices]
    return "\n".join(lines)


@dataclass
class SweepView:
    frames: list[tuple[Image.Image, str]]  # (picture, caption "strength x")
    animation: Path
    summary: str


@dataclass
class CompareView:
    source_image: Image.Image  # the input both backbones edited (the photo, or the seed's sample)
    gan: EditView
    diffusion: EditView | None
    summary: str


def save_files(view: EditView) -> EditView:
    """Write the edited images as PNGs for download (in the web process, not a GPU worker)."""
    view.files = [
        OUTPUTS.save(img, f"{view.backbone}-{t}") for img, t in zip(view.edited_images, view.targets)
    ]
    return view


_G_ROW = re.compile(r"^\| DeltaEdit-G \|[^|]*\|[^|]*\| ([0-9.]+ s) \|", re.M)
_D_ROW = re.compile(r"^\| DeltaEdit-D \(\d+ steps\) \|[^|]*\|[^|]*\| ([0-9.]+ s) \|", re.M)
_SAMPLE = re.compile(r"^Input: random sample, seed (\d+)\.", re.M)


def compare_labels(summary: str) -> tuple[str, str, str]:
    """Captions for the Compare pictures (input, DeltaEdit-G, DeltaEdit-D), read back from the
    summary `compare` wrote: what the input is, and each backbone's time."""
    sample_seed = _SAMPLE.search(summary)
    g, d = _G_ROW.search(summary), _D_ROW.search(summary)
    if not summary:
        return "Input", "DeltaEdit-G", "DeltaEdit-D"
    shown = f"Input (random sample, seed {sample_seed.group(1)})" if sample_seed else "Input (the photo)"
    g_label = f"DeltaEdit-G · {g.group(1)}" if g else "DeltaEdit-G"
    d_label = f"DeltaEdit-D · {d.group(1)}" if d else "DeltaEdit-D · not available"
    return shown, g_label, d_label
