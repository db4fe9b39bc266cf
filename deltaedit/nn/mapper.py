"""The Delta Mapper: (s, condition) -> Δs, laid out like the official `net_face.pth`.

DeltaEdit (Lyu et al., CVPR 2023, Sec. 3.3; authors' `delta_mapper.py`) splits S into three levels.
Each level has a style module (sm_*), a condition module (cm_*) and a fusion module (fm_*), all
4-layer MLPs of EqualLinear(lr_mul=0.01) + fused leaky ReLU; sm/cm start with PixelNorm.

- coarse / medium levels: styles enter per layer as [B, L, W]; the condition output [B, W] is
  repeated L times and concatenated on the last axis -> [B, L, 2W] -> fusion -> [B, L*W].
- fine level: the remaining styles enter flat [B, F]; concat with the condition output -> [B, 2F].
- generalisation (not in the paper): a coarse or medium level whose layers differ in width, as in
  small generators with tapering channels, is processed flat like the fine level. FFHQ's layout
  has equal widths there, so the official checkpoint's modules are unchanged.

Kept on purpose (the checkpoint was trained with them): PixelNorm on [B, L, W] normalises over
dim 1, the layer axis; the activation bias of those 3-D tensors is added on the last axis.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .stylegan2 import EqualLinear, PixelNorm
from .stylespace import StyleLayout

LEVELS = ("coarse", "medium", "fine")


class Mapper(nn.Module):
    """[PixelNorm] + num_layers x EqualLinear(lr_mul 0.01, fused leaky ReLU); keys `mapping.<i>.*`."""

    def __init__(self, in_channel: int, out_channel: int, norm: bool = True, num_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()] if norm else []
        layers.append(EqualLinear(in_channel, out_channel, lr_mul=0.01, activation="fused_lrelu"))
        layers += [
            EqualLinear(out_channel, out_channel, lr_mul=0.01, activation="fused_lrelu")
            for _ in range(num_layers - 1)
        ]
        self.mapping = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapping(x)


class DeltaMapper(nn.Module):
    def __init__(self, layout: StyleLayout, clip_dim: int = 512):
        super().__init__()
        self.layout = layout
        self.clip_dim = clip_dim
        groups = layout.groups()
        order = [i for level in LEVELS for i in groups[level]]
        if order != list(range(layout.n_layers)):
            raise InputError(
                "the style layout's coarse, medium and fine layers must follow each other in that order"
            )

        # level -> (n_layers, width) for per-layer levels, (1, total) for flattened ones
        self.shapes: dict[str, tuple[int, int]] = {}
        self.flat_levels: set[str] = set()
        for level in LEVELS:
            widths = [layout.widths[i] for i in groups[level]]
            if not widths:
                continue
            if level == "fine" or len(set(widths)) > 1:
                self.shapes[level] = (1, sum(widths))
                self.flat_levels.add(level)
            else:
                self.shapes[level] = (len(widths), widths[0])

        for level, (_, width) in self.shapes.items():
            setattr(self, f"sm_{level}", Mapper(width, width))
            setattr(self, f"cm_{level}", Mapper(2 * clip_dim, width))
            setattr(self, f"fm_{level}", Mapper(2 * width, width, norm=False))

    def forward(self, s_flat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """s_flat [B, S], cond [B, 2*clip_dim] = concat(i/|i|, Δ/|Δ|) -> Δs [B, S]."""
        self.layout.check_flat(s_flat)
        if cond.ndim != 2 or cond.shape[1] != 2 * self.clip_dim or cond.shape[0] != s_flat.shape[0]:
            raise InputError(
                f"condition must have shape [{s_flat.shape[0]}, {2 * self.clip_dim}], got {tuple(cond.shape)}"
            )
        batch = s_flat.shape[0]
        outputs, start = [], 0
        for level, (n_layers, width) in self.shapes.items():
            chunk = s_flat[:, start : start + n_layers * width]
            start += n_layers * width
            c = getattr(self, f"cm_{level}")(cond)  # [B, width]
            if level in self.flat_levels:
                x = torch.cat([getattr(self, f"sm_{level}")(chunk), c], dim=1)
            else:
                s = getattr(self, f"sm_{level}")(chunk.reshape(batch, n_layers, width))
                x = torch.cat([s, c.unsqueeze(1).expand(-1, n_layers, -1)], dim=2)
            outputs.append(getattr(self, f"fm_{level}")(x).reshape(batch, n_layers * width))
        return torch.cat(outputs, dim=1)
