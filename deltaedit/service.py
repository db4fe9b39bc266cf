"""The thin layer between the Gradio page (`app.py`) and the library: no gradio here.

It validates what a page or API request sends, picks the shared cached editor, runs the edit and
turns the library's result into what the page shows (images, captions, PNG files to download, a
short Markdown summary with the time taken and the notices). Library errors (`DeltaEditError`)
pass through unchanged; `app.py` turns them into `gr.Error`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from . import vocabulary, weights
from .api import load_editor
from .config import list_domains, load_domain_config
from .errors import DeltaEditError, InputError, WeightsError
from .fileio import atomic_write
from .imageio import tensor_to_pil
from .pipelines.diffusion_editor import DiffusionPlan
from .pipelines.gan import normalise_source, normalise_targets
from .pipelines.plans import moved_to

log = logging.getLogger(__name__)

# On CUDA machines (ZeroGPU included: `spaces` makes CUDA visible at import) the models live on
# the GPU from the start; elsewhere on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKBONE_NAMES = {"gan": "DeltaEdit-G", "diffusion": "DeltaEdit-D"}
D_UNAVAILABLE = "DeltaEdit-D weights are not available for this domain"
MAX_SEED = 2**31 - 1
REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_OF_MEMORY = (
    "The GPU ran out of memory: try fewer target lines, fewer DDIM steps or a smaller photo, or try"
    " again in a minute."
)
# What one public DeltaEdit-D request may cost: the DDIM-steps slider's range, and DDIM steps times
# target lines (16 lines at 50 steps, or 4 at 200), so no single request holds the queue for long.
MAX_DDIM_STEPS = 200
MAX_DIFFUSION_WORK = 800
MAX_SWEEP_FRAMES = 12
MAX_NOTICE_CHARS = 300  # a 10,000-character prompt must not fill the page (or the log) twice over
# A report computed offline (`python -m deltaedit analyze --domain toy --out assets/deltaspace`).
CACHED_REPORT_DIR = REPO_ROOT / "assets" / "deltaspace"


# ---------------------------------------------------------------- domains and models


def domain_choices() -> list[tuple[str, str]]:
    """(label, id) pairs for a dropdown, the built-in toy domain first."""
    ids = sorted(list_domains(), key=lambda d: (d != "toy", d))
    return [(load_domain_config(d).label, d) for d in ids]


def check_domain(domain) -> str:
    if domain not in list_domains():
        raise InputError(f"unknown domain {domain!r}; choose one of: {', '.join(list_domains())}")
    return domain


def neutral_text(domain: str) -> str:
    return load_domain_config(check_domain(domain)).neutral_text


def edit_defaults(domain: str, backbone: str = "gan") -> tuple[float, float]:
    """(strength, threshold) a `backbone` edit in `domain` uses when the caller gives none."""
    defaults = load_domain_config(check_domain(domain)).defaults_for(backbone)
    return defaults.strength, defaults.threshold


def example_prompts(domain: str) -> list[str]:
    return list(load_domain_config(check_domain(domain)).example_prompts)


def known_phrases(domain: str) -> list[str]:
    """The prompts the domain's text encoder was trained on ([] when it knows any phrase, e.g. FFHQ)."""
    return vocabulary.known_phrases(check_domain(domain)) or []


def aligns_faces(domain: str) -> bool:
    """Whether the "align face" option does anything in `domain` (FFHQ photos; not the toy faces)."""
    return load_domain_config(check_domain(domain)).align_faces


def defaults_note(domain: str) -> str:
    """One Markdown line: what strength and threshold each backbone uses by default in `domain`."""
    parts = []
    for backbone, name in BACKBONE_NAMES.items():
        strength, threshold = edit_defaults(domain, backbone)
        parts.append(f"{name} strength {strength:g}, threshold {threshold:g}")
    return "Each backbone runs with its own defaults (" + "; ".join(parts) + ") unless you move a slider."


