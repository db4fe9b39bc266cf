"""Random-weight state dicts in the official checkpoint formats, built from ../shared/checkpoint-formats.

The listings name every tensor with its shape and dtype; we fill them with seeded values so that
strict loading and the maths can be tested without the real (undownloadable) weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


def read_listing(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """[(key, shape, dtype)] from a `*.keys.txt` listing (comment lines start with '#')."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
        rows.append((key, dims, dtype))
    return rows


def random_state_dict(listing: Path, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Seeded tensors of the listed shapes; variances, kernels and counters get valid values."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape, dtype in read_listing(listing):
        if _DTYPES[dtype] == torch.int64:
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("blur.kernel", "upsample.kernel")):
            k = torch.tensor([1.0, 3.0, 3.0, 1.0])
            k = k[None, :] * k[:, None]
            k = k / k.sum()
            # In the generator both kernels belong to 2x upsampling, so rosinality scales them by 2**2.
            out[key] = k * 4
        else:
            out[key] = torch.randn(shape, generator=gen) * scale
    return out
