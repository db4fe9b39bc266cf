"""Domain configs: one JSON file per domain in `deltaedit/configs/`.

A domain bundles a generator architecture, an encoder, a CLIP model, the neutral text and the
weight tags (see `deltaedit.weights`) of every model it needs. Ids (`ffhq`, `toy`) are what the
CLI, the Python API and the `gradio_client` API use; labels are for the page only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import InputError

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class GeneratorConfig:
    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    # Optional explicit widths {resolution: channels}; None means rosinality's FFHQ table.
    channels: dict[int, int] | None = None
    lr_mlp: float = 0.01
    # Low-pass filter of every upsampling step; (1, 1) (nearest) keeps 1-2 px strokes learnable
    # at 64 px, where the FFHQ (1, 3, 3, 1) filter blurs them away.
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)
    # False: ToRGB styles are constant, so colour is carried by the editable conv styles (toy).
    styled_rgb: bool = True


@dataclass(frozen=True)
class EncoderConfig:
    input_size: int = 256
    num_layers: int = 50
    mode: str = "ir_se"
    # Optional explicit body widths for tiny encoders (None: the IR-SE-50 widths of e4e).
    widths: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ClipConfig:
    model_name: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    # For domains with their own CLIP architecture: a JSON file in configs/ (open_clip format).
    model_config_file: str | None = None
    embed_dim: int = 512
    image_size: int = 224
    # The authors' preprocessing: nearest upsample by this factor, then average-pool to image_size.
    upsample: int = 7


@dataclass(frozen=True)
class EditDefaults:
    """What an edit uses when its caller gives None (the authors' FFHQ values unless a config says)."""

    strength: float = 1.0
    threshold: float = 0.03
    refine_steps: int = 0
    refine_lr: float = 0.01  # Adam's step in style values (`deltaedit.refine`)


BACKBONES = ("gan", "diffusion")


def _parse_edit_defaults(raw: dict) -> dict[str, EditDefaults]:
    """`"edit_defaults": {"gan": {...}, "diffusion": {...}}`; keys other than backbones are refused."""
    unknown = set(raw) - set(BACKBONES)
    if unknown:
        raise ValueError(f"edit_defaults names unknown backbones {sorted(unknown)}; use {list(BACKBONES)}")
    return {
        backbone: EditDefaults(
            strength=float(values.get("strength", 1.0)),
            threshold=float(values.get("threshold", 0.03)),
            refine_steps=int(values.get("refine_steps", 0)),
            refine_lr=float(values.get("refine_lr", 0.01)),
        )
        for backbone, values in raw.items()
    }


@dataclass(frozen=True)
class DomainConfig:
    id: str
    label: str
    neutral_text: str
    generator: GeneratorConfig
    encoder: EncoderConfig
    clip: ClipConfig
    # role -> weights tag, roles: generator, e4e, mapper, fs3, clip, landmarks, diffusion
    weights: dict[str, str]
    align_faces: bool = True
    truncation: float = 0.7
    example_prompts: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    # backbone id ("gan", "diffusion") -> the strength, threshold and refinement steps of an edit
    # whose caller gives none; a backbone the config does not name gets `EditDefaults()`.
    edit_defaults: dict[str, EditDefaults] = field(default_factory=dict)

    def defaults_for(self, backbone: str) -> EditDefaults:
        """The edit defaults of `backbone` in this domain."""
        return self.edit_defaults.get(backbone, EditDefaults())

    @property
    def samples_by_rendering(self) -> bool:
        """The generator was trained as a decoder (no prior on z): its samples are renders of random
        attributes, encoded like any photo (`"extra": {"sampler": "render"}`, the toy domain)."""
        return self.extra.get("sampler") == "render"

    def clip_pool(self, image_size: int) -> int:
        """Average-pool size that maps an `image_size` picture, upsampled ×upsample, to CLIP's input."""
        up = image_size * self.clip.upsample
        if up % self.clip.image_size:
            raise ValueError(
                f"image size {image_size} x{self.clip.upsample} is not a multiple of the CLIP input"
                f" size {self.clip.image_size}"
            )
        return up // self.clip.image_size


def _parse(raw: dict) -> DomainConfig:
    gen = dict(raw["generator"])
    if gen.get("blur_kernel"):
        gen["blur_kernel"] = tuple(float(k) for k in gen["blur_kernel"])
    if gen.get("channels"):
        gen["channels"] = {int(k): int(v) for k, v in gen["channels"].items()}
    enc = dict(raw.get("encoder", {}))
    if enc.get("widths"):
        enc["widths"] = tuple(enc["widths"])
    return DomainConfig(
        id=raw["id"],
        label=raw["label"],
        neutral_text=raw["neutral_text"],
        generator=GeneratorConfig(**gen),
        encoder=EncoderConfig(**enc),
        clip=ClipConfig(**raw.get("clip", {})),
        weights=dict(raw["weights"]),
        align_faces=raw.get("align_faces", True),
        truncation=raw.get("truncation", 0.7),
        example_prompts=tuple(raw.get("example_prompts", ())),
        extra=dict(raw.get("extra", {})),
        edit_defaults=_parse_edit_defaults(raw.get("edit_defaults", {})),
    )


def list_domains() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if not p.stem.startswith("clip_"))


@cache
def load_domain_config(domain: str) -> DomainConfig:
    if domain not in list_domains():
        raise InputError(f"unknown domain {domain!r}; choose one of: {', '.join(list_domains())}")
    return _parse(json.loads((CONFIG_DIR / f"{domain}.json").read_text()))
