"""What an edit request may ask, checked before any model work: numbers in range, target and
source texts of bounded length and count."""

from __future__ import annotations

import math

from ..errors import InputError

STRENGTH_RANGE = (-10.0, 10.0)
THRESHOLD_RANGE = (0.0, 1.0)
REFINE_STEPS_RANGE = (0, 200)
MAX_TARGETS = 16
# CLIP reads 77 tokens (about 300 characters of English) and open_clip's tokenizer encodes the whole
# text before it truncates, in time that grows faster than the text: longer prompts are refused
# before any tokenizer sees them.
MAX_PROMPT_CHARS = 300


def check_number(name: str, value: float, bounds: tuple[float, float]) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    lo, hi = bounds
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def check_whole_number(name: str, value, bounds: tuple[int, int]) -> int:
    number = check_number(name, value, bounds)
    if number != int(number):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def check_refine_steps(steps) -> int:
    return check_whole_number("refine_steps", steps, REFINE_STEPS_RANGE)


def normalise_targets(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """One or several target phrases (a string may hold one per line)."""
    if targets is None:
        targets = []
    elif isinstance(targets, str):
        targets = targets.splitlines() or [targets]
    if len(targets) > 4 * MAX_TARGETS:  # before stripping each one: a million empty lines
        raise InputError(f"at most {MAX_TARGETS} targets at once, got {len(targets)} lines")
    cleaned = [t.strip() for t in targets if t is not None and t.strip()]
    if not cleaned:
        raise InputError("the target text is empty: describe the edit, e.g. 'face with a smile'")
    if len(cleaned) > MAX_TARGETS:
        raise InputError(f"at most {MAX_TARGETS} targets at once, got {len(cleaned)}")
    for number, target in enumerate(cleaned, 1):
        check_prompt_length(target, f"target line {number}" if len(cleaned) > 1 else "the target text")
    return cleaned


def check_prompt_length(text: str, what: str) -> str:
    """`text` when it is at most MAX_PROMPT_CHARS long; otherwise an InputError naming the limit."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            f"{what} is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS} per line"
            " (CLIP reads only about the first 300 characters). Shorten it."
        )
    return text


def normalise_source(source) -> str | None:
    """The source text stripped (None or empty: the domain's neutral text), length-checked."""
    if source is None:
        return None
    if not isinstance(source, str):
        raise InputError(f"the source text must be text, got {type(source).__name__}")
    return check_prompt_length(source.strip(), "the source text") or None
