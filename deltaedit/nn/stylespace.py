"""StyleSpace S: the per-layer modulation outputs of the styled convolutions (Wu et al. 2021).

Following DeltaEdit (`utils/stylespace_util.py`), S holds only the convolution styles (conv1, then
every conv in `G.convs`), not the ToRGB styles: 17 layers and 6048 values at FFHQ 1024. The flat
code concatenates the layers in that order. Decoding an S code keeps the ToRGB modulation of the
original W+ and the generator's fixed noise buffers, exactly as the authors decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError

# Group boundaries by layer resolution (DeltaEdit's coarse / medium / fine split).
COARSE_MAX_RES = 8
MEDIUM_MAX_RES = 32


@dataclass(frozen=True)
class StyleLayout:
    """Widths and output resolutions of the S layers, in flat order."""

    widths: tuple[int, ...]
    resolutions: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        if len(self.widths) != len(self.resolutions) or not self.widths:
            raise ValueError("StyleLayout needs one resolution per width, and at least one layer")

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    @property
    def total(self) -> int:
        return sum(self.widths)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each layer in the flat code."""
        out, pos = [], 0
        for w in self.widths:
            out.append(pos)
            pos += w
        return tuple(out)

    def check_flat(self, flat: torch.Tensor) -> None:
        if flat.ndim != 2 or flat.shape[1] != self.total:
            raise InputError(f"style code must have shape [batch, {self.total}], got {tuple(flat.shape)}")

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """[B, total] -> list of [B, width_i] (views)."""
        self.check_flat(flat)
        return list(torch.split(flat, list(self.widths), dim=1))

    def join(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of [B, width_i] -> [B, total]."""
        got = [tuple(t.shape[1:]) for t in layers]
        if got != [(w,) for w in self.widths]:
            raise InputError(
                f"style layers must have widths {list(self.widths)}, got {[g[0] if g else g for g in got]}"
            )
        return torch.cat(list(layers), dim=1)

    def groups(self) -> dict[str, tuple[int, ...]]:
        """Layer indices of the coarse (4-8 px), medium (16-32 px) and fine (the rest) groups."""
        out: dict[str, list[int]] = {"coarse": [], "medium": [], "fine": []}
        for i, res in enumerate(self.resolutions):
            key = "coarse" if res <= COARSE_MAX_RES else "medium" if res <= MEDIUM_MAX_RES else "fine"
            out[key].append(i)
        return {k: tuple(v) for k, v in out.items()}

    def group_slice(self, name: str) -> slice:
        """The contiguous slice of the flat code a group occupies."""
        layers = self.groups()[name]
        if not layers:
            return slice(0, 0)
        start = self.offsets[layers[0]]
        return slice(start, start + sum(self.widths[i] for i in layers))


def layout_from_generator(G) -> StyleLayout:
    """The S layout of a `deltaedit.nn.stylegan2.Generator`: each styled conv's input width."""
    convs = G.styled_convs()
    return StyleLayout(
        widths=tuple(c.conv.in_channel for c in convs), resolutions=tuple(G.conv_resolutions())
    )


def w_plus_to_s(G, w_plus: torch.Tensor) -> list[torch.Tensor]:
    """W+ [B, n_latent, style_dim] -> S as a list of [B, width_i] (conv modulations only)."""
    G.check_w_plus(w_plus)
    return [conv.conv.modulation(w_plus[:, G.conv_w_index(i)]) for i, conv in enumerate(G.styled_convs())]


def decode_s(G, s_list: Sequence[torch.Tensor] | torch.Tensor, w_plus: torch.Tensor) -> torch.Tensor:
    """Image from an S code: convs take `s_list` (list or flat [B, S]), ToRGBs the modulation of
    `w_plus`, noise the generator's fixed buffers. A batch-1 W+ is shared by a larger S batch."""
    if isinstance(s_list, torch.Tensor):
        s_list = layout_from_generator(G).split(s_list)
    batch = s_list[0].shape[0]
    if w_plus.shape[0] == 1 and batch > 1:
        w_plus = w_plus.expand(batch, -1, -1)
    if w_plus.shape[0] != batch:
        raise InputError(f"S batch {batch} and W+ batch {w_plus.shape[0]} differ")
    return G.synthesize(w_plus, conv_styles=list(s_list), noise="fixed")
