"""Random-weight FFHQ weight folders in the OFFICIAL file formats, for the DeltaEdit-G tests.

Two folders are built, each once per test session (memoised here, so every test module that
imports these fixtures shares them):

- `ffhq_weights`: the real FFHQ shapes. `stylegan2-ffhq-config-f.pt` ({'g_ema': state}),
  `net_face.pth` (a bare state dict), `fs3.npy` [6048, 512] and `open_clip_model.safetensors`
  (an open_clip ViT-B-32-quickgelu state dict), filled from the official key listings in
  ../shared/checkpoint-formats. No e4e file: the 267M-parameter encoder is only written by
  `ffhq_weights_with_e4e` for the slow photo test.
- `tiny_ffhq`: a "tiny FFHQ" domain. Its config (id `ffhq`, so every official-format code path
  runs: `g_ema`, `decoder.` / `encoder.` prefixes, official file names) describes a 64 px
  generator, a small e4e and a small CLIP. `tiny_ffhq` is a function fixture that points
  `deltaedit.config.CONFIG_DIR` at it for the duration of one test.

Random N(0, 0.5) weights are tamed where a deep net would overflow or saturate: ToRGB biases are
zeroed and kernels rescaled so images stay mostly inside [-1, 1] (8-bit comparisons need
unsaturated pixels); the mapper's lr_mul 0.01 layers get weights of the scale training leaves
them at; e4e conv kernels are divided by sqrt(fan-in) like tests/test_e4e.py does.

Test modules load it with `pytest_plugins = ["fixtures_ffhq"]` (fixtures registered once per
session) and import its helpers directly; it has no asserts to rewrite: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from official_formats import random_state_dict

FORMATS = "checkpoint-formats"
GENERATOR_FILE = "stylegan2-ffhq-config-f.pt"
E4E_FILE = "e4e_ffhq_encode.pt"
MAPPER_FILE = "net_face.pth"
FS3_FILE = "fs3.npy"
CLIP_FILE = "open_clip_model.safetensors"
FFHQ_CLIP = "ViT-B-32-quickgelu"

# Scale of the relevance rows: |fs3 . Δt| then straddles the default threshold 0.03 for the
# random CLIP's text deltas, so the selection keeps some channels and zeroes others.
FS3_ROW_NORM = {"ffhq": 6.0, "tiny": 0.5}

_built: dict[str, Path] = {}


# ---- helpers shared by the test files --------------------------------------------------------
def isolate_weights_env(monkeypatch, tmp_path: Path) -> None:
    """No downloads, no user cache, no DELTAEDIT_WEIGHTS_DIR: only the given folders count."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DELTAEDIT_OFFLINE", "1")
    monkeypatch.setenv("DELTAEDIT_CACHE", str(tmp_path / "deltaedit-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("DELTAEDIT_WEIGHTS_DIR", raising=False)


def tame_generator_state(state: dict[str, torch.Tensor], rgb_gain: float = 2.0) -> dict[str, torch.Tensor]:
    """Zero ToRGB biases and rescale ToRGB kernels: images of std ~0.5, mostly inside [-1, 1]."""
    for key, value in state.items():
        if key.startswith("to_rgb") and key.endswith(".bias"):
            value.zero_()
        elif key.startswith("to_rgb") and key.endswith("conv.weight"):
            value.mul_(rgb_gain)
    return state


def unit_rows(rng: np.random.Generator, n: int, d: int, norm: float) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True) * norm


def louder_image_attention(clip: torch.nn.Module, gain: float) -> None:
    """Scale the vision tower's attention outputs.

    A random ViT's feature is nearly the same for every image (the class token's residual
    dominates: cosine 0.94 between two noise images for ViT-B-32, 0.998 for the tiny one); louder
    attention makes it depend on the image, so the tests see the image half of the condition.
    """
    with torch.no_grad():
        for block in clip.visual.transformer.resblocks:
            block.attn.out_proj.weight.mul_(gain)


def save_clip(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def copy_weights(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a weights folder without the files named in `skip`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.endswith(".sha256"):
            shutil.copy2(f, dst / f.name)
    return dst


# ---- the full-size FFHQ folder ---------------------------------------------------------------
def write_ffhq_weights(folder: Path, formats: Path) -> Path:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    g_state = tame_generator_state(random_state_dict(formats / f"{GENERATOR_FILE}.keys.txt", seed=1))
    torch.save({"g_ema": g_state}, folder / GENERATOR_FILE)
    # Mapper weights of the scale lr_mul 0.01 layers hold after training: Δs ~ s in size.
    m_state = random_state_dict(formats / f"{MAPPER_FILE}.keys.txt", seed=2, scale=50.0)
    torch.save(m_state, folder / MAPPER_FILE)
    n_s = sum(
        v.shape[0] for k, v in g_state.items() if k.endswith("conv.modulation.bias") and "to_rgb" not in k
    )
    rng = np.random.default_rng(3)
    np.save(folder / FS3_FILE, unit_rows(rng, n_s, 512, FS3_ROW_NORM["ffhq"]))
    torch.manual_seed(4)
    clip = open_clip.create_model(FFHQ_CLIP, pretrained=None)
    louder_image_attention(clip, 3.0)
    save_clip(clip, folder / CLIP_FILE)
    return folder


def e4e_checkpoint(formats: Path, g_state: dict, n_latent: int = 18) -> dict:
    """The official e4e container: encoder.* + decoder.* under 'state_dict', latent_avg, opts."""
    state = {}
    for key, value in random_state_dict(formats / f"{E4E_FILE}.keys.txt", seed=5).items():
        if value.ndim == 4:  # conv kernels by fan-in: 24 residual units stay finite
            value = value / value[0].numel() ** 0.5
        state[key] = value
    state.update({f"decoder.{k}": v for k, v in g_state.items()})
    latent_avg = torch.randn(n_latent, 512, generator=torch.Generator().manual_seed(6)) * 0.3
    return {"state_dict": state, "latent_avg": latent_avg, "opts": {"encoder_type": "Encoder4Editing"}}


@pytest.fixture(scope="session")
def ffhq_weights(checkpoint_formats, tmp_path_factory) -> Path:
    """Full-size FFHQ weights (random, official formats), without the e4e file."""
    if "ffhq" not in _built:
        _built["ffhq"] = write_ffhq_weights(tmp_path_factory.mktemp("ffhq-weights"), checkpoint_formats)
    return _built["ffhq"]


@pytest.fixture(scope="session")
def ffhq_weights_with_e4e(ffhq_weights, checkpoint_formats, tmp_path_factory) -> Path:
    """`ffhq_weights` plus a full-size e4e_ffhq_encode.pt (about 1 GB; slow tests only)."""
    if "ffhq+e4e" not in _built:
        folder = copy_weights(ffhq_weights, tmp_path_factory.mktemp("ffhq-weights-e4e"))
        g_state = torch.load(folder / GENERATOR_FILE, weights_only=True)["g_ema"]
        torch.save(e4e_checkpoint(checkpoint_formats, g_state), folder / E4E_FILE)
        _built["ffhq+e4e"] = folder
    return _built["ffhq+e4e"]


# ---- the tiny FFHQ domain --------------------------------------------------------------------
TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_domain_json(clip_json: Path) -> dict:
    return {
        "id": "ffhq",
        "label": "tiny FFHQ (tests)",
        "neutral_text": "face",
        "generator": {
            "size": 64,
            "style_dim": 32,
            "n_mlp": 2,
            "channel_multiplier": 1,
            "channels": {"4": 32, "8": 32, "16": 32, "32": 32, "64": 16},
        },
        "encoder": {"input_size": 64, "num_layers": 0, "mode": "ir_se", "widths": [16, 16, 32, 32]},
        "clip": {
            "model_name": "tiny-test-clip",
            "pretrained": None,
            # Absolute: deltaedit.clip joins it to its own CONFIG_DIR, which we do not patch.
            "model_config_file": str(clip_json),
            "embed_dim": TINY_CLIP["embed_dim"],
            "image_size": TINY_CLIP["vision_cfg"]["image_size"],
            "upsample": 7,
        },
        "weights": {
            "generator": "stylegan2-ffhq-config-f",
            "e4e": "e4e-ffhq-encode",
            "mapper": "deltaedit-net-face",
            "fs3": "styleclip-fs3-ffhq",
            "clip": "clip-vit-b32-openai",
            "landmarks": "dlib-landmarks-68",
        },
        "align_faces": True,
        "truncation": 0.7,
    }


@dataclass(frozen=True)
class TinyDomain:
    config_dir: Path  # holds ffhq.json (the tiny one)
    clip_json: Path  # open_clip model config of the tiny CLIP
    weights: Path  # every file, official names
    e4e_only: Path  # the same without stylegan2-ffhq-config-f.pt (generator from e4e's decoder.*)
    n_latent: int
    style_dim: int
    size: int


def write_tiny_ffhq(root: Path) -> TinyDomain:
    import open_clip

    from deltaedit.config import EncoderConfig, GeneratorConfig
    from deltaedit.nn.e4e import Encoder4Editing
    from deltaedit.nn.mapper import DeltaMapper
    from deltaedit.nn.stylegan2 import Generator
    from deltaedit.nn.stylespace import layout_from_generator

    config_dir, weights = root / "configs", root / "weights"
    config_dir.mkdir(parents=True)
    weights.mkdir()
    clip_json = root / "tiny_clip.json"
    clip_json.write_text(json.dumps(TINY_CLIP))
    raw = tiny_domain_json(clip_json)
    (config_dir / "ffhq.json").write_text(json.dumps(raw))
    gen_cfg = {**raw["generator"], "channels": {int(k): v for k, v in raw["generator"]["channels"].items()}}
    enc_cfg = {**raw["encoder"], "widths": tuple(raw["encoder"]["widths"])}
    clip_dim = TINY_CLIP["embed_dim"]

    torch.manual_seed(10)
    G = Generator.from_config(GeneratorConfig(**gen_cfg))
    g_state = tame_generator_state({k: v.clone() for k, v in G.state_dict().items()}, rgb_gain=1.0)
    torch.save({"g_ema": g_state}, weights / GENERATOR_FILE)
    layout = layout_from_generator(G)

    torch.manual_seed(11)
    mapper = DeltaMapper(layout, clip_dim=clip_dim)
    torch.save({k: v * 0.8 for k, v in mapper.state_dict().items()}, weights / MAPPER_FILE)

    torch.manual_seed(12)
    enc = Encoder4Editing.from_config(EncoderConfig(**enc_cfg), n_latent=G.n_latent, style_dim=G.style_dim)
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in g_state.items()})
    with torch.no_grad():
        latent_avg = G.mean_latent(256).repeat(G.n_latent, 1)
    torch.save(
        {"state_dict": state, "latent_avg": latent_avg, "opts": {"encoder_type": "Encoder4Editing"}},
        weights / E4E_FILE,
    )

    rng = np.random.default_rng(13)
    np.save(weights / FS3_FILE, unit_rows(rng, layout.total, clip_dim, FS3_ROW_NORM["tiny"]))

    torch.manual_seed(14)
    clip = open_clip.CLIP(**TINY_CLIP)
    louder_image_attention(clip, 20.0)
    save_clip(clip, weights / CLIP_FILE)

    e4e_only = copy_weights(weights, root / "weights-e4e-only", skip=(GENERATOR_FILE,))
    return TinyDomain(config_dir, clip_json, weights, e4e_only, G.n_latent, G.style_dim, G.size)


@pytest.fixture
def tiny_ffhq(tmp_path_factory, tmp_path, monkeypatch) -> TinyDomain:
    """The tiny FFHQ domain, active (deltaedit.config.CONFIG_DIR patched) during one test."""
    from deltaedit import config

    if "tiny" not in _built:
        _built["tiny"] = tmp_path_factory.mktemp("tiny-ffhq")
        _built["tiny-domain"] = write_tiny_ffhq(_built["tiny"])
    domain: TinyDomain = _built["tiny-domain"]
    isolate_weights_env(monkeypatch, tmp_path)
    monkeypatch.setattr(config, "CONFIG_DIR", domain.config_dir)
    config.load_domain_config.cache_clear()
    yield domain
    config.load_domain_config.cache_clear()


def tiny_latents(domain: TinyDomain, seed: int = 0) -> torch.Tensor:
    """A W+ code [n_latent, style_dim] for the tiny generator (values like real W+ rows)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(domain.n_latent, domain.style_dim, generator=gen) * 0.5
