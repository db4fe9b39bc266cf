"""DeltaEdit-D: deterministic DDIM inversion and editing with a style-conditioned UNet.

An image x0 is inverted to x_T under its own style code s (DDIM with σ = 0 run forwards in time),
then decoded under s + α·Δs, where Δs is the Delta Mapper's (relevance-masked) output — the same Δs
that edits the StyleGAN backbone. All targets are decoded in one batch from the same x_T, together
with the unedited code so the caller also gets the reconstruction.

This module knows nothing about StyleGAN, CLIP or the mapper: it receives tensors.

Equations cite Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12 with
σ_t = 0:  x_{t-1} = √ᾱ_{t-1} · (x_t − √(1−ᾱ_t) ε_θ(x_t)) / √ᾱ_t + √(1−ᾱ_{t-1}) · ε_θ(x_t).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import DDIMScheduler

from ..errors import InputError, WeightsError
from ..nn.style_unet import StyleConditionedUNet
from .ddim import (  # noqa: F401 - the DDIM maths, also read from this module
    DEFAULT_SCHEDULER_CONFIG,
    _config_dict,
    _depth_steps,
    ddim_invert,
    ddim_sample,
    make_scheduler,
    psnr,
)
from .fast_unet import CudaGraphUNet, TracedUNet  # noqa: F401 - the UNet runners, also read from here

log = logging.getLogger(__name__)

# Inversion steps (the noisiest ones) that `DiffusionBackbone.edit` refines by default.
EDIT_REFINE_LAST = 10


# The UNet's precision on a GPU. `bench --device cuda` measures that it keeps the toy model's
# reconstruction PSNR within 0.5 dB of float32 (README, Benchmarks); the scheduler maths stays float32.
CUDA_DTYPE = torch.float16


def inference_dtype(device) -> torch.dtype:
    return CUDA_DTYPE if torch.device(device).type == "cuda" else torch.float32


class DiffusionEdit(NamedTuple):
    reconstruction: torch.Tensor  # [1, 3, H, W] in [-1, 1]: the input decoded under s_source
    edits: torch.Tensor  # [T, 3, H, W] in [-1, 1]: decoded under s_source + α·Δs_i


class Inversion(NamedTuple):
    """A source inverted once (`DiffusionBackbone.invert_source`), ready to decode at any Δs."""

    image: torch.Tensor  # [1, 3, H, W]: the input
    s_source: torch.Tensor  # [1, S]
    x_T: torch.Tensor  # [1, 3, H, W]: the end of the inverted chain
    trajectory: list[torch.Tensor] | None  # the whole chain, with preserve_details
    render_source: torch.Tensor | None  # R(s_source), for a rendering-conditioned model
    steps: int
    depth: float


class DiffusionBackbone:
    """A trained `StyleConditionedUNet` and its noise schedule; inverts, decodes and edits images.

    A UNet with `render_channels` (the residual design, docs/deltaedit-d.md) models the residual
    x0 − R(s) between an image and the generator's rendering R(s) of its style code, with R(s) as
    extra input channels. Every method here still takes and returns *images*: give it the renderings
    (`render=`) and it inverts x0 − R(s) and returns R(s') + the decoded residual.
    """

    def __init__(
        self,
        unet: StyleConditionedUNet,
        scheduler_config=None,
        traced: bool | None = None,
        cuda_graphs: bool | None = None,
    ):
        """`traced`: run the UNet as `TracedUNet` graphs (None: on a CPU in float32, where it halves
        the Python overhead of small models). `cuda_graphs`: run it as `CudaGraphUNet` (None: on a
        GPU unless $DELTAEDIT_CUDA_GRAPHS is 0). Leave both off while the weights still change."""
        self.unet = unet.eval()
        self.scheduler_config = _config_dict(scheduler_config)
        self.traced = traced
        self.cuda_graphs = cuda_graphs
        self._fast_unet: TracedUNet | CudaGraphUNet | None = None

    @property
    def denoiser(self):
        """What the samplers call: the UNet, or its traced or CUDA graphs (see `traced`, `cuda_graphs`)."""
        if self.device.type == "cuda":
            use = self.cuda_graphs
            if use is None:  # hosts that move weights between calls (ZeroGPU) set the variable to 0
                use = os.environ.get("DELTAEDIT_CUDA_GRAPHS", "1").lower() not in ("0", "false", "no", "off")
            wanted = CudaGraphUNet if use else None
        else:
            use = self.traced
            if use is None:
                use = self.device.type == "cpu" and self.unet.dtype == torch.float32
            wanted = TracedUNet if use else None
        if wanted is None:
            return self.unet
        if not isinstance(self._fast_unet, wanted):
            self._fast_unet = wanted(self.unet)
        return self._fast_unet

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype: torch.dtype | None = None):
        """Load a folder written by `save_pretrained` / `train_diffusion` (config.json, weights, scheduler/)."""
        path = Path(path)
        if not (path / "config.json").is_file() or not any(path.glob("diffusion_pytorch_model*")):
            raise WeightsError(
                f"{path} is not a DeltaEdit-D weights folder (config.json + diffusion_pytorch_model.safetensors"
                " expected); train one with `python -m deltaedit train-diffusion` or point to the right folder"
            )
        unet = StyleConditionedUNet.from_pretrained(path)
        scheduler_dir = path / "scheduler"
        config = DDIMScheduler.load_config(scheduler_dir) if scheduler_dir.is_dir() else None
        return cls(unet, config).to(device, dtype)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.unet.save_pretrained(path)
        make_scheduler(DDIMScheduler, self.scheduler_config).save_pretrained(path / "scheduler")
        return path

    def to(self, device=None, dtype: torch.dtype | None = None) -> DiffusionBackbone:
        kwargs = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
        if kwargs:
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, with nothing to warn about.
            torch.nn.Module.to(self.unet, **kwargs)
            self._fast_unet = None  # graphs hold the old device's and dtype's weights
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def style_dim(self) -> int:
        return self.unet.config.style_dim

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size

    def _check_image(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (size, size):
            raise InputError(f"images must be [B, 3, {size}, {size}] in [-1, 1], got {tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    def _check_style(self, s: torch.Tensor, name: str) -> torch.Tensor:
        if s.ndim == 1:
            s = s[None]
        if s.ndim != 2 or s.shape[1] != self.style_dim:
            raise InputError(f"{name} must be [N, {self.style_dim}], got {tuple(s.shape)}")
        return s.to(self.device, torch.float32)

    @property
    def render_channels(self) -> int:
        """Channels of the generator rendering R(s) the UNet is conditioned on (0: a plain model)."""
        return int(getattr(self.unet.config, "render_channels", 0) or 0)

    @property
    def residual_scale(self) -> float:
        """What a rendering-conditioned model's residual x0 − R(s) is multiplied by before diffusing."""
        return float(getattr(self.unet.config, "residual_scale", 1.0) or 1.0)

    def _check_render(self, render, styles: torch.Tensor) -> torch.Tensor | None:
        """R(s) [N, C, H, W] for the N style codes `styles`: a tensor, or a function styles -> renders."""
        channels = self.render_channels
        if not channels:
            if render is not None:
                raise InputError(
                    "this DeltaEdit-D model is not conditioned on a rendering (render_channels 0); pass no render"
                )
            return None
        if render is None:
            raise InputError(
                f"this DeltaEdit-D model diffuses the residual image − R(s): pass `render`, the generator's"
                f" rendering R(s) of each style code ([{styles.shape[0]}, {channels}, H, W] or a function of s)"
            )
        if callable(render):
            render = render(styles)
        size = self.image_size
        want = (styles.shape[0], channels, size, size)
        if not isinstance(render, torch.Tensor) or tuple(render.shape) != want:
            got = tuple(render.shape) if isinstance(render, torch.Tensor) else type(render).__name__
            raise InputError(f"render must be the generator's rendering {list(want)} in [-1, 1], got {got}")
        return render.to(self.device, torch.float32)

    def invert(
        self,
        x0: torch.Tensor,
        s: torch.Tensor,
        steps: int = 50,
        refine: int = 0,
        refine_last: int | None = None,
        render=None,
    ) -> torch.Tensor:
        """x_T of images x0 [B,3,H,W] under s [B,S]; for a rendering-conditioned model, of the
        residual x0 − R(s) under (s, R(s)) with `render` = R(s) [B,3,H,W] (or a function of s)."""
        x0, s = self._check_image(x0), self._check_style(s, "s")
        if s.shape[0] != x0.shape[0]:
            raise InputError(f"{x0.shape[0]} images but {s.shape[0]} style codes")
        render = self._check_render(render, s)
        if render is not None:
            x0 = (x0 - render) * self.residual_scale
        return ddim_invert(
            self.denoiser, self.scheduler_config, x0, s, steps, refine, refine_last, render=render
        )

    def sample(self, x_T: torch.Tensor, s: torch.Tensor, steps: int = 50, render=None) -> torch.Tensor:
        """Decode x_T under s [B,S]; a rendering-conditioned model returns R(s) + the decoded residual."""
        s = self._check_style(s, "s")
        render = self._check_render(render, s)
        out = ddim_sample(self.denoiser, self.scheduler_config, x_T.to(self.device), s, steps, render=render)
        return out if render is None else render + out / self.residual_scale

    def generate(
        self, s: torch.Tensor, steps: int = 50, generator: torch.Generator | None = None, render=None
    ):
        """Random images for style codes s [B,S] (fresh Gaussian x_T; seed it with `generator`)."""
        s = self._check_style(s, "s")
        size = self.image_size
        x_T = torch.randn(s.shape[0], 3, size, size, generator=generator).to(self.device)
        return self.sample(x_T, s, steps, render=render).clamp(-1, 1)

    def edit(
        self,
        x0: torch.Tensor,
        s_source: torch.Tensor,
        delta_s: torch.Tensor,
        strength: float = 1.0,
        steps: int = 50,
        refine: int = 1,
        refine_last: int | None = EDIT_REFINE_LAST,
        preserve_details: bool = False,
        render: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        depth: float = 1.0,
        residual: str = "decode",
        change_threshold: float | None = None,
        change_ramp: tuple[float, float] | None = None,
    ) -> DiffusionEdit:
        """Invert x0 [1,3,H,W] once under s_source [1,S]; decode under s_source + strength·Δs for Δs [T,S].

        `render` (required for a model with `render_channels`, refused otherwise): the generator's
        renderings of [s_source, s_source + strength·Δs_1, ...] as a tensor [1+T,3,H,W], or a
        function styles [N,S] -> [N,3,H,W]. The residual x0 − R(s_source) is inverted under
        (s_source, R(s_source)) and decoded under each (s', R(s')); every output is R(s') + its
        decoded residual, so each Δs reaches the image through the generator. `depth`: the fraction
        of the chain inverted and decoded (1: to pure noise; less keeps more of the input).

        `refine`/`refine_last`: fixed-point iterations on the last inversion steps (see `ddim_invert`;
        the default, one iteration on the noisiest 10 steps, lifted a 64 px model trained for 4000
        steps from ~23 dB to ~32 dB reconstruction PSNR at 50 steps for 20% more UNet calls;
        refine_last=None: ~39 dB at 2x the inversion cost). `preserve_details`: direct-inversion
        correction (see `ddim_sample`); the reconstruction is then the input itself.

        `residual` (a rendering-conditioned model only): "decode" returns R(s') + the residual
        decoded under (s', R(s')); "shift" returns R(s') + (x0 − R(s)) + [D(s') − D(s)], the input's
        own residual moved by the difference between the UNet's decodings of the same inverted x_T
        under (s', R(s')) and under (s, R(s)): a learned shift that is zero where the edit changes
        nothing, so the reconstruction row is the input itself. `change_threshold` (with a render):
        pixels where the edit leaves the rendering alone (|R(s') − R(s)|, largest over channels,
        3x3 mean, at most the threshold) return the input's pixels instead (docs/deltaedit-d.md).
        `change_ramp` (lo, hi), instead of a threshold: a soft mask, each output blended with the
        input by a weight that rises linearly with that change from 0 at lo to 1 at hi (lo = hi is
        the threshold lo); see `change_weights`.
        """
        check_output_rule(residual, change_threshold, change_ramp)
        x0, s_source = self._check_source(x0, s_source, "edit")
        # Row 0 decodes the unedited code (the reconstruction), rows 1..T the edits, all from one x_T.
        styles = self._edit_styles(s_source, delta_s, strength)
        renders = self._check_render(render, styles)
        render_source = None if renders is None else renders[:1]
        inversion = self._invert(x0, s_source, steps, refine, refine_last, preserve_details, render_source, depth)
        return self._decode(inversion, styles, renders, residual, change_threshold, change_ramp)

    def invert_source(
        self,
        x0: torch.Tensor,
        s_source: torch.Tensor,
        steps: int = 50,
        refine: int = 1,
        refine_last: int | None = EDIT_REFINE_LAST,
        preserve_details: bool = False,
        render: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        depth: float = 1.0,
    ) -> Inversion:
        """The inverting half of `edit` (same arguments): x0 [1,3,H,W] inverted once under
        s_source [1,S]. `decode_inversion` then decodes it at any Δs and strength, with no new
        inversion (the app's live strength slider)."""
        x0, s_source = self._check_source(x0, s_source, "invert_source")
        renders = self._check_render(render, s_source)
        return self._invert(x0, s_source, steps, refine, refine_last, preserve_details, renders, depth)

    def decode_inversion(
        self,
        inversion: Inversion,
        delta_s: torch.Tensor,
        strength: float = 1.0,
        render: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        residual: str = "decode",
        change_threshold: float | None = None,
        change_ramp: tuple[float, float] | None = None,
    ) -> DiffusionEdit:
        """The decoding half of `edit` for an `invert_source` result: one DDIM decoding pass under
        s_source + strength·Δs [T,S] (`render`, `residual`, `change_threshold` and `change_ramp` as
        in `edit`)."""
        check_output_rule(residual, change_threshold, change_ramp)
        styles = self._edit_styles(inversion.s_source, delta_s, strength)
        renders = self._check_render(render, styles)
        return self._decode(inversion, styles, renders, residual, change_threshold, change_ramp)

    def _check_source(self, x0, s_source, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One image [1, 3, H, W] and its style code [1, S], checked for `what` (the caller's name)."""
        x0 = self._check_image(x0)
        if x0.shape[0] != 1:
            raise InputError(f"{what} takes one image [1, 3, H, W], got a batch of {x0.shape[0]}")
        s_source = self._check_style(s_source, "s_source")
        if s_source.shape[0] != 1:
            raise InputError(f"s_source must be [1, {self.style_dim}], got {tuple(s_source.shape)}")
        return x0, s_source

    def _edit_styles(self, s_source, delta_s, strength) -> torch.Tensor:
        """[s_source, s_source + strength·Δs_1, ...]: the codes one decoding pass decodes."""
        delta_s = self._check_style(delta_s, "delta_s")
        if not math.isfinite(float(strength)):
            raise InputError(f"strength must be a finite number, got {strength!r}")
        return torch.cat([s_source, s_source + float(strength) * delta_s])

    def _invert(
        self, x0, s_source, steps, refine, refine_last, preserve_details, render_source, depth
    ) -> Inversion:
        n_steps = _depth_steps(steps, depth)
        refine_last = None if refine_last is None else min(refine_last, n_steps)
        # A rendering-conditioned model inverts the residual the generator misses, scaled.
        target = x0 if render_source is None else (x0 - render_source) * self.residual_scale
        inverted = ddim_invert(
            self.denoiser,
            self.scheduler_config,
            target,
            s_source,
            steps,
            refine,
            refine_last,
            preserve_details,
            render=render_source,
            depth=depth,
        )
        x_T = inverted[-1] if preserve_details else inverted
        trajectory = inverted if preserve_details else None
        return Inversion(x0, s_source, x_T, trajectory, render_source, steps, depth)

    def _decode(
        self, inversion: Inversion, styles, renders, residual, change_threshold, change_ramp=None
    ) -> DiffusionEdit:
        """Decode `inversion` under styles [1+T,S] (row 0 the source's own code) -> reconstruction, edits."""
        out = ddim_sample(
            self.denoiser,
            self.scheduler_config,
            inversion.x_T.expand(styles.shape[0], -1, -1, -1),
            styles,
            inversion.steps,
            trajectory=inversion.trajectory,
            render=renders,
            depth=inversion.depth,
        )
        if renders is None:
            out = out.clamp(-1, 1)
            return DiffusionEdit(reconstruction=out[:1], edits=out[1:])
        image = inversion.image
        out = out / self.residual_scale
        if residual == "shift":
            # The input's residual x0 − R(s) plus the UNet's change of it: D(s') − D(s), same x_T.
            out = renders + (image - renders[:1]) + (out - out[:1])
        else:
            out = renders + out
        out = apply_change_rule(image, out, renders[:1], renders, change_threshold, change_ramp)
        out = out.clamp(-1, 1)
        return DiffusionEdit(reconstruction=out[:1], edits=out[1:])


def check_output_rule(residual: str, change_threshold, change_ramp=None) -> None:
    if residual not in RESIDUAL_RULES:
        raise InputError(f"residual must be one of {', '.join(RESIDUAL_RULES)}, got {residual!r}")
    if change_threshold is not None and not _non_negative(change_threshold):
        raise InputError(f"change_threshold must be a number >= 0 or None, got {change_threshold!r}")
    if change_ramp is not None:
        if change_threshold is not None:
            raise InputError(
                f"pass change_threshold ({change_threshold!r}) or change_ramp ({change_ramp!r}), not both:"
                " the ramp (lo, hi) replaces the threshold (lo = hi is the threshold lo)"
            )
        if not (
            isinstance(change_ramp, tuple | list)
            and len(change_ramp) == 2
            and all(_non_negative(v) for v in change_ramp)
            and change_ramp[0] <= change_ramp[1]
        ):
            raise InputError(
                f"change_ramp must be a pair (lo, hi) of numbers with 0 <= lo <= hi, or None, got {change_ramp!r}"
            )


def _non_negative(value) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


RESIDUAL_RULES = ("decode", "shift")


def rendering_change(render_source: torch.Tensor, renders: torch.Tensor) -> torch.Tensor:
    """How much an edit changes the generator's rendering, per pixel: [N, 1, H, W] for renders
    [N, C, H, W] against render_source [1, C, H, W], |R(s') − R(s)| largest over channels and
    averaged over 3x3 neighbours. Averaging first drops isolated pixels the generator redraws
    slightly everywhere (its edits' leakage) and keeps the edited regions whole."""
    change = (renders - render_source).abs().amax(1, keepdim=True)
    return torch.nn.functional.avg_pool2d(change, 3, stride=1, padding=1, count_include_pad=False)


def changed_pixels(render_source: torch.Tensor, renders: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where an edit changes the generator's rendering: bool [N, 1, H, W], true where
    `rendering_change` exceeds `threshold`."""
    return rendering_change(render_source, renders) > threshold


def change_weights(render_source: torch.Tensor, renders: torch.Tensor, ramp) -> torch.Tensor:
    """The soft change mask: float [N, 1, H, W] in [0, 1], `rendering_change` mapped linearly from
    0 at ramp[0] (and below) to 1 at ramp[1] (and above); ramp[0] = ramp[1] is `changed_pixels` at
    that threshold, as 0 / 1."""
    lo, hi = float(ramp[0]), float(ramp[1])
    change = rendering_change(render_source, renders)
    if hi <= lo:
        return (change > lo).to(change.dtype)
    return ((change - lo) / (hi - lo)).clamp(0, 1)


def apply_change_rule(
    image: torch.Tensor,
    out: torch.Tensor,
    render_source: torch.Tensor,
    renders: torch.Tensor,
    change_threshold: float | None = None,
    change_ramp=None,
) -> torch.Tensor:
    """`out` [N, C, H, W] where the edit changes the rendering, the input `image` [1, C, H, W] where
    it does not: with `change_threshold`, the input wherever `changed_pixels` is false; with
    `change_ramp`, image + w·(out − image), w = `change_weights`; with neither, `out` as it is."""
    if change_ramp is not None:
        weight = change_weights(render_source, renders, change_ramp)
        return image + weight * (out - image)
    if change_threshold is not None:
        return torch.where(changed_pixels(render_source, renders, change_threshold), out, image)
    return out