# Example requests the page offers, per tab: (image file under assets/examples, source, target).
# Each one changes the picture visibly on the shipped toy weights (tests/test_service.py checks it
# with the toy attribute classifier); `python scripts/make_toy_examples.py` writes the pictures.
EXAMPLES: dict[str, list[tuple[str, str, str]]] = {
    "gan": [
        ("toy_black_hair.png", "face", "face with a smile"),
        ("toy_black_hair.png", "face with black hair", "face with blond hair"),
        ("toy_brown_hair.png", "face", "face with eyeglasses"),
        ("toy_glasses.png", "face", "face with bangs\nface with red hair\nface with tanned skin"),
        ("toy_red_hair.png", "face with red hair", "face with black hair"),
    ],
    "diffusion": [
        ("toy_brown_hair.png", "face", "face with eyeglasses"),
        ("toy_black_hair.png", "face with black hair", "face with blond hair"),
    ],
    "compare": [
        ("toy_black_hair.png", "face", "face with eyeglasses"),
        ("toy_brown_hair.png", "face with brown hair", "face with blond hair"),
        ("toy_glasses.png", "face", "face with bangs"),
        ("toy_red_hair.png", "face", "face with a smile"),
    ],
}
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"


def examples(kind: str) -> list[tuple[Path, str, str]]:
    """The toy examples of one tab ("gan", "diffusion", "compare") as (image path, source, target)."""
    return [(EXAMPLES_DIR / name, source, target) for name, source, target in EXAMPLES[kind]]


# The app reads weights from $DELTAEDIT_WEIGHTS_DIR and the download cache; it has no --weights-dir.
HOW_TO_ADD_WEIGHTS = (
    "put them, with these file names, in one folder and start the app with DELTAEDIT_WEIGHTS_DIR set to"
    " that folder, or run `python -m deltaedit download --domain {domain}` on a machine with internet"
    " access (it fills the cache the app reads)"
)


def for_the_page(text: str) -> str:
    """A library message as the page says it: the app is told where weights are by
    DELTAEDIT_WEIGHTS_DIR only, so the command-line option is not offered."""
    text = text.replace("pass --weights-dir DIR or set DELTAEDIT_WEIGHTS_DIR=DIR", "set DELTAEDIT_WEIGHTS_DIR=DIR")
    text = re.sub(r" --weights-dir DIR(`)", r"\1", text)
    text = text.replace(" (or --weights-dir DIR)", "")
    return re.sub(r"(in )?--weights-dir( DIR)?", "in the DELTAEDIT_WEIGHTS_DIR folder", text)


def missing_weights(domain: str) -> list:
    """The weight files DeltaEdit-G of `domain` needs and this machine lacks (no network access)."""
    return weights.missing_for_domain(load_domain_config(check_domain(domain)))


def _missing_weights_error(domain: str, exc: WeightsError) -> WeightsError:
    """A missing-weights error as one short sentence (the page's status lists the files)."""
    missing = missing_weights(domain)
    if not missing:
        return WeightsError(for_the_page(str(exc)))
    label = load_domain_config(domain).label
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return WeightsError(
        f"{label}: {len(missing)} weight files are missing ({missing[0].filename}{more}), so nothing can"
        " be edited here yet. The status next to the Domain menu lists them and how to add them."
    )


# Examples of domains whose photos are not shipped: generator samples by seed, (seed, source, target)
# per tab. Offered only where `samples_available` says the weights are here.
SAMPLE_EXAMPLES: dict[str, dict[str, list[tuple[int, str, str]]]] = {
    "ffhq": {
        "gan": [
            (3, "face", "face with a smile"),
            (7, "face", "face with a smile\nface with blond hair\nface with eyeglasses"),
            (11, "face with black hair", "face with blond hair"),
        ],
        "compare": [(3, "face", "face with eyeglasses")],
    },
}


def sample_examples(domain: str, kind: str) -> list[tuple[int, str, str]]:
    """One tab's sample examples of `domain` as (seed, source, target); none when absent."""
    return list(SAMPLE_EXAMPLES.get(check_domain(domain), {}).get(kind, []))


def samples_available(domain: str) -> bool:
    """Whether the weights for editing `domain`'s generator samples are here (no network, no
    loading): every file but the photo encoder and the face landmarks, which only photos need."""
    cfg = load_domain_config(check_domain(domain))
    photo_only = {cfg.weights.get("e4e"), cfg.weights.get("landmarks")}
    return not [m for m in weights.missing_for_domain(cfg) if m.tag not in photo_only]


