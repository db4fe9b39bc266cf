"""The thin layer between the Gradio page (`app.py`) and the library: no gradio here.

It validates what a page or API request sends, picks the shared cached editor, runs the edit and
turns the library's result into what the page shows (images, captions, PNG files to download, a
short Markdown summary with the time taken and the notices). Library errors (`DeltaEditError`)
pass through unchanged; `app.py` turns them into `gr.Error`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch
from PIL import Image

from . import deltaspace_report as _deltaspace
from . import vocabulary
from .api import load_editor
from .config import load_domain_config
from .deltaspace_report import CACHED_REPORT_DIR  # noqa: F401 - the page's names
from .domain_info import (  # noqa: F401 - the page's names
    BACKBONE_NAMES,
    EXAMPLES,
    EXAMPLES_DIR,
    HOW_TO_ADD_WEIGHTS,
    SAMPLE_EXAMPLES,
    aligns_faces,
    check_backbone,
    check_domain,
    defaults_note,
    domain_choices,
    edit_defaults,
    example_prompts,
    examples,
    for_the_page,
    known_phrases,
    missing_weights,
    missing_weights_error,
    neutral_text,
    sample_examples,
    samples_available,
)
from .errors import DeltaEditError, InputError, WeightsError
from .imageio import tensor_to_pil
from .outputs import OUTPUTS, OutputStore  # noqa: F401 - the page's names
from .pipelines.gan import normalise_source, normalise_targets
from .pipelines.plans import moved_to
from .plan_store import PLANS, PlanStore, plan_backbone  # noqa: F401 - the page's names
from .request_checks import (  # noqa: F401 - the page's names
    MAX_DDIM_STEPS,
    MAX_DIFFUSION_WORK,
    MAX_SEED,
    MAX_SWEEP_FRAMES,
    OutOfMemory,
    check_diffusion_work,
    check_seed,
    gpu_memory_guard,
    shorten,
    upload_errors,
)
from .views import (  # noqa: F401 - the page's names
    CompareView,
    EditView,
    SweepView,
    compare_labels,
    save_files,
    summary_text,
)

log = logging.getLogger(__name__)

# On CUDA machines (ZeroGPU included: `spaces` makes CUDA visible at import) the models live on
# the GPU from the start; elsewhere on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D_UNAVAILABLE = "DeltaEdit-D weights are not available for this domain"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- domains and models


def get_editor(domain: str, backbone: str = "gan"):
    """The process-wide cached editor (the library caches it); missing weights say so in one sentence."""
    domain = check_domain(domain)
    label = load_domain_config(domain).label
    if backbone != "diffusion":
        try:
            return load_editor(domain, backbone, DEVICE)
        except WeightsError as exc:
            raise missing_weights_error(domain, exc) from exc
    try:
        return load_editor(domain, backbone, DEVICE)
    except (WeightsError, InputError) as exc:
        # e.g. no weights, a domain without a diffusion model, or a model of another domain
        if not _gan_loads(domain):
            raise WeightsError(
                f"{D_UNAVAILABLE} ({label}), and neither are DeltaEdit-G's: see the status next to the"
                " Domain menu."
            ) from exc
        short = _reason(exc).split(";")[0]
        raise WeightsError(f"{D_UNAVAILABLE} ({label}): {short}. The DeltaEdit-D tab says more.") from exc


def _gan_loads(domain: str) -> bool:
    """Whether DeltaEdit-G of `domain` loads (cached after the first time): the weights it needs
    for samples are here, whatever else (the photo encoder, landmarks) is missing."""
    try:
        load_editor(domain, "gan", DEVICE)
    except DeltaEditError:
        return False
    return True


def _reason(exc: Exception) -> str:
    """The first line of a library error without its "could not get FILE (tag):" prefix."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    first = re.sub(r"^could not get \S+ \([^)]*\): ", "", first).rstrip(".")
    return for_the_page(first)


