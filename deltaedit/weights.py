"""Weight files: a registry of where each one comes from, and `resolve(tag) -> Path`.

Each tag names one file (or a diffusers folder) by its official file name and its sources: a
Hugging Face hub repo + file, a Google Drive id (via gdown), a plain URL, or the files packaged
with the repository (the toy domain, `assets/toy/`).

`resolve(tag)` looks, in order, in: the `weights_dir` argument, `$DELTAEDIT_WEIGHTS_DIR`, the
packaged assets, the download cache (`$DELTAEDIT_CACHE`, default `~/.cache/deltaedit`; hub files
live in huggingface_hub's own cache), and finally downloads. Downloads go to a temporary file in
the target folder that is renamed into place only when complete, so a partial file is never used.
When a sha256 is known it is checked (once per file version: the result is kept in a
`<file>.sha256` sidecar). Offline (`HF_HUB_OFFLINE=1` or `DELTAEDIT_OFFLINE=1`) or unreachable
sources fail within seconds with a `WeightsError` naming every missing file of the domain and
where to put it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, WeightsError
from .fileio import write_json

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_DIR = REPO_ROOT / "assets" / "toy"
# Seconds to wait for a server before calling it unreachable (connect and between reads).
TIMEOUT = float(os.environ.get("DELTAEDIT_DOWNLOAD_TIMEOUT", "10"))

_TRUE = {"1", "true", "yes", "on"}


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
            "toy-diffusion",
            "diffusion",
            packaged=True,
            is_dir=True,
            optional=True,
            unavailable_hint=_TOY_HINT,
        ),
    ]
}


# ---- places ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("DELTAEDIT_CACHE") or "~/.cache/deltaedit").expanduser()


def is_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "DELTAEDIT_OFFLINE"))
    return any(v in _TRUE for v in env) or bool(constants.HF_HUB_OFFLINE)


def get_source(tag: str) -> WeightSource:
    try:
        return REGISTRY[tag]
    except KeyError:
        raise InputError(f"unknown weights tag {tag!r}; known: {', '.join(sorted(REGISTRY))}") from None


def _exists(path: Path, src: WeightSource) -> bool:
    if src.is_dir:
        return path.is_dir() and any(path.iterdir())
    return path.is_file()


def _hf_cache() -> str | None:
    # Read at call time (huggingface_hub reads it once at import).
    return os.environ.get("HF_HUB_CACHE") or None


def _hub_cached(src: WeightSource) -> Path | None:
    """The file in huggingface_hub's cache, without any network access."""
    if not src.repo_id:
        return None
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if src.is_dir:
        try:
            return Path(
                snapshot_download(
                    src.repo_id,
                    revision=src.hub_revision,
                    cache_dir=_hf_cache(),
                    local_files_only=True,
                    allow_patterns=list(src.allow_patterns) if src.allow_patterns else None,
                )
            )
        except Exception:  # not cached (or a malformed cache)
            return None

    try:
        hit = try_to_load_from_cache(
            src.repo_id, src.hub_filename or src.filename, cache_dir=_hf_cache(), revision=src.hub_revision
        )
    except Exception:  # a malformed cache must not stop the lookup
        return None
    return Path(hit) if isinstance(hit, str) else None


def _local_candidates(src: WeightSource, weights_dir) -> list[tuple[Path, str]]:
    places = []
    if weights_dir:
        places.append((Path(weights_dir).expanduser() / src.filename, "weights dir"))
    env_dir = os.environ.get("DELTAEDIT_WEIGHTS_DIR")
    if env_dir:
        places.append((Path(env_dir).expanduser() / src.filename, "DELTAEDIT_WEIGHTS_DIR"))
    if src.packaged:
        places.append((PACKAGED_DIR / src.filename, "packaged"))
    places.append((cache_dir() / src.filename, "cache"))
    return places


