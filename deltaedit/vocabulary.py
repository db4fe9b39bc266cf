"""What a domain's text side understands, and a check for edits that changed nothing.

The toy domain's CLIP was trained on captions built from a small vocabulary
(`deltaedit.toy.attributes`): "face with blond hair" edits, "face with yellow hair" changes nothing
because the toy CLIP never saw "yellow". `known_phrases` lists the prompts it was trained on (the app
offers them as suggestions), `nearest_phrases` maps an unknown prompt to the closest ones ("did you
mean"), and `unchanged_targets` finds the targets of an edit that changed nothing measurable, so the
caller can say so instead of showing an unchanged picture in silence. FFHQ uses the real CLIP, which
knows any English phrase: it has no list, only the "nothing changed" check.
"""

from __future__ import annotations

import difflib
import re

import numpy as np
from PIL import Image

from .toy import attributes as toy_attributes

# A target "changed nothing" when no style channel survived the threshold (Δs = 0), or when fewer
# than this fraction of the pixels moved by more than PIXEL_STEP (of 255) in any channel.
PIXEL_STEP = 16
MIN_CHANGED_FRACTION = 0.001

# Words people use for what the toy vocabulary calls otherwise (lower case, whole words or phrases).
_TOY_SYNONYMS: dict[str, str] = {
    "yellow": "blond",
    "golden": "blond",
    "blonde": "blond",
    "fair hair": "blond hair",
    "ginger": "red",
    "auburn": "red",
    "orange hair": "red hair",
    "brunette": "brown hair",
    "dark hair": "black hair",
    "spectacles": "eyeglasses",
    "sunglasses": "eyeglasses",
    "glasses": "eyeglasses",
    "specs": "eyeglasses",
    "smiling": "smile",
    "happy": "smile",
    "grin": "smile",
    "grinning": "smile",
    "laughing": "smile",
    "fringe": "bangs",
    "dark skin": "tanned skin",
    "brown skin": "tanned skin",
    "tan": "tanned",
    "light skin": "pale skin",
    "fair skin": "pale skin",
    "white skin": "pale skin",
    "wide": "chubby",
    "fat": "chubby",
    "round": "chubby",
    "plump": "chubby",
    "slim": "thin",
    "narrow": "thin",
    "skinny": "thin",
    "large eyes": "big eyes",
    "huge eyes": "big eyes",
    "t-shirt": "shirt",
    "top": "shirt",
    "grey": "gray",
}
_FILLER = {"a", "an", "the", "face", "with", "and", "of", "person", "wearing", "has", "having"}


def known_phrases(domain: str) -> list[str] | None:
    """Prompts the domain's text encoder was trained on, or None when it knows any phrase (FFHQ)."""
    if domain != "toy":
        return None
    return toy_attributes.standard_prompts(include_clothes_and_background=True)


def is_known(domain: str, prompt: str) -> bool:
    """True when `prompt` uses only the domain's vocabulary (always True for open-vocabulary domains)."""
    if known_phrases(domain) is None:
        return True
    try:
        return bool(toy_attributes.prompt_targets(prompt))
    except Exception:  # InputError: words outside the vocabulary, or two values of one attribute
        return False


def _words(text: str) -> list[str]:
    text = " " + re.sub(r"[^a-z\- ]+", " ", text.lower()) + " "
    for word, replacement in sorted(_TOY_SYNONYMS.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(f" {word} ", f" {replacement} ")
    return [w for w in text.split() if w not in _FILLER]


def nearest_phrases(prompt: str, phrases: list[str], k: int = 3) -> list[str]:
    """The `k` phrases closest to `prompt`: most shared words after mapping synonyms ("yellow" ->
    "blond", "spectacles" -> "eyeglasses"), then the most similar spelling."""
    asked = _words(prompt)
    asked_text = " ".join(asked)

    def score(phrase: str) -> tuple[int, float]:
        words = _words(phrase)
        shared = len(set(asked) & set(words))
        return shared, difflib.SequenceMatcher(None, asked_text, " ".join(words)).ratio()

    return sorted(phrases, key=score, reverse=True)[:k]


def changed_fraction(before: Image.Image, after: Image.Image) -> float:
    """Fraction of pixels that moved by more than PIXEL_STEP in some channel (1.0 if sizes differ)."""
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > PIXEL_STEP).mean())


def unchanged_targets(result) -> list[int]:
    """Indices of the targets of an edit result that changed nothing measurable.

    `result` has `source_image`, `edited_images` and, when the editor provides it, `delta_s`
    ([targets, S], after the relevance threshold): a zero row, or an image within a few pixels of
    the source, counts as unchanged.
    """
    delta_s = getattr(result, "delta_s", None)
    out = []
    for i, edited in enumerate(result.edited_images):
        zero_delta = delta_s is not None and i < len(delta_s) and not bool(delta_s[i].abs().sum() > 0)
        if zero_delta or changed_fraction(result.source_image, edited) < MIN_CHANGED_FRACTION:
            out.append(i)
    return out


def nothing_changed_notice(domain: str, target: str, threshold: float, zero_delta: bool = True) -> str:
    """What to tell the user about a target that changed nothing, with the nearest known phrases."""
    why = (
        f"no style channel passed the disentanglement threshold {threshold:g}"
        if zero_delta
        else "the picture barely moved"
    )
    head = f"“{target}” changed nothing measurable ({why})."
    phrases = known_phrases(domain)
    if phrases is None:
        return f"{head} Try other words, a lower threshold or a higher strength."
    if is_known(domain, target):
        return f"{head} The words are known here: try a lower threshold or a higher strength."
    nearest = ", ".join(f"“{p}”" for p in nearest_phrases(target, phrases))
    return f"{head} The toy model knows a small vocabulary; the nearest known phrases: {nearest}."