def domain_status(domain: str) -> str:
    """Load the domain's DeltaEdit-G models (a no-op when cached); Markdown saying how it went:
    on failure the missing files, each with its source, and how to add them (prose, no code block,
    so every line wraps inside the box)."""
    label = load_domain_config(check_domain(domain)).label
    t0 = time.perf_counter()
    try:
        get_editor(domain, "gan")
    except DeltaEditError as exc:
        missing = missing_weights(domain)
        if not missing:
            return f"**{label}: the models could not be loaded.** {_reason(exc.__cause__ or exc)}."
        how = HOW_TO_ADD_WEIGHTS.format(domain=domain)
        lines = [
            f"**{label}: the models could not be loaded: {len(missing)} weight files are missing.**"
            f" To use this domain, {how}:",
            "",
        ]
        lines += [f"- `{m.filename}` from {m.origin()}" for m in missing]
        return "\n".join(lines)
    return f"{label}: models loaded ({time.perf_counter() - t0:.1f} s)."


def diffusion_status(domain: str) -> str:
    """'' when DeltaEdit-D can run on `domain`, otherwise Markdown saying why not (and whether
    DeltaEdit-G works)."""
    try:
        get_editor(domain, "diffusion")
    except DeltaEditError as exc:
        if not _gan_loads(domain):
            return f"**{D_UNAVAILABLE}**, and neither are DeltaEdit-G's: see the status above."
        return f"**{D_UNAVAILABLE}.** DeltaEdit-G still works. Why: {_reason(exc.__cause__ or exc)}."
    return ""


def preload(domains: list[str]) -> dict[str, str]:
    """Load each domain's editors at import (so requests never pay for it); failures are reported."""
    status = {}
    for domain in domains:
        status[domain] = domain_status(domain)
        diffusion_status(domain)
        log.info("preload %s: %s", domain, status[domain])
    return status


# ---------------------------------------------------------------- requests


def source_codes(editor, image, seed: int, align):
    """The codes of the photo, or with no photo of the seed's random sample."""
    return editor.sample(seed) if image is None else editor.encode_image(image, align=bool(align))


def codes_image(codes) -> Image.Image:
    """The picture a source's codes came from (the render or photo input, else the decoded sample)."""
    x = codes.input_image if codes.input_image is not None else codes.image
    return tensor_to_pil(x[0].float().cpu())


def sample(domain: str, seed) -> Image.Image:
    """The seeded random source of a domain, as a picture."""
    seed = check_seed(seed)
    editor = get_editor(domain, "gan")
    with gpu_memory_guard():
        return codes_image(editor.sample(seed))


def edit(
    backbone: str,
    domain: str,
    image=None,
    source: str | None = None,
    target: str = "",
    strength: float | None = None,
    threshold: float | None = None,
    seed=0,
    align: bool = True,
    steps: int | None = None,
    example_a=None,
    example_b=None,
    reference=None,
    keep_plan: bool = False,
) -> EditView:
    """Edit a photo (path, bytes or PIL) or, with no image, the seeded random sample.

    `target` holds one prompt per line; each gives one edited image. Pictures can say what to
    change too (alongside the text, or instead of it): `example_a` and `example_b` (do to the face
    what changes A into B) and `reference` (move the face toward it). With `keep_plan`, the edit
    returns its plan (`view.extra["plan"]`: Δs, and for DeltaEdit-D the inverted input, on the
    CPU so that it can leave a ZeroGPU worker) so that `redraw` can show it at another strength.
    """
    check_backbone(backbone)
    t0 = time.perf_counter()
    pictures = example_pictures(example_a, example_b, reference)
    # Text and cost are checked before any model (or tokenizer) sees the request.
    lines = normalise_targets(target) if (target or "").strip() or not pictures else []
    normalise_source(source)
    if backbone == "diffusion":
        steps = check_diffusion_work(steps if steps is not None else 50, len(lines) + len(pictures))
    seed = check_seed(seed)
    editor = get_editor(domain, backbone)
    plan = None
    with gpu_memory_guard(), upload_errors(image, example_a, example_b, reference):
        codes = source_codes(editor, image, seed, align)
        kwargs = dict(
            codes=codes,
            targets=target if lines else None,
            source=source,
            strength=strength,
            threshold=threshold,
            align=bool(align),
            **pictures,
        )
        if backbone == "diffusion":
            kwargs["steps"] = steps if steps is not None else 50
        if keep_plan and hasattr(editor, "plan"):  # a plan `redraw` can reuse
            plan = editor.plan(**kwargs)
            result = editor.decode_plan(plan)
            plan = moved_to(plan, "cpu")
        else:
            result = editor.edit(**kwargs)
    seconds = time.perf_counter() - t0
    view = EditView(
        backbone=backbone,
        source_image=result.source_image,
        edited_images=list(result.edited_images),
        targets=list(result.targets),
        files=[],
        notices=list(result.notices) + _nothing_changed(domain, result, len(lines)),
        seconds=seconds,
        extra={"timings": dict(result.timings), "seed": None if image is not None else seed, "plan": plan},
        input_image=codes_image(codes),
        strength=result.strength,
        threshold=result.threshold,
    )
    view.summary = summary_text(view, result.source_text, result.strength, result.threshold, kwargs.get("steps"))
    if image is None:
        view.summary += f"\n\nSource: random sample, seed {seed}."
    return view


