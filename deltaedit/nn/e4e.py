"""e4e, the encoder that maps an aligned face photo to StyleGAN2 W+ (Tov et al. 2021).

Module names follow omertov/encoder4editing `Encoder4Editing` (`input_layer`, `body.N`,
`styles.N`, `latlayer1/2`) so the `encoder.*` tensors of `e4e_ffhq_encode.pt` load strictly at the
FFHQ config (IR-SE-50, 256 px input, 18 latents of 512).

The network: an IR-SE ResNet body in four stride-2 stages; the last three stages' outputs form a
small feature pyramid (c3 -> coarse styles, c3 + lateral c2 -> medium, + lateral c1 -> fine). One
`GradualStyleBlock` per latent reduces its pyramid level to a vector. At inference all blocks are
used: w0 comes from block 0 and latent i is w0 + delta_i. The result is an offset from
`latent_avg`: `encode` adds it, as e4e's pSp wrapper does with `start_from_latent_avg`.

Tiny domains (`num_layers == 0` with explicit `widths`) get the same structure with
`LIGHT_UNITS` units per stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan2 import EqualLinear

# Units per body stage of e4e's IR-SE backbones (helpers.get_blocks), and their widths.
IR_SE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
IR_SE_WIDTHS = (64, 128, 256, 512)
LIGHT_UNITS = 2
# e4e's fixed split of W+ into coarse (0-2: 4-8 px), medium (3-6: 16-32 px) and fine latents.
COARSE_END, MIDDLE_END = 3, 7


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from the globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """ArcFace's improved residual unit (BN-conv-PReLU-conv-BN, optional SE); stride on conv 2."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = True):
        super().__init__()
        if in_channel == depth:
            # A 1x1 max-pool is just strided subsampling; kept as e4e has it (no parameters).
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """Halve a [C, spatial, spatial] map down to 1x1 with stride-2 convs, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        num_pools = int(math.log2(spatial))
        layers: list[nn.Module] = []
        for i in range(num_pools):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Bilinear (align_corners=True) to y's size, as e4e: robust to odd sizes.
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """Image [B, 3, input_size, input_size] in [-1, 1] -> W+ offsets [B, n_latent, style_dim]."""

    def __init__(self, config, n_latent: int, style_dim: int):
        super().__init__()
        if config.mode not in ("ir", "ir_se"):
            raise ValueError(f"encoder mode must be 'ir' or 'ir_se', got {config.mode!r}")
        widths, units = _body_layout(config.num_layers, config.widths)
        if config.input_size % 16:
            raise ValueError(f"encoder input_size must be a multiple of 16, got {config.input_size}")
        self.input_size = config.input_size
        self.n_latent = n_latent
        self.style_dim = style_dim

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])
        )
        body, in_channel, ends = [], widths[0], []
        for depth, count in zip(widths, units):
            for unit in range(count):
                body.append(BottleneckIR(in_channel, depth, 2 if unit == 0 else 1, config.mode == "ir_se"))
                in_channel = depth
            ends.append(len(body) - 1)
        self.body = nn.Sequential(*body)
        # Pyramid taps: ends of stages 2, 3, 4 (body indices 6, 20, 23 for IR-SE-50, as in e4e).
        self._taps = tuple(ends[1:])

        # Style blocks read the pyramid at input/16 (coarse), /8 (medium), /4 (fine).
        top = widths[-1]
        self.styles = nn.ModuleList()
        for i in range(n_latent):
            spatial = self.input_size // (16 if i < COARSE_END else 8 if i < MIDDLE_END else 4)
            self.styles.append(GradualStyleBlock(top, style_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], top, 1)
        self.latlayer2 = nn.Conv2d(widths[1], top, 1)

    @classmethod
    def from_config(cls, config, n_latent: int, style_dim: int) -> Encoder4Editing:
        return cls(config, n_latent, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (3, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"e4e expects images [B, {', '.join(map(str, expected))}]; got {tuple(x.shape)}")
        x = self.input_layer(x)
        feats = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                feats.append(x)
        c1, c2, c3 = feats

        # e4e's Inference stage: w0 for every latent, plus a delta for latents 1..n-1.
        w0 = self.styles[0](c3)
        latents = [w0]
        features = c3
        for i in range(1, self.n_latent):
            if i == COARSE_END:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_END:
                features = _upsample_add(p2, self.latlayer2(c1))
            latents.append(w0 + self.styles[i](features))
        return torch.stack(latents, dim=1)


def _body_layout(num_layers: int, widths: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if num_layers in IR_SE_UNITS:
        units = IR_SE_UNITS[num_layers]
        widths = tuple(widths) if widths else IR_SE_WIDTHS
    elif num_layers == 0 and widths:
        widths = tuple(widths)
        units = (LIGHT_UNITS,) * len(widths)
    else:
        raise ValueError(
            f"encoder num_layers must be one of {sorted(IR_SE_UNITS)}, or 0 with explicit widths;"
            f" got {num_layers} with widths {widths}"
        )
    if len(widths) != 4:
        raise ValueError(f"the encoder body has 4 stages; got widths {widths}")
    return widths, units


def encode(encoder: Encoder4Editing, latent_avg: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """W+ [B, n_latent, D] = encoder offsets + latent_avg ([n_latent, D], [1, n_latent, D], [D] or [1, D])."""
    offsets = encoder(images)
    n_latent, style_dim = offsets.shape[1:]
    avg = latent_avg.to(offsets)
    if avg.numel() == style_dim:  # one w (e.g. a generator's mean_latent) for every layer
        avg = avg.reshape(style_dim).expand(n_latent, style_dim)
    return offsets + avg.reshape(1, n_latent, style_dim)
