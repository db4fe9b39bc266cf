"""Deterministic DDIM (η = 0) inversion and sampling with a style-conditioned UNet, on tensors.

Equations cite Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12 with
σ_t = 0:  x_{t-1} = √ᾱ_{t-1} · (x_t − √(1−ᾱ_t) ε_θ(x_t)) / √ᾱ_t + √(1−ᾱ_{t-1}) · ε_θ(x_t).
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from .. import progress
from ..errors import InputError
from ..nn.style_unet import StyleConditionedUNet

log = logging.getLogger(__name__)

# The training noise schedule (DDPM's linear betas) with the settings deterministic inversion needs:
# no clipping of the predicted x0 (it would break invertibility), ᾱ = 1 beyond both ends of the chain.
DEFAULT_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _config_dict(scheduler_config) -> dict:
    """Accept a dict, a diffusers FrozenDict or a scheduler object."""
    if hasattr(scheduler_config, "config"):
        scheduler_config = scheduler_config.config
    if scheduler_config is None:
        return dict(DEFAULT_SCHEDULER_CONFIG)
    return {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}


def make_scheduler(cls, scheduler_config):
    """Build a diffusers scheduler of class `cls`, passing only the config keys it knows."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in _config_dict(scheduler_config).items() if k in accepted})


def _check_steps(steps: int, config: dict) -> None:
    limit = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or not 1 <= steps <= limit:
        raise InputError(f"steps must be an integer between 1 and {limit}, got {steps!r}")


def _eps(
    unet, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, render: torch.Tensor | None
) -> torch.Tensor:
    # The scheduler maths stays in float32 even when the UNet runs in half precision.
    if render is None:  # the plain call: models without render_channels see exactly what they always did
        return unet(x.to(unet.dtype), t, s.to(unet.device)).float()
    return unet(x.to(unet.dtype), t, s.to(unet.device), render.to(unet.device, unet.dtype)).float()


@torch.no_grad()
def ddim_invert(
    unet: StyleConditionedUNet,
    scheduler_config,
    x0: torch.Tensor,
    s: torch.Tensor,
    steps: int = 50,
    refine: int = 0,
    refine_last: int | None = None,
    return_trajectory: bool = False,
    render: torch.Tensor | None = None,
    depth: float = 1.0,
):
    """Map images x0 [B,3,H,W] in [-1,1] to noise x_T under style codes s [B,S] (deterministic).

    `render` [B,3,H,W]: the conditioning rendering of a model with `render_channels` (then x0 is
    whatever that model diffuses, i.e. the residual image − R(s); `DiffusionBackbone` forms it).

    `refine` > 0 runs that many fixed-point iterations per step so that ε is evaluated at the point
    the sampler will start from; this makes `ddim_sample` a near-exact inverse, at `refine` extra UNet
    calls per refined step. `refine_last` limits it to the last (noisiest) steps, where most of the
    reconstruction error arises (None: every step). With `return_trajectory` the result is the list
    [x0, x_1, ..., x_T]. `depth` < 1 stops after that fraction of the `steps` (the first, least
    noisy ones): x_T is then a partly noised image, to be decoded by `ddim_sample` with the same depth.
    """
    config = _config_dict(scheduler_config)
    _check_steps(steps, config)
    scheduler = make_scheduler(DDIMInverseScheduler, config)
    scheduler.set_timesteps(steps, device=x0.device)
    x = x0.float()
    trajectory = [x]
    timesteps = scheduler.timesteps[: _depth_steps(steps, depth)]
    first_refined = 0 if refine_last is None else len(timesteps) - refine_last
    for i, t in enumerate(progress.steps(timesteps, "DDIM inversion")):
        # 1. ε_θ(x_{t-1}, t, s): the noise predicted at the next, noisier timestep t.
        eps = _eps(unet, x, t, s, render)
        # 2. Eq. 12 solved for x_t (σ_t = 0): x_t = √ᾱ_t · x̂0 + √(1−ᾱ_t) · ε, x̂0 = (x_{t-1} − √(1−ᾱ_{t-1}) ε) / √ᾱ_{t-1}.
        x_next = scheduler.step(eps, t, x).prev_sample
        # 3. Optional fixed point x_t = step(ε_θ(x_t, t, s)): then eq. 12 maps x_t back to x_{t-1} exactly.
        for _ in range(refine if i >= first_refined else 0):
            x_next = scheduler.step(_eps(unet, x_next, t, s, render), t, x).prev_sample
        x = x_next
        trajectory.append(x)
    return trajectory if return_trajectory else x


@torch.no_grad()
def ddim_sample(
    unet: StyleConditionedUNet,
    scheduler_config,
    x_T: torch.Tensor,
    s: torch.Tensor,
    steps: int = 50,
    trajectory: list[torch.Tensor] | None = None,
    render: torch.Tensor | None = None,
    depth: float = 1.0,
) -> torch.Tensor:
    """Decode noise x_T [B,3,H,W] under style codes s [B,S] with DDIM (η = 0) -> x0 [B,3,H,W].

    `render` [B,3,H,W]: the conditioning rendering of a model with `render_channels` (the result is
    then that model's residual; add R(s) for the image, as `DiffusionBackbone` does).

    `trajectory` (from `ddim_invert(..., return_trajectory=True)`, batch 1) turns on direct-inversion
    correction (Ju et al. 2024, "PnP Inversion"): after every step the first row is pulled back onto
    the inversion trajectory and the same offset is added to every row, so a row whose s equals the
    inversion's s reproduces the input exactly and edits keep the input's details.
    """
    config = _config_dict(scheduler_config)
    _check_steps(steps, config)
    scheduler = make_scheduler(DDIMScheduler, config)
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T.float()
    n = _depth_steps(steps, depth)
    timesteps = scheduler.timesteps[steps - n :]  # the last n: from the depth ddim_invert stopped at
    for i, t in enumerate(progress.steps(timesteps, "DDIM sampling")):
        # 1. ε_θ(x_t, t, s).
        eps = _eps(unet, x, t, s, render)
        # 2. Eq. 12 with σ_t = 0: x_{t-1} = √ᾱ_{t-1} · x̂0 + √(1−ᾱ_{t-1}) · ε (the "direction pointing to x_t").
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        # 3. Optional correction towards the inversion trajectory (level steps-1-i of it).
        if trajectory is not None:
            x = x + (trajectory[n - 1 - i].to(x) - x[:1])
    return x


def _depth_steps(steps: int, depth: float) -> int:
    """How many of `steps` DDIM steps a chain of `depth` (0, 1] runs (at least one)."""
    if not (isinstance(depth, int | float) and math.isfinite(depth) and 0 < depth <= 1):
        raise InputError(f"depth must be a number in (0, 1], got {depth!r}")
    return max(1, round(steps * depth))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image of two [B,C,H,W] batches (default range: [-1, 1])."""
    if a.shape != b.shape:
        raise InputError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
