"""Attribute schema of the built-in toy faces: sampling, labels, captions and evaluation prompts.

The attributes mirror the FFHQ edit prompts (hair colour, bangs, skin, smile, eyeglasses, big eyes,
face width) plus clothes and background colours. Jitter (pose, position, scale) is a nuisance that
the renderer applies but that is not an attribute: edits should neither need nor change it.

Captions and prompts share one vocabulary (`PHRASES`), so a CLIP trained on the captions understands
the evaluation prompts ("face with blond hair", "chubby face", "face with red hair and eyeglasses").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

NEUTRAL_TEXT = "face"

# name -> values; the first value of a binary attribute is its "absent" state.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair_color": ("black", "blond", "red", "brown"),
    "bangs": ("no", "yes"),
    "skin_tone": ("pale", "medium", "tanned"),
    "smile": ("no", "yes"),
    "eyeglasses": ("no", "yes"),
    "big_eyes": ("no", "yes"),
    "face_width": ("normal", "chubby", "thin"),
    "clothes_color": ("blue", "green", "purple", "orange"),
    "background_color": ("gray", "pink", "cyan", "white"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# How a value is said after "face with ..."; None: the value is never mentioned (absent / default).
# face_width is said as an adjective of "face" instead (see ADJECTIVES).
PHRASES: dict[str, dict[str, str | None]] = {
    "hair_color": {v: f"{v} hair" for v in ATTRIBUTES["hair_color"]},
    "bangs": {"no": None, "yes": "bangs"},
    "skin_tone": {v: f"{v} skin" for v in ATTRIBUTES["skin_tone"]},
    "smile": {"no": None, "yes": "a smile"},
    "eyeglasses": {"no": None, "yes": "eyeglasses"},
    "big_eyes": {"no": None, "yes": "big eyes"},
    "face_width": {"normal": None, "chubby": None, "thin": None},
    "clothes_color": {v: f"{_article(v)} {v} shirt" for v in ATTRIBUTES["clothes_color"]},
    "background_color": {v: f"{_article(v)} {v} background" for v in ATTRIBUTES["background_color"]},
}
ADJECTIVES: dict[str, dict[str, str | None]] = {
    "face_width": {"normal": None, "chubby": "chubby", "thin": "thin"}
}
# Accepted spellings of a phrase besides the canonical one (prompts say "face with smile" too).
ALIASES: dict[str, tuple[str, ...]] = {"a smile": ("smile",)}


@dataclass(frozen=True)
class Jitter:
    """Nuisance pose: rotation in degrees, offset as a fraction of the image, relative scale."""

    angle: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Jitter:
        return cls(
            angle=float(rng.uniform(-5.0, 5.0)),
            dx=float(rng.uniform(-0.025, 0.025)),
            dy=float(rng.uniform(-0.025, 0.025)),
            scale=float(rng.uniform(0.95, 1.05)),
        )


@dataclass(frozen=True)
class FaceAttributes:
    hair_color: str = "black"
    bangs: str = "no"
    skin_tone: str = "medium"
    smile: str = "no"
    eyeglasses: str = "no"
    big_eyes: str = "no"
    face_width: str = "normal"
    clothes_color: str = "blue"
    background_color: str = "gray"
    jitter: Jitter = field(default_factory=Jitter)

    def __post_init__(self):
        for name, values in ATTRIBUTES.items():
            if getattr(self, name) not in values:
                raise InputError(
                    f"toy attribute {name}={getattr(self, name)!r} is unknown; use one of {', '.join(values)}"
                )

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceAttributes:
        """Uniform over every attribute's values (balanced classes for the classifier), random jitter."""
        values = {name: vals[int(rng.integers(len(vals)))] for name, vals in ATTRIBUTES.items()}
        return cls(**values, jitter=Jitter.sample(rng))

    def labels(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}

    def to_vector(self) -> np.ndarray:
        """Class index of every attribute, in `ATTRIBUTE_NAMES` order (int64 [n_attributes])."""
        return np.array([ATTRIBUTES[n].index(getattr(self, n)) for n in ATTRIBUTE_NAMES], dtype=np.int64)

    @classmethod
    def from_vector(cls, vector, jitter: Jitter | None = None) -> FaceAttributes:
        values = {n: ATTRIBUTES[n][int(i)] for n, i in zip(ATTRIBUTE_NAMES, vector, strict=True)}
        return cls(**values, jitter=jitter or Jitter())

    def replace(self, **changes) -> FaceAttributes:
        return dataclasses.replace(self, **changes)


