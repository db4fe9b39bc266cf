"""StyleGAN2 generator with rosinality's module and buffer names.

The names (`style`, `input`, `conv1`, `to_rgb1`, `convs`, `to_rgbs`, `noises.noise_i`, every
`conv.modulation`, `conv.blur.kernel`, `upsample.kernel`, `activate.bias`) match the `g_ema` state
dict of `stylegan2-ffhq-config-f.pt`, so the official weights strict-load. The maths follows the
paper (Karras et al. 2020): weight modulation/demodulation, noise injection, skip ToRGB outputs.

Every styled convolution can be driven either from a W+ row (the usual path) or directly from its
style-space vector s = modulation(w); `deltaedit.nn.stylespace` uses the latter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from .ops import fused_leaky_relu, upfirdn2d

# rosinality's width table for config-f (channel_multiplier scales 64 px and up).
_BASE_WIDTHS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    return {
        res: (w if res <= 32 else w * channel_multiplier) for res, w in _BASE_WIDTHS.items() if res <= size
    }


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    """x / rms(x) over dim 1. For [B, L, C] inputs dim 1 is the layer axis (kept: the mapper was trained so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored / lr_mul, scaled at run time."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            # The bias belongs to the output features: the last axis, also for [B, L, C] inputs.
            return fused_leaky_relu(out, bias, bias_axis=-1)
        return F.linear(x, self.weight * self.scale, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = 2**0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale, bias_axis=1)


class Blur(nn.Module):
    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        # After zero-insertion upsampling the filter must also restore the signal's gain: factor**2.
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style vector (then demodulated)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.padding = kernel_size // 2
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        # Bias 1: an untrained layer starts as an identity modulation.
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward_s(x, self.modulation(w))

    def forward_s(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The convolution given the style-space vector s [B, in_channel] directly."""
        if x.shape[0] > 1:
            return self._forward_s_batched(x, s)
        batch, in_channel, height, width = x.shape
        weight = self.scale * self.weight * s.view(batch, 1, in_channel, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(
                batch, self.out_channel, 1, 1, 1
            )
        k = self.kernel_size
        # One grouped convolution runs every sample with its own weights.
        x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, *out.shape[2:])
            return self.blur(out)
        out = F.conv2d(
            x, weight.reshape(batch * self.out_channel, in_channel, k, k), padding=self.padding, groups=batch
        )
        return out.view(batch, self.out_channel, *out.shape[2:])

    def _forward_s_batched(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The same maths with the styles applied to activations instead of weights.

        Scaling the input channels by s, convolving with the shared weight, then scaling each
        output channel by its demodulation factor equals the per-sample modulated convolution,
        but runs as one ordinary convolution instead of a grouped one: several times faster for
        batches (training, several targets). Equal to the grouped path up to float rounding.
        """
        batch = x.shape[0]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        x = x * s.view(batch, -1, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)  # [B, out]
            out = out * demod.view(batch, self.out_channel, 1, 1)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}"


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_s(x, self.conv.modulation(w), noise)

    def forward_s(self, x: torch.Tensor, s: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv.forward_s(x, s), noise))


