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

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import weight_registry
from .errors import WeightsError
from .fileio import write_json
from .weight_files import check_state_dict, load_npy_matrix, load_torch_file  # noqa: F401 - readers of weight files
from .weight_registry import (  # noqa: F401 - the registry, read through this module
    DIFFUSION_FILES,
    REGISTRY,
    UNET_FILES,
    WeightSource,
    get_source,
    hub_folder_tag,
)

log = logging.getLogger(__name__)

# Seconds to wait for a server before calling it unreachable (connect and between reads).
TIMEOUT = float(os.environ.get("DELTAEDIT_DOWNLOAD_TIMEOUT", "10"))

_TRUE = {"1", "true", "yes", "on"}


# ---- places ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("DELTAEDIT_CACHE") or "~/.cache/deltaedit").expanduser()


def is_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "DELTAEDIT_OFFLINE"))
    return any(v in _TRUE for v in env) or bool(constants.HF_HUB_OFFLINE)


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
        places.append((weight_registry.PACKAGED_DIR / src.filename, "packaged"))
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
            raise WeightsError(missing_message(tag, str(exc))) from exc
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
        raise WeightsError(missing_message(tag, "downloads are disabled"))
    return fetch(tag, progress=progress)


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


def missing_message(tag: str, reason: str) -> str:
    """Why `tag` could not be had, and its source's own hint. The domain a file belongs to adds
    its other missing files and where to put them (`deltaedit.domain.Domain.weight`)."""
    src = get_source(tag)
    lines = [f"could not get {src.filename} ({tag}): {reason}."]
    if src.unavailable_hint and src.unavailable_hint not in reason:
        lines.append(src.unavailable_hint)
    return "\n".join(lines)