def get_editor(domain: str, backbone: str = "gan"):
    """The process-wide cached editor (the library caches it); missing weights say so in one sentence."""
    domain = check_domain(domain)
    label = load_domain_config(domain).label
    if backbone != "diffusion":
        try:
            return load_editor(domain, backbone, DEVICE)
        except WeightsError as exc:
            raise _missing_weights_error(domain, exc) from exc
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


# ---------------------------------------------------------------- outputs


def _remove_if_owner(folder: Path, pid: int) -> None:
    # Forked workers (ZeroGPU runs GPU calls in one) inherit atexit hooks: only the creator cleans.
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


class OutputStore:
    """PNG files offered for download, in one temp folder removed at exit; old files are pruned."""

    def __init__(self, max_age_s: float = 3600.0):
        self.max_age_s = max_age_s
        self._dir: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="deltaedit-app-"))
                atexit.register(_remove_if_owner, self._dir, os.getpid())
            return self._dir

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for old in [*self.path.glob("*.png"), *self.path.glob("*.gif")]:
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:  # pruned by a concurrent request
                pass

    def save_animation(self, frames: list[Image.Image], stem: str) -> Path:
        """A looping GIF of `frames` for download (named like `save`'s PNGs)."""
        from .imageio import save_animation

        self.prune()
        safe = "".join(c if c.isalnum() else "_" for c in stem)[:40].strip("_") or "sweep"
        return save_animation(frames, self.path / f"{safe}-{uuid.uuid4().hex[:8]}.gif")

    def save(self, image: Image.Image, stem: str) -> Path:
        self.prune()
        safe = "".join(c if c.isalnum() else "_" for c in stem)[:40].strip("_") or "edit"
        path = self.path / f"{safe}-{uuid.uuid4().hex[:8]}.png"
        with atomic_write(path) as tmp:
            image.save(tmp, format="PNG")
        return path


OUTPUTS = OutputStore()


# ---------------------------------------------------------------- requests


class OutOfMemory(DeltaEditError):
    """The accelerator ran out of memory for this request (the next, smaller one may work)."""


@contextlib.contextmanager
def gpu_memory_guard():
    """CUDA out-of-memory becomes a clear `OutOfMemory`; the allocator's cache is released so the
    next request starts from a clean slate instead of failing too."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        log.warning("out of memory: %s", str(exc).splitlines()[0] if str(exc) else exc)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(OUT_OF_MEMORY) from exc


@contextlib.contextmanager
def upload_errors(image=None, example_a=None, example_b=None, reference=None):
    """Messages about uploaded files name them ("the uploaded image", "example picture A", ...),
    never the server's temp path."""
    named = (
        (image, "the uploaded image"), (example_a, "example picture A"), (example_b, "example picture B"),
        (reference, "the reference picture"),
    )  # fmt: skip
    try:
        yield
    except InputError as exc:
        message = str(exc)
        for path, name in named:
            if isinstance(path, (str, os.PathLike)) and str(path) in message:
                message = message.replace(f"Image file {path}", name[:1].upper() + name[1:])
                message = message.replace(f"image file {path}", name).replace(str(path), name)
        if message == str(exc):
            raise
        raise type(exc)(message[:1].upper() + message[1:]) from exc


def check_backbone(backbone) -> str:
    """The display name of a backbone id ("gan", "diffusion"); an InputError for any other."""
    if backbone not in BACKBONE_NAMES:
        raise InputError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONE_NAMES)}")
    return BACKBONE_NAMES[backbone]


def source_codes(editor, image, seed: int, align):
    """The codes of the photo, or with no photo of the seed's random sample."""
    return editor.sample(seed) if image is None else editor.encode_image(image, align=bool(align))


def _short(text: str) -> str:
    """`text` cut in the middle to MAX_NOTICE_CHARS: notices quote the prompt first, their reason last."""
    if len(text) <= MAX_NOTICE_CHARS:
        return text
    half = MAX_NOTICE_CHARS // 2
    return f"{text[:half]} … {text[-half:]}"


def check_seed(seed) -> int:
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise InputError(f"the seed must be a whole number between 0 and {MAX_SEED}, got {seed!r}") from None
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise InputError(f"the seed must be a whole number between 0 and {MAX_SEED}, got {seed!r}")
    return int(value)


