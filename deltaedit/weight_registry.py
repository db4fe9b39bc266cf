"""Where each weight file comes from: `WeightSource` entries by tag (`REGISTRY`).

Each tag names one file (or a diffusers folder) by its official file name and its sources: a
Hugging Face hub repo + file, a Google Drive id (via gdown), a plain URL, or the files packaged
with the repository (the toy domain, `assets/toy/`). `deltaedit.weights` finds, downloads and
checks them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"


@dataclass(frozen=True)
class WeightSource:
    """Where one weight file comes from. `filename` is the official name users put in a weights dir."""

    tag: str
    filename: str
    hub_repo: str | None = None
    hub_filename: str | None = None
    revision: str | None = None
    gdrive_id: str | None = None
    url: str | None = None
    sha256: str | None = None
    packaged: bool = False  # shipped in assets/toy/ (filename relative to it)
    is_dir: bool = False  # a folder (diffusers format) rather than one file
    hub_repo_env: str | None = None  # environment variable that names the hub repo
    revision_env: str | None = None  # environment variable that pins the hub revision (commit)
    allow_patterns: tuple[str, ...] | None = None  # for a hub folder: only these files are fetched
    optional: bool = False  # not needed for the domain's main (GAN) path
    unavailable_hint: str = ""  # what to do when there is no source at all

    @property
    def repo_id(self) -> str | None:
        return self.hub_repo or (os.environ.get(self.hub_repo_env) if self.hub_repo_env else None) or None

    @property
    def hub_revision(self) -> str | None:
        """The pinned revision, else the one the environment names, else None (the default branch)."""
        return self.revision or (os.environ.get(self.revision_env) if self.revision_env else None) or None

    def origin(self) -> str:
        """Human-readable source, for messages."""
        if self.packaged:
            return f"packaged with the repository in {PACKAGED_DIR / self.filename}"
        if self.repo_id:
            what = "repo" if self.is_dir else f"file {self.hub_filename or self.filename}"
            return f"Hugging Face hub {self.repo_id} ({what})"
        if self.url:
            return self.url
        if self.gdrive_id:
            return f"Google Drive https://drive.google.com/uc?id={self.gdrive_id}"
        return self.unavailable_hint or "no public source"


_D_HINT = (
    "no DeltaEdit-D weights are published for ffhq; train them (docs/ffhq-diffusion.md:"
    " `python -m deltaedit train-diffusion --init google/ddpm-ema-celebahq-256 --data generator"
    " --domain ffhq ...`), or set DELTAEDIT_D_FFHQ_REPO to a hub repo holding them (published with"
    " `python -m deltaedit publish-diffusion`), or put the diffusers folder as deltaedit-d-ffhq/ in"
    " --weights-dir"
)
# The files of a DeltaEdit-D weights folder (what `DiffusionBackbone.from_pretrained` reads); a hub
# repo of one may also hold a model card, samples and logs, which are not downloaded.
DIFFUSION_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler/*")
# A public diffusers UNet folder (`train-diffusion --init`): the model at the top or under unet/.
# Both weight formats are allowed (old repos have only .bin, read with weights_only=True).
UNET_FILES = (
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.bin",
)
_TOY_HINT = "it ships with the repository; rebuild the toy weights with `python -m deltaedit toy train`"

REGISTRY: dict[str, WeightSource] = {
    s.tag: s
    for s in [
        WeightSource(
            "stylegan2-ffhq-config-f",
            "stylegan2-ffhq-config-f.pt",
            hub_repo="akhaliq/jojogan-stylegan2-ffhq-config-f",
            hub_filename="stylegan2-ffhq-config-f.pt",
        ),
        WeightSource("e4e-ffhq-encode", "e4e_ffhq_encode.pt", hub_repo="public-data/e4e"),
        WeightSource("deltaedit-net-face", "net_face.pth", gdrive_id="1Mb2WiELoVDPDIi24tIfoWsjn1l2xTjtZ"),
        WeightSource(
            "styleclip-fs3-ffhq",
            "fs3.npy",
            url="https://raw.githubusercontent.com/orpatashnik/StyleCLIP/main/global_directions/npy/ffhq/fs3.npy",
        ),
        WeightSource(
            "clip-vit-b32-openai",
            "open_clip_model.safetensors",
            hub_repo="timm/vit_base_patch32_clip_224.openai",
        ),
        WeightSource(
            "dlib-landmarks-68",
            "shape_predictor_68_face_landmarks.dat",
            hub_repo="public-data/dlib_face_landmark_model",
        ),
        # FFHQ DeltaEdit-D has no repo yet: the hub repo comes from DELTAEDIT_D_FFHQ_REPO (and a
        # commit from DELTAEDIT_D_FFHQ_REVISION). Once the project's own repo exists, its id goes in
        # hub_repo= and the commit that `publish-diffusion` printed in revision= (a 40-hex sha,
        # never a branch), so every user gets exactly the tested weights.
        WeightSource(
            "deltaedit-d-ffhq",
            "deltaedit-d-ffhq",
            is_dir=True,
            hub_repo_env="DELTAEDIT_D_FFHQ_REPO",
            revision_env="DELTAEDIT_D_FFHQ_REVISION",
            allow_patterns=DIFFUSION_FILES,
            optional=True,
            unavailable_hint=_D_HINT,
        ),
        # The public face DDPM that `train-diffusion --init` fine-tunes into FFHQ DeltaEdit-D.
        WeightSource(
            "ddpm-ema-celebahq-256",
            "ddpm-ema-celebahq-256",
            hub_repo="google/ddpm-ema-celebahq-256",
            is_dir=True,
            allow_patterns=UNET_FILES,
            optional=True,
            unavailable_hint=(
                "on a machine with internet access run `hf download google/ddpm-ema-celebahq-256"
                " --local-dir DIR/ddpm-ema-celebahq-256` and pass --weights-dir DIR"
                " (or --init DIR/ddpm-ema-celebahq-256)"
            ),
        ),
        WeightSource("toy-generator", "generator.safetensors", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource("toy-encoder", "encoder.safetensors", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource("toy-mapper", "mapper.safetensors", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource("toy-fs3", "fs3.npy", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource("toy-clip", "clip.safetensors", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource("toy-classifier", "classifier.safetensors", packaged=True, unavailable_hint=_TOY_HINT),
        WeightSource(
            "toy-feature-bank", "feature_bank.npy", packaged=True, optional=True, unavailable_hint=_TOY_HINT
        ),
        WeightSource(
            "toy-style-subspace", "style_subspace.npy", packaged=True, optional=True, unavailable_hint=_TOY_HINT
        ),
        WeightSource(
            "toy-diffusion",
            "diffusion",
            packaged=True,
            is_dir=True,
            optional=True,
            unavailable_hint=_TOY_HINT,
        ),
        WeightSource(
            "toy-diffusion-prior",
            "diffusion-prior",
            packaged=True,
            is_dir=True,
            optional=True,
            unavailable_hint=_TOY_HINT,
        ),
    ]
}


def get_source(tag: str) -> WeightSource:
    try:
        return REGISTRY[tag]
    except KeyError:
        raise InputError(f"unknown weights tag {tag!r}; known: {', '.join(sorted(REGISTRY))}") from None


def hub_folder_tag(repo_id: str, revision: str | None = None, allow_patterns=UNET_FILES) -> str:
    """The registry tag of a hub model folder, registering one on the fly for a repo not listed.

    A registered repo keeps its entry (and pinned revision) unless another revision is asked for.
    The local name is the repo's name: `DIR/<name>/` in a weights dir is found before the hub.
    """
    for src in REGISTRY.values():
        if src.is_dir and src.hub_repo == repo_id and revision in (None, src.revision):
            return src.tag
    name = repo_id.rsplit("/", 1)[-1]
    tag = f"hub:{repo_id}" + (f"@{revision}" if revision else "")
    REGISTRY.setdefault(
        tag,
        WeightSource(
            tag,
            name,
            hub_repo=repo_id,
            revision=revision,
            is_dir=True,
            allow_patterns=tuple(allow_patterns) if allow_patterns else None,
            optional=True,
            unavailable_hint=(
                f"on a machine with internet access run `hf download {repo_id} --local-dir DIR/{name}`"
                f" and pass the folder DIR/{name} instead (or --weights-dir DIR)"
            ),
        ),
    )
    return tag