def find_in_dir(tag: str, folder) -> Path | None:
    """`folder/<official file name>` of `tag` if it exists there."""
    src = get_source(tag)
    path = Path(folder).expanduser() / src.filename
    return path if _exists(path, src) else None


def find_local(tag: str, weights_dir=None) -> tuple[Path, str] | None:
    """(path, where) of the first local copy of `tag`, without network access; None if absent."""
    src = get_source(tag)
    for path, where in _local_candidates(src, weights_dir):
        if _exists(path, src):
            return path, where
    hub = _hub_cached(src)
    return (hub, "hub cache") if hub is not None else None


# ---- hashes ----------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in a `<file>.sha256` sidecar keyed by size and mtime."""
    path = Path(path)
    stat = path.stat()
    sidecar = path.with_name(path.name + ".sha256")
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        record = json.loads(sidecar.read_text())
        if {k: record.get(k) for k in stamp} == stamp and record.get("sha256"):
            return record["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        write_json(sidecar, {**stamp, "sha256": value})
    except OSError:  # read-only folder: just recompute next time
        pass
    return value


def _hash_ok(path: Path, src: WeightSource) -> bool:
    return src.sha256 is None or src.is_dir or file_sha256(path) == src.sha256.lower()


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".sha256")):
        try:
            p.unlink()
        except OSError:
            pass


# ---- downloads -------------------------------------------------------------------------------
class _Unreachable(Exception):
    """A download failed (network, server, incomplete body)."""


_reachability: dict[tuple[str, int], tuple[float, str | None]] = {}


def _check_reachable(url: str) -> None:
    """Fail in seconds when a server cannot be reached at all (no DNS, no route, refused).

    huggingface_hub retries connection errors with back-off for half a minute per file; one
    quick TCP connect first (remembered for a minute) keeps an offline machine's error fast.
    """
    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return  # behind a proxy a direct connect proves nothing
    parts = urllib.parse.urlsplit(url)
    key = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    now = time.monotonic()
    cached = _reachability.get(key)
    if cached is None or now - cached[0] > 60:
        try:
            socket.create_connection(key, timeout=min(TIMEOUT, 5)).close()
            cached = (now, None)
        except OSError as exc:
            cached = (now, f"cannot reach {key[0]}:{key[1]} ({exc})")
        _reachability[key] = cached
    if cached[1]:
        raise _Unreachable(cached[1])


