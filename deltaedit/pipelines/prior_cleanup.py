"""DeltaEdit-D's image prior: redraw each edit inside its change mask (SDEdit, Meng et al. 2022).

The residual model can only add detail to the generator's rendering R(s'), so where R(s') smears
an edit (a doubled outline, a streak) the edit keeps the smear. A second, full-image UNet trained
on images and their style codes (`toy train --stages prior`) knows what clean images of a code look
like: each edit y is noised to a shallow depth, x_t = √ᾱ_t·y + √(1−ᾱ_t)·ε, decoded back with DDIM
under its own code s', and the mean over a few seeded draws replaces y where the edit changes the
rendering (the caller blends it in with the same change mask; elsewhere the input stays).

The prior's redraw also pulls an edit's shapes back towards the input (a shallow redraw sees the
noisy edit far more than the code), so the asked-for change could be undone: "chubby face", "thin
face" and "big eyes" lost a tenth of their success. With `structure_sigma` the edit keeps its own
content below that scale (a Gaussian blur of σ pixels: shape and colour, what the edit asked for)
and takes from the redraw only the detail above it (lines, speckle, smear).
Measured against the truth in docs/deltaedit-d.md ("fourth round", "fifth round").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torchvision.transforms.functional import gaussian_blur

from ..errors import InputError
from .ddim import _depth_steps, ddim_sample, make_scheduler
from .diffusion import DiffusionBackbone


@dataclass
class PriorCleanup:
    """`backbone`: a full-image model (no `render_channels`) conditioned on s; `depth`: the fraction
    of a `steps`-step DDIM chain each edit is noised through; `draws`: seeded noise draws averaged
    (the mean is what scores best against the truth; one draw is sharper and noisier); `seed`: the
    draws' seed, so one request always gives one picture; `structure_sigma`: the scale in pixels
    below which each edit keeps its own content (0: the redraw replaces all of it)."""

    backbone: DiffusionBackbone
    depth: float = 0.1
    draws: int = 8
    steps: int = 50
    seed: int = 0
    structure_sigma: float = 0.0

    def __post_init__(self):
        if self.backbone.render_channels:
            raise InputError("the image prior must be a full-image model (no render_channels)")
        if not (isinstance(self.draws, int) and 1 <= self.draws <= 64):
            raise InputError(f"prior draws must be a whole number from 1 to 64, got {self.draws!r}")
        _depth_steps(self.steps, self.depth)  # InputError for a depth outside (0, 1]
        sigma = self.structure_sigma
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and 0 <= sigma <= 64):
            raise InputError(f"prior structure_sigma must be a number of pixels from 0 to 64, got {sigma!r}")

    @torch.no_grad()
    def redraw(self, edits: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """The mean over `draws` of each edit [T, 3, H, W] in [-1, 1] noised to `depth` and decoded
        under its code in `styles` [T, S], with each edit's own structure kept below
        `structure_sigma`."""
        if edits.shape[0] == 0:
            return edits
        scheduler = make_scheduler(DDIMScheduler, self.backbone.scheduler_config)
        scheduler.set_timesteps(self.steps)
        t = scheduler.timesteps[self.steps - _depth_steps(self.steps, self.depth)]
        alpha_bar = scheduler.alphas_cumprod[t].to(edits.device, torch.float32)
        y = edits.float().repeat(self.draws, 1, 1, 1)  # [draws·T, ...], draw-major
        # The same draws for every edit: an edit's picture does not depend on what else is in the batch
        # (a sweep's frame equals the single edit at that strength).
        noise = torch.randn(
            (self.draws, 1, *edits.shape[1:]), generator=torch.Generator().manual_seed(self.seed)
        )
        noise = noise.expand(-1, edits.shape[0], -1, -1, -1).reshape(y.shape).to(y.device)
        x_t = alpha_bar.sqrt() * y + (1 - alpha_bar).sqrt() * noise
        out = ddim_sample(
            self.backbone.denoiser,
            self.backbone.scheduler_config,
            x_t,
            styles.float().repeat(self.draws, 1),
            self.steps,
            depth=self.depth,
        )
        redrawn = out.view(self.draws, *edits.shape).mean(0)
        if self.structure_sigma > 0:
            redrawn = redrawn + self._structure(edits.float()) - self._structure(redrawn)
        return redrawn.clamp(-1, 1)

    def _structure(self, images: torch.Tensor) -> torch.Tensor:
        """`images` blurred with a Gaussian of σ = `structure_sigma` pixels (±3σ, reflected at the
        border; the kernel is cut to what the image size allows)."""
        size = 2 * math.ceil(3 * self.structure_sigma) + 1
        size = min(size, 2 * min(images.shape[-2:]) - 1)  # reflection needs a border inside the image
        return gaussian_blur(images, kernel_size=size, sigma=float(self.structure_sigma))
