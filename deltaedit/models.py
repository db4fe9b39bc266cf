"""Load each model of a domain once per process, from official checkpoints or our safetensors.

Every loader resolves its file through `deltaedit.weights`, reads it without unpickling code
(`weights_only=True` or safetensors), strict-loads it, and caches the module per
(domain, device, weights_dir) so all tabs, backbones and commands share one copy.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from pathlib import Path

import numpy as np
import torch

from . import weights
from .config import DomainConfig, load_domain_config
from .errors import WeightsError

log = logging.getLogger(__name__)
_lock = threading.RLock()  # model loading is not re-entrant-safe across threads (app workers)


def _key(weights_dir) -> str | None:
    return str(Path(weights_dir).expanduser().resolve()) if weights_dir else None


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


def _domain(domain: str | DomainConfig) -> DomainConfig:
    return domain if isinstance(domain, DomainConfig) else load_domain_config(domain)


@cache
def _generator(domain: str, device: str, weights_dir: str | None):
    from .nn.stylegan2 import Generator

    cfg = load_domain_config(domain)
    G = Generator.from_config(cfg.generator)
    if domain == "ffhq":
        path, prefix = weights.resolve_generator(weights_dir)
        state = read_state_dict(path, key="state_dict" if prefix else "g_ema", prefix=prefix)
    else:
        path = weights.resolve(cfg.weights["generator"], weights_dir)
        state = read_state_dict(path)
    log.info("generator: %s", path)
    return strict_load(G, state, path).to(device)


def load_generator(domain, device="cpu", weights_dir=None):
    with _lock:
        return _generator(_domain(domain).id, str(device), _key(weights_dir))


@cache
def _mapper(domain: str, device: str, weights_dir: str | None):
    from .nn.mapper import DeltaMapper
    from .nn.stylespace import layout_from_generator

    cfg = load_domain_config(domain)
    layout = layout_from_generator(load_generator(domain, device, weights_dir))
    path = weights.resolve(cfg.weights["mapper"], weights_dir)
    mapper = DeltaMapper(layout, clip_dim=cfg.clip.embed_dim)
    return strict_load(mapper, read_state_dict(path), path).to(device)


def load_mapper(domain, device="cpu", weights_dir=None):
    with _lock:
        return _mapper(_domain(domain).id, str(device), _key(weights_dir))


@cache
def _encoder(domain: str, device: str, weights_dir: str | None):
    from .nn.e4e import Encoder4Editing

    cfg = load_domain_config(domain)
    G = load_generator(domain, device, weights_dir)
    path = weights.resolve(cfg.weights["e4e"], weights_dir)
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
    encoder = Encoder4Editing.from_config(cfg.encoder, n_latent=G.n_latent, style_dim=G.style_dim)
    encoder = strict_load(encoder, state, path).to(device)
    latent_avg = latent_avg.float().reshape(-1, G.style_dim)
    if latent_avg.shape[0] == 1:
        latent_avg = latent_avg.expand(G.n_latent, -1)
    return encoder, latent_avg.to(device)


def load_encoder(domain, device="cpu", weights_dir=None):
    """(encoder, latent_avg [n_latent, style_dim]); W+ = encoder(x) + latent_avg."""
    with _lock:
        return _encoder(_domain(domain).id, str(device), _key(weights_dir))


@cache
def _clip(domain: str, device: str, weights_dir: str | None):
    from .clip import DomainClip, load_clip_model

    cfg = load_domain_config(domain)
    path = weights.resolve(cfg.weights["clip"], weights_dir)
    model, tokenizer = load_clip_model(cfg, path, device)
    return DomainClip(model, tokenizer, cfg)


def load_clip(domain, device="cpu", weights_dir=None):
    with _lock:
        return _clip(_domain(domain).id, str(device), _key(weights_dir))


@cache
def _fs3(domain: str, weights_dir: str | None) -> torch.Tensor:
    from .nn.stylegan2 import Generator
    from .nn.stylespace import layout_from_generator
    from .relevance import load_fs3

    cfg = load_domain_config(domain)
    with torch.device("meta"):  # only the S layout is needed: no memory, no init cost
        n_channels = layout_from_generator(Generator.from_config(cfg.generator)).total
    path = weights.resolve(cfg.weights["fs3"], weights_dir)
    fs3 = load_fs3(path, n_channels=n_channels, clip_dim=cfg.clip.embed_dim)
    return torch.from_numpy(np.ascontiguousarray(fs3))


def load_relevance(domain, weights_dir=None) -> torch.Tensor:
    with _lock:
        return _fs3(_domain(domain).id, _key(weights_dir))


@cache
def _feature_bank(domain: str, weights_dir: str | None):
    from .grounding import load_feature_bank

    cfg = load_domain_config(domain)
    if "feature_bank" not in cfg.weights:
        return None
    # A bank only means something for the CLIP that made it: take it from the CLIP's own folder.
    clip_path = weights.resolve(cfg.weights["clip"], weights_dir)
    path = weights.find_in_dir(cfg.weights["feature_bank"], clip_path.parent)
    if path is None:
        log.info("no feature bank beside %s: text deltas go to the mapper as they are", clip_path)
        return None
    return load_feature_bank(path, clip_dim=cfg.clip.embed_dim)


def load_feature_bank(domain, weights_dir=None):
    """The domain's FeatureBank (`deltaedit.grounding`), or None where it has none."""
    with _lock:
        return _feature_bank(_domain(domain).id, _key(weights_dir))


@cache
def _aligner(domain: str, weights_dir: str | None):
    from .align import FaceAligner

    cfg = load_domain_config(domain)
    return FaceAligner(weights.resolve(cfg.weights["landmarks"], weights_dir))


def load_aligner(domain, weights_dir=None):
    with _lock:
        return _aligner(_domain(domain).id, _key(weights_dir))


def clear_cache() -> None:
    """Forget every loaded model (tests, or after replacing weight files) and the editors holding them."""
    import sys

    for fn in (_generator, _mapper, _encoder, _clip, _fs3, _feature_bank, _aligner):
        fn.cache_clear()
    # Editors keep references to the models: a cached editor would keep serving the old weights.
    for name in ("deltaedit.pipelines.gan", "deltaedit.pipelines.diffusion_editor"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "_cached_editor"):
            module._cached_editor.cache_clear()
