"""What the page says about each domain: its choices, defaults, examples and missing weights.

Read from the domain configs and the weights registry only (no model is loaded here).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import vocabulary
from .config import list_domains, load_domain_config
from .domain import Domain
from .errors import InputError, WeightsError

BACKBONE_NAMES = {"gan": "DeltaEdit-G", "diffusion": "DeltaEdit-D"}
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    return Domain.open(check_domain(domain)).missing()


def missing_weights_error(domain: str, exc: WeightsError) -> WeightsError:
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
    resolved = Domain.open(check_domain(domain))
    photo_only = {resolved.config.weights.get(role) for role in ("e4e", "landmarks")}
    return not [m for m in resolved.missing() if m.tag not in photo_only]


def check_backbone(backbone) -> str:
    """The display name of a backbone id ("gan", "diffusion"); an InputError for any other."""
    if backbone not in BACKBONE_NAMES:
        raise InputError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONE_NAMES)}")
    return BACKBONE_NAMES[backbone]