class ToRGB(nn.Module):
    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 synthesis + mapping network. Images come out in [-1, 1] (roughly; not clamped)."""

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channels: dict[int, int] | None = None,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        styled_rgb: bool = True,
    ):
        super().__init__()
        log_size = int(math.log2(size)) if size >= 4 else 0
        if size < 4 or 2**log_size != size:
            raise InputError(f"generator size must be a power of two >= 4, got {size}")
        resolutions = [2**i for i in range(2, log_size + 1)]
        if channels is None:
            if size > 1024:
                raise InputError(f"no default width table above 1024 px; pass `channels` for size {size}")
            channels = default_channels(size, channel_multiplier)
        channels = {int(r): int(c) for r, c in channels.items()}
        missing = [r for r in resolutions if r not in channels]
        if missing:
            raise InputError(
                f"`channels` lacks widths for resolutions {missing}; give one per power of two 4..{size}"
            )

        self.size = size
        self.style_dim = style_dim
        self.log_size = log_size
        self.channels = {r: channels[r] for r in resolutions}
        blur_kernel = tuple(blur_kernel)
        self.num_layers = (log_size - 2) * 2 + 1  # styled convolutions = noise inputs
        self.n_latent = log_size * 2 - 2  # W+ rows

        self.style = nn.Sequential(
            PixelNorm(),
            *[
                EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu")
                for _ in range(n_mlp)
            ],
        )
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for res in resolutions[1:]:
            out_channel = self.channels[res]
            self.convs.append(
                StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel)
            )
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        if not styled_rgb:
            # Edits live in S = the conv styles only (as FFHQ's 6048 channels); ToRGB styles follow
            # W+ and cannot be edited. A small generator would put colour there, so here they are
            # constant (zero, frozen modulation weight: style = bias) and colour goes through S.
            for to_rgb in (self.to_rgb1, *self.to_rgbs):
                to_rgb.conv.modulation.weight.data.zero_()
                to_rgb.conv.modulation.weight.requires_grad_(False)

    @classmethod
    def from_config(cls, config) -> Generator:
        """From a `deltaedit.config.GeneratorConfig`."""
        return cls(
            size=config.size,
            style_dim=config.style_dim,
            n_mlp=config.n_mlp,
            channel_multiplier=config.channel_multiplier,
            channels=config.channels,
            blur_kernel=config.blur_kernel,
            lr_mlp=config.lr_mlp,
            styled_rgb=config.styled_rgb,
        )

    # ---- layer bookkeeping shared with deltaedit.nn.stylespace ---------------------------------

    def styled_convs(self) -> list[StyledConv]:
        """The styled convolutions in S-space order: conv1, then convs[0..]."""
        return [self.conv1, *self.convs]

    @staticmethod
    def conv_w_index(layer: int) -> int:
        """W+ row feeding styled convolution `layer` (conv1 = 0, convs[k] = k + 1)."""
        return layer

    @staticmethod
    def to_rgb_w_index(j: int) -> int:
        """W+ row feeding ToRGB `j` (to_rgb1 = 0 reads row 1, to_rgbs[k] = k + 1 reads row 2k + 3)."""
        return 1 if j == 0 else 2 * j + 1

    def conv_resolutions(self) -> list[int]:
        """Output resolution of each styled convolution."""
        return [4] + [2 ** (k // 2 + 3) for k in range(len(self.convs))]

    def fixed_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    # ---- latents ------------------------------------------------------------------------------

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int | torch.Generator | None = 0) -> torch.Tensor:
        """Mean w of `n` random z ([1, style_dim]); seeded so truncation is reproducible."""
        z = torch.randn(n, self.style_dim, generator=_torch_generator(seed)).to(self.input.input.device)
        return self.mapping(z).mean(0, keepdim=True)

    def sample_w_plus(
        self,
        n: int,
        truncation: float = 0.7,
        seed: int | torch.Generator | None = None,
        mean_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """n random W+ codes [n, n_latent, style_dim]: z -> w, truncated toward the mean w, broadcast.

        z is drawn on the CPU so a seed gives the same codes on every device.
        """
        device = self.input.input.device
        z = torch.randn(n, self.style_dim, generator=_torch_generator(seed)).to(device)
        w = self.mapping(z)
        if truncation < 1:
            if mean_latent is None:
                mean_latent = self.mean_latent()
            w = mean_latent + truncation * (w - mean_latent)
        return w.unsqueeze(1).repeat(1, self.n_latent, 1)

    # ---- synthesis ----------------------------------------------------------------------------

    def _noise_list(self, noise, batch: int) -> list[torch.Tensor | None]:
        if isinstance(noise, str):
            if noise == "fixed":
                return self.fixed_noise()
            if noise == "random":
                return [None] * self.num_layers  # NoiseInjection draws per sample
            raise InputError(f"noise must be 'fixed', 'random' or a list of tensors, got {noise!r}")
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise InputError(f"expected {self.num_layers} noise tensors, got {len(noise)}")
        return noise

    def check_w_plus(self, w_plus: torch.Tensor) -> None:
        expected = (self.n_latent, self.style_dim)
        if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != expected:
            raise InputError(
                f"W+ must have shape [batch, {expected[0]}, {expected[1]}] for this generator, got {tuple(w_plus.shape)}"
            )

    def synthesize(
        self, w_plus: torch.Tensor, conv_styles: Sequence[torch.Tensor] | None = None, noise="fixed"
    ) -> torch.Tensor:
        """Image from W+; `conv_styles` (one s per styled conv) replaces the convs' modulation of W+.

        ToRGB layers always take the modulation of `w_plus` (as the authors decode S codes).
        """
        self.check_w_plus(w_plus)
        batch = w_plus.shape[0]
        noise = self._noise_list(noise, batch)
        convs = self.styled_convs()
        if conv_styles is None:
            conv_styles = [
                conv.conv.modulation(w_plus[:, self.conv_w_index(i)]) for i, conv in enumerate(convs)
            ]
        elif len(conv_styles) != len(convs):
            raise InputError(f"expected {len(convs)} style vectors, got {len(conv_styles)}")

        out = self.input(batch)
        out = self.conv1.forward_s(out, conv_styles[0], noise[0])
        skip = self.to_rgb1(out, w_plus[:, self.to_rgb_w_index(0)])
        for j, to_rgb in enumerate(self.to_rgbs, start=1):
            a, b = 2 * j - 1, 2 * j  # styled-conv (= noise) indices of this resolution
            out = convs[a].forward_s(out, conv_styles[a], noise[a])
            out = convs[b].forward_s(out, conv_styles[b], noise[b])
            skip = to_rgb(out, w_plus[:, self.to_rgb_w_index(j)], skip)
        return skip

    def synthesis(self, w_plus: torch.Tensor, noise="fixed") -> torch.Tensor:
        """W+ [B, n_latent, style_dim] -> image [B, 3, size, size]. noise: 'fixed' buffers, 'random', or a list."""
        return self.synthesize(w_plus, noise=noise)

    def forward(self, w_plus: torch.Tensor, noise="fixed") -> torch.Tensor:
        """Same as `synthesis`; differentiable, for training (pass noise='random' for fresh noise)."""
        return self.synthesize(w_plus, noise=noise)


def _torch_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))
