"""The toy renderer's training data: seeded renders, as arrays, tensor batches or encoded codes."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from ..nn.e4e import encode
from .render import images_to_tensor

RENDER_CHUNK = 2000


def _render_chunk(args):
    from .render import render_batch

    n, seed = args
    return render_batch(n, seed=seed)


def render_dataset(n: int, seed: int, workers: int | None = None):
    """(uint8 images [n, 64, 64, 3], attributes list) of the toy renderer.

    Rendered in chunks of RENDER_CHUNK with their own seeds, in worker processes: the result
    depends on (n, seed) only, not on the number of workers.
    """
    jobs = [(min(RENDER_CHUNK, n - i), seed * 100_003 + k) for k, i in enumerate(range(0, n, RENDER_CHUNK))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    attrs = [a for p in parts for a in p[1]]
    return images, attrs


def rendered_batches(n: int, seed: int, batch_size: int = 256):
    """Tensors [b, 3, 64, 64] in [-1, 1] of `render_dataset(n, seed)`, batch by batch.

    The toy generator is trained as a decoder, so it has no z prior to sample from: its codes
    (for `make-codes`, `relevance`) come from encoding renders, as photos are for FFHQ.
    """
    images, _ = render_dataset(n, seed)
    for start in range(0, n, batch_size):
        yield images_to_tensor(images[start : start + batch_size])


@torch.no_grad()
def encoded_renders(
    encoder, latent_avg, n: int, seed: int, device="cpu", batch_size: int = 256
) -> torch.Tensor:
    """W+ [n, L, D] of `n` encoded renders (seeded): the toy generator's stand-in for sampled codes."""
    return torch.cat(
        [encode(encoder, latent_avg, x.to(device)) for x in rendered_batches(n, seed, batch_size)]
    )
