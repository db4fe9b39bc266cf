"""DeltaEdit: text-guided image editing in DeltaSpace — the Gradio app (Hugging Face Space).

UI only: the page, its events and thin callbacks. `deltaedit.service` does the requests, the
library the editing. `python app.py` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT override it; Spaces set 0.0.0.0). Public API (gradio_client), keyword names:

    /edit_gan(domain, image, source, target, strength, threshold, seed, align)
    /edit_diffusion(domain, image, source, target, strength, threshold, steps, seed, align)
    /compare(domain, image, source, target, strength, threshold, steps, seed, align)
    /sample(domain, seed)

`domain` is an id ("toy", "ffhq"); with no `image` the seed draws a random sample.
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
import os
import random
import reprlib
import signal
import sys
import tempfile
from pathlib import Path

import gradio as gr
import PIL.Image
import torch
from starlette.middleware import Middleware

from deltaedit import service
from deltaedit.errors import DeltaEditError
from deltaedit.upload_guard import ServerPathGuard

log = logging.getLogger("deltaedit.app")

# ZeroGPU attaches the GPU and moves the weights onto it per call: a captured CUDA graph would keep
# the addresses of the call that captured it, so DeltaEdit-D runs its UNet eagerly there.
if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"):
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


def _edit_outputs(view: service.EditView):
    service.save_files(view)
    for notice in view.notices:
        gr.Warning(notice)
    before_after = (view.source_image, view.edited_images[0])
    return before_after, view.gallery, [str(p) for p in view.files], view.summary


@user_errors
def edit_gan(domain, image, source, target, strength, threshold, seed, align=True):
    """DeltaEdit-G: edit `image` (or, with no image, the sample drawn by `seed`) toward each target line.

    Returns (before/after pair, gallery of every edit, PNG files, Markdown summary with the time).
    """
    return _edit_outputs(
        _gpu_edit(
            "gan",
            domain=domain,
            image=image,
            source=source,
            target=target,
            strength=strength,
            threshold=threshold,
            seed=seed,
            align=align,
        )
    )


@user_errors
def edit_diffusion(domain, image, source, target, strength, threshold, steps, seed, align=True):
    """DeltaEdit-D: the same edit decoded by the style-conditioned diffusion model (`steps` DDIM steps)."""
    return _edit_outputs(
        _gpu_edit(
            "diffusion",
            domain=domain,
            image=image,
            source=source,
            target=target,
            strength=strength,
            threshold=threshold,
            seed=seed,
            align=align,
            steps=int(steps),
        )
    )


@user_errors
def compare(domain, image, source, target, strength, threshold, steps, seed, align=True):
    """Both backbones on one input and the first target line: (source, G edit, D edit or None, times)."""
    view = _gpu_compare(
        domain=domain,
        image=image,
        source=source,
        target=target,
        strength=strength,
        threshold=threshold,
        steps=int(steps),
        seed=seed,
        align=align,
    )
    d_image = view.diffusion.edited_images[0] if view.diffusion else None
    return view.source_image, view.gan.edited_images[0], d_image, view.summary


@user_errors
def sample(domain, seed):
    """The random source image that `seed` draws in `domain`."""
    return _gpu_sample(domain, seed)


def new_seed():
    return random.randint(0, 999_999)


@user_errors
def example_edit(domain, image, target):
    strength, threshold = service.edit_defaults(domain)
    return edit_gan(domain, image, service.neutral_text(domain), target, strength, threshold, 0)


def change_domain(domain, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's injection idiom
    progress(0, desc="loading the models")
    status = service.domain_status(domain)
    strength, threshold = service.edit_defaults(domain)
    return status, service.neutral_text(domain), service.diffusion_status(domain), strength, threshold


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
    return text, [str(p) for p in bundle["pictures"]]


class PhotoInput(gr.Image):
    """gr.Image whose unreadable uploads give a clear message instead of a server error."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, ValueError) as exc:
            raise gr.Error(
                "The uploaded file is not a readable image; upload a PNG, JPEG or WebP photo."
            ) from exc


def _numbers_only(component, preprocess, payload):
    """Run `preprocess`; a non-numeric API value ("abc", a list) gets a clear message, not a server error."""
    try:
        return preprocess(payload)
    except gr.Error:  # gradio's own "greater than maximum value" messages
        raise
    except (TypeError, ValueError) as exc:
        raise gr.Error(f"{component.label} must be a number, got {reprlib.repr(payload)}.") from exc


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
   Δt = CLIP("face with smile") − CLIP("face"); the mapper turns it into Δs, channels unrelated to
   the prompt are zeroed (the *disentanglement threshold*), and s + strength·Δs is decoded.
3. Decoders: **DeltaEdit-G** decodes with StyleGAN2; **DeltaEdit-D** with a diffusion model
   conditioned on the same style code (DDIM inversion, then sampling under s + Δs).