def example_pictures(example_a=None, example_b=None, reference=None) -> dict:
    """The picture arguments of an editor's `edit`: {"example": (A, B), "reference": R}, as given."""
    if (example_a is None) != (example_b is None):
        raise InputError("an edit by example needs both pictures: A (before) and B (after)")
    pictures = {}
    if example_a is not None:
        pictures["example"] = (example_a, example_b)
    if reference is not None:
        pictures["reference"] = reference
    return pictures


def redraw(token, strength) -> EditView:
    """The edit `PLANS` keeps under `token`, decoded at `strength` (`redraw_plan`)."""
    domain, plan = PLANS.get(token)
    return redraw_plan(domain, plan, strength)


def redraw_plan(domain: str, plan, strength) -> EditView:
    """A kept edit (`edit(keep_plan=True)`) decoded at `strength`: one generator decode for
    DeltaEdit-G, one DDIM decoding pass from the kept inversion for DeltaEdit-D. The summary counts
    the mapper runs the redraw made (none)."""
    t0 = time.perf_counter()
    backbone = plan_backbone(plan)
    editor = get_editor(domain, backbone)
    gan = editor.gan if backbone == "diffusion" else editor
    runs = [0]
    hook = gan.mapper.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    try:
        with gpu_memory_guard():
            result = editor.decode_plan(moved_to(plan, gan.device), strength)
    finally:
        hook.remove()
    seconds = time.perf_counter() - t0
    view = EditView(
        backbone=backbone,
        source_image=result.source_image,
        edited_images=list(result.edited_images),
        targets=list(result.targets),
        files=[],
        notices=[],
        seconds=seconds,
        extra={"mapper_runs": runs[0]},
        strength=result.strength,
        threshold=result.threshold,
    )
    work = "no text or encoder work" if backbone == "gan" else "no text, encoder or inversion work"
    view.summary = (
        f"**{BACKBONE_NAMES[backbone]}**: {len(view.targets)} edit(s) redrawn at strength {result.strength:g} in"
        f" **{seconds:.2f} s** from the kept edit (mapper runs: {runs[0]}; {work})."
    )
    return view


def sweep(
    backbone: str,
    domain: str,
    image=None,
    source: str | None = None,
    target: str = "",
    strength: float | None = None,
    threshold: float | None = None,
    seed=0,
    align: bool = True,
    steps: int | None = None,
    count: int = 7,
) -> SweepView:
    """The first target line's edit at `count` strengths from 0 to twice `strength` (the backbone's
    default when None), in one batched decode (DeltaEdit-D: one inversion, one DDIM pass)."""
    check_backbone(backbone)
    t0 = time.perf_counter()
    lines = normalise_targets(target)[:1]
    normalise_source(source)
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise InputError(f"the sweep's number of frames must be a whole number, got {count!r}") from None
    if not 2 <= count <= MAX_SWEEP_FRAMES:
        raise InputError(f"a sweep has 2 to {MAX_SWEEP_FRAMES} frames, got {count}")
    request = {}
    if backbone == "diffusion":
        request["steps"] = check_diffusion_work(steps if steps is not None else 50, count)
    seed = check_seed(seed)
    editor = get_editor(domain, backbone)
    with gpu_memory_guard(), upload_errors(image):
        codes = source_codes(editor, image, seed, align)
        result = editor.sweep(
            count=count, codes=codes, targets=lines, source=source, strength=strength, threshold=threshold,
            align=bool(align), **request,
        )  # fmt: skip
    frames = [(frame, f"{a:.2f}") for frame, a in zip(result.frames, result.strengths)]  # each frame's strength
    animation = OUTPUTS.save_animation([f for f, _ in frames], f"sweep-{backbone}-{result.target}")
    seconds = time.perf_counter() - t0
    summary = (
        f"**{check_backbone(backbone)}**: “{shorten(result.target)}” at {count} strengths from 0 to"
        f" {result.strengths[-1]:g} in **{seconds:.2f} s** (one batched decode)."
    )
    summary += "".join(f"\n- ⚠️ {shorten(n)}" for n in dict.fromkeys(result.notices))
    return SweepView(frames, animation, summary)


