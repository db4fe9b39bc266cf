"""StyleConditionedUNet: the DeltaEdit-D denoiser, a diffusers `UNet2DModel` conditioned on a style code s.

The flat StyleGAN style code s `[B, S]` is standardised with per-channel statistics stored as buffers
(S channels have very different scales), projected by a small MLP to the time-embedding width and
fed to the UNet as an `"identity"` class embedding, i.e. *added to the time embedding*. With
`resnet_time_scale_shift="scale_shift"` every residual block turns that embedding into a per-channel
scale and shift (AdaGN), so s — and therefore s + Δs from the Delta Mapper — steers every block.

`patch_size > 1` folds p×p pixel patches into channels (pixel-unshuffle) before the UNet and unfolds
them after it: the network runs at 1/p of the resolution, which is what makes the toy model fast on
CPU without giving up full-resolution output.

Presets (keyword dicts for the constructor; the caller adds `style_dim`):
- `TOY_CONFIG`: 64 px, patch 2 (the UNet runs at 32-16-8-4 px), widths (16, 32, 64, 128), attention
  only in the middle block (4 px), a 256-wide time/style embedding: 3.3M parameters (13.3 MB fp32),
  0.25 GFLOP per evaluation — sized so a 50 + 50-step 64 px edit takes about 3 s on two CPU cores.
- `FFHQ_CONFIG`: 256 px, the DDPM CelebA-HQ-256 layout (widths 128-128-256-256-512-512, two residual
  blocks per level, attention at 16 px): about 115M parameters + the style MLP.
- `StyleConditionedUNet.tiny(style_dim)`: a 16 px model for tests (weights from the torch seed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ..errors import InputError

TOY_CONFIG: dict = {
    "sample_size": 64,
    "patch_size": 2,
    "block_out_channels": (16, 32, 64, 128),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 8,
    "time_embedding_dim": 256,
}

FFHQ_CONFIG: dict = {
    "sample_size": 256,
    "patch_size": 1,
    "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": (
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "attention_head_dim": 64,
    "norm_num_groups": 32,
}

PRESETS = {"toy": TOY_CONFIG, "ffhq": FFHQ_CONFIG}


class StyleConditionedUNet(ModelMixin, ConfigMixin):
    """Predicts the noise ε of a noisy image `x_t` at timestep `t` given the style code `s`."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        style_dim: int,
        sample_size: int = 64,
        in_channels: int = 3,
        patch_size: int = 1,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        time_embedding_dim: int | None = None,
        style_hidden_dim: int | None = None,
        dropout: float = 0.0,
        render_channels: int = 0,
        time_scale_shift: str = "scale_shift",
        unet_extra: dict | None = None,
        residual_scale: float = 1.0,
    ):
        """`render_channels`: channels of a conditioning image (the generator's rendering R(s) of the
        same style code) concatenated to the noisy sample at the input; 0 for none. `time_scale_shift`:
        diffusers' `resnet_time_scale_shift` ("scale_shift" is AdaGN; "default" adds the embedding,
        as public DDPMs were trained). `unet_extra`: further `UNet2DModel` keywords (e.g. `norm_eps`,
        `freq_shift`), so a public model's exact architecture can be rebuilt and fine-tuned.
        `residual_scale` (a rendering-conditioned model): the diffused data is
        residual_scale · (x0 − R(s)), so a residual much smaller than the noise (the toy's RMS is
        about 0.1) is diffused at about unit scale; samplers divide it out again."""
        super().__init__()
        if sample_size % patch_size:
            raise InputError(f"sample_size {sample_size} is not a multiple of patch_size {patch_size}")
        # Width of the time (+ style) embedding: diffusers' default 4x the first block unless given.
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.unet = UNet2DModel(
            sample_size=sample_size // patch_size,
            in_channels=(in_channels + render_channels) * patch_size**2,
            out_channels=in_channels * patch_size**2,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
            time_embedding_dim=time_embed_dim,
            resnet_time_scale_shift=time_scale_shift,
            # "identity": the projected style is added to the time embedding as-is.
            class_embed_type="identity",
            **(unet_extra or {}),
        )
        hidden = style_hidden_dim or time_embed_dim
        self.style_proj = nn.Sequential(
            nn.Linear(style_dim, hidden), nn.SiLU(), nn.Linear(hidden, time_embed_dim)
        )
        # Per-channel statistics of s over the training set (set by training; saved with the weights).
        self.register_buffer("style_mean", torch.zeros(style_dim))
        self.register_buffer("style_std", torch.ones(style_dim))

    @classmethod
    def tiny(cls, style_dim: int = 16, sample_size: int = 16, **overrides) -> StyleConditionedUNet:
        """A small model for tests (weights from the current torch seed); `overrides` are further
        constructor arguments (e.g. `render_channels=3`)."""
        kwargs = dict(
            style_dim=style_dim,
            sample_size=sample_size,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            attention_head_dim=8,
            norm_num_groups=4,
        )
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_preset(cls, name: str, style_dim: int, **overrides) -> StyleConditionedUNet:
        if name not in PRESETS:
            raise InputError(f"unknown UNet preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(style_dim=style_dim, **{**PRESETS[name], **overrides})

    @torch.no_grad()
    def set_style_stats(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        """Store the training set's per-channel mean/std of s (constant channels get std = 1)."""
        std = torch.where(std > eps, std, torch.ones_like(std))
        self.style_mean.copy_(mean.to(self.style_mean))
        self.style_std.copy_(std.to(self.style_std))

    def _apply(self, fn, recurse=True):
        # The style statistics stay float32 through .to(dtype)/.half(): in bf16 a channel's mean is
        # rounded by more than the Δs of a typical edit, so s − mean would lose the edit.
        stats = {name: getattr(self, name) for name in ("style_mean", "style_std")}
        super()._apply(fn, recurse)
        for name, before in stats.items():
            after = getattr(self, name)
            if after.dtype != torch.float32:  # from the float32 copy where there was one
                source = before if before.dtype == torch.float32 else after
                setattr(self, name, source.to(after.device, torch.float32))
        return self

    def embed_style(self, style: torch.Tensor) -> torch.Tensor:
        z = (style.float() - self.style_mean) / self.style_std
        return self.style_proj(z.to(self.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        style: torch.Tensor,
        render: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`sample` [B, C, H, W], `timestep` scalar or [B], `style` [B, S] and, for a model with
        `render_channels`, `render` [B, render_channels, H, W] -> predicted noise [B, C, H, W]."""
        if style.ndim != 2 or style.shape[1] != self.config.style_dim:
            raise InputError(f"style code must be [B, {self.config.style_dim}], got {tuple(style.shape)}")
        if style.shape[0] != sample.shape[0]:
            raise InputError(f"batch mismatch: {sample.shape[0]} images but {style.shape[0]} style codes")
        extra = self.config.render_channels
        if extra:
            want = (sample.shape[0], extra, *sample.shape[2:])
            if render is None or tuple(render.shape) != want:
                got = None if render is None else tuple(render.shape)
                raise InputError(f"this model needs the generator's rendering {want} as `render`, got {got}")
        elif render is not None:
            raise InputError("this model takes no `render` input (render_channels is 0)")
        return self.denoise(sample, timestep, style, render)

    def denoise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        style: torch.Tensor,
        render: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` without its input checks: pure tensor code, so it can be traced (`TracedUNet`)."""
        if render is not None:
            sample = torch.cat([sample, render.to(sample.dtype)], dim=1)
        p = self.config.patch_size
        x = F.pixel_unshuffle(sample, p) if p > 1 else sample
        out = self.unet(x, timestep, class_labels=self.embed_style(style)).sample
        return F.pixel_shuffle(out, p) if p > 1 else out