def check_diffusion_work(steps, n_targets: int) -> int:
    """DDIM `steps` as a whole number within the app's bounds for `n_targets` target lines."""
    try:
        value = float(steps)
    except (TypeError, ValueError):
        raise InputError(f"DDIM steps must be a whole number, got {steps!r}") from None
    if not value.is_integer() or not 1 <= value <= MAX_DDIM_STEPS:
        raise InputError(f"DDIM steps must be a whole number from 1 to {MAX_DDIM_STEPS}, got {steps!r}")
    if value * n_targets > MAX_DIFFUSION_WORK:
        raise InputError(
            f"DeltaEdit-D: DDIM steps x target lines may be at most {MAX_DIFFUSION_WORK} per request"
            f" (got {int(value)} x {n_targets} = {int(value) * n_targets}); use fewer steps or fewer lines"
        )
    return int(value)


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


@dataclass
class EditView:
    """An edit as the page shows it."""

    backbone: str
    source_image: Image.Image
    edited_images: list[Image.Image]
    targets: list[str]
    files: list[Path]
    notices: list[str]
    seconds: float
    summary: str = ""
    extra: dict = field(default_factory=dict)
    input_image: Image.Image | None = None  # what was edited: the photo as the model saw it, or the sample
    strength: float | None = None  # the values the edit used (the domain's defaults when given None)
    threshold: float | None = None

    @property
    def gallery(self) -> list[tuple[Image.Image, str]]:
        return list(zip(self.edited_images, self.targets))


def _summary(view: EditView, source_text: str, strength: float, threshold: float, steps) -> str:
    name = BACKBONE_NAMES[view.backbone]
    knobs = f"strength {strength:g}, threshold {threshold:g}" + (f", {steps} DDIM steps" if steps else "")
    lines = [
        f"**{name}**: {len(view.targets)} edit(s) in **{view.seconds:.2f} s** ({knobs}; source text “{_short(source_text)}”)."
    ]
    lines += [f"- ⚠️ {_short(n)}" for n in view.notices]
    return "\n".join(lines)


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
    view.summary = _summary(view, result.source_text, result.strength, result.threshold, kwargs.get("steps"))
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


class PlanStore:
    """The last edit of each of the page's sessions, kept so that moving the strength slider
    redraws it without text, mapper, encoder or inversion work. Bounded: the oldest goes first; a
    session's own is dropped when its page closes (the app's `unload` event)."""

    def __init__(self, max_plans: int = 16):
        self.max_plans = max_plans
        self._plans: dict[str, tuple[str, object]] = {}
        self._lock = threading.Lock()

    def keep(self, domain: str, plan, token: str | None = None) -> str:
        """Keep `plan` under `token` (the page's session; a new one when None), replacing its last."""
        token = token or uuid.uuid4().hex
        with self._lock:
            self._plans.pop(token, None)  # the newest goes last: evicted last
            self._plans[token] = (domain, plan)
            while len(self._plans) > self.max_plans:
                self._plans.pop(next(iter(self._plans)))
        return token

    def get(self, token) -> tuple[str, object]:
        with self._lock:
            kept = self._plans.get(token) if isinstance(token, str) else None
        if kept is None:
            raise InputError("the edit to redraw is no longer kept (the page was idle, or the server restarted): press Edit again")
        return kept

    def has(self, token) -> bool:
        with self._lock:
            return isinstance(token, str) and token in self._plans

    def backbone(self, token) -> str | None:
        """Which backbone's edit `token` keeps ("gan", "diffusion"), or None."""
        with self._lock:
            kept = self._plans.get(token) if isinstance(token, str) else None
        return None if kept is None else plan_backbone(kept[1])

    def drop(self, token) -> None:
        with self._lock:
            self._plans.pop(token, None) if isinstance(token, str) else None

    def __len__(self) -> int:
        return len(self._plans)


PLANS = PlanStore()


def plan_backbone(plan) -> str:
    """The backbone a kept plan decodes with."""
    return "diffusion" if isinstance(plan, DiffusionPlan) else "gan"


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


@dataclass
class SweepView:
    frames: list[tuple[Image.Image, str]]  # (picture, caption "strength x")
    animation: Path
    summary: str


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
        f"**{check_backbone(backbone)}**: “{_short(result.target)}” at {count} strengths from 0 to"
        f" {result.strengths[-1]:g} in **{seconds:.2f} s** (one batched decode)."
    )
    summary += "".join(f"\n- ⚠️ {_short(n)}" for n in dict.fromkeys(result.notices))
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
            vocabulary.nothing_changed_notice(domain, _short(target), result.threshold, zero_delta)
        )
    return notices


