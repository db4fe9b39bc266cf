"""Load each model of a domain once per process, from official checkpoints or our safetensors.

Every loader resolves its file through `deltaedit.weights`, reads it without unpickling code
(`weights_only=True` or safetensors), strict-loads it, and caches the module per
(domain, its weights folder, device) so all tabs, backbones and commands share one copy. Each
loader takes a `deltaedit.domain.Domain`, resolved once by the editor or command that asks.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from pathlib import Path

import numpy as np
import torch

from . import weights
from .domain import Domain
from .errors import WeightsError

log = logging.getLogger(__name__)
_lock = threading.RLock()  # model loading is not re-entrant-safe across threads (app workers)


def read_state_dict(path: Path, key: str | None = None, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch checkpoint (no pickled code is executed).

    `key` picks a sub-dict of a checkpoint (e.g. "g_ema", "state_dict"); `prefix` keeps only the
    keys under it, stripped (e.g. "decoder." of the e4e file).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({exc}); delete it and retry"
            ) from exc
    else:
        state = weights.load_torch_file(path)
        if key is not None:
            if not isinstance(state, dict) or key not in state:
                raise WeightsError(f"{path} has no {key!r} entry; is it the right file?")
            state = state[key]
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise WeightsError(f"{path} holds no weights under {prefix!r}; is it the right file?")
    return state


def strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    weights.check_state_dict(state, module, path)
    current = module.state_dict()
    # Same dtypes: take the loaded (possibly memory-mapped) tensors as they are instead of copying
    # them, so a checkpoint is never held twice in memory.
    assign = all(v.dtype == current[k].dtype for k, v in state.items())
    module.load_state_dict(state, strict=True, assign=assign)
    return module.eval().requires_grad_(False)


def _check(domain) -> Domain:
    if not isinstance(domain, Domain):
        raise TypeError(f"the model loaders take a deltaedit.domain.Domain (Domain.open(name)), got {domain!r}")
    return domain


@cache
def _generator(domain: Domain, device: str):
    from .nn.stylegan2 import Generator

    G = Generator.from_config(domain.config.generator)
    path, prefix = domain.generator_weight()
    if path.suffix == ".safetensors":
        state = read_state_dict(path)
    else:  # rosinality's checkpoint ({"g_ema": ...}) or e4e's copy under "decoder."
        state = read_state_dict(path, key="state_dict" if prefix else "g_ema", prefix=prefix)
    log.info("generator: %s", path)
    return strict_load(G, state, path).to(device)


def load_generator(domain: Domain, device="cpu"):
    with _lock:
        return _generator(_check(domain), str(device))


@cache
def _mapper(domain: Domain, device: str):
    from .nn.mapper import DeltaMapper
    from .nn.stylespace import layout_from_generator

    layout = layout_from_generator(load_generator(domain, device))
    path = domain.weight("mapper")
    mapper = DeltaMapper(layout, clip_dim=domain.config.clip.embed_dim)
    return strict_load(mapper, read_state_dict(path), path).to(device)


def load_mapper(domain: Domain, device="cpu"):
    with _lock:
        return _mapper(_check(domain), str(device))


@cache
def _encoder(domain: Domain, device: str):
    from .nn.e4e import Encoder4Editing

    G = load_generator(domain, device)
    path = domain.weight("e4e")
    if path.suffix == ".safetensors":
        state = read_state_dict(path)
        latent_avg = state.pop("latent_avg", None)
    else:
        ckpt = weights.load_torch_file(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "latent_avg" not in ckpt:
            raise WeightsError(f"{path} lacks 'state_dict' or 'latent_avg'; is it e4e_ffhq_encode.pt?")
        state = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
        latent_avg = ckpt["latent_avg"]
    if latent_avg is None:
        raise WeightsError(f"{path} has no latent_avg tensor")
    encoder = Encoder4Editing.from_config(domain.config.encoder, n_latent=G.n_latent, style_dim=G.style_dim)
    encoder = strict_load(encoder, state, path).to(device)
    latent_avg = latent_avg.float().reshape(-1, G.style_dim)
    if latent_avg.shape[0] == 1:
        latent_avg = latent_avg.expand(G.n_latent, -1)
    return encoder, latent_avg.to(device)


def load_encoder(domain: Domain, device="cpu"):
    """(encoder, latent_avg [n_latent, style_dim]); W+ = encoder(x) + latent_avg."""
    with _lock:
        return _encoder(_check(domain), str(device))


@cache
def _clip(domain: Domain, device: str):
    from .clip import DomainClip, load_clip_model

    model, tokenizer = load_clip_model(domain.config, domain.weight("clip"), device)
    return DomainClip(model, tokenizer, domain.config)


def load_clip(domain: Domain, device="cpu"):
    with _lock:
        return _clip(_check(domain), str(device))


def _style_channels(domain: Domain) -> int:
    """S, the number of style channels of the domain's generator (read off its config)."""
    from .nn.stylegan2 import Generator
    from .nn.stylespace import layout_from_generator

    with torch.device("meta"):  # only the S layout is needed: no memory, no init cost
        return layout_from_generator(Generator.from_config(domain.config.generator)).total


@cache
def _fs3(domain: Domain) -> torch.Tensor:
    from .relevance import load_fs3

    fs3 = load_fs3(domain.weight("fs3"), n_channels=_style_channels(domain), clip_dim=domain.config.clip.embed_dim)
    return torch.from_numpy(np.ascontiguousarray(fs3))


def load_relevance(domain: Domain) -> torch.Tensor:
    with _lock:
        return _fs3(_check(domain))


@cache
def _feature_bank(domain: Domain):
    from .grounding import load_feature_bank

    if "feature_bank" not in domain.config.weights:
        return None
    # A bank only means something for the CLIP that made it: take it from the CLIP's own folder.
    clip_path = domain.weight("clip")
    path = weights.find_in_dir(domain.tag("feature_bank"), clip_path.parent)
    if path is None:
        log.info("no feature bank beside %s: text deltas go to the mapper as they are", clip_path)
        return None
    return load_feature_bank(path, clip_dim=domain.config.clip.embed_dim)


def load_feature_bank(domain: Domain):
    """The domain's FeatureBank (`deltaedit.grounding`), or None where it has none."""
    with _lock:
        return _feature_bank(_check(domain))


@cache
def _style_subspace(domain: Domain):
    from .delta_choice import load_style_subspace

    if "style_subspace" not in domain.config.weights:
        return None
    path = domain.find("style_subspace")
    if path is None:
        log.info("no style subspace for %s: the choice of delta s weighs its candidates as they are", domain.id)
        return None
    return load_style_subspace(path, _style_channels(domain))


def load_style_subspace(domain: Domain):
    """The domain's style subspace [K, S] (`deltaedit.delta_choice`), or None where it has none."""
    with _lock:
        return _style_subspace(_check(domain))


@cache
def _aligner(domain: Domain):
    from .align import FaceAligner

    return FaceAligner(domain.weight("landmarks"))


def load_aligner(domain: Domain):
    with _lock:
        return _aligner(_check(domain))


def clear_cache() -> None:
    """Forget every loaded model (tests, or after replacing weight files) and the editors holding them."""
    import sys

    for fn in (_generator, _mapper, _encoder, _clip, _fs3, _feature_bank, _style_subspace, _aligner):
        fn.cache_clear()
    # Editors keep references to the models: a cached editor would keep serving the old weights.
    for name in ("deltaedit.pipelines.gan", "deltaedit.pipelines.diffusion_editor"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "_cached_editor"):
            module._cached_editor.cache_clear()
