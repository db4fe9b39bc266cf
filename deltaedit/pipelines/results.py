"""What an edit produces and keeps: a source's codes, an edit's result and plan, a sweep; and the
per-stage clock whose laps become an edit's timings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..imageio import pixels_to_pils, tensors_to_pixels

log = logging.getLogger(__name__)


@dataclass
class SourceCodes:
    """Everything about one source that does not depend on the prompt."""

    w_plus: torch.Tensor  # [1, n_latent, style_dim]
    s: torch.Tensor  # [1, S]
    clip_feature: torch.Tensor  # [1, D], not normalised
    image: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1], decoded from the unedited S
    input_image: torch.Tensor | None = None  # [1, 3, h, w] in [-1, 1]: the encoder's input (photos)
    notices: list[str] = field(default_factory=list)
    # `image` as a picture, made by the first edit of this source; later edits hand out copies.
    image_pil: Image.Image | None = field(default=None, repr=False)


@dataclass
class EditResult:
    source_image: Image.Image
    edited_images: list[Image.Image]
    targets: list[str]
    source_text: str
    strength: float
    threshold: float
    w_plus: torch.Tensor  # [1, n_latent, style_dim]
    s_source: torch.Tensor  # [1, S]
    s_edited: torch.Tensor  # [T, S]
    delta_s: torch.Tensor  # [T, S], after relevance selection, before strength
    notices: list[str]
    timings: dict[str, float]
    source_tensor: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1], on the editor's device
    edited_tensor: torch.Tensor | None = None  # [T, 3, H, W] in [-1, 1], on the editor's device
    input_tensor: torch.Tensor | None = None  # [1, 3, H, W]: what the diffusion backbone inverted


@dataclass
class EditPlan:
    """An edit up to its decoding (`GanEditor.plan`): decodes at any strength without recomputing."""

    codes: SourceCodes
    targets: list[str]
    source_text: str
    strength: float
    threshold: float
    delta_s: torch.Tensor  # [T, S] after relevance selection (and refinement), before strength
    notices: list[str]
    clock: StageClock


@dataclass
class SweepResult:
    """One target's edit at several strengths (`GanEditor.sweep`)."""

    frames: list[Image.Image]
    strengths: list[float]
    target: str
    notices: list[str]
    timings: dict[str, float]


def make_result(
    codes,
    source,
    edits,
    targets,
    source_text,
    strength,
    threshold,
    s_edit,
    delta_s,
    notices,
    timings,
    input_tensor=None,
) -> EditResult:
    """The EditResult of an edit; adds the "transfer" (device to host bytes) and "pil" timings."""
    notices = list(dict.fromkeys(notices))
    for n in notices:
        log.info("notice: %s", n)
    is_render = source is codes.image
    source, edits = source.float(), edits.float()  # stay on the editor's device
    t = time.perf_counter()
    # The source's picture is made once per source (re-edits of a face skip its transfer).
    cached = codes.image_pil if is_render else None
    pixels = tensors_to_pixels(edits if cached is not None else torch.cat([source, edits]))
    t_pil = time.perf_counter()
    pictures = pixels_to_pils(pixels)
    if cached is None:
        cached, pictures = pictures[0], pictures[1:]
        if is_render:
            codes.image_pil = cached
    source_image, edited_images = cached.copy(), pictures  # a copy: callers may draw on theirs
    done = time.perf_counter()
    timings = {**timings, "transfer": t_pil - t, "pil": done - t_pil}
    timings["total"] = timings.get("total", 0.0) + done - t
    return EditResult(
        source_image=source_image,
        edited_images=edited_images,
        targets=targets,
        source_text=source_text,
        strength=strength,
        threshold=threshold,
        w_plus=codes.w_plus.cpu(),
        s_source=codes.s.cpu(),
        s_edited=s_edit.cpu(),
        delta_s=delta_s.cpu(),
        notices=notices,
        timings=timings,
        source_tensor=source,
        edited_tensor=edits,
        input_tensor=input_tensor,
    )


class StageClock:
    """Seconds per named stage of one request, plus "total"; with a CUDA `device` each lap first
    waits for the GPU, so the time lands on the stage that queued the work."""

    def __init__(self, device: torch.device | None = None):
        self._sync = device is not None and device.type == "cuda"
        self._start = self._last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        if self._sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[stage] = now - self._last
        self.timings["total"] = now - self._start
        self._last = now

    def since(self, stage: str, t0: float) -> dict[str, float]:
        """The laps so far plus `stage`, timed from `t0`, with the total grown by it. For a kept
        plan's later step (a redraw): the clock itself is left as it is, so redraws neither share
        it nor count the time the plan sat waiting."""
        if self._sync:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        return {**self.timings, stage: elapsed, "total": self.timings.get("total", 0.0) + elapsed}
