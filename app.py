"""DeltaEdit: text-guided image editing in DeltaSpace — the Gradio app (Hugging Face Space).

UI only: the page, its events and thin callbacks. `deltaedit.service` does the requests, the
library the editing. `python app.py` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT override it; Spaces set 0.0.0.0). Public API (gradio_client), keyword names:

    /edit_gan(domain, image, source, target, strength, threshold, seed, align)
    /edit_diffusion(domain, image, source, target, strength, threshold, steps, seed, align)
    /compare(domain, image, source, target, strength, threshold, steps, seed, align)
    /sample(domain, seed)

`domain` is an id ("toy", "ffhq"); with no `image` the seed draws a random sample. /compare
returns (input, DeltaEdit-G edit, DeltaEdit-D edit or None, Markdown summary with each one's time).
"""

from __future__ import annotations

# ZeroGPU: `spaces` must be imported before torch touches CUDA; GPU work runs in @spaces.GPU calls.
# Elsewhere the decorator does nothing, and without the package we skip it.
try:
    import spaces
except ImportError:
    spaces = None

import functools
import logging
import math
import os
import random
import reprlib
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import PIL.Image
import torch
from starlette.middleware import Middleware

from deltaedit import imageio, service
from deltaedit.errors import DeltaEditError
from deltaedit.pipelines.gan import MAX_PROMPT_CHARS, MAX_TARGETS
from deltaedit.request_guard import BlocksEndpoints, Limits, RequestGuard, parse_size

log = logging.getLogger("deltaedit.app")

# ZeroGPU attaches the GPU and moves the weights onto it per call: a captured CUDA graph would keep
# the addresses of the call that captured it, so DeltaEdit-D runs its UNet eagerly there.
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
if ZERO_GPU:
    os.environ.setdefault("DELTAEDIT_CUDA_GRAPHS", "0")
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
PAPER = "https://arxiv.org/abs/2310.08785"
DEFAULT_DOMAIN = "toy"
# CPU: torch already spreads one edit over every core, so a second concurrent edit only slows
# both down. CUDA: two, so one request's CPU pre/post-processing overlaps another's GPU work.
CONCURRENCY = int(os.environ.get("DELTAEDIT_CONCURRENCY", "2" if torch.cuda.is_available() else "1"))
QUEUE_SIZE = int(os.environ.get("DELTAEDIT_QUEUE_SIZE", "32"))
# Uploads larger than this are refused by Gradio's upload route (a 12 MP JPEG is about 8 MB).
MAX_UPLOAD = os.environ.get("DELTAEDIT_MAX_UPLOAD", "20mb")
# How many edits one visitor (one address) may have waiting or running at once.
JOBS_PER_CLIENT = int(os.environ.get("DELTAEDIT_JOBS_PER_CLIENT", "3"))
# The events whose calls count as a visitor's jobs: the edits, not the page's small UI events.
JOBS = {
    "edit_gan", "edit_diffusion", "compare", "sample", "show_deltaspace", "change_domain", "show_seed_sample",
}  # fmt: skip
# Pillow's own decompression-bomb error fires at twice this: exactly our pixel limit, for any
# decode that does not go through deltaedit.imageio (Gradio's own, for one).
PIL.Image.MAX_IMAGE_PIXELS = imageio.DEFAULT_MAX_PIXELS // 2


def upload_folder() -> str:
    """Where Gradio stores uploads (and its cache): the only folder file inputs may name."""
    return os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")


def on_gpu(duration: int):
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# Models load at import: the toy domain always (packaged, no download), others listed in
# DELTAEDIT_PRELOAD (the hosted Space sets ffhq). Failures become a message on the page.
PRELOAD = [DEFAULT_DOMAIN] + [
    d.strip()
    for d in os.environ.get("DELTAEDIT_PRELOAD", "").split(",")
    if d.strip() not in ("", DEFAULT_DOMAIN)
]
STATUS = service.preload(PRELOAD)
service.OUTPUTS.path  # noqa: B018 - create the download folder in this process, before any GPU worker forks


# ---------------------------------------------------------------- GPU work (returns CPU/PIL data)


@on_gpu(duration=60)
def _gpu_edit(backbone, **request):
    return service.edit(backbone, **request)


@on_gpu(duration=30)
def _gpu_redraw(domain, plan, strength):
    # The plan is passed in (CPU tensors), not looked up: a ZeroGPU worker does not share the
    # main process's store.
    return service.redraw_plan(domain, plan, strength)


@on_gpu(duration=120)
def _gpu_sweep(backbone, **request):
    return service.sweep(backbone, **request)


@on_gpu(duration=120)
def _gpu_compare(**request):
    return service.compare(**request)


@on_gpu(duration=30)
def _gpu_sample(domain, seed):
    return service.sample(domain, seed)


@on_gpu(duration=120)
def _gpu_deltaspace():
    return service.deltaspace_report()


# ---------------------------------------------------------------- callbacks