Any prompt works zero-shot. The *Toy faces* domain is a small built-in model trained here on
procedural cartoon faces, so the app runs anywhere without downloads; it adds three steps that are
not in the paper (the text difference grounded in the picture through a bank of image features, a
mapper trained on nearest-neighbour pairs, and a few refinement steps; see the README). *FFHQ
faces* uses the authors' published weights when they can be downloaded, with the paper's method.
"""

# Toy pictures are 64 px: show them large and sharp.
CSS = """
#input-image img { min-height: 200px; object-fit: contain; }
.result-image img { width: 100%; height: 100%; object-fit: contain; }
#input-image img, [id^=before-after] img, .result-image img { image-rendering: pixelated; }
"""


def _examples() -> list[list[str]]:
    prompts = ["face with smile", "face with blond hair", "face with eyeglasses", "chubby face"]
    files = sorted(EXAMPLES_DIR.glob("*.png"))
    return [[DEFAULT_DOMAIN, str(f), prompts[i % len(prompts)]] for i, f in enumerate(files)]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="DeltaEdit", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DeltaEdit: text-guided image editing in DeltaSpace\n"
            f"Describe the change (“face with smile”) and DeltaEdit edits the face: no per-prompt"
            f" training. [Paper]({PAPER}) · the **How it works** section is at the bottom."
        )
        with gr.Row():
            domain = gr.Dropdown(
                choices=service.domain_choices(),
                value=DEFAULT_DOMAIN,
                label="Domain",
                scale=1,
                elem_id="domain-choice",
            )
            domain_status = gr.Markdown(STATUS[DEFAULT_DOMAIN], elem_id="domain-status")
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                image = PhotoInput(
                    label="Photo (leave empty to edit the random sample of the seed)",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard"],
                    height=260,
                    elem_id="input-image",
                )
                with gr.Row():
                    seed = NumberField(
                        value=0, precision=0, minimum=0, maximum=service.MAX_SEED, label="Seed", min_width=80
                    )
                    sample_button = gr.Button("Random sample", size="sm")
                align = gr.Checkbox(value=True, label="Align face (FFHQ photos)")
                source = gr.Textbox(value=service.neutral_text(DEFAULT_DOMAIN), label="Source text")
                target = gr.Textbox(
                    label="Target text (one per line for several edits)",
                    placeholder="face with smile",
                    lines=2,
                    elem_id="target-text",
                )
                default_strength, default_threshold = service.edit_defaults(DEFAULT_DOMAIN)
                strength = NumberSlider(-5, 5, value=default_strength, step=0.05, label="Strength")
                threshold = NumberSlider(
                    0, 0.5, value=default_threshold, step=0.005, label="Disentanglement threshold"
                )
            with gr.Column(scale=3, min_width=360):
                with gr.Tabs():
                    with gr.Tab("DeltaEdit-G"):
                        gan_button = gr.Button("Edit with DeltaEdit-G", variant="primary", elem_id="edit-gan")
                        gan_outputs = _edit_result_components("gan")
                    with gr.Tab("DeltaEdit-D"):
                        d_notice = gr.Markdown(service.diffusion_status(DEFAULT_DOMAIN))
                        steps = NumberSlider(5, 200, value=50, step=1, label="DDIM steps")
                        d_button = gr.Button("Edit with DeltaEdit-D", variant="primary")
                        d_outputs = _edit_result_components("diffusion")
                    with gr.Tab("Compare"):
                        compare_steps = NumberSlider(5, 200, value=50, step=1, label="DDIM steps (D)")
                        compare_button = gr.Button("Run both", variant="primary")
                        with gr.Row():
                            cmp_source = gr.Image(
                                label="Source", format="png", height=220, elem_classes="result-image"
                            )
                            cmp_gan = gr.Image(
                                label="DeltaEdit-G", format="png", height=220, elem_classes="result-image"
                            )
                            cmp_d = gr.Image(
                                label="DeltaEdit-D", format="png", height=220, elem_classes="result-image"
                            )
                        cmp_info = gr.Markdown()
                    with gr.Tab("DeltaSpace") as deltaspace_tab:
                        ds_text = gr.Markdown("Computing the toy domain's alignment report…")
                        ds_pictures = gr.Gallery(
                            label="t-SNE of raw and delta features", columns=2, height=320
                        )

        gr.Examples(
            examples=_examples(),
            inputs=[domain, image, target],
            outputs=gan_outputs,
            fn=example_edit,
            cache_examples=True,
            cache_mode="lazy",
            api_visibility="private",
            label="Examples (toy faces, DeltaEdit-G)",
        )
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS)

        common = [domain, image, source, target, strength, threshold]
        gan_button.click(edit_gan, inputs=[*common, seed, align], outputs=gan_outputs, api_name="edit_gan")
        d_button.click(
            edit_diffusion, inputs=[*common, steps, seed, align], outputs=d_outputs, api_name="edit_diffusion"
        )
        compare_button.click(
            compare,
            inputs=[*common, compare_steps, seed, align],
            outputs=[cmp_source, cmp_gan, cmp_d, cmp_info],
            api_name="compare",
        )
        sample_button.click(new_seed, outputs=seed, api_visibility="private").then(
            sample, inputs=[domain, seed], outputs=image, api_name="sample"
        )
        domain.change(
            change_domain,
            inputs=domain,
            outputs=[domain_status, source, d_notice, strength, threshold],
            api_visibility="private",
        )
        deltaspace_tab.select(show_deltaspace, outputs=[ds_text, ds_pictures], api_visibility="private")
    return demo


def _edit_result_components(backbone: str):
    slider = gr.ImageSlider(
        label="Before / after",
        format="png",
        type="pil",
        height=300,
        elem_id=f"before-after-{backbone}",
        buttons=["download", "fullscreen"],
    )
    gallery = gr.Gallery(
        label="Every target", columns=4, rows=1, height=170, object_fit="contain", format="png", preview=False
    )
    files = gr.File(label="Download the edited images (PNG)", file_count="multiple")
    info = gr.Markdown(elem_id=f"edit-info-{backbone}")
    return [slider, gallery, files, info]


demo = build_demo()
# The queue is bounded so a burst of requests gets a clear "queue full" instead of an hour's wait.
demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)

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
        # Before Gradio sees a request: file inputs take uploads only, never a server path.
        app_kwargs={"middleware": [Middleware(ServerPathGuard, upload_dir=upload_folder())]},
    )
