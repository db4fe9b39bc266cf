"""The prompt templates DeltaEdit averages a phrase over.

OpenAI's 80 ImageNet zero-shot templates without 'a photo of many {}.' (DeltaEdit's
`utils/map_tool.py` comments that one out), in open_clip's `OPENAI_IMAGENET_TEMPLATES` order.
open_clip stores them as lambdas; formatting each with "{}" recovers the template string.
"""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

EXCLUDED_TEMPLATES = ("a photo of many {}.",)

TEMPLATES: tuple[str, ...] = tuple(
    t for t in (make("{}") for make in OPENAI_IMAGENET_TEMPLATES) if t not in EXCLUDED_TEMPLATES
)


def format_prompts(phrase: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Every template filled with `phrase`."""
    return [t.format(phrase) for t in templates]
