"""DeltaEdit-G: edit a StyleGAN2 image in style space S with the Delta Mapper.

The sequence follows the authors' `scripts/inference.py` / `scripts/inference_real.py`
(see docs/parity.md):

1. W+ from latents, a random sample, or a photo (align -> e4e -> + latent_avg); S = modulations of W+.
2. i_src: CLIP image feature of the source with the authors' preprocessing (the encoder input for
   photos, the rendered source for latents).
3. Δt = emb(target) - emb(source text) with the 79 templates (cached per phrase).
4. Δs = mapper(S, [i_src/|i_src|, Δt/|Δt|]); channels with |fs3 · Δt| < threshold are zeroed.
5. Decode S + α·Δs (convs) with the original W+ (ToRGB) and the fixed noise.

What we do differently from the authors' scripts is only *how much work* is done: the source's
codes, CLIP feature and rendering are computed once per input and reused across prompts,
strengths and thresholds; phrase embeddings are cached; several targets share one generator pass.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from .. import models
from ..config import DomainConfig, load_domain_config
from ..errors import InputError
from ..imageio import load_image, tensor_to_pil, to_tensor
from ..nn.stylespace import decode_s, layout_from_generator, w_plus_to_s
from ..relevance import select_channels

log = logging.getLogger(__name__)

STRENGTH_RANGE = (-10.0, 10.0)
THRESHOLD_RANGE = (0.0, 1.0)
MAX_TARGETS = 16


@dataclass
class SourceCodes:
    """Everything about one source that does not depend on the prompt."""

    w_plus: torch.Tensor  # [1, n_latent, style_dim]
    s: torch.Tensor  # [1, S]
    clip_feature: torch.Tensor  # [1, D], not normalised
    image: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1], decoded from the unedited S
    notices: list[str] = field(default_factory=list)


@dataclass
class EditResult:
    source_image: Image.Image
    edited_images: list[Image.Image]
    targets: list[str]
    source_text: str
    strength: float
    threshold: float
    w_plus: torch.Tensor  # [1, n_latent, style_dim]
    s_source: torch.Tensor  # [1, S]
    s_edited: torch.Tensor  # [T, S]
    delta_s: torch.Tensor  # [T, S], after relevance selection, before strength
    notices: list[str]
    timings: dict[str, float]
    source_tensor: torch.Tensor | None = None  # [1, 3, H, W] in [-1, 1]
    edited_tensor: torch.Tensor | None = None  # [T, 3, H, W] in [-1, 1]


def check_number(name: str, value: float, bounds: tuple[float, float]) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    lo, hi = bounds
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def normalise_targets(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """One or several target phrases (a string may hold one per line)."""
    if isinstance(targets, str):
        targets = targets.splitlines() or [targets]
    cleaned = [t.strip() for t in targets if t is not None and t.strip()]
    if not cleaned:
        raise InputError("the target text is empty: describe the edit, e.g. 'face with smile'")
    if len(cleaned) > MAX_TARGETS:
        raise InputError(f"at most {MAX_TARGETS} targets at once, got {len(cleaned)}")
    return cleaned


class GanEditor:
    """DeltaEdit-G for one domain; load with `GanEditor.load(domain, device, weights_dir)`."""

    def __init__(self, config: DomainConfig, device: str = "cpu", weights_dir: str | Path | None = None):
        self.config = config
        self.device = torch.device(device)
        self.weights_dir = weights_dir
        self.generator = models.load_generator(config.id, str(device), weights_dir)
        self.mapper = models.load_mapper(config.id, str(device), weights_dir)
        self.clip = models.load_clip(config.id, str(device), weights_dir)
        self.fs3 = models.load_relevance(config.id, weights_dir)
        self.layout = layout_from_generator(self.generator)
        self._sources: OrderedDict[str, SourceCodes] = OrderedDict()
        self._sources_lock = threading.Lock()

    @classmethod
    def load(cls, domain: str = "ffhq", device: str = "cpu", weights_dir=None) -> GanEditor:
        return _cached_editor(domain, str(device), str(weights_dir) if weights_dir else None)

    # -- sources ---------------------------------------------------------------------------
    def _remember(self, key: str, make) -> SourceCodes:
        with self._sources_lock:
            if key in self._sources:
                self._sources.move_to_end(key)
                return self._sources[key]
        codes = make()
        with self._sources_lock:
            self._sources[key] = codes
            while len(self._sources) > 32:
                self._sources.popitem(last=False)
        return codes

    @torch.no_grad()
    def encode_latents(self, w_plus: torch.Tensor) -> SourceCodes:
        """Codes of a W+ latent [n_latent, style_dim] or [1, n_latent, style_dim]."""
        G = self.generator
        w_plus = torch.as_tensor(w_plus, dtype=torch.float32)
        if w_plus.dim() == 2:
            w_plus = w_plus[None]
        expected = (1, G.n_latent, G.style_dim)
        if tuple(w_plus.shape) != expected:
            raise InputError(f"latents must have shape {list(expected[1:])} or {list(expected)}, got {list(w_plus.shape)}")
        if not torch.isfinite(w_plus).all():
            raise InputError("latents contain NaN or Inf values")
        key = "w:" + hashlib.sha1(w_plus.numpy().tobytes()).hexdigest()

        def make():
            w = w_plus.to(self.device)
            s = self.layout.join(w_plus_to_s(G, w))
            image = decode_s(G, self.layout.split(s), w)
            feature = self.clip.image_features(image, image_size=G.size)
            return SourceCodes(w, s, feature, image)

        return self._remember(key, make)

    @torch.no_grad()
    def encode_image(self, image, align: bool = True) -> SourceCodes:
        """Codes of a photo (path, bytes or PIL): optional FFHQ alignment, then the encoder."""
        pil = load_image(image)
        key = f"img:{align}:" + hashlib.sha1(pil.tobytes() + repr(pil.size).encode()).hexdigest()

        def make():
            notices: list[str] = []
            face = pil
            if align and self.config.align_faces:
                face, notices = models.load_aligner(self.config.id, self.weights_dir).align(pil)
            encoder, latent_avg = models.load_encoder(self.config.id, str(self.device), self.weights_dir)
            x = to_tensor(face, self.config.encoder.input_size).to(self.device)
            w = encoder(x) + latent_avg[None]
            s = self.layout.join(w_plus_to_s(self.generator, w))
            feature = self.clip.image_features(x, image_size=self.config.encoder.input_size)
            return SourceCodes(w, s, feature, None, list(notices))

        return self._remember(key, make)

    @torch.no_grad()
    def sample(self, seed: int) -> SourceCodes:
        """A random source drawn from the generator (seeded, truncated as the domain prescribes)."""
        seed = int(check_number("seed", seed, (0, 2**31 - 1)))
        w = self.generator.sample_w_plus(1, truncation=self.config.truncation, seed=seed)
        return self.encode_latents(w.cpu())

    # -- editing ---------------------------------------------------------------------------
    @torch.no_grad()
    def edit(
        self,
        *,
        image=None,
        latents=None,
        codes: SourceCodes | None = None,
        targets: str | list[str],
        source: str | None = None,
        strength: float = 1.0,
        threshold: float = 0.03,
        align: bool = True,
    ) -> EditResult:
        t0 = time.perf_counter()
        targets = normalise_targets(targets)
        strength = check_number("strength", strength, STRENGTH_RANGE)
        threshold = check_number("threshold", threshold, THRESHOLD_RANGE)
        source_text = (source if source is not None else self.config.neutral_text).strip()
        if not source_text:
            source_text = self.config.neutral_text
        if sum(x is not None for x in (image, latents, codes)) != 1:
            raise InputError("give exactly one of an image, latents or source codes")
        if codes is None:
            codes = self.encode_image(image, align=align) if image is not None else self.encode_latents(latents)
        timings = {"encode": time.perf_counter() - t0}
        notices = list(codes.notices)

        t = time.perf_counter()
        deltas_t = []
        for target in targets:
            emb = self.clip.text_delta(target, source_text)
            notices.extend(getattr(self.clip, "last_notices", []) or [])
            if float(emb.norm()) == 0.0:
                notices.append(f"target {target!r} equals the source text: nothing to edit")
            deltas_t.append(emb)
        delta_t = torch.stack(deltas_t).to(self.device)  # [T, D] raw
        timings["text"] = time.perf_counter() - t

        t = time.perf_counter()
        T = len(targets)
        cond = self.clip.condition(codes.clip_feature.expand(T, -1), delta_t)
        delta_s = self.mapper(codes.s.expand(T, -1), cond)
        keep = torch.stack([select_channels(self.fs3, d.cpu(), threshold) for d in delta_t]).to(self.device)
        delta_s = delta_s * keep
        zero = delta_t.norm(dim=-1) == 0
        delta_s[zero] = 0
        s_edit = codes.s + strength * delta_s
        timings["mapper"] = time.perf_counter() - t

        t = time.perf_counter()
        batch = s_edit if codes.image is not None else torch.cat([codes.s, s_edit])
        w = codes.w_plus.expand(batch.shape[0], -1, -1)
        images = decode_s(self.generator, self.layout.split(batch), w)
        if codes.image is None:
            codes.image, images = images[:1], images[1:]
        timings["decode"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        for n in dict.fromkeys(notices):
            log.info("notice: %s", n)
        images = images.float().cpu()
        return EditResult(
            source_image=tensor_to_pil(codes.image[0].float().cpu()),
            edited_images=[tensor_to_pil(img) for img in images],
            targets=targets,
            source_text=source_text,
            strength=strength,
            threshold=threshold,
            w_plus=codes.w_plus.cpu(),
            s_source=codes.s.cpu(),
            s_edited=s_edit.cpu(),
            delta_s=delta_s.cpu(),
            notices=list(dict.fromkeys(notices)),
            timings=timings,
            source_tensor=codes.image.float().cpu(),
            edited_tensor=images,
        )


@lru_cache(maxsize=None)
def _cached_editor(domain: str, device: str, weights_dir: str | None) -> GanEditor:
    return GanEditor(load_domain_config(domain), device, weights_dir)
