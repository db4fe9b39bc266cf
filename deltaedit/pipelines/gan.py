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
import threading
import time
from collections import OrderedDict
from functools import cache

import torch
from PIL import Image

from .. import models
from ..delta_choice import choose_style_deltas, parse_delta_choice_margin, parse_delta_choices, project_onto
from ..domain import Domain
from ..errors import InputError
from ..imageio import center_square, load_image, pixels_to_pils, tensors_to_pixels, to_tensor
from ..nn.e4e import encode
from ..nn.stylespace import decode_s, layout_from_generator, w_plus_to_s
from ..refine import refine_style_deltas
from ..relevance import select_channels_batch
from .edit_request import (  # noqa: F401 - the request checks, also read from this module
    MAX_PROMPT_CHARS,
    MAX_TARGETS,
    REFINE_STEPS_RANGE,
    STRENGTH_RANGE,
    THRESHOLD_RANGE,
    check_number,
    check_prompt_length,
    check_refine_steps,
    check_whole_number,
    normalise_source,
    normalise_targets,
)
from .results import EditPlan, EditResult, SourceCodes, StageClock, SweepResult, make_result  # noqa: F401

log = logging.getLogger(__name__)



def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class GanEditor:
    """DeltaEdit-G for one domain; load with `GanEditor.load(domain, device, weights_dir)`."""

    def __init__(
        self,
        domain: Domain,
        generator,
        mapper,
        clip,
        fs3: torch.Tensor,
        *,
        device: str = "cpu",
        encoder=None,
        aligner=None,
        feature_bank=None,
        style_subspace=None,
    ):
        """Assemble an editor from loaded modules; `GanEditor.load` does it from weight files.

        `encoder` ((module, latent_avg)) and `aligner` are loaded on first use when not given,
        so editing latents never pays for them. With a `feature_bank` (`deltaedit.grounding`)
        the mapper gets text deltas grounded in the source image; None gives the paper's Δt.
        With a `style_subspace` ([K, S], `deltaedit.delta_choice`) the per-edit choice of Δs also
        weighs each candidate projected onto it.
        """
        self.domain = domain
        self.config = domain.config
        self.device = torch.device(device)
        self.generator = generator
        self.mapper = mapper
        self.clip = clip
        self.fs3 = torch.as_tensor(fs3, dtype=torch.float32)
        # The relevance matmul runs where Δt is: no host round trip per target on a GPU.
        self._fs3_on_device = self.fs3.to(self.device)
        # Synchronise the device at each stage boundary so `timings` are per stage (bench sets it;
        # off by default: a sync costs a GPU edit its overlap with the host).
        self.sync_timings = False
        self.layout = layout_from_generator(generator)
        self._encoder = encoder
        self._aligner = aligner
        self.feature_bank = feature_bank
        # Alternatives to each edit's Δs, one chosen per edit by CLIP (`deltaedit.delta_choice`).
        self.delta_choices = parse_delta_choices(self.config.extra.get("delta_choices"))
        self.delta_choice_margin = parse_delta_choice_margin(self.config.extra.get("delta_choice_margin"))
        self.style_subspace = None if style_subspace is None else style_subspace.to(self.device)
        self._sources: OrderedDict[str, SourceCodes] = OrderedDict()
        self._sources_lock = threading.Lock()

    @classmethod
    def load(cls, domain: str | Domain = "ffhq", device: str = "cpu", weights_dir=None) -> GanEditor:
        """The shared editor of a domain (a name, or a `Domain`; each model is loaded once per process)."""
        return _cached_editor(Domain.open(domain, weights_dir), str(device))

    @classmethod
    def from_weights(cls, domain: str | Domain, device: str = "cpu", weights_dir=None) -> GanEditor:
        """A new editor of `domain` (its models still shared through `deltaedit.models`' cache)."""
        domain = Domain.open(domain, weights_dir)
        return cls(
            domain,
            models.load_generator(domain, device),
            models.load_mapper(domain, device),
            models.load_clip(domain, device),
            models.load_relevance(domain),
            device=device,
            feature_bank=models.load_feature_bank(domain),
            style_subspace=models.load_style_subspace(domain),
        )

    @property
    def encoder(self):
        """(encoder, latent_avg [n_latent, style_dim])."""
        if self._encoder is None:
            self._encoder = models.load_encoder(self.domain, str(self.device))
        return self._encoder

    @property
    def aligner(self):
        if self._aligner is None:
            self._aligner = models.load_aligner(self.domain)
        return self._aligner

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
            raise InputError(
                f"latents must have shape {list(expected[1:])} or {list(expected)}, got {list(w_plus.shape)}"
            )
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
                face, notices = self.aligner.align(pil)
            else:  # a centred square, never a squashed picture (the shown input is this square)
                face, cropped = center_square(pil)
                notices = [cropped] if cropped else []
            encoder, latent_avg = self.encoder
            x = to_tensor(face, self.config.encoder.input_size).to(self.device)
            w = encode(encoder, latent_avg, x)
            s = self.layout.join(w_plus_to_s(self.generator, w))
            feature = self.clip.image_features(x, image_size=self.config.encoder.input_size)
            return SourceCodes(w, s, feature, None, x, list(notices))

        return self._remember(key, make)

    @torch.no_grad()
    def sample(self, seed: int) -> SourceCodes:
        """A random source drawn from the generator (seeded, truncated as the domain prescribes)."""
        seed = int(check_number("seed", seed, (0, 2**31 - 1)))
        if self.config.samples_by_rendering:
            from ..toy.render import render_batch

            images, _ = render_batch(1, seed)
            return self.encode_image(Image.fromarray(images[0]), align=False)
        w = self.generator.sample_w_plus(1, truncation=self.config.truncation, seed=seed)
        return self.encode_latents(w.cpu())

    # -- editing ---------------------------------------------------------------------------
    def prepare(
        self, *, image=None, latents=None, codes: SourceCodes | None = None, align: bool = True
    ) -> SourceCodes:
        """The source's codes from exactly one of a photo, W+ latents or already computed codes."""
        if sum(x is not None for x in (image, latents, codes)) != 1:
            raise InputError("give exactly one of an image, latents or source codes")
        if codes is not None:
            return codes
        return self.encode_image(image, align=align) if image is not None else self.encode_latents(latents)

    @torch.no_grad()
    def render(self, codes: SourceCodes) -> torch.Tensor:
        """The unedited source decoded from its S (convs) and W+ (ToRGB), [1, 3, H, W]."""
        return decode_s(self.generator, self.layout.split(codes.s), codes.w_plus)

    def request_deltas(
        self, codes: SourceCodes, targets: list[str], source_text: str, example, reference, align: bool
    ) -> tuple[torch.Tensor, list[str], list[str]]:
        """Every delta of a request [T, D] (text targets first, then pictures), their labels and notices."""
        deltas, labels, notices = [], list(targets), []
        if targets:
            delta_t, notices = self.text_deltas(targets, source_text)
            deltas.append(delta_t)
        names, pictures, picture_notices = self.example_deltas(codes, example, reference, align)
        if pictures is not None:
            deltas.append(pictures.to(deltas[0].dtype) if deltas else pictures)
            labels += names
            notices += picture_notices
        return torch.cat(deltas), labels, notices

    def text_deltas(self, targets: list[str], source_text: str) -> tuple[torch.Tensor, list[str]]:
        """Raw Δt [T, D] of each target against the source text, and notices about them."""
        self.clip.text_embeddings([*targets, source_text])  # every new phrase in one batched encode
        deltas, notices = [], []
        for target in targets:
            delta = self.clip.text_delta(target, source_text)
            notices.extend(self.clip.notices(target, source_text))
            if float(delta.norm()) == 0.0:
                notices.append(f"target {target!r} equals the source text {source_text!r}: nothing to edit")
            deltas.append(delta)
        return torch.stack(deltas).to(self.device), notices

    @torch.no_grad()
    def image_feature(self, image, align: bool = True) -> torch.Tensor:
        """CLIP image feature [1, D] of an example picture, prepared as a photo is (aligned on FFHQ)."""
        pil = load_image(image)
        if align and self.config.align_faces:
            pil, _ = self.aligner.align(pil)
        x = to_tensor(pil, self.config.encoder.input_size).to(self.device)
        return self.clip.image_features(x, image_size=self.config.encoder.input_size)

    def example_deltas(
        self, codes: SourceCodes, example=None, reference=None, align: bool = True
    ) -> tuple[list[str], torch.Tensor | None, list[str]]:
        """(labels, deltas [E, D], notices) of the edits given by pictures instead of text.

        The mapper was trained on differences of unit CLIP image features; these are such
        differences, so they go where a text Δt goes (relevance selection, grounding, refinement):
        - `example=(A, B)`: do to the face what changes A into B, Δ = u(CLIP(B)) − u(CLIP(A));
        - `reference=R`: move the face toward R, Δ = u(CLIP(R)) − u(CLIP(source)); the threshold
          decides how much of R comes along.
        """
        labels, rows, notices = [], [], []
        if example is not None:
            if not isinstance(example, (tuple, list)) or len(example) != 2:
                raise InputError(
                    "example must be a pair of images (A, B): the edit does to the face what changes A into B"
                )
            a, b = (_unit(self.image_feature(x, align)) for x in example)
            labels.append("by example (A → B)")
            rows.append(b - a)
        if reference is not None:
            labels.append("toward the reference")
            rows.append(_unit(self.image_feature(reference, align)) - _unit(codes.clip_feature))
        for label, row in zip(labels, rows):
            if float(row.norm()) < 1e-6:
                notices.append(f"{label}: the pictures look the same to CLIP, so there is nothing to edit")
        deltas = torch.cat(rows).to(self.device).float() if rows else None
        return labels, deltas, notices

    @torch.no_grad()
    def style_deltas(
        self, codes: SourceCodes, delta_t: torch.Tensor, threshold: float, choose_at: float | None = None
    ) -> torch.Tensor:
        """Δs [T, S]: the mapper's output with irrelevant channels (|fs3 · Δt| < threshold) zeroed.

        The mapper reads Δt grounded in the source image when the editor has a feature bank; the
        relevance selection always reads the text's own Δt, as the authors'. With `choose_at` (a
        strength: the plans pass the backbone's default, so that Δs, and with it every strength of
        a sweep or a re-edit, does not depend on the request's strength), a domain with
        `extra.delta_choices` gets each row's Δs chosen among those alternatives by CLIP
        (`deltaedit.delta_choice`); the source is rendered into `codes` for it."""
        T = delta_t.shape[0]
        mapper_delta = delta_t
        if self.feature_bank is not None:
            mapper_delta = self.feature_bank.ground(delta_t, codes.clip_feature)
        cond = self.clip.condition(codes.clip_feature.expand(T, -1), mapper_delta)
        whole = self.mapper(codes.s.expand(T, -1), cond)
        none = delta_t.norm(dim=-1) == 0  # target == source: no edit, never NaN

        def selected(at_threshold: float) -> torch.Tensor:
            keep = select_channels_batch(self._fs3_on_device, delta_t.float(), at_threshold)
            delta_s = whole * keep.to(dtype=whole.dtype)
            delta_s[none] = 0
            return delta_s

        delta_s = selected(threshold)
        if not choose_at or not self.delta_choices or T == 0:
            return delta_s
        candidates = [delta_s] + [
            choice.strength_factor * selected(threshold * choice.threshold_factor)
            for choice in self.delta_choices
        ]
        if self.style_subspace is not None:  # each candidate also without its off-manifold part
            candidates += [project_onto(c, self.style_subspace) for c in candidates]
        if codes.image is None:
            codes.image = self.render(codes)
        delta_s, _ = choose_style_deltas(
            self.generator, self.clip, self.layout, codes.s, codes.w_plus, torch.stack(candidates),
            delta_t, choose_at, codes.image, self.feature_bank,
            margin=self.delta_choice_margin,
        )  # fmt: skip
        return delta_s

    def choice_strength(self, source_text: str, backbone: str = "gan") -> float | None:
        """The strength `style_deltas` judges its `extra.delta_choices` at: the backbone's default,
        for edits from the domain's neutral text only. Their strength factors were measured there;
        from a non-neutral source ("thin face" -> "chubby face") the change asked is about twice as
        large and the weaker alternatives won too often (that pair's success fell from 1.00 to
        0.78-0.92 on the toy dev seeds), so those edits keep the relevance selection."""
        if source_text != self.config.neutral_text:
            return None
        return self.config.defaults_for(backbone).strength

    def resolve_request(
        self, targets, source, strength, threshold, backbone: str = "gan", by_example: bool = False
    ) -> tuple[list[str], str, float, float]:
        """Validated (targets, source text, strength, threshold); None: the domain's default for
        `backbone` (DeltaEdit-D shares this editor's models but has defaults of its own). With
        `by_example` (an edit that also has example images) the text targets may be absent."""
        no_text = targets is None or (isinstance(targets, str) and not targets.strip()) or targets == []
        targets = [] if by_example and no_text else normalise_targets(targets)
        defaults = self.config.defaults_for(backbone)
        strength = defaults.strength if strength is None else strength
        threshold = defaults.threshold if threshold is None else threshold
        strength = check_number("strength", strength, STRENGTH_RANGE)
        threshold = check_number("threshold", threshold, THRESHOLD_RANGE)
        source_text = normalise_source(source) or self.config.neutral_text
        return targets, source_text, strength, threshold

    def resolve_refine_steps(self, refine_steps, backbone: str = "gan") -> int:
        """Validated refinement steps; None: the domain's default for `backbone`."""
        default = self.config.defaults_for(backbone).refine_steps
        return check_refine_steps(default if refine_steps is None else refine_steps)

    def refined_style_deltas(
        self,
        codes: SourceCodes,
        delta_t: torch.Tensor,
        delta_s: torch.Tensor,
        strength: float,
        steps,
        backbone: str = "gan",
    ) -> torch.Tensor:
        """Δs after `steps` (checked by the caller) of CLIP-guided refinement (`deltaedit.refine`;
        0: the mapper's Δs) at `backbone`'s refinement rate for the domain. Renders the source into
        `codes` if needed: the edit reuses it."""
        if steps and codes.image is None:
            codes.image = self.render(codes)
        return refine_style_deltas(
            self.generator,
            self.clip,
            self.layout,
            codes.s,
            codes.w_plus,
            delta_s,
            delta_t,
            strength,
            steps,
            lr=self.config.defaults_for(backbone).refine_lr,
            source_image=codes.image,
            feature_bank=self.feature_bank,
        )

    @torch.no_grad()
    def plan(
        self,
        *,
        image=None,
        latents=None,
        codes: SourceCodes | None = None,
        targets: str | list[str] | None = None,
        source: str | None = None,
        strength: float | None = None,
        threshold: float | None = None,
        align: bool = True,
        refine_steps: int | None = None,
        example=None,
        reference=None,
    ) -> EditPlan:
        """Everything of an edit but its decoding: the source's codes and each target's Δs (see
        `edit` for the arguments). A plan decodes at any strength without new text, mapper or
        encoder work (`decode_plan`, `sweep`)."""
        clock = StageClock(self.device if self.sync_timings else None)
        by_example = example is not None or reference is not None
        targets, source_text, strength, threshold = self.resolve_request(
            targets, source, strength, threshold, by_example=by_example
        )
        refine_steps = self.resolve_refine_steps(refine_steps)  # before any model work
        codes = self.prepare(image=image, latents=latents, codes=codes, align=align)
        clock.lap("encode")
        delta_t, targets, notices = self.request_deltas(codes, targets, source_text, example, reference, align)
        clock.lap("text")
        delta_s = self.style_deltas(codes, delta_t, threshold, self.choice_strength(source_text))
        clock.lap("mapper")
        if refine_steps:
            delta_s = self.refined_style_deltas(codes, delta_t, delta_s, strength, refine_steps)
            clock.lap("refine")
        return EditPlan(codes, targets, source_text, strength, threshold, delta_s, codes.notices + notices, clock)

    @torch.no_grad()
    def edit(self, **request) -> EditResult:
        """Edit a source toward each target: `image=`, `latents=` or `codes=`; `targets` (text, one per
        line or a list), `source` text, `strength`, `threshold`, `align`, `refine_steps`: None takes
        the domain's defaults. `refine_steps` > 0 refines the mapper's Δs through the generator and
        CLIP (not in the paper; see `deltaedit.refine`). `example=(A, B)` and `reference=R` add
        edits given by pictures (`example_deltas`), alongside the text targets or instead of them."""
        return self.decode_plan(self.plan(**request))

    @torch.no_grad()
    def decode_plan(self, plan: EditPlan, strength: float | None = None) -> EditResult:
        """The edits of `plan` at `strength` (default: the plan's): one generator decode, nothing else
        recomputed. A re-edit at a new strength (the app's live slider) costs only this."""
        t0 = time.perf_counter()
        codes, delta_s = plan.codes, plan.delta_s
        strength = plan.strength if strength is None else check_number("strength", strength, STRENGTH_RANGE)
        s_edit = codes.s + strength * delta_s
        images = self._decode_styles(codes, s_edit)
        # A target with nothing to change is the source itself, not a re-decode of it that a
        # different batch size may round differently.
        unchanged = (delta_s == 0).all(dim=1) | (strength == 0)
        if unchanged.any():
            images = torch.where(unchanged.view(-1, 1, 1, 1), codes.image.to(images.dtype), images)
        timings = plan.clock.since("decode", t0)
        return make_result(
            codes, codes.image, images, plan.targets, plan.source_text, strength, plan.threshold,
            s_edit, delta_s, plan.notices, timings,
        )  # fmt: skip

    def _decode_styles(self, codes: SourceCodes, s_batch: torch.Tensor) -> torch.Tensor:
        """Decode a batch of style codes of `codes`' source; the source itself is rendered at most
        once per input, in the same batch when it is still missing."""
        batch = s_batch if codes.image is not None else torch.cat([codes.s, s_batch])
        images = decode_s(self.generator, self.layout.split(batch), codes.w_plus.expand(batch.shape[0], -1, -1))
        if codes.image is None:
            codes.image, images = images[:1], images[1:]
        return images

    @torch.no_grad()
    def sweep(self, count: int = 7, strengths=None, **request) -> SweepResult:
        """The first target's edit at several strengths in one batched decode: `strengths`, or by
        default `count` evenly spaced from 0 to twice the strength the request resolves to."""
        plan = self.plan(**request)
        t0 = time.perf_counter()
        if strengths is None:
            count = int(check_whole_number("count", count, (2, 64)))
            strengths = torch.linspace(0.0, 2.0 * plan.strength, count, dtype=torch.float64).tolist()
        strengths = [check_number("strength", a, STRENGTH_RANGE) for a in strengths]
        if not 1 <= len(strengths) <= 64:
            raise InputError(f"a sweep takes 1 to 64 strengths, got {len(strengths)}")
        alphas = torch.tensor(strengths, device=plan.delta_s.device, dtype=plan.delta_s.dtype).view(-1, 1)
        frames = self._decode_styles(plan.codes, plan.codes.s + alphas * plan.delta_s[:1])
        if not bool(plan.delta_s[0].abs().sum() > 0):  # nothing to change: every frame is the source
            frames = plan.codes.image.to(frames.dtype).expand_as(frames)
        timings = plan.clock.since("decode", t0)
        pictures = pixels_to_pils(tensors_to_pixels(frames.float()))
        return SweepResult(pictures, strengths, plan.targets[0], plan.notices, timings)


@cache
def _cached_editor(domain: Domain, device: str) -> GanEditor:
    return GanEditor.from_weights(domain, device)