def _join(parts: list[str], rng: np.random.Generator) -> str:
    """ "a, b and c" mostly, sometimes "a and b and c"."""
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.3:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(attrs: FaceAttributes, rng: np.random.Generator) -> str:
    """A varied caption naming a random subset of the face's attributes, deterministic given `rng`.

    Forms: "face with red hair, eyeglasses and a smile", "chubby face with blond hair",
    "a face with bangs", "thin face", and rarely the neutral text "face".
    """
    phrases = []
    for name in ATTRIBUTE_NAMES:
        phrase = PHRASES[name][getattr(attrs, name)]
        if phrase is not None:
            phrases.append(phrase)
    adjective = ADJECTIVES["face_width"][attrs.face_width]
    # Each phrase is mentioned with probability p: sometimes terse, sometimes exhaustive captions.
    p = float(rng.choice([0.25, 0.5, 0.75, 1.0]))
    chosen = [ph for ph in phrases if rng.random() < p]
    order = rng.permutation(len(chosen))
    chosen = [chosen[i] for i in order]
    # Alternative spellings half the time, so both "face with smile" and "... a smile" are familiar.
    chosen = [ALIASES[ph][0] if ph in ALIASES and rng.random() < 0.5 else ph for ph in chosen]
    subject = NEUTRAL_TEXT
    if adjective is not None and rng.random() < p:
        subject = f"{adjective} {subject}"
    if rng.random() < 0.2:
        subject = f"a {subject}"
    if not chosen:
        return subject
    return f"{subject} with {_join(chosen, rng)}"


def captions(attrs_list: list[FaceAttributes], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [caption(a, rng) for a in attrs_list]


# ---- evaluation prompts ---------------------------------------------------------------------------


def _phrase_table() -> list[tuple[str, str, str]]:
    """(phrase, attribute, value) for every way a prompt may name a value, longest phrase first."""
    rows = []
    for name, table in PHRASES.items():
        for value, phrase in table.items():
            if phrase is None:
                continue
            rows.append((phrase, name, value))
            rows.extend((alias, name, value) for alias in ALIASES.get(phrase, ()))
    return sorted(rows, key=lambda r: -len(r[0]))


_PHRASES_BY_LENGTH = _phrase_table()


def standard_prompt(attribute: str, value: str) -> str:
    """The evaluation prompt that asks for one attribute value: "face with blond hair", "chubby face"."""
    if attribute in ADJECTIVES:
        adjective = ADJECTIVES[attribute].get(value)
        if adjective is None:
            raise InputError(f"{attribute}={value!r} has no prompt")
        return f"{adjective} {NEUTRAL_TEXT}"
    phrase = PHRASES.get(attribute, {}).get(value)
    if phrase is None:
        raise InputError(f"{attribute}={value!r} has no prompt")
    return f"{NEUTRAL_TEXT} with {phrase}"


def standard_prompts(include_clothes_and_background: bool = False) -> list[str]:
    """One prompt per attribute value that can be asked for (absent/default states have none)."""
    skip = set() if include_clothes_and_background else {"clothes_color", "background_color"}
    out = []
    for name, values in ATTRIBUTES.items():
        if name in skip:
            continue
        for value in values:
            try:
                out.append(standard_prompt(name, value))
            except InputError:
                continue
    return out


# Alternative spellings the evaluator also uses.
EXTRA_PROMPTS: tuple[str, ...] = ("face with smile",)

# Edits from a non-neutral source text: (source, target).
SOURCE_TARGET_PAIRS: tuple[tuple[str, str], ...] = (
    ("face with black hair", "face with blond hair"),
    ("face with black hair", "face with red hair"),
    ("face with brown hair", "face with blond hair"),
    ("face with pale skin", "face with tanned skin"),
    ("chubby face", "thin face"),
    ("thin face", "chubby face"),
)

# Prompts that ask for two attributes at once.
TWO_ATTRIBUTE_PROMPTS: tuple[str, ...] = (
    "face with red hair and eyeglasses",
    "face with blond hair and a smile",
    "face with bangs and eyeglasses",
    "chubby face with a smile",
    "face with big eyes and tanned skin",
)


def prompt_targets(prompt: str) -> dict[str, str]:
    """Every attribute value a prompt asks for: "chubby face with red hair and eyeglasses" ->
    {"face_width": "chubby", "hair_color": "red", "eyeglasses": "yes"}. The neutral text gives {}.

    Raises InputError for words outside the toy vocabulary or contradictory values.
    """
    text = " " + re.sub(r"[\s,.]+", " ", prompt.lower()).strip() + " "
    found: dict[str, str] = {}

    def claim(attribute: str, value: str):
        if found.get(attribute, value) != value:
            raise InputError(f"prompt {prompt!r} asks for two values of {attribute}")
        found[attribute] = value

    for phrase, name, value in _PHRASES_BY_LENGTH:
        pattern = f" {phrase} "
        if pattern in text:
            claim(name, value)
            text = text.replace(pattern, " ")
    for name, table in ADJECTIVES.items():
        for value, adjective in table.items():
            if adjective is not None and f" {adjective} " in text:
                claim(name, value)
                text = text.replace(f" {adjective} ", " ")
    leftover = [w for w in text.split() if w not in {"a", "an", "face", "with", "and"}]
    if leftover:
        raise InputError(
            f"prompt {prompt!r} uses words the toy domain does not know: {' '.join(leftover)};"
            f" try prompts like {', '.join(standard_prompts()[:4])}"
        )
    return found


def prompt_target(prompt: str) -> tuple[str, str]:
    """(attribute, value) a single-attribute prompt asks for: "face with blond hair" -> ("hair_color", "blond")."""
    targets = prompt_targets(prompt)
    if len(targets) != 1:
        raise InputError(
            f"prompt {prompt!r} names {len(targets)} attributes; prompt_target needs exactly one"
        )
    return next(iter(targets.items()))
