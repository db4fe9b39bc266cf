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

import inspect
import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from .. import progress
from ..errors import InputError, WeightsError
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


class _Denoise(torch.nn.Module):
    def __init__(self, unet: StyleConditionedUNet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, style, *render):
        # `render` is traced only where the model takes one: (x, t, s) or (x, t, s, R(s)).
        return self.unet.denoise(sample, timestep, style, *render)


class _GraphPerShape:
    """The UNet run as one prepared graph per input shape (the last MAX_GRAPHS shapes are kept).

    Subclasses say how a graph is built and run. Malformed inputs go to the eager module, whose
    checks raise the right error; if building a graph fails, calls of that shape run eagerly.
    """

    MAX_GRAPHS = 4  # input shapes kept (inversion batch 1, decoding 1 + number of targets)
    ACTION = "preparing"  # for the warning when building fails

    def __init__(self, unet: StyleConditionedUNet):
        self.unet = unet
        self._graphs: OrderedDict[tuple, object | None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def _build(self, inputs: tuple[torch.Tensor, ...]):
        """A graph for `inputs` = (x, t, s) or, for a model with render_channels, (x, t, s, render)."""
        raise NotImplementedError

    def _run(self, graph, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _graph(self, inputs: tuple[torch.Tensor, ...]):
        x, t, s = inputs[:3]
        key = (tuple(x.shape), x.dtype, tuple(s.shape), s.dtype, tuple(t.shape), t.dtype)
        key += tuple(item for r in inputs[3:] for item in (tuple(r.shape), r.dtype))  # the rendering
        with self._lock:
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._build(inputs)
                except Exception as exc:  # noqa: BLE001 - any problem building it: stay on the eager module
                    log.warning("%s the UNet failed (%s); running it eagerly", self.ACTION, exc)
                    self._graphs[key] = None
                while len(self._graphs) > self.MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return self._graphs[key]

    def _well_formed(self, x: torch.Tensor, s: torch.Tensor, render: torch.Tensor | None) -> bool:
        config = self.unet.config
        if x.ndim != 4 or s.ndim != 2 or s.shape[1] != config.style_dim or s.shape[0] != x.shape[0]:
            return False
        if not config.render_channels:
            return render is None
        want = (x.shape[0], config.render_channels, *x.shape[2:])
        return render is not None and tuple(render.shape) == want and render.dtype == x.dtype

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, t, s: torch.Tensor, render: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self._well_formed(x, s, render):
            return self.unet(x, t, s, render)
        t = torch.as_tensor(t, device=x.device)
        inputs = (x, t, s) if render is None else (x, t, s, render)
        graph = self._graph(inputs)
        return self.unet(x, t, s, render) if graph is None else self._run(graph, inputs)


class TracedUNet(_GraphPerShape):
    """The UNet for CPU inference, traced and frozen with TorchScript: one graph per input shape.

    On two CPU cores about half of a toy UNet call (64 px, batch 1) is Python: module calls and
    diffusers' per-block checks. A frozen trace runs the same aten ops from C++ (22 -> 11 ms per
    call), with outputs equal to eager up to float rounding. torch.compile does the same but
    compiles for ~100 s on this CPU; torch.jit traces in 0.5 s. The weights are baked into each
    graph, so this is for a model that no longer changes (an inference backbone, not training).
    """

    ACTION = "tracing"

    def _build(self, inputs):
        with warnings.catch_warnings():  # torch >= 2.10 marks torch.jit deprecated
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Denoise(self.unet).eval(), inputs, check_trace=False)
            return torch.jit.freeze(traced)

    def _run(self, graph, inputs):
        return graph(*inputs)


class CudaGraphUNet(_GraphPerShape):
    """The UNet on a GPU as captured CUDA graphs: one graph per input shape, replayed each step.

    A UNet call is a few hundred small kernels; at batch 1 launching them one by one from Python can
    take longer than running them. A captured graph launches them all at once. Inputs are copied into
    the graph's own buffers and the output is copied out, so a call behaves like the module. Each graph
    holds its activations while cached (a few hundred MB at 256 px).
    """

    ACTION = "capturing a CUDA graph of"
    WARMUP_CALLS = 2  # eager calls on a side stream before capture (cuDNN picks its algorithms)

    def __init__(self, unet: StyleConditionedUNet):
        super().__init__(unet)
        self._replay_lock = threading.Lock()  # one replay at a time: the graph's buffers are shared

    def _build(self, inputs):
        x = inputs[0]
        inputs = tuple(a.clone() for a in inputs)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.unet.denoise(*inputs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another request's GPU work in another thread (the app runs two) may go on
        # during the capture; only this thread's calls are checked.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.unet.denoise(*inputs)
        return graph, inputs, output

    def _run(self, captured, inputs):
        graph, buffers, output = captured
        # The lock orders the host calls; the copies, replay and clone are queued on the current
        # stream, which every caller shares (the default one), so the next caller's copy into the
        # buffers runs on the GPU after this clone.
        with self._replay_lock:
            for buffer, value in zip(buffers, inputs):
                buffer.copy_(value)
            graph.replay()
            return output.clone()


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
        """
        _check_output_rule(residual, change_threshold)
        x0 = self._check_image(x0)
        if x0.shape[0] != 1:
            raise InputError(f"edit takes one image [1, 3, H, W], got a batch of {x0.shape[0]}")
        s_source = self._check_style(s_source, "s_source")
        if s_source.shape[0] != 1:
            raise InputError(f"s_source must be [1, {self.style_dim}], got {tuple(s_source.shape)}")
        delta_s = self._check_style(delta_s, "delta_s")
        if not math.isfinite(float(strength)):
            raise InputError(f"strength must be a finite number, got {strength!r}")
        # Row 0 decodes the unedited code (the reconstruction), rows 1..T the edits, all from one x_T.
        styles = torch.cat([s_source, s_source + float(strength) * delta_s])
        renders = self._check_render(render, styles)
        inversion = self._invert(
            x0,
            s_source,
            steps,
            refine,
            refine_last,
            preserve_details,
            None if renders is None else renders[:1],
            depth,
        )
        return self._decode(inversion, styles, renders, residual, change_threshold)

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
        x0 = self._check_image(x0)
        if x0.shape[0] != 1:
            raise InputError(f"invert_source takes one image [1, 3, H, W], got a batch of {x0.shape[0]}")
        s_source = self._check_style(s_source, "s_source")
        if s_source.shape[0] != 1:
            raise InputError(f"s_source must be [1, {self.style_dim}], got {tuple(s_source.shape)}")
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
    ) -> DiffusionEdit:
        """The decoding half of `edit` for an `invert_source` result: one DDIM decoding pass under
        s_source + strength·Δs [T,S] (`render`, `residual` and `change_threshold` as in `edit`)."""
        _check_output_rule(residual, change_threshold)
        delta_s = self._check_style(delta_s, "delta_s")
        if not math.isfinite(float(strength)):
            raise InputError(f"strength must be a finite number, got {strength!r}")
        styles = torch.cat([inversion.s_source, inversion.s_source + float(strength) * delta_s])
        renders = self._check_render(render, styles)
        return self._decode(inversion, styles, renders, residual, change_threshold)

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

    def _decode(self, inversion: Inversion, styles, renders, residual, change_threshold) -> DiffusionEdit:
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
        if change_threshold is not None:
            keep = changed_pixels(renders[:1], renders, change_threshold)
            out = torch.where(keep, out, image)
        out = out.clamp(-1, 1)
        return DiffusionEdit(reconstruction=out[:1], edits=out[1:])


def _check_output_rule(residual: str, change_threshold) -> None:
    if residual not in RESIDUAL_RULES:
        raise InputError(f"residual must be one of {', '.join(RESIDUAL_RULES)}, got {residual!r}")
    if change_threshold is not None and not (
        isinstance(change_threshold, int | float)
        and math.isfinite(change_threshold)
        and change_threshold >= 0
    ):
        raise InputError(f"change_threshold must be a number >= 0 or None, got {change_threshold!r}")


RESIDUAL_RULES = ("decode", "shift")


def changed_pixels(render_source: torch.Tensor, renders: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where an edit changes the generator's rendering: bool [N, 1, H, W] for renders [N, C, H, W]
    against render_source [1, C, H, W], true where |R(s') − R(s)| (largest over channels, averaged
    over 3x3 neighbours) exceeds `threshold`. Averaging first drops isolated pixels the generator
    redraws slightly everywhere (its edits' leakage) and keeps the edited regions whole."""
    change = (renders - render_source).abs().amax(1, keepdim=True)
    change = torch.nn.functional.avg_pool2d(change, 3, stride=1, padding=1, count_include_pad=False)
    return change > threshold
