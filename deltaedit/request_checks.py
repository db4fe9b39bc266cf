"""What one public request may ask and cost, checked before any model runs; and the errors of
a running request (uploads named, GPU memory) made readable."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from .errors import DeltaEditError, InputError

log = logging.getLogger(__name__)

D_UNAVAILABLE = "DeltaEdit-D weights are not available for this domain"
MAX_SEED = 2**31 - 1
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


def shorten(text: str) -> str:
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
