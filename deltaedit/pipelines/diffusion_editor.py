"""DeltaEdit-D: the same encoder, CLIP, mapper and relevance selection as DeltaEdit-G, with a
style-conditioned diffusion model as the decoder.

image -> encoder -> W+ -> s; Δs from the mapper (masked by fs3 exactly as for the GAN); the image is
DDIM-inverted under s and decoded under s + α·Δs (`DiffusionBackbone.edit`).

A rendering-conditioned model (`render_channels` > 0, the shipped toy model) inverts the residual
x0 − R(s) and returns R(s + α·Δs) + the decoded residual, where R decodes a style code exactly as
DeltaEdit-G does (`decode_s`: convs from s, ToRGB from the source's W+, fixed noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from ..domain import Domain
from ..errors import InputError
from ..nn.stylespace import decode_s
from .diffusion import DiffusionBackbone, Inversion, apply_change_rule, check_output_rule, inference_dtype
from .gan import (
    STRENGTH_RANGE,
    EditPlan,
    EditResult,
    GanEditor,
    SourceCodes,
    StageClock,
    SweepResult,
    check_number,
    check_whole_number,
    make_result,
    normalise_targets,
)
from .prior_cleanup import PriorCleanup

STEPS_RANGE = (1, 1000)


@dataclass
class DiffusionPlan(EditPlan):
    """A DeltaEdit-D edit up to its decoding (`DiffusionEditor.plan`): DeltaEdit-G's plan of it
    plus the kept inversion, so it decodes at any strength with one DDIM decoding pass."""

    inversion: Inversion
    options: dict  # the residual rule and change mask of `DiffusionBackbone.decode_inversion`
    renders: torch.Tensor | None  # R of [s, s + strength·Δs]: the plan's own strength, one pass


class DiffusionEditor:
    def __init__(self, gan: GanEditor, backbone: DiffusionBackbone, prior: PriorCleanup | None = None):
        """`prior`: the domain's image prior, which redraws each edit of a rendering-conditioned
        model inside its change mask (`PriorCleanup`); None: the edits as the backbone decodes them."""
        models = {"the diffusion model": backbone, "the image prior": prior and prior.backbone}
        for name, model in models.items():
            if model is not None and model.style_dim != gan.layout.total:
                raise InputError(
                    f"{name} is conditioned on {model.style_dim} style values but the {gan.config.id}"
                    f" generator has {gan.layout.total}; were the weights trained for this domain?"
                )
        self.gan = gan
        self.backbone = backbone
        self.prior = prior
        self.config = gan.config

    @classmethod
    def load(cls, domain: str | Domain = "ffhq", device: str = "cpu", weights_dir=None) -> DiffusionEditor:
        """The shared DeltaEdit-D editor of a domain (a name, or a `Domain`)."""
        return _cached_editor(Domain.open(domain, weights_dir), str(device))

    @property
    def generator(self):
        return self.gan.generator

    def sample(self, seed: int) -> SourceCodes:
        return self.gan.sample(seed)

    def encode_image(self, image, align: bool = True) -> SourceCodes:
        return self.gan.encode_image(image, align=align)

    def _input_image(self, codes: SourceCodes) -> torch.Tensor:
        """What the diffusion model inverts: the encoder's input for photos, else the GAN rendering."""
        x = codes.input_image if codes.input_image is not None else codes.image
        if x is None:
            raise InputError("the source has no image to invert")
        size = self.backbone.image_size
        if x.shape[-1] != size:
            x = F.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.clamp(-1, 1)

    @torch.no_grad()
    def render_styles(self, codes: SourceCodes, styles: torch.Tensor) -> torch.Tensor:
        """R(s) [N, 3, size, size] for style codes [N, S]: the generator's decoding of each code as
        DeltaEdit-G decodes it (ToRGB from the source's W+), resized to the diffusion model's size."""
        gan = self.gan
        x = decode_s(gan.generator, gan.layout.split(styles), codes.w_plus.expand(styles.shape[0], -1, -1))
        size = self.backbone.image_size
        if x.shape[-1] != size:
            x = F.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def plan(
        self,
        *,
        image=None,
        latents=None,
        codes: SourceCodes | None = None,
        targets=None,
        source: str | None = None,
        strength: float | None = None,
        threshold: float | None = None,
        align: bool = True,
        steps: int = 50,
        refine_steps: int | None = None,
        depth: float | None = None,
        residual: str | None = None,
        change_threshold: float | None = None,
        change_ramp: tuple[float, float] | None = None,
        example=None,
        reference=None,
    ) -> DiffusionPlan:
        """Everything of an edit but its decoding (arguments as `edit`): the source inverted once and
        each target's Δs. `decode_plan` decodes it at any strength with one DDIM decoding pass and
        no new text, mapper, encoder or inversion work (the app's live strength slider)."""
        gan = self.gan
        clock = StageClock(gan.device if gan.sync_timings else None)
        targets, source_text, strength, threshold = gan.resolve_request(
            targets, source, strength, threshold, backbone="diffusion",
            by_example=example is not None or reference is not None,
        )  # fmt: skip
        steps = check_whole_number("steps", steps, STEPS_RANGE)
        refine_steps = gan.resolve_refine_steps(refine_steps, backbone="diffusion")
        options = self._output_rule(residual, change_threshold, change_ramp)
        codes = gan.prepare(image=image, latents=latents, codes=codes, align=align)
        if codes.input_image is None and codes.image is None:
            codes.image = gan.render(codes)
        clock.lap("encode")
        delta_t, targets, notices = gan.request_deltas(codes, targets, source_text, example, reference, align)
        delta_s = gan.style_deltas(codes, delta_t, threshold, gan.choice_strength(source_text, "diffusion"))
        # The same (optionally refined) Δs as DeltaEdit-G would apply.
        delta_s = gan.refined_style_deltas(
            codes, delta_t, delta_s, strength, refine_steps, backbone="diffusion"
        )
        clock.lap("mapper")
        x0 = self._input_image(codes)
        if depth is None:
            depth = float(self.config.extra.get("diffusion_depth", 1.0))
        # The source and the edits at the plan's strength are rendered in one generator pass;
        # the source's rendering is what the residual is inverted against.
        renders = None
        if self.backbone.render_channels:
            renders = self.render_styles(codes, torch.cat([codes.s, codes.s + float(strength) * delta_s]))
        inversion = self.backbone.invert_source(
            x0, codes.s, steps, render=None if renders is None else renders[:1], depth=depth
        )
        clock.lap("inversion")
        return DiffusionPlan(
            codes, targets, source_text, strength, threshold, delta_s, codes.notices + notices,
            clock, inversion, options, renders,
        )  # fmt: skip

    def _output_rule(self, residual, change_threshold, change_ramp=None) -> dict:
        """`DiffusionBackbone.decode_inversion`'s residual rule and change mask, checked: the
        domain's defaults for a rendering-conditioned model (see `edit`), nothing otherwise."""
        if not self.backbone.render_channels:
            return {}
        if residual is None:
            residual = str(self.config.extra.get("diffusion_residual", "decode"))
        options = {"residual": residual, **change_rule(self.config.extra, change_threshold, change_ramp)}
        check_output_rule(**options)  # before the inversion, not at every redraw of a kept plan
        return options

    @torch.no_grad()
    def decode_plan(
        self, plan: DiffusionPlan, strength: float | None = None, sweep: list[float] | None = None
    ) -> EditResult:
        """The edits of `plan` at `strength` (default: the plan's): one DDIM decoding pass from the
        kept inversion. `sweep`: the first target at these strengths instead, one row each."""
        t0 = time.perf_counter()
        codes, delta_s, targets = plan.codes, plan.delta_s, plan.targets
        strength = plan.strength if strength is None else check_number("strength", strength, STRENGTH_RANGE)
        if sweep is not None:  # one row per strength, all from the same inversion
            alphas = torch.tensor(sweep, dtype=delta_s.dtype, device=delta_s.device).view(-1, 1)
            delta_s, strength = alphas * delta_s[:1], 1.0
            targets = [f"{targets[0]} (strength {a:g})" for a in sweep]
        s_edit = codes.s + strength * delta_s
        render = None
        if self.backbone.render_channels:
            if sweep is None and strength == plan.strength:
                render = plan.renders  # rendered with the plan, in the same pass as the source
            else:
                render = torch.cat([plan.inversion.render_source, self.render_styles(codes, s_edit)])
        out = self.backbone.decode_inversion(plan.inversion, delta_s, strength, render=render, **plan.options)
        edits = self._redrawn(out.edits, s_edit, plan, render)
        timings = plan.clock.since("decoding", t0)
        timings["diffusion"] = timings["inversion"] + timings["decoding"]
        return make_result(
            codes, out.reconstruction, edits, targets, plan.source_text, strength, plan.threshold,
            s_edit, delta_s, plan.notices, timings, input_tensor=plan.inversion.image,
        )  # fmt: skip

    def _redrawn(self, edits, s_edit, plan: DiffusionPlan, render) -> torch.Tensor:
        """`edits` redrawn by the image prior inside the plan's change mask (the input's pixels
        stay where the mask is 0), or as they are without a prior or a change mask."""
        rule = {k: plan.options.get(k) for k in ("change_threshold", "change_ramp")}
        if self.prior is None or render is None or all(v is None for v in rule.values()):
            return edits
        redrawn = self.prior.redraw(edits, s_edit)
        return apply_change_rule(plan.inversion.image, redrawn, render[:1], render[1:], **rule).clamp(-1, 1)

    @torch.no_grad()
    def edit(self, *, sweep: list[float] | None = None, **request) -> EditResult:
        """Edit a source with DeltaEdit-D: `image=`, `latents=` or `codes=`; `targets`, `source`,
        `strength`, `threshold`, `align`, `refine_steps`, `example=(A, B)` and `reference=R` as
        `GanEditor.edit` takes them; `steps` DDIM steps.

        `depth`: the fraction of the DDIM chain the input is inverted through and decoded back
        (None: the domain's `extra.diffusion_depth`, else 1 = to pure noise). For a
        rendering-conditioned model, `residual` ("decode" or "shift"), `change_threshold` (a
        number, or a negative one for none) and `change_ramp` ((lo, hi)) are
        `DiffusionBackbone.edit`'s; None takes the domain's `extra.diffusion_residual` ("decode" if
        unset) and its change rule (`change_rule`). `sweep` (see `DiffusionEditor.sweep`): the
        first target at these strengths instead, one row each."""
        return self.decode_plan(self.plan(**request), sweep=sweep)

    @torch.no_grad()
    def sweep(self, count: int = 7, strengths=None, **request) -> SweepResult:
        """The first target's edit at several strengths (default `count` evenly from 0 to twice the
        strength the request resolves to) as rows of one DDIM pass: one inversion, one batched
        decoding. The request's other arguments are `edit`'s."""
        if strengths is None:
            count = int(check_whole_number("count", count, (2, 64)))
            strength = request.get("strength")
            strength = self.config.defaults_for("diffusion").strength if strength is None else strength
            strength = check_number("strength", strength, STRENGTH_RANGE)
            strengths = torch.linspace(0.0, 2.0 * strength, count, dtype=torch.float64).tolist()
        strengths = [check_number("strength", a, STRENGTH_RANGE) for a in strengths]
        if not 1 <= len(strengths) <= 64:
            raise InputError(f"a sweep takes 1 to 64 strengths, got {len(strengths)}")
        targets = request.get("targets")
        if targets is not None and not (isinstance(targets, str) and not targets.strip()):
            request["targets"] = normalise_targets(targets)[:1]  # only the first target is swept
        result = self.edit(**request, sweep=strengths)
        target = result.targets[0].rsplit(" (strength ", 1)[0]
        return SweepResult(
            list(result.edited_images), strengths, target, result.notices, dict(result.timings)
        )


