"""Training data for DeltaEdit-D without a dataset: (image, exact s) pairs drawn from the domain's StyleGAN2.

`GeneratorStream` draws batches on the fly: z ~ N(0, I) -> w (mapping network) -> truncated toward
the mean w with a per-row truncation ψ drawn from `truncations` (a mix of levels: sharp typical faces
and the diverse tails) -> W+ (w broadcast) -> s (the conv modulations, exactly as the editor computes
s) -> image decoded from s (ToRGB from W+, as `deltaedit.nn.stylespace.decode_s`), resized to the
UNet's size. There is no encoder in the loop, so s has no e4e error, and no images to download.

Optionally a photo folder (already encoded shards, `ShardDataset`) is mixed in: each row comes from
the photos with probability `photo_fraction` (e4e-encoded codes, whose W+ differs per layer, which
generator samples never do).

Determinism and resuming: batch k is a pure function of (seed, k, batch size): its CPU random state is
seeded from (seed, k) alone, so `batches(start=k)` continues exactly where a stream stopped after k
batches; the stream's whole state is (seed, batches drawn), and a training run's step count is its
batch count. Bit-identical for the same settings and device (a different `decode_batch` decodes in
other chunk shapes and agrees to float rounding). z and the photo picks are drawn on the CPU (the same on every device); the per-pixel
noise of `noise="random"` is drawn on the decoding device from a seed of the same state (identical
on the same kind of device). With several processes (`accelerate launch`), process r of W draws
global batches k·W + r.

Decodes run batched on the generator's device (`decode_batch` rows at a time); nothing is kept
between batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..nn.stylespace import layout_from_generator, w_plus_to_s

log = logging.getLogger(__name__)

DEFAULT_TRUNCATIONS = (0.5, 0.7, 1.0)
NOISE_MODES = ("random", "fixed")
# Entropy words that keep the streams of batches, preview and statistics apart.
_BATCH, _PREVIEW, _STATS = 0, 1, 2


def _rng(seed: int, *words: int) -> torch.Generator:
    """A CPU generator seeded from (seed, words) through numpy's SeedSequence (no collisions
    between nearby seeds and batch indices, unlike seed * K + index)."""
    state = np.random.SeedSequence([int(seed), *map(int, words)]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def parse_truncations(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0.5,0.7,1' -> (0.5, 0.7, 1.0); each level in (0, 1]."""
    if isinstance(text, str):
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise InputError(f"truncation levels must be numbers separated by commas, got {text!r}") from None
    else:
        values = tuple(float(v) for v in text)
    if not values or any(not 0 < v <= 1 for v in values):
        raise InputError(f"truncation levels must be in (0, 1], got {values}")
    return values


class GeneratorStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of (images [B,3,H,W] in [-1,1], s [B,S]) batches from a StyleGAN2.

    `len(stream)` and `stream[i]` are the fixed preview examples (what training's sample grids
    show), not the stream: the stream has no end. `style_stats()` estimates the per-channel mean/std
    of s from `stats_samples` codes (no decoding needed).
    """

    def __init__(
        self,
        generator,
        image_size: int,
        seed: int = 0,
        truncations: Sequence[float] = DEFAULT_TRUNCATIONS,
        noise: str = "random",
        decode_batch: int = 16,
        photos=None,
        photo_fraction: float = 0.0,
        preview: int = 8,
        stats_samples: int = 4096,
        renders: bool = False,
    ):
        """`renders`: yield (images, s, R(s)) triples for a rendering-conditioned UNet, R(s) being the
        generator's decoding with its fixed noise (as the editor renders a code); the image itself is
        then decoded with `noise` "random", else x0 − R(s) would be 0."""
        super().__init__()
        if noise not in NOISE_MODES:
            raise InputError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        if image_size < 1 or decode_batch < 1 or preview < 1 or stats_samples < 2:
            raise InputError("image_size, decode_batch, preview must be >= 1 and stats_samples >= 2")
        if not 0 <= photo_fraction <= 1:
            raise InputError(f"the photo fraction must be between 0 and 1, got {photo_fraction}")
        if photo_fraction > 0 and (photos is None or len(photos) == 0):
            raise InputError("a photo fraction above 0 needs photos (an encoded folder, --data FOLDER)")
        if photo_fraction == 1:
            raise InputError("a photo fraction of 1 draws nothing from the generator; train on the folder itself")
        if renders and noise == "fixed":
            raise InputError(
                "with renders, noise='fixed' makes every image equal to its rendering R(s) (a zero"
                " residual, nothing to learn); use noise='random'"
            )
        self.generator = generator.eval().requires_grad_(False)
        self.layout = layout_from_generator(generator)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.truncations = parse_truncations(truncations)
        self.noise = noise
        self.decode_batch = int(decode_batch)
        self.photos = photos
        self.photo_fraction = float(photo_fraction)
        self.preview_size = int(preview)
        self.stats_samples = int(stats_samples)
        self.renders = bool(renders)
        self.position = 0  # batches drawn by this process (the stream's state with `seed`)
        self._mean_w = None
        self._preview: tuple[torch.Tensor, ...] | None = None
        if photos is not None and len(photos):
            first = photos[0]
            image, style = first[0], first[1]
            if renders and len(first) < 3:
                raise InputError(
                    "the photo shards have no renders R(s) (*.renders.npy), which a rendering-conditioned"
                    " UNet needs; encode the folder again with renders"
                )
            if image.shape[-1] != self.image_size or style.shape[-1] != self.layout.total:
                raise InputError(
                    f"the photos are {image.shape[-1]} px with {style.shape[-1]} style values; the stream"
                    f" makes {self.image_size} px with {self.layout.total}: were they encoded for this domain?"
                )

    # -- state ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.generator.input.input.device

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise InputError(f"the stream state is for seed {state['seed']}, this stream has seed {self.seed}")
        self.position = int(state["position"])

    # -- drawing -------------------------------------------------------------------------------
    def _mean_latent(self) -> torch.Tensor:
        if self._mean_w is None:
            self._mean_w = self.generator.mean_latent(4096, seed=0)
        return self._mean_w

    @torch.no_grad()
    def _codes(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(W+ [n, n_latent, style_dim], s [n, S]) of n fresh samples with mixed truncation."""
        G = self.generator
        z = torch.randn(n, G.style_dim, generator=rng)
        levels = torch.tensor(self.truncations)[torch.randint(len(self.truncations), (n,), generator=rng)]
        w = G.mapping(z.to(self.device))
        psi = levels.to(w)[:, None]
        if (levels < 1).any():
            mean = self._mean_latent()
            w = torch.where(psi < 1, mean + psi * (w - mean), w)
        w_plus = w[:, None].repeat(1, G.n_latent, 1)
        return w_plus, self.layout.join(w_plus_to_s(G, w_plus))

    @torch.no_grad()
    def _decode(
        self, w_plus: torch.Tensor, s: torch.Tensor, rng: torch.Generator, noise_mode: str
    ) -> torch.Tensor:
        G = self.generator
        noise = None
        if noise_mode == "random":
            # Drawn for the whole batch at once, so a batch does not depend on `decode_batch`.
            noise_gen = torch.Generator(self.device).manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
            noise = [
                torch.randn(len(s), *buf.shape[1:], generator=noise_gen, device=self.device)
                for buf in G.fixed_noise()
            ]
        out = []
        for i in range(0, len(s), self.decode_batch):
            rows = slice(i, i + self.decode_batch)
            image = G.synthesize(
                w_plus[rows],
                conv_styles=self.layout.split(s[rows]),
                noise="fixed" if noise is None else [n[rows] for n in noise],
            )
            if image.shape[-1] != self.image_size:
                image = F.interpolate(
                    image, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
                )
            out.append(image.clamp(-1, 1))
        return torch.cat(out).float()

    @torch.no_grad()
    def draw(self, n: int, *words: int) -> tuple[torch.Tensor, ...]:
        """n rows from the random state (seed, *words): generator samples, some rows from photos;
        (images, s) or, with `renders`, (images, s, R(s))."""
        rng = _rng(self.seed, *words)
        from_photos = torch.zeros(n, dtype=torch.bool)
        if self.photo_fraction > 0:
            from_photos = torch.rand(n, generator=rng) < self.photo_fraction
        picks = torch.randint(len(self.photos), (n,), generator=rng) if self.photo_fraction > 0 else None
        n_gen = n - int(from_photos.sum())
        generated: list[torch.Tensor] = []
        if n_gen:
            w_plus, s = self._codes(n_gen, rng)
            generated = [self._decode(w_plus, s, rng, self.noise), s.float()]
            if self.renders:
                generated.append(self._decode(w_plus, s, rng, "fixed"))
            if n_gen == n:
                return tuple(generated)
        size = (3, self.image_size, self.image_size)
        out = [torch.empty(n, *size, device=self.device), torch.empty(n, self.layout.total, device=self.device)]
        if self.renders:
            out.append(torch.empty(n, *size, device=self.device))
        rows = torch.arange(n)
        for tensor, values in zip(out, generated):
            tensor[rows[~from_photos]] = values
        for row in rows[from_photos].tolist():
            for tensor, value in zip(out, self.photos[int(picks[row])]):
                tensor[row] = value.to(self.device)
        return tuple(out)

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Global batch `index` (a pure function of seed, index and batch size)."""
        return self.draw(batch_size, _BATCH, index)

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        device=None,
        rank: int = 0,
        world: int = 1,
        stop: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches start, start + 1, ... (before `stop`; None: endless) of this process (global
        batch k·world + rank), on `device`."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        k = self.position = int(start)
        while stop is None or k < stop:
            batch = self.batch(k * world + rank, batch_size)
            k += 1
            self.position = k  # the state of the latest iterator (each keeps its own count)
            yield batch if device is None else tuple(x.to(device) for x in batch)

    def __iter__(self):
        """Single examples (for a DataLoader); `batches` is the batched, resumable way."""
        for batch in self.batches(self.decode_batch, self.position):
            yield from zip(*batch)

    # -- preview and statistics ------------------------------------------------------------------
    def _preview_rows(self) -> tuple[torch.Tensor, ...]:
        if self._preview is None:
            self._preview = tuple(x.cpu() for x in self.draw(self.preview_size, _PREVIEW))
        return self._preview

    def __len__(self) -> int:
        return self.preview_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not -self.preview_size <= index < self.preview_size:
            raise IndexError(index)
        return tuple(x[index] for x in self._preview_rows())

    @torch.no_grad()
    def style_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) of s over the stream's mix (generator codes; photos weighted in)."""
        rng = _rng(self.seed, _STATS)
        total = torch.zeros(self.layout.total, dtype=torch.float64)
        squares = torch.zeros_like(total)
        for first in range(0, self.stats_samples, 512):
            n = min(512, self.stats_samples - first)
            s = self._codes(n, rng)[1].double().cpu()
            total += s.sum(0)
            squares += s.square().sum(0)
        mean, second = total / self.stats_samples, squares / self.stats_samples
        if self.photo_fraction > 0 and hasattr(self.photos, "style_stats"):
            p_mean, p_std = (t.double() for t in self.photos.style_stats())
            f = self.photo_fraction
            second = (1 - f) * second + f * (p_std.square() + p_mean.square())
            mean = (1 - f) * mean + f * p_mean
        std = (second - mean.square()).clamp_min(0).sqrt()
        return mean.float(), std.float()


def domain_generator_stream(
    domain: str,
    image_size: int,
    device: str = "cpu",
    weights_dir=None,
    random_weights: bool = False,
    **kwargs,
) -> GeneratorStream:
    """A `GeneratorStream` from the domain's StyleGAN2 on `device` (its weights through
    `deltaedit.models`; `random_weights`: the same architecture with seeded random weights, for
    timing a GPU without downloads)."""
    from ..config import load_domain_config
    from ..domain import Domain
    from ..models import load_generator
    from ..nn.stylegan2 import Generator

    if random_weights:
        cfg = load_domain_config(domain)
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            G = Generator.from_config(cfg.generator)
        finally:
            torch.random.set_rng_state(state)
        G = G.to(device)
    else:
        G = load_generator(Domain.open(domain, weights_dir), device)
    return GeneratorStream(G, image_size, **kwargs)