def user_errors(fn):
    """Library errors become a readable gr.Error (never a traceback on the page)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except DeltaEditError as exc:
            raise gr.Error(str(exc)) from exc
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). Please try again.") from exc

    return wrapper


# Notices (a target that changed nothing, a cut prompt) are listed in the run's summary only: one
# place, replaced by the next run, instead of pop-ups that pile up over the page.
def _edit_outputs(view: service.EditView):
    service.save_files(view)
    before_after = (view.source_image, view.edited_images[0])
    return before_after, view.gallery, [str(p) for p in view.files], view.summary


# Long work reports progress: gradio shows `desc` at once, then follows the library's tqdm bars
# (DDIM steps, refinement steps, first-use weight downloads with file name and megabytes).
def _start(progress, what: str) -> None:
    progress(0, desc=what)


@user_errors
def edit_gan(
    domain, image, source, target, strength, threshold, seed, align=True,
    request: gr.Request = None,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's injection idiom
):  # fmt: skip
    """DeltaEdit-G: edit `image` (or, with no image, the sample drawn by `seed`) toward each target line.

    Returns (before/after pair, gallery of every edit, PNG files, Markdown summary with the time).
    The edit is kept for the session, so that moving the strength slider redraws it (`redraw_edit`).
    """
    _start(progress, "DeltaEdit-G: editing")
    return _edit_kept(
        request, "gan", domain=domain, image=image, source=source, target=target, strength=strength,
        threshold=threshold, seed=seed, align=align,
    )  # fmt: skip


def _edit_kept(request, backbone: str, **edit_request):
    """One edit whose plan is kept for the page's session (the live strength slider redraws it)."""
    view = _gpu_edit(backbone, keep_plan=True, **edit_request)
    session = getattr(request, "session_hash", None)
    if session and view.extra.get("plan") is not None:
        service.PLANS.keep(edit_request["domain"], view.extra["plan"], token=session)
    return _edit_outputs(view)


def redraw_edit(strength, backbone, request: gr.Request = None):
    """The strength slider let go on the DeltaEdit-G or DeltaEdit-D tab: the session's last edit on
    that tab redrawn at the new strength from its kept Δs (DeltaEdit-G: one generator decode;
    DeltaEdit-D: one decoding pass from the kept inversion; no text, mapper or encoder work).
    Returns the G tab's four outputs, then the D tab's; the other tab's are left alone."""
    session = getattr(request, "session_hash", None)
    untouched = (gr.skip(),) * 4
    if backbone not in ("gan", "diffusion") or service.PLANS.backbone(session) != backbone:
        return untouched * 2  # nothing of this session's to redraw on the tab shown
    try:
        outputs = _edit_outputs(_gpu_redraw(*service.PLANS.get(session), strength))
    except DeltaEditError as exc:
        raise gr.Error(str(exc)) from exc
    return (*outputs, *untouched) if backbone == "gan" else (*untouched, *outputs)


def forget_plan(request: gr.Request) -> None:
    service.PLANS.drop(getattr(request, "session_hash", None))


@user_errors
def edit_by_example(
    domain, image, example_a, example_b, reference, source, target, strength, threshold, steps, seed,
    align=True, backbone="gan",
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's injection idiom
):  # fmt: skip
    """Edit by pictures: do to the face what changes `example_a` into `example_b`, and/or move it
    toward `reference`; `target` text lines (optional here) are edited alongside. `backbone`: "gan",
    "diffusion" (`steps` DDIM steps) or "compare" (both; the slider then shows G | D)."""
    request = dict(
        domain=domain, image=image, source=source, target=target, strength=strength, threshold=threshold,
        seed=seed, align=align, example_a=example_a, example_b=example_b, reference=reference,
    )  # fmt: skip
    if backbone == "compare":
        _start(progress, "DeltaEdit-G, then DeltaEdit-D: editing by example")
        return _compare_outputs(_gpu_compare(**request, steps=int(steps)))
    _start(progress, f"{service.check_backbone(backbone)}: editing by example")
    if backbone == "diffusion":
        request["steps"] = int(steps)
    return _edit_outputs(_gpu_edit(backbone, **request))


SLIDER_LABEL = "Before / after (the model's reconstruction | the edit)"


def _compare_outputs(view: service.CompareView):
    """A comparison in an edit tab's four outputs: the slider DeltaEdit-G | DeltaEdit-D (the input
    | DeltaEdit-G without D weights), the input and both edits captioned, both PNGs, the summary."""
    views = [v for v in (view.gan, view.diffusion) if v is not None]
    for v in views:
        service.save_files(v)
    edits = [v.edited_images[0] for v in views]
    pair = (edits[0], edits[1]) if len(edits) == 2 else (view.source_image, edits[0])
    gallery = [(view.source_image, "Input")] + [
        (img, service.BACKBONE_NAMES[v.backbone]) for img, v in zip(edits, views)
    ]
    files = [str(v.files[0]) for v in views]
    shown = "DeltaEdit-G (left) | DeltaEdit-D (right)" if len(edits) == 2 else "the input | DeltaEdit-G"
    return pair, gallery, files, f"{view.summary}\n\nBefore / after slider: {shown}."


@user_errors
def sweep(
    domain, image, source, target, strength, threshold, steps, seed, align=True, backbone="gan", frames=7,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's injection idiom
):  # fmt: skip
    """The first target line's edit at `frames` strengths from 0 to twice `strength`, in one batched
    decode: (the frames with their strengths, a looping GIF of them, Markdown summary)."""
    _start(progress, f"{service.check_backbone(backbone)}: a strength sweep")
    request = dict(
        domain=domain, image=image, source=source, target=target, strength=strength, threshold=threshold,
        seed=seed, align=align, count=int(frames),
    )  # fmt: skip
    if backbone == "diffusion":
        request["steps"] = int(steps)
    view = _gpu_sweep(backbone, **request)
    return view.frames, str(view.animation), view.summary