def _nothing_changed(domain: str, result, text_rows: int | None = None) -> list[str]:
    """A notice per target that changed nothing measurable (a target equal to the source text has
    the library's own notice), naming the nearest phrases the domain knows."""
    notices = []
    text_rows = len(result.targets) if text_rows is None else text_rows  # picture rows have no phrase
    delta_s = getattr(result, "delta_s", None)
    same = " ".join((result.source_text or "").lower().split())
    for i in vocabulary.unchanged_targets(result):
        if i >= text_rows:
            continue
        target = result.targets[i]
        if " ".join(target.lower().split()) == same:
            continue
        zero_delta = delta_s is not None and not bool(delta_s[i].abs().sum() > 0)
        notices.append(
            vocabulary.nothing_changed_notice(domain, shorten(target), result.threshold, zero_delta)
        )
    return notices


def compare(
    domain: str,
    image=None,
    source: str | None = None,
    target: str = "",
    strength: float | None = None,
    threshold: float | None = None,
    seed=0,
    align: bool = True,
    steps: int = 50,
    example_a=None,
    example_b=None,
    reference=None,
) -> CompareView:
    """Both backbones on the same input and the first target line; D may be unavailable.

    A `strength` or `threshold` of None lets each backbone use its own default for the domain.
    `example_a`/`example_b` and `reference` are `edit`'s pictures; each backbone's first edit is
    the one compared.
    """
    first = next((line.strip() for line in (target or "").splitlines() if line.strip()), "")
    common = dict(
        domain=domain,
        image=image,
        source=source,
        target=first,
        strength=strength,
        threshold=threshold,
        seed=seed,
        align=align,
        example_a=example_a,
        example_b=example_b,
        reference=reference,
    )
    gan = edit("gan", **common)
    lines = [
        "| backbone | strength | threshold | time |\n| --- | --- | --- | --- |\n"
        f"| DeltaEdit-G | {gan.strength:g} | {gan.threshold:g} | {gan.seconds:.2f} s |"
    ]
    try:
        diffusion = edit("diffusion", steps=steps, **common)
        lines[0] += (
            f"\n| DeltaEdit-D ({steps} steps) | {diffusion.strength:g} | {diffusion.threshold:g}"
            f" | {diffusion.seconds:.2f} s |"
        )
    except WeightsError as exc:
        diffusion = None
        lines.append(f"**DeltaEdit-D:** {str(exc).split('. ', 1)[0]}.")
    if gan.extra.get("seed") is not None:
        lines.append(f"Input: random sample, seed {gan.extra['seed']}.")
    if len((target or "").strip().splitlines()) > 1:
        lines.append(f"Compare uses the first target line only: “{first}”.")
    if len(gan.targets) > 1:
        lines.append(f"Compared: the first edit, “{shorten(gan.targets[0])}”.")
    notices = dict.fromkeys(gan.notices + (diffusion.notices if diffusion else []))
    lines += [f"- ⚠️ {shorten(n)}" for n in notices]
    shown = gan.input_image if gan.input_image is not None else gan.source_image
    return CompareView(shown, gan, diffusion, "\n\n".join(lines))


def deltaspace_report(count: int = 64, tsne_iter: int = 300) -> dict:
    """The toy domain's DeltaSpace report (`deltaedit.deltaspace_report`), computed on `DEVICE`."""
    return _deltaspace.deltaspace_report(DEVICE, count, tsne_iter)