def save_files(view: EditView) -> EditView:
    """Write the edited images as PNGs for download (in the web process, not a GPU worker)."""
    view.files = [
        OUTPUTS.save(img, f"{view.backbone}-{t}") for img, t in zip(view.edited_images, view.targets)
    ]
    return view


@dataclass
class CompareView:
    source_image: Image.Image  # the input both backbones edited (the photo, or the seed's sample)
    gan: EditView
    diffusion: EditView | None
    summary: str


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
        lines.append(f"Compared: the first edit, “{_short(gan.targets[0])}”.")
    notices = dict.fromkeys(gan.notices + (diffusion.notices if diffusion else []))
    lines += [f"- ⚠️ {_short(n)}" for n in notices]
    shown = gan.input_image if gan.input_image is not None else gan.source_image
    return CompareView(shown, gan, diffusion, "\n\n".join(lines))


_G_ROW = re.compile(r"^\| DeltaEdit-G \|[^|]*\|[^|]*\| ([0-9.]+ s) \|", re.M)
_D_ROW = re.compile(r"^\| DeltaEdit-D \(\d+ steps\) \|[^|]*\|[^|]*\| ([0-9.]+ s) \|", re.M)
_SAMPLE = re.compile(r"^Input: random sample, seed (\d+)\.", re.M)


def compare_labels(summary: str) -> tuple[str, str, str]:
    """Captions for the Compare pictures (input, DeltaEdit-G, DeltaEdit-D), read back from the
    summary `compare` wrote: what the input is, and each backbone's time."""
    sample_seed = _SAMPLE.search(summary)
    g, d = _G_ROW.search(summary), _D_ROW.search(summary)
    if not summary:
        return "Input", "DeltaEdit-G", "DeltaEdit-D"
    shown = f"Input (random sample, seed {sample_seed.group(1)})" if sample_seed else "Input (the photo)"
    g_label = f"DeltaEdit-G · {g.group(1)}" if g else "DeltaEdit-G"
    d_label = f"DeltaEdit-D · {d.group(1)}" if d else "DeltaEdit-D · not available"
    return shown, g_label, d_label


# ---------------------------------------------------------------- DeltaSpace report

_REPORT_LOCK = threading.Lock()
_REPORT: dict | None = None


def deltaspace_report(count: int = 64, tsne_iter: int = 300) -> dict:
    """The toy domain's DeltaSpace alignment report: {'table', 'report', 'pictures'}.

    Read from `assets/deltaspace/report.json` when it exists (`python -m deltaedit analyze --domain
    toy --out assets/deltaspace` writes it), else computed once per process from `count` toy
    renders and captions through the toy CLIP: each caption costs 79 template encodings, so
    `count` stays small (about 10-60 s on a 2-core CPU).
    """
    global _REPORT
    with _REPORT_LOCK:
        if _REPORT is None:
            _REPORT = _load_cached_report() or _compute_report(count, tsne_iter)
        return _REPORT


def _bundle(report: dict, folder: Path) -> dict:
    from .analysis import format_table

    pictures = [folder / f"{kind}_tsne.png" for kind in ("raw", "delta")]
    return {"table": format_table(report), "report": report, "pictures": [p for p in pictures if p.is_file()]}


def _load_cached_report() -> dict | None:
    import json

    path = CACHED_REPORT_DIR / "report.json"
    if not path.is_file():
        return None
    try:
        return _bundle(json.loads(path.read_text()), CACHED_REPORT_DIR)
    except (ValueError, KeyError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def _compute_report(count: int, tsne_iter: int) -> dict:
    from . import analysis

    image, text = analysis.toy_features(count, render_seed=0, device=DEVICE)
    report = analysis.alignment_report(image, text, seed=0)
    delta = analysis.pair_deltas(image, text, seed=0)
    out = OUTPUTS.path / "deltaspace"
    analysis.write_report(report, out, raw=(image, text), delta=delta, tsne_iter=tsne_iter)
    return _bundle(report, out)