def _temp_path(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _download_url(url: str, dest: Path, progress: bool) -> Path:
    from tqdm.auto import tqdm

    tmp = _temp_path(dest)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "deltaedit"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _Unreachable(f"connection closed after {received} of {total} bytes")
        os.replace(tmp, dest)
        return dest
    except _Unreachable:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Unreachable(f"{url}: {exc}") from exc
    except Exception as exc:  # http.client.IncompleteRead and friends
        raise _Unreachable(f"{url}: {exc!r}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _download_gdrive(file_id: str, dest: Path, progress: bool) -> Path:
    import gdown

    tmp = _temp_path(dest)
    try:
        out = gdown.download(id=file_id, output=str(tmp), quiet=not progress, timeout=TIMEOUT)
        if not out or not tmp.is_file() or tmp.stat().st_size == 0:
            raise _Unreachable(f"Google Drive file {file_id} could not be downloaded")
        os.replace(tmp, dest)
        return dest
    except _Unreachable:
        raise
    except Exception as exc:  # gdown raises requests/its own errors
        raise _Unreachable(f"Google Drive file {file_id}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _download_hub(src: WeightSource, target_dir: Path | None, force: bool) -> Path:
    import huggingface_hub

    kwargs = dict(
        revision=src.hub_revision,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
        etag_timeout=TIMEOUT,
        force_download=force,
        cache_dir=None if target_dir else _hf_cache(),
    )
    try:
        if src.is_dir:
            local = target_dir / src.filename if target_dir else None
            patterns = list(src.allow_patterns) if src.allow_patterns else None
            return Path(
                huggingface_hub.snapshot_download(
                    src.repo_id, local_dir=local, allow_patterns=patterns, **kwargs
                )
            )
        name = src.hub_filename or src.filename
        path = Path(huggingface_hub.hf_hub_download(src.repo_id, name, local_dir=target_dir, **kwargs))
    except Exception as exc:  # httpx / hub errors: all mean "could not get it from the hub"
        raise _Unreachable(f"hub {src.repo_id}: {exc}") from exc
    if target_dir is not None and path.name != src.filename:  # keep the official local name
        os.replace(path, target_dir / src.filename)
        path = target_dir / src.filename
    return path


def _download(src: WeightSource, target_dir: Path | None, progress: bool, force: bool = False) -> Path:
    if is_offline():
        raise _Unreachable("offline mode (HF_HUB_OFFLINE / DELTAEDIT_OFFLINE) is on")
    if src.repo_id:
        from huggingface_hub import constants

        _check_reachable(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
        return _download_hub(src, target_dir, force)
    folder = Path(target_dir) if target_dir else cache_dir()
    if src.url:
        _check_reachable(src.url)
        return _download_url(src.url, folder / src.filename, progress)
    if src.gdrive_id:
        _check_reachable("https://drive.google.com")
        return _download_gdrive(src.gdrive_id, folder / src.filename, progress)
    raise _Unreachable(src.unavailable_hint or "no download source")


def fetch(tag: str, target_dir=None, progress: bool = True) -> Path:
    """Download `tag` now (into `target_dir`, else the cache), checking its hash; returns the path.

    A file whose hash does not match is deleted and downloaded once more before giving up.
    """
    src = get_source(tag)
    target = Path(target_dir).expanduser() if target_dir else None
    for attempt in range(2):
        try:
            path = _download(src, target, progress, force=attempt > 0)
        except _Unreachable as exc:
            raise WeightsError(missing_message(tag, str(exc), target_dir)) from exc
        if _hash_ok(path, src):
            return path
        log.warning("%s: sha256 mismatch after download; retrying once", path)
        _remove(path)
    raise WeightsError(
        f"{src.filename} downloaded from {src.origin()} twice with the wrong sha256; try later"
    )


# ---- resolving -------------------------------------------------------------------------------
def resolve(tag: str, weights_dir=None, download: bool = True, progress: bool = True) -> Path:
    """Path of the weights `tag` (see the module docstring for the lookup order)."""
    src = get_source(tag)
    found = find_local(tag, weights_dir)
    if found is not None:
        path, where = found
        if _hash_ok(path, src):
            return path
        if where in ("cache", "hub cache"):
            log.warning("%s: sha256 mismatch; deleting it to download again", path)
            _remove(path)
        else:
            raise WeightsError(
                f"{path} ({where}) does not have the expected sha256 {src.sha256}: it is corrupt or"
                f" a different file; replace it with {src.filename} from {src.origin()}"
            )
    if not download:
        raise WeightsError(missing_message(tag, "downloads are disabled", weights_dir))
    return fetch(tag, progress=progress)


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


def resolve_generator(
    weights_dir=None,
    download: bool = True,
    progress: bool = True,
    generator_tag: str = "stylegan2-ffhq-config-f",
    e4e_tag: str = "e4e-ffhq-encode",
) -> tuple[Path, str | None]:
    """(path, prefix) of the FFHQ generator weights.

    The e4e checkpoint holds the same generator under `decoder.` in its `state_dict`: when only
    that file is available locally it is used (prefix "decoder."), saving a 380 MB download.
    Prefix None means a rosinality checkpoint with the generator under `g_ema`.
    """
    if find_local(generator_tag, weights_dir) is None:
        e4e = find_local(e4e_tag, weights_dir)
        if e4e is not None and _hash_ok(e4e[0], get_source(e4e_tag)):
            return e4e[0], "decoder."
    return resolve(generator_tag, weights_dir, download, progress), None


def _domains_using(tag: str) -> list:
    from .config import list_domains, load_domain_config

    configs = [load_domain_config(d) for d in list_domains()]
    return [c for c in configs if tag in c.weights.values()]


def missing_for_domain(domain, weights_dir=None, include_optional: bool = False) -> list[WeightSource]:
    """The domain's weight sources with no local copy (no network access)."""
    from .config import load_domain_config

    cfg = domain if hasattr(domain, "weights") else load_domain_config(domain)
    missing = []
    for role, tag in cfg.weights.items():
        src = get_source(tag)
        if (src.optional and not include_optional) or find_local(tag, weights_dir) is not None:
            continue
        e4e_tag = cfg.weights.get("e4e")
        if role == "generator" and e4e_tag and not src.packaged and find_local(e4e_tag, weights_dir):
            continue  # the e4e file holds the generator
        missing.append(src)
    return missing


def missing_message(tag: str, reason: str, weights_dir=None) -> str:
    """Why `tag` is unavailable, every missing file of its domain(s), and where to put them."""
    src = get_source(tag)
    lines = [f"could not get {src.filename} ({tag}): {reason}."]
    for cfg in _domains_using(tag):
        missing = missing_for_domain(cfg, weights_dir, include_optional=src.optional)
        if src not in missing:
            missing.append(src)
        if src.packaged:
            lines.append(f"Missing files of domain {cfg.id!r} under {PACKAGED_DIR}:")
        else:
            lines.append(f"Missing files of domain {cfg.id!r}:")
        lines += [f"  {m.filename}  <- {m.origin()}" for m in missing]
        if not src.packaged:
            lines.append(
                "Put them, with these file names, in a folder and pass --weights-dir DIR or set"
                f" DELTAEDIT_WEIGHTS_DIR=DIR; on a machine with internet access `python -m deltaedit"
                f" download --domain {cfg.id} --weights-dir DIR` fetches them."
            )
    if src.unavailable_hint and src.unavailable_hint not in reason:
        lines.append(src.unavailable_hint)
    return "\n".join(lines)


# ---- reading ---------------------------------------------------------------------------------
def load_npy_matrix(path, what: str, axes: str) -> np.ndarray:
    """A float matrix from a .npy file, never unpickled; `what` and `axes` ("S, D") name it in
    the WeightsError a missing, unreadable or non-matrix file gets."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise WeightsError(f"{path} is not a readable .npy {what} ({exc}); delete it and retry") from exc
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise WeightsError(f"{path} must hold a float matrix [{axes}], got {matrix.dtype} {matrix.shape}")
    return matrix


def load_torch_file(path) -> object:
    """`torch.load(weights_only=True)` on CPU; missing, corrupt or code-carrying files -> WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    def load(mmap: bool):
        # argparse.Namespace is plain data (rosinality checkpoints store their training args in one).
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            # Memory-mapped: tensors are read from the page cache instead of copied into RAM first.
            return load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            return load(mmap=False)  # legacy (pre-zip) checkpoints cannot be mapped
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} holds objects other than tensors and plain data, which are not loaded for"
            f" safety ({str(exc).splitlines()[0]}); is it the right file?"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(
            f"{path} is corrupt or truncated ({exc}); delete it and download it again"
        ) from exc


def _shapes(expected) -> dict[str, tuple]:
    if isinstance(expected, torch.nn.Module):
        expected = expected.state_dict()
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in expected.items()}


def check_state_dict(state: dict, expected, file) -> None:
    """Raise WeightsError naming `file` and the first missing / unexpected / mis-shaped key.

    `expected` is a module (its state dict) or a mapping name -> shape.
    """
    want = _shapes(expected)
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    problems = []
    if missing:
        problems.append(
            f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    if wrong:
        k = wrong[0]
        problems.append(
            f"{k!r} has shape {list(got[k])}, expected {list(want[k])}"
            + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    if problems:
        raise WeightsError(f"{file} does not fit the model: {'; '.join(problems)}. Is it the right file?")