@user_errors
def example_by_example(domain, image, example_a, example_b, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    strength, threshold = service.edit_defaults(domain, "gan")
    return edit_by_example(
        domain, image, example_a, example_b, None, None, "", strength, threshold, 50, 0, progress=progress
    )


@user_errors
def edit_diffusion(
    domain, image, source, target, strength, threshold, steps, seed, align=True,
    request: gr.Request = None,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's injection idiom
):  # fmt: skip
    """DeltaEdit-D: the same edit decoded by the style-conditioned diffusion model (`steps` DDIM steps).
    The edit and its inversion are kept for the session, so that moving the strength slider redraws it."""
    _start(progress, f"DeltaEdit-D: inverting and sampling ({int(steps)} DDIM steps)")
    return _edit_kept(
        request, "diffusion", domain=domain, image=image, source=source, target=target, strength=strength,
        threshold=threshold, seed=seed, align=align, steps=int(steps),
    )  # fmt: skip


@user_errors
def compare(
    domain, image, source, target, strength, threshold, steps, seed, align=True, sliders_moved=True,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 - gradio's injection idiom
):  # fmt: skip
    """Both backbones on one input and the first target line: (input, G edit, D edit or None, times).

    The page labels the three pictures from the summary (see `relabel`).

    `sliders_moved` (the page's state, not an API parameter): False runs each backbone with its own
    default strength and threshold, because the user has not moved a slider since opening the tab.
    """
    _start(progress, f"DeltaEdit-G, then DeltaEdit-D ({int(steps)} DDIM steps)")
    own = sliders_moved is False
    view = _gpu_compare(
        domain=domain,
        image=image,
        source=source,
        target=target,
        strength=None if own else strength,
        threshold=None if own else threshold,
        steps=int(steps),
        seed=seed,
        align=align,
    )
    d_image = view.diffusion.edited_images[0] if view.diffusion else None
    return view.source_image, view.gan.edited_images[0], d_image, view.summary


def relabel(summary):
    """Label the Compare pictures with what each one is and each backbone's time, read from the
    summary: it is what both a run and a cached example bring (a label update keeps the picture)."""
    return tuple(gr.Image(label=label) for label in service.compare_labels(summary or ""))


@user_errors
def sample(domain, seed):
    """The random source image that `seed` draws in `domain`."""
    return _gpu_sample(domain, seed)


def new_seed():
    return random.randint(0, 999_999)


@user_errors
def show_seed_sample(domain, image, seed):
    """After an edit with no photo: the seed's random sample, the face that edit started from."""
    if image is not None:
        return gr.Image(value=None, visible=False)
    seed = service.check_seed(seed)
    return gr.Image(
        value=_gpu_sample(domain, seed),
        visible=True,
        label=f"Seed {seed}'s random sample: the face the edit started from (no photo given)",
    )


def check_upload(payload):
    """The Photo's upload event: a file that is not an image is said so at once and removed.
    Reads only the file's header (format and size); the raw payload, so nothing is decoded."""
    path = payload.get("path") if isinstance(payload, dict) else None
    hide_sample = gr.Image(value=None, visible=False)
    if not path:
        return gr.skip(), hide_sample
    folder = Path(upload_folder()).resolve()
    if not Path(path).resolve().is_relative_to(folder):
        return None, hide_sample  # not an upload of this page: never read
    try:
        imageio.check_image_file(path)
    except DeltaEditError as exc:
        gr.Warning(_upload_message(exc, path), title="Not an image")
        return None, hide_sample
    return gr.skip(), hide_sample


def _upload_message(exc: Exception, path: str) -> str:
    message = str(exc).replace(f"image file {path}", "the uploaded file").replace(
        f"Image file {path}", "The uploaded file"
    )
    return message[:1].upper() + message[1:]


# Examples run with the domain's defaults for their backbone (seed 0, 50 DDIM steps).
@user_errors
def example_gan(domain, image, source, target, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    strength, threshold = service.edit_defaults(domain, "gan")
    return edit_gan(domain, image, source, target, strength, threshold, 0, progress=progress)


@user_errors
def example_diffusion(domain, image, source, target, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    strength, threshold = service.edit_defaults(domain, "diffusion")
    return edit_diffusion(domain, image, source, target, strength, threshold, 50, 0, progress=progress)


# Sample examples (no photo): the seed's sample is edited.
@user_errors
def example_gan_sample(domain, seed, source, target, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    strength, threshold = service.edit_defaults(domain, "gan")
    return edit_gan(domain, None, source, target, strength, threshold, seed, progress=progress)


@user_errors
def example_compare_sample(domain, seed, source, target, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    return compare(domain, None, source, target, None, None, 50, seed, sliders_moved=False, progress=progress)


@user_errors
def example_compare(domain, image, source, target, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    return compare(domain, image, source, target, None, None, 50, 0, sliders_moved=False, progress=progress)


def tab_defaults(domain, backbone):
    """The sliders follow the selected tab: that backbone's strength and threshold for the domain
    (Compare, By example and Sweep show DeltaEdit-G's), and the sliders count as not moved."""
    strength, threshold = service.edit_defaults(domain, "diffusion" if backbone == "diffusion" else "gan")
    return strength, threshold, False


def change_domain(domain, backbone, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's injection idiom
    progress(0, desc="loading the models (the first use may download them)")
    status = service.domain_status(domain)
    strength, threshold, moved = tab_defaults(domain, backbone)
    phrases = service.known_phrases(domain)
    aligns = service.aligns_faces(domain)
    return (
        status,
        service.diffusion_status(domain),
        strength,
        threshold,
        moved,
        gr.Checkbox(visible=aligns, value=aligns),
        gr.Column(visible=bool(phrases)),
        service.defaults_note(domain),
    )


def use_phrase(sample):
    """A click on a known phrase makes it the target text."""
    return sample[0] if isinstance(sample, (list, tuple)) else sample


@user_errors
def show_deltaspace(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's injection idiom
    progress(0, desc="computing the report (once)")
    bundle = _gpu_deltaspace()
    text = (
        "Paired CLIP features of toy faces and their captions. *paired cos*: image i vs its own caption;"
        " *top-k*: how often an image's own caption is among the k nearest of all captions. Differences"
        " (delta rows) should line up better than the raw features: that is the DeltaSpace claim.\n\n"
        f"```\n{bundle['table']}\n```"
    )
    captions = {"raw": "Raw features: images and captions", "delta": "Differences (DeltaSpace)"}
    return text, [(str(p), captions.get(p.stem.split("_")[0], p.stem)) for p in bundle["pictures"]]


class PhotoInput(gr.Image):
    """gr.Image whose unreadable uploads give a clear message instead of a server error."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None):
            # Format and size from the header before Gradio decodes (and re-encodes) the file.
            try:
                imageio.check_image_file(payload.path)
            except DeltaEditError as exc:
                message = str(exc).replace(f"image file {payload.path}", "the uploaded image")
                raise gr.Error(message[:1].upper() + message[1:]) from exc
        try:
            return super().preprocess(payload)
        except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, ValueError) as exc:
            raise gr.Error(
                "The uploaded file is not a readable image; upload a PNG, JPEG or WebP photo."
            ) from exc


def _numbers_only(component, preprocess, payload):
    """Run `preprocess`; a non-numeric API value ("abc", a list) gets a clear message, not a server error."""
    try:
        value = preprocess(payload)
    except gr.Error:  # gradio's own "greater than maximum value" messages
        raise
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"{component.label} must be a number, got {reprlib.repr(payload)}.") from exc
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every range comparison
        raise gr.Error(f"{component.label} must be a finite number, got {reprlib.repr(payload)}.")
    return value


# Gradio renders a template with the frontend component of its *direct* base class, so each one
# derives from the gradio component itself (a mixin listed first would name an unknown component).
class NumberSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return _numbers_only(self, super().preprocess, payload)


class NumberField(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return _numbers_only(self, super().preprocess, payload)


# ---------------------------------------------------------------- the page

HOW_IT_WORKS = f"""
**DeltaEdit** ([paper: DeltaSpace, arXiv 2310.08785]({PAPER})) edits a picture from text without
training on any text. CLIP's *image* features and *text* features of the same picture lie far apart,
but their **differences** line up: the change between two images points the same way as the change
between their captions. That shared space of differences is **DeltaSpace**.

1. Training (text-free): for two generated images with style codes s1, s2 and CLIP image features
   i1, i2, a *Delta Mapper* learns to predict Δs = s2 − s1 from s1, i1 and the image difference i2 − i1.
2. Editing: the image difference is replaced by a text difference
   Δt = CLIP("face with a smile") − CLIP("face"); the mapper turns it into Δs, channels unrelated to
   the prompt are zeroed (the *disentanglement threshold*), and s + strength·Δs is decoded.
3. Decoders: **DeltaEdit-G** decodes with StyleGAN2; **DeltaEdit-D** with a diffusion model
   conditioned on the same style code (DDIM inversion, then sampling under s + Δs).

Any prompt works zero-shot. The *Toy faces* domain is a small built-in model trained here on
procedural cartoon faces, so the app runs anywhere without downloads; it adds four steps that are
not in the paper (the text difference grounded in the picture through a bank of image features, a
mapper trained on nearest-neighbour pairs, a per-edit choice by CLIP between the thresholded Δs and
the whole Δs at a lower strength, which shape edits need (each also projected onto the main directions
of the style codes), and a few refinement steps; see
docs/toy-domain.md). *FFHQ
faces* uses the authors' published weights when they can be downloaded, with the paper's method.
"""

# Toy pictures are 64 px. Every picture is shown whole (object-fit: contain), scaled with
# nearest-neighbour (pixelated) so the pixels stay crisp, never cropped. The before/after slider's
# two layers fill one box (gradio lays the "before" layer out at its natural aspect ratio, up to
# 500 px tall, so a square picture overflowed the 300 px box and the halves did not line up).
CSS = """
#input-image img { min-height: 200px; object-fit: contain; }
.result-image img { width: 100%; height: 100%; object-fit: contain; }
.before-after img[data-testid=imageslider-image] {
  position: absolute; inset: 0; margin: 0;
  width: 100% !important; height: 100% !important; max-width: none; max-height: none !important;
  object-fit: contain;
}
.result-gallery img { object-fit: contain !important; }
.result-gallery .fixed-height { min-height: 0; max-height: none; }
/* Gallery captions sit under their picture and wrap: the whole target is readable, no "…". */
.caption-below .thumbnail-item { display: flex; flex-direction: column; aspect-ratio: auto; height: auto; }
.caption-below .thumbnail-item img { aspect-ratio: 1 / 1; width: 100%; height: auto; object-fit: contain; }
.caption-below .caption-label {
  position: static; max-width: none; white-space: normal; overflow: visible; text-overflow: clip;
  border: 0; border-radius: 0; overflow-wrap: anywhere;
}
#deltaspace-pictures .fixed-height { min-height: 0; max-height: none; }
/* The sweep's frames share the strip's width (Gradio gives each 100 px, so 7 overflowed). */
#sweep-strip .grid-container { grid-template-columns: repeat(auto-fill, minmax(56px, 1fr)) !important; }
[id^=examples-] td { white-space: pre-line; }
#input-image img, .before-after img, .result-image img, .result-gallery img {
  image-rendering: pixelated;
}
#vocabulary button { font-size: var(--text-sm); }
/* Status lines wrap inside their box (long file names and URLs too): no sideways scrolling. */
#domain-status, #d-notice { overflow-wrap: anywhere; }
#domain-status pre, #d-notice pre { white-space: pre-wrap; }
"""


def _examples(kind: str) -> list[list[str]]:
    """One tab's examples as rows of (domain, image, source text, target text)."""
    return [[DEFAULT_DOMAIN, str(path), source, target] for path, source, target in service.examples(kind)]


SAMPLE_DOMAIN = "ffhq"  # the domain whose examples are generator samples (no photo files)


@dataclass
class PageInputs:
    """What every tab reads: the left column's inputs and the page's state."""

    domain: gr.Dropdown
    domain_status: gr.Markdown
    # The selected tab ("gan", "diffusion", "compare", "example", "sweep"), and whether the user moved
    # the strength or threshold slider since the tab (or domain) set them: Compare then uses the
    # sliders for both backbones, otherwise each backbone's own defaults. API calls (no page) always
    # use their values.
    backbone_tab: gr.State
    sliders_moved: gr.State
    image: PhotoInput
    seed: NumberField
    sample_button: gr.Button
    seed_sample: gr.Image
    align: gr.Checkbox
    source: gr.Textbox
    target: gr.Textbox
    vocabulary: gr.Dataset
    vocabulary_box: gr.Column
    strength: NumberSlider
    threshold: NumberSlider

    @property
    def common(self) -> list:
        """The inputs every edit endpoint starts with, in its API order."""
        return [self.domain, self.image, self.source, self.target, self.strength, self.threshold]


@dataclass
class Tab:
    """One tab: its `gr.Tab`, its run button and what its run writes (and its own inputs)."""

    tab: gr.Tab
    button: gr.Button | None = None
    outputs: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="DeltaEdit", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DeltaEdit: text-guided image editing in DeltaSpace\n"
            f"Describe the change (“face with a smile”) and DeltaEdit edits the face: no per-prompt"
            f" training. [Paper]({PAPER}) · the **How it works** section is at the bottom."
        )
        page = _domain_row()
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                page = _input_column(*page)
            with gr.Column(scale=3, min_width=360):
                with gr.Tabs():
                    tabs = {
                        "gan": _gan_tab(page),
                        "diffusion": _diffusion_tab(page),
                        "compare": _compare_tab(page),
                        "example": _by_example_tab(page),
                        "sweep": _sweep_tab(),
                    }
                    deltaspace = _deltaspace_tab()
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS)
        _wire_edits(demo, page, tabs)
        _wire_page(page, tabs, deltaspace)
    return demo


def _domain_row() -> tuple[gr.Dropdown, gr.Markdown, gr.State, gr.State]:
    with gr.Row():
        domain = gr.Dropdown(
            choices=service.domain_choices(), value=DEFAULT_DOMAIN, label="Domain", scale=1,
            elem_id="domain-choice",
        )  # fmt: skip
        domain_status = gr.Markdown(STATUS[DEFAULT_DOMAIN], elem_id="domain-status")
    return domain, domain_status, gr.State("gan"), gr.State(True)


def _input_column(domain, domain_status, backbone_tab, sliders_moved) -> PageInputs:
    image = PhotoInput(
        label="Photo",
        placeholder="Drop a face photo here, or leave this empty to edit the seed's random sample",
        type="filepath", image_mode=None, format="png", sources=["upload", "clipboard"], height=260,
        elem_id="input-image",
    )  # fmt: skip
    with gr.Row():
        seed = NumberField(value=0, precision=0, minimum=0, maximum=service.MAX_SEED, label="Seed", min_width=80)
        sample_button = gr.Button("Random sample", size="sm")
    seed_sample = gr.Image(
        label="The seed's random sample", format="png", interactive=False, visible=False,
        height=200, elem_id="seed-sample", elem_classes="result-image", buttons=["download"],
    )  # fmt: skip
    aligns = service.aligns_faces(DEFAULT_DOMAIN)
    align = gr.Checkbox(
        value=aligns, visible=aligns, label="Align face (FFHQ photos)",
        info="Crops and rotates a photo to the FFHQ face layout first; off for an already aligned face.",
        elem_id="align-face",
    )  # fmt: skip
    source = gr.Textbox(value=service.neutral_text(DEFAULT_DOMAIN), label="Source text")
    target = gr.Textbox(
        label="Target text", info="One per line for several edits.", placeholder="face with a smile",
        lines=2, elem_id="target-text",
    )  # fmt: skip
    phrases = service.known_phrases(DEFAULT_DOMAIN)
    with gr.Column(visible=bool(phrases)) as vocabulary_box:
        vocabulary = gr.Dataset(
            components=["textbox"], samples=[[p] for p in phrases],
            label="Phrases the toy model knows (its CLIP learned only these): click one to use it",
            layout="gallery", samples_per_page=len(phrases) or 10, elem_id="vocabulary",
        )  # fmt: skip
    default_strength, default_threshold = service.edit_defaults(DEFAULT_DOMAIN, "gan")
    strength = NumberSlider(-5, 5, value=default_strength, step=0.05, label="Strength", elem_id="strength")
    threshold = NumberSlider(
        0, 0.5, value=default_threshold, step=0.005, label="Disentanglement threshold", elem_id="threshold"
    )
    return PageInputs(
        domain, domain_status, backbone_tab, sliders_moved, image, seed, sample_button, seed_sample, align,
        source, target, vocabulary, vocabulary_box, strength, threshold,
    )  # fmt: skip


EXAMPLE_LABEL = "Examples (toy faces{}): a click switches the domain to Toy faces and runs it"


def _gan_tab(page: PageInputs) -> Tab:
    with gr.Tab("DeltaEdit-G") as tab:
        button = gr.Button("Edit with DeltaEdit-G", variant="primary", elem_id="edit-gan")
        outputs = _edit_result_components("gan")
        prompt = [page.domain, page.image, page.source, page.target]
        _tab_examples("gan", prompt, outputs, example_gan, EXAMPLE_LABEL.format(""))
        sample_prompt = [page.domain, page.seed, page.source, page.target]
        _sample_examples("gan", sample_prompt, outputs, example_gan_sample, page.image)
    return Tab(tab, button, outputs)


def _diffusion_tab(page: PageInputs) -> Tab:
    with gr.Tab("DeltaEdit-D") as tab:
        notice = gr.Markdown(service.diffusion_status(DEFAULT_DOMAIN), elem_id="d-notice")
        steps = NumberSlider(5, service.MAX_DDIM_STEPS, value=50, step=1, label="DDIM steps")
        button = gr.Button("Edit with DeltaEdit-D", variant="primary", elem_id="edit-diffusion")
        outputs = _edit_result_components("diffusion")
        prompt = [page.domain, page.image, page.source, page.target]
        _tab_examples("diffusion", prompt, outputs, example_diffusion, EXAMPLE_LABEL.format(", 50 DDIM steps"))
    return Tab(tab, button, outputs, {"steps": steps, "notice": notice})


def _compare_tab(page: PageInputs) -> Tab:
    with gr.Tab("Compare") as tab:
        note = gr.Markdown(service.defaults_note(DEFAULT_DOMAIN), elem_id="compare-note")
        steps = NumberSlider(5, service.MAX_DDIM_STEPS, value=50, step=1, label="DDIM steps (D)")
        button = gr.Button("Run both", variant="primary", elem_id="compare-run")
        with gr.Row(elem_id="compare-images"):
            pictures = [
                gr.Image(
                    label=label, format="png", height=220, elem_classes="result-image",
                    elem_id=f"compare-{kind}", buttons=["download", "fullscreen"],
                )  # fmt: skip
                for kind, label in (("input", "Input"), ("gan", "DeltaEdit-G"), ("diffusion", "DeltaEdit-D"))
            ]
        info = gr.Markdown(elem_id="compare-info")
        outputs = [*pictures, info]
        prompt = [page.domain, page.image, page.source, page.target]
        label = EXAMPLE_LABEL.format(", each backbone with its defaults")
        _tab_examples("compare", prompt, outputs, example_compare, label)
        sample_prompt = [page.domain, page.seed, page.source, page.target]
        _sample_examples("compare", sample_prompt, outputs, example_compare_sample, page.image)
    return Tab(tab, button, outputs, {"steps": steps, "note": note})


def _by_example_tab(page: PageInputs) -> Tab:
    with gr.Tab("By example") as tab:
        gr.Markdown(
            "Show the change instead of writing it. **A → B**: two pictures of another"
            " face, before and after; the edit does that to your face. **Reference**:"
            " your face moves toward it; the disentanglement threshold decides how much"
            " of it comes along (higher: less). Target text, if any, is edited alongside.",
            elem_id="by-example-note",
        )
        with gr.Row():
            example_a = _picture_input("Example A (before)", "example-a")
            example_b = _picture_input("Example B (after)", "example-b")
            reference = _picture_input("Reference (move toward)", "reference")
        backbone = _backbone_choice("example-backbone", compare=True)
        button = gr.Button("Edit by example", variant="primary", elem_id="edit-example")
        # The label says both readings: a comparison puts DeltaEdit-G | DeltaEdit-D on the slider.
        outputs = _edit_result_components("example", f"{SLIDER_LABEL}; both backbones: DeltaEdit-G | DeltaEdit-D")
        # The toy pairs to click (assets/examples/toy_pair_*.png).
        gr.Examples(
            examples=[
                [DEFAULT_DOMAIN, str(EXAMPLES_DIR / face), str(EXAMPLES_DIR / f"{pair}_a.png"),
                 str(EXAMPLES_DIR / f"{pair}_b.png")]
                for face, pair in (("toy_black_hair.png", "toy_pair_glasses"), ("toy_red_hair.png", "toy_pair_blond"))
            ],  # fmt: skip
            inputs=[page.domain, page.image, example_a, example_b], outputs=outputs, fn=example_by_example,
            cache_examples=True, cache_mode="lazy", api_visibility="private", label=EXAMPLE_LABEL.format(""),
            elem_id="examples-by-example",
        )  # fmt: skip
    pictures = {"example_a": example_a, "example_b": example_b, "reference": reference}
    return Tab(tab, button, outputs, {**pictures, "backbone": backbone})


def _sweep_tab() -> Tab:
    with gr.Tab("Sweep") as tab:
        gr.Markdown(
            "The first target line at several strengths, from 0 (the reconstruction) to"
            " twice the Strength slider, in one batched decode; each frame's strength is under it."
        )
        with gr.Row():
            backbone = _backbone_choice("sweep-backbone")
            frames = NumberSlider(
                2, service.MAX_SWEEP_FRAMES, value=7, step=1, label="Frames", elem_id="sweep-frames"
            )
        button = gr.Button("Sweep the strength", variant="primary", elem_id="sweep-run")
        strip = gr.Gallery(
            label="Strength sweep", show_label=False, columns=7, height="auto", object_fit="contain", format="png",
            preview=False, elem_id="sweep-strip", elem_classes="result-gallery caption-below",
        )  # fmt: skip
        animation = gr.File(label="Animation (GIF)", elem_id="sweep-animation")
        info = gr.Markdown(elem_id="sweep-info")
    return Tab(tab, button, [strip, animation, info], {"backbone": backbone, "frames": frames})


def _deltaspace_tab() -> Tab:
    with gr.Tab("DeltaSpace") as tab:
        text = gr.Markdown("Computing the toy domain's alignment report…")
        # Label and titles above the plots, each plot whole (no inner scroll).
        pictures = gr.Gallery(
            label="t-SNE of raw and delta features", show_label=False, columns=2, height="auto",
            object_fit="contain", allow_preview=True, elem_id="deltaspace-pictures", elem_classes="caption-below",
        )  # fmt: skip
    return Tab(tab, None, [text, pictures])


def _backbone_choice(elem_id: str, compare: bool = False) -> gr.Radio:
    choices = [("DeltaEdit-G", "gan"), ("DeltaEdit-D", "diffusion")]
    if compare:
        choices.append(("Both, side by side", "compare"))
    return gr.Radio(choices, value="gan", label="Backbone", elem_id=elem_id)


def _wire_edits(demo: gr.Blocks, page: PageInputs, tabs: dict[str, Tab]) -> None:
    """The edit endpoints (the stable API: names and parameter order are pinned by tests) and the
    live strength slider."""
    gan, d, cmp, example, sweep_tab = (tabs[k] for k in ("gan", "diffusion", "compare", "example", "sweep"))
    seen = {"api_visibility": "private"}
    show_sample = dict(fn=show_seed_sample, inputs=[page.domain, page.image, page.seed], outputs=page.seed_sample)
    gan_inputs = [*page.common, page.seed, page.align]
    gan.button.click(
        edit_gan, inputs=gan_inputs, outputs=gan.outputs, api_name="edit_gan", js=close_toasts(gan_inputs)
    ).success(**show_sample, **seen)
    d_inputs = [*page.common, d.inputs["steps"], page.seed, page.align]
    d.button.click(
        edit_diffusion, inputs=d_inputs, outputs=d.outputs, api_name="edit_diffusion", js=close_toasts(d_inputs)
    ).success(**show_sample, **seen)
    pictures = [example.inputs[k] for k in ("example_a", "example_b", "reference")]
    example_inputs = [page.domain, page.image, *pictures, page.source, page.target, page.strength, page.threshold]
    example_inputs += [d.inputs["steps"], page.seed, page.align, example.inputs["backbone"]]
    example.button.click(
        edit_by_example, inputs=example_inputs, outputs=example.outputs, api_name="edit_by_example",
        js=close_toasts(example_inputs),
    )  # fmt: skip
    sweep_inputs = [*page.common, d.inputs["steps"], page.seed, page.align]
    sweep_inputs += [sweep_tab.inputs["backbone"], sweep_tab.inputs["frames"]]
    sweep_tab.button.click(
        sweep, inputs=sweep_inputs, outputs=sweep_tab.outputs, api_name="sweep", js=close_toasts(sweep_inputs)
    )
    # The live strength slider: letting go of it redraws the session's last edit on the tab shown.
    page.strength.release(
        redraw_edit, inputs=[page.strength, page.backbone_tab], outputs=[*gan.outputs, *d.outputs],
        trigger_mode="always_last", **seen,
    )  # fmt: skip
    demo.unload(forget_plan)
    compare_inputs = [*page.common, cmp.inputs["steps"], page.seed, page.align, page.sliders_moved]
    cmp.button.click(
        compare, inputs=compare_inputs, outputs=cmp.outputs, api_name="compare", js=close_toasts(compare_inputs)
    )


def _wire_page(page: PageInputs, tabs: dict[str, Tab], deltaspace: Tab) -> None:
    """Everything else the page does: uploads, samples, labels, chips, tabs, sliders and the domain."""
    seen = {"api_visibility": "private"}
    page.image.upload(
        check_upload, inputs=page.image, outputs=[page.image, page.seed_sample], preprocess=False, **seen
    )
    page.sample_button.click(new_seed, outputs=page.seed, **seen).then(
        sample, inputs=[page.domain, page.seed], outputs=page.image, api_name="sample"
    )
    cmp_source, cmp_gan, cmp_d, cmp_info = tabs["compare"].outputs
    cmp_info.change(relabel, inputs=cmp_info, outputs=[cmp_source, cmp_gan, cmp_d], **seen)
    page.vocabulary.click(use_phrase, inputs=page.vocabulary, outputs=page.target, **seen)
    sliders = [page.strength, page.threshold, page.sliders_moved]
    for backbone, tab in tabs.items():
        tab.tab.select(lambda b=backbone: b, outputs=page.backbone_tab, **seen).then(
            tab_defaults, inputs=[page.domain, page.backbone_tab], outputs=sliders, **seen
        )
    for slider in (page.strength, page.threshold):
        slider.input(lambda: True, outputs=page.sliders_moved, **seen)
    page.domain.change(
        change_domain, inputs=[page.domain, page.backbone_tab],
        outputs=[
            page.domain_status, tabs["diffusion"].inputs["notice"], *sliders, page.align, page.vocabulary_box,
            tabs["compare"].inputs["note"],
        ],
        **seen,
    )  # fmt: skip
    # The user's own choice of domain resets the source text; an example's keeps the example's.
    page.domain.input(service.neutral_text, inputs=page.domain, outputs=page.source, **seen)
    deltaspace.tab.select(show_deltaspace, outputs=deltaspace.outputs, **seen)


def close_toasts(inputs) -> str:
    """Front-end code run as an edit starts: the previous run's pop-ups close, so each run shows
    its own message only ("Error (2)" never piles up). The inputs pass through unchanged."""
    return (
        "(...args) => { document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click());"
        f" return args.slice(0, {len(inputs)}); }}"
    )


def _sample_examples(kind: str, inputs, outputs, fn, photo) -> gr.Examples | None:
    """A tab's FFHQ examples: generator samples by seed (no photo files), offered when the weights
    for them are here; a click switches the domain to FFHQ, empties the Photo box (the edit is of
    the sample) and runs it."""
    rows = service.sample_examples(SAMPLE_DOMAIN, kind)
    if not rows or not service.samples_available(SAMPLE_DOMAIN):
        return None
    label = next(name for name, d in service.domain_choices() if d == SAMPLE_DOMAIN)
    examples = gr.Examples(
        examples=[[SAMPLE_DOMAIN, seed, source, target] for seed, source, target in rows],
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        cache_examples=True,
        cache_mode="lazy",
        api_visibility="private",
        visible_columns=[1, 2, 3],
        label=f"Examples ({label}, random samples by seed): a click switches the domain to {label} and runs it",
        elem_id=f"examples-{SAMPLE_DOMAIN}-{kind}",
    )
    examples.dataset.click(lambda: None, outputs=photo, api_visibility="private")
    return examples


def _tab_examples(kind: str, inputs, outputs, fn, label: str) -> gr.Examples:
    """A tab's clickable examples: run on first click and cached, hidden from the API."""
    return gr.Examples(
        examples=_examples(kind),
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        cache_examples=True,
        cache_mode="lazy",
        api_visibility="private",
        visible_columns=[1, 2, 3],
        label=label,
        elem_id=f"examples-{kind}",
    )


def _picture_input(label: str, elem_id: str) -> PhotoInput:
    return PhotoInput(
        label=label, type="filepath", image_mode=None, format="png", sources=["upload", "clipboard"],
        height=150, elem_id=elem_id,
    )  # fmt: skip


def _edit_result_components(backbone: str, slider_label: str = SLIDER_LABEL):
    slider = gr.ImageSlider(
        label=slider_label,
        format="png",
        type="pil",
        height=300,
        elem_id=f"before-after-{backbone}",
        elem_classes="before-after",
        buttons=["download", "fullscreen"],
    )
    gallery = gr.Gallery(
        label="Every target",
        columns=4,
        height="auto",
        fit_columns=False,
        object_fit="contain",
        format="png",
        preview=False,
        allow_preview=True,
        elem_id=f"gallery-{backbone}",
        elem_classes=["result-gallery", "caption-below"],
    )
    files = gr.File(label="Download the edited images (PNG)", file_count="multiple")
    info = gr.Markdown(elem_id=f"edit-info-{backbone}")
    return [slider, gallery, files, info]


demo = build_demo()
# The queue is bounded so a burst of requests gets a clear "queue full" instead of an hour's wait,
# and it is the only door: the direct /run and /api routes, which would skip it, are closed.
demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE, api_open=False)


def request_guard() -> Middleware:
    """What every request passes before Gradio: uploads only, bounded bodies, a fair queue
    (deltaedit/request_guard.py). On a Space the visitor's address comes from the proxy."""
    return Middleware(
        RequestGuard,
        upload_dir=upload_folder(),
        limits=Limits(
            max_upload_bytes=parse_size(MAX_UPLOAD) + 64 * 1024,
            jobs_per_client=JOBS_PER_CLIENT,
            json_hint=f"images go by upload; a prompt is at most {MAX_PROMPT_CHARS} characters a line,"
            f" {MAX_TARGETS} lines",
        ),
        endpoints=BlocksEndpoints(demo, JOBS),
        trust_proxy=bool(os.environ.get("SPACE_ID")),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    # SIGTERM (container stop) exits normally, so atexit removes the download folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Only the example photos and the precomputed DeltaSpace pictures may be served from disk (uploads
    # and results live in Gradio's temp cache); weights and code under assets/ or the repo stay private.
    demo.launch(
        allowed_paths=[str(EXAMPLES_DIR), str(service.CACHED_REPORT_DIR)],
        css=CSS,
        max_file_size=MAX_UPLOAD,
        app_kwargs={"middleware": [request_guard()]},
    )