def change_rule(extra: dict, change_threshold=None, change_ramp=None) -> dict:
    """The change mask DeltaEdit-D applies, as `DiffusionBackbone.edit`'s `change_threshold` and
    `change_ramp`: those asked for, or (neither asked) the domain's `extra.diffusion_change_ramp`
    ([lo, hi]) if set, else its `extra.diffusion_change_threshold`. A negative threshold is none."""
    if change_threshold is None and change_ramp is None:
        change_ramp = extra.get("diffusion_change_ramp")
        if change_ramp is None:
            change_threshold = extra.get("diffusion_change_threshold")
    if isinstance(change_threshold, int | float) and change_threshold < 0:
        change_threshold = None
    if isinstance(change_ramp, list):
        change_ramp = tuple(change_ramp)
    return {"change_threshold": change_threshold, "change_ramp": change_ramp}


@cache
def _cached_editor(domain: Domain, device: str) -> DiffusionEditor:
    if "diffusion" not in domain.config.weights:
        raise InputError(f"domain {domain.id!r} has no DeltaEdit-D model")
    return DiffusionEditor(
        GanEditor.load(domain, device),
        DiffusionBackbone.from_pretrained(domain.weight("diffusion"), device, inference_dtype(device)),
        _domain_prior(domain, device),
    )


def _domain_prior(domain: Domain, device: str) -> PriorCleanup | None:
    """The domain's image prior (weights role `diffusion_prior`; `extra.diffusion_prior_depth`,
    `extra.diffusion_prior_draws` and `extra.diffusion_prior_structure_sigma` where set, else
    PriorCleanup's defaults), or None where the domain names none."""
    if "diffusion_prior" not in domain.config.weights:
        return None
    extra = domain.config.extra
    settings = {"depth": float, "draws": int, "structure_sigma": float}
    chosen = {
        key: cast(extra[f"diffusion_prior_{key}"])
        for key, cast in settings.items()
        if f"diffusion_prior_{key}" in extra
    }
    return PriorCleanup(
        DiffusionBackbone.from_pretrained(domain.weight("diffusion_prior"), device, inference_dtype(device)),
        **chosen,
    )
