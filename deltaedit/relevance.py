"""The relevance matrix fs3 [S, D]: which style channels a text direction may move.

`select_channels` is DeltaEdit's disentanglement step (`GetBoundary` in `scripts/inference.py`):
the relevance of channel c to a text direction is fs3[c] · Δt with the *raw* Δt (not normalised;
the normalised Δt only goes to the mapper). Channels with |fs3[c] · Δt| < threshold get Δs = 0.

`compute_fs3` builds fs3 for any generator the StyleCLIP global-directions way
(`global_directions/SingleChannel.py`, `manipulate.py`): for every S channel and each of
`n_samples` codes, set the channel to its mean over many codes, decode it at mean ± alpha·std,
take the difference of the two unit-length CLIP image features, normalise it, average over
samples, normalise again. Rows therefore have unit length; a channel whose perturbation changes
nothing gets a zero row (StyleCLIP would divide by zero there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, WeightsError
from .weights import load_npy_matrix

DEFAULT_THRESHOLD = 0.03
# Per-sample feature differences below this length (features have unit length) are float noise.
NO_EFFECT = 1e-6


def select_channels(fs3, delta_t, threshold: float = DEFAULT_THRESHOLD):
    """Boolean mask [S] of the channels an edit keeps (True) for the raw text delta `delta_t` [D].

    keep[c] = |fs3[c] · Δt| >= threshold; the authors zero Δs where the product is below it.
    Numpy in, numpy out; torch in, torch out (on fs3's device).
    """
    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    if fs3.ndim != 2 or delta_t.ndim != 1 or fs3.shape[1] != delta_t.shape[0]:
        raise InputError(
            f"relevance needs fs3 [S, D] and Δt [D]; got {tuple(fs3.shape)} and {tuple(delta_t.shape)}"
        )
    if isinstance(fs3, torch.Tensor):
        dt = torch.as_tensor(delta_t, dtype=torch.float32, device=fs3.device)
        return (fs3.float() @ dt).abs() >= threshold
    return np.abs(np.asarray(fs3, dtype=np.float32) @ np.asarray(delta_t, dtype=np.float32)) >= threshold


def select_channels_batch(fs3: torch.Tensor, delta_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """`select_channels` for T deltas at once: boolean [T, S] from fs3 [S, D] and Δt [T, D], in one
    matmul on fs3's device (on a GPU the masks never travel to the host)."""
    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    if fs3.ndim != 2 or delta_t.ndim != 2 or fs3.shape[1] != delta_t.shape[1]:
        raise InputError(
            f"relevance needs fs3 [S, D] and Δt [T, D]; got {tuple(fs3.shape)} and {tuple(delta_t.shape)}"
        )
    dt = delta_t.to(device=fs3.device, dtype=torch.float32)
    return (dt @ fs3.float().T).abs() >= threshold


def load_fs3(path, n_channels: int | None = None, clip_dim: int | None = None) -> np.ndarray:
    """fs3 [S, D] float32 from a .npy file (no pickles), optionally checking its shape."""
    path = Path(path)
    fs3 = load_npy_matrix(path, "relevance matrix", "S, D")
    expected = (n_channels or fs3.shape[0], clip_dim or fs3.shape[1])
    if fs3.shape != expected:
        raise WeightsError(
            f"{path} has shape {list(fs3.shape)}, expected {list(expected)}; is it the right file?"
        )
    if not np.isfinite(fs3).all():
        raise WeightsError(f"{path} contains NaN or infinite values; recompute or re-download it")
    return fs3.astype(np.float32, copy=False)


def _unit_rows(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Rows scaled to unit length; rows shorter than `floor` become zero (no NaN)."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm >= floor, x / norm.clamp(min=floor), torch.zeros_like(x))


@torch.no_grad()
def channel_stats(G, n: int = 10_000, truncation: float = 1.0, seed: int = 0, batch_size: int = 1000):
    """Mean and std [S] of the flat S code over `n` random codes (StyleCLIP's S_mean_std)."""
    from .nn.stylespace import w_plus_to_s

    total, total_sq, count = None, None, 0
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        w = G.sample_w_plus(b, truncation=truncation, seed=gen)
        s = torch.cat(w_plus_to_s(G, w), dim=1).double()
        total = s.sum(0) if total is None else total + s.sum(0)
        total_sq = (s * s).sum(0) if total_sq is None else total_sq + (s * s).sum(0)
        count += b
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=0).sqrt()
    return mean.float(), std.float()


@torch.no_grad()
def compute_fs3(
    G,
    clip,
    layout=None,
    n_samples: int = 100,
    batch_size: int = 32,
    alpha: float = 5.0,
    truncation: float = 0.7,
    n_stats: int = 10_000,
    seed: int = 0,
    channels: Sequence[int] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    stats: dict | None = None,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleCLIP global-direction relevance fs3 [S, D] (float32, CPU) of generator `G`.

    clip: a `DomainClip` (its `image_features` applies the authors' preprocessing).
    layout: the S layout (default `layout_from_generator(G)`).
    n_samples codes are drawn with `truncation` (StyleCLIP: 0.7); channel mean/std come from
    `n_stats` other codes drawn the same way. Each channel is set to its mean, then decoded at
    mean ± alpha·std (StyleCLIP: alpha 5). `channels` restricts the rows computed (others stay 0).
    `decode(s_flat [B, S], w_plus [B, L, D]) -> images` overrides `decode_s` (tests).
    `stats`, if given, receives seconds_per_batch, images_per_batch, batches (total needed),
    batches_run and projected_seconds, so a short run (`max_batches`) estimates the full cost:
    FFHQ needs 2 · 6048 · n_samples decodes.
    `codes` (W+ [N, L, D]), if given, replaces sampling from z: the samples and the channel
    statistics come from these codes (for generators trained as decoders, without a z prior).
    """
    from tqdm.auto import tqdm

    from .nn.stylespace import decode_s, layout_from_generator, w_plus_to_s

    if n_samples < 1 or batch_size < 2:
        raise InputError("compute_fs3 needs n_samples >= 1 and batch_size >= 2")
    layout = layout or layout_from_generator(G)
    decode = decode or (lambda s, w: decode_s(G, s, w))
    device = next(G.parameters()).device
    chans = torch.as_tensor(
        list(range(layout.total)) if channels is None else list(channels), dtype=torch.long
    )

    mean, std, w_plus = _fs3_codes(G, n_samples, n_stats, truncation, seed, codes, device)
    n_samples = len(w_plus)
    base = torch.cat(w_plus_to_s(G, w_plus), dim=1)

    jobs_per_batch = batch_size // 2  # each job is one (channel, sample) pair = two decodes
    n_jobs = len(chans) * n_samples
    n_batches = -(-n_jobs // jobs_per_batch)
    acc = None
    seconds = []
    total = n_batches if max_batches is None else min(n_batches, max_batches)
    bar = tqdm(total=total, desc="fs3", unit="batch", disable=not progress)
    for b, start in enumerate(range(0, n_jobs, jobs_per_batch)):
        if max_batches is not None and b >= max_batches:
            break
        t0 = time.perf_counter()
        job = torch.arange(start, min(start + jobs_per_batch, n_jobs))
        c = chans[job // n_samples].to(device)
        i = (job % n_samples).to(device)
        images = decode(_shifted_codes(base[i], c, mean, std, alpha), w_plus[i].repeat(2, 1, 1))
        diff = _feature_differences(clip, images)
        if acc is None:
            acc = torch.zeros(layout.total, diff.shape[1], dtype=torch.float64, device=device)
        acc.index_add_(0, c, diff.double())
        seconds.append(time.perf_counter() - t0)
        bar.update(1)
    bar.close()
    if acc is None:
        raise InputError("compute_fs3 ran no batch (max_batches=0 or no channels)")
    fs3 = _unit_rows((acc / n_samples).float(), 1e-12).cpu()
    if stats is not None:
        stats.update(_cost(seconds, jobs_per_batch, n_batches))
    return fs3


def _fs3_codes(G, n_samples, n_stats, truncation, seed, codes, device):
    """(channel mean [S], channel std [S], the W+ samples [n, L, D]) for `compute_fs3`: drawn from z
    with `truncation`, or taken from `codes` (a random `n_samples` of them, statistics over all)."""
    from .nn.stylespace import w_plus_to_s

    if codes is None:
        mean, std = (t.to(device) for t in channel_stats(G, n_stats, truncation, seed + 1))
        return mean, std, G.sample_w_plus(n_samples, truncation=truncation, seed=seed).to(device)
    codes = codes.to(device)
    all_s = torch.cat(w_plus_to_s(G, codes), dim=1)
    pick = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))[:n_samples]
    return all_s.mean(0), all_s.std(0), codes[pick.to(device)]


def _shifted_codes(base: torch.Tensor, c: torch.Tensor, mean, std, alpha: float) -> torch.Tensor:
    """Each code of `base` [B, S] twice: channel c[j] of row j set to its mean + alpha·std, then
    (rows B..2B) to its mean − alpha·std."""
    s = base.repeat(2, 1)
    rows = torch.arange(len(s), device=s.device)
    shift = alpha * std[c]
    s[rows, c.repeat(2)] = torch.cat([mean[c] + shift, mean[c] - shift])
    return s


def _feature_differences(clip, images: torch.Tensor) -> torch.Tensor:
    """Unit CLIP-feature differences of the first half of `images` (channels at +alpha·std) minus
    the second (at −alpha·std); zero where the change moved nothing."""
    feats = clip.image_features(images.clamp(-1, 1), image_size=images.shape[-1]).float()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    plus, minus = feats.chunk(2)
    return _unit_rows(plus - minus, NO_EFFECT)


def _cost(seconds: list[float], jobs_per_batch: int, n_batches: int) -> dict:
    """What a (possibly short) fs3 run measured, and what the whole run would take."""
    steady = seconds[1:] or seconds  # the first batch pays one-off warm-up costs
    per_batch = float(np.mean(steady)) if steady else float("nan")
    return dict(
        seconds_per_batch=per_batch,
        images_per_batch=2 * jobs_per_batch,
        batches=n_batches,
        batches_run=len(seconds),
        seconds=float(sum(seconds)),
        projected_seconds=per_batch * n_batches,
    )
