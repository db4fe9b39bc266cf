"""Latent codes for text-free mapper training: W+, S and CLIP image features of many images.

DeltaEdit trains its mapper on image pairs only (Lyu et al., CVPR 2023, Sec. 3.2); the authors'
`generate_codes.py` samples z, maps it to W+, takes S (conv modulations only) and the CLIP image
feature of the image decoded from S. Real images instead go through the domain's encoder
(W+ = encoder(x) + latent_avg) and the CLIP feature is taken from the decoded image, so that S and
the feature describe the same picture.

On disk a codes folder holds float32 shards `wplus_XXXXX.npy`, `sspace_XXXXX.npy`,
`cspace_XXXXX.npy` and a `meta.json`. Every file is written to a temporary name and renamed, so a
shard is either complete or absent: rerunning with the same settings skips finished shards. Shard
`k` is produced by process `k % num_processes` (accelerate), and sampled shards draw z from a
generator seeded with (seed, k), so the codes do not depend on batch size, process count or resumes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import atomic_write, write_json
from ..nn.stylespace import decode_s, layout_from_generator, w_plus_to_s
from .loop import Processes

log = logging.getLogger(__name__)

KINDS = ("wplus", "sspace", "cspace")
META = "meta.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Settings that must match when resuming into an existing folder.
_RESUME_KEYS = ("source", "n", "shard_size", "seed", "truncation", "layout", "n_latent", "style_dim")

ImageFeatures = Callable[[torch.Tensor], torch.Tensor]


def shard_path(out_dir: Path, kind: str, index: int) -> Path:
    return Path(out_dir) / f"{kind}_{index:05d}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def _shard_rows(path: Path) -> int | None:
    """Rows of a stored shard (header only), None if missing or unreadable."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError):
        return None


def shard_complete(out_dir: Path, index: int, rows: int | None = None) -> bool:
    """All three files of shard `index` exist with the same number of rows (`rows` if given)."""
    counts = {_shard_rows(shard_path(out_dir, kind, index)) for kind in KINDS}
    if len(counts) != 1 or None in counts:
        return False
    return rows is None or counts == {rows}


# ---- image sources ------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist; pass a folder of aligned images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load_files(files: list[Path], size: int) -> torch.Tensor:
    from ..imageio import load_image, to_tensor

    return torch.cat([to_tensor(load_image(f), size) for f in files])


def _rebatch(images: Iterable, size: int) -> Iterator[torch.Tensor]:
    """Yield [<=size, 3, H, W] chunks from an iterable of [B, 3, H, W] or [3, H, W] tensors."""
    buffer: list[torch.Tensor] = []
    held = 0
    for item in images:
        item = torch.as_tensor(item)
        if item.ndim == 3:
            item = item.unsqueeze(0)
        if item.ndim != 4 or item.shape[1] != 3:
            raise InputError(f"images must be [B, 3, H, W] tensors in [-1, 1], got shape {tuple(item.shape)}")
        buffer.append(item)
        held += item.shape[0]
        while held >= size:
            flat = torch.cat(buffer)
            yield flat[:size]
            buffer, held = [flat[size:]], held - size
    if held:
        yield torch.cat(buffer)


# ---- code computation ---------------------------------------------------------------------------


@torch.no_grad()
def codes_from_w_plus(G, w_plus: torch.Tensor, image_features_fn: ImageFeatures) -> tuple[torch.Tensor, ...]:
    """(W+, flat S, CLIP feature of the image decoded from S) for a batch of W+."""
    s_list = w_plus_to_s(G, w_plus)
    image = decode_s(G, s_list, w_plus)
    return w_plus, torch.cat(s_list, dim=1), image_features_fn(image)


def _to_numpy(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(tensors).detach().float().cpu().numpy()


def _check_resume(meta_path: Path, meta: dict) -> None:
    if not meta_path.is_file():
        return
    old = json.loads(meta_path.read_text())
    # An iterable of images has no known length until it is walked: n None matches any count.
    diff = [k for k in _RESUME_KEYS if old.get(k) != meta.get(k) and not (k == "n" and meta[k] is None)]
    if diff:
        raise InputError(
            f"{meta_path.parent} already holds codes made with other settings ({', '.join(diff)} differ);"
            " rerun with the same arguments to resume, or choose a new output folder"
        )


@dataclass
class _Source:
    """Where the codes come from: "sample" (n draws of z), or "encode" (`files`, or `images` in memory)."""

    kind: str
    n: int | None
    files: list[Path] | None = None
    images: torch.Tensor | Iterable | None = None
    input_size: int | None = None


def _resolve_source(G, n, images, encoder, latent_avg, input_size) -> _Source:
    if images is None:
        if n is None or n < 1:
            raise InputError("pass the number of codes to sample (n >= 1) or images to encode")
        return _Source("sample", n)
    if encoder is None or latent_avg is None:
        raise InputError("encoding images needs the domain's encoder and its latent_avg")
    if isinstance(images, (str, os.PathLike)):
        files = list_images(Path(images))
        files = files[:n] if n else files
        if input_size is None:
            input_size = getattr(getattr(encoder, "config", None), "input_size", None) or G.size
        return _Source("encode", len(files), files=files, input_size=input_size)
    if isinstance(images, torch.Tensor):
        images = images[:n] if n else images
        n = images.shape[0]
    return _Source("encode", n, images=images)


def _shards(source: _Source, shard_size: int) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """(index, rows, in-memory images or None) of every shard, in order."""
    n = source.n
    if source.kind == "encode" and source.files is None:
        # In-memory images: walk the iterable once, shard by shard.
        images = source.images
        for index, chunk in enumerate(_rebatch([images] if isinstance(images, torch.Tensor) else images, shard_size)):
            if n is not None and index * shard_size >= n:
                break
            if n is not None:
                chunk = chunk[: n - index * shard_size]
            yield index, chunk.shape[0], chunk
        return
    for index in range((n + shard_size - 1) // shard_size):
        yield index, min(shard_size, n - index * shard_size), None


@dataclass
class _ShardWriter:
    """Computes and writes the three files of one shard."""

    G: torch.nn.Module
    image_features_fn: ImageFeatures
    source: _Source
    batch_size: int
    shard_size: int
    seed: int
    truncation: float
    mean_latent: torch.Tensor | None
    encoder: torch.nn.Module | None
    latent_avg: torch.Tensor | None

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.G.parameters()).device
        return self.encoder(images.to(device).float()) + self.latent_avg

    @torch.no_grad()
    def batches(self, index: int, rows: int, chunk: torch.Tensor | None) -> Iterator[tuple]:
        """Codes of shard `index` (rows images, or those of `chunk`/its files), batch by batch."""
        G, source = self.G, self.source
        if source.kind == "sample":
            # The whole shard's W+ in one draw (cheap: the mapping MLP only), so the codes do not
            # depend on the batch size.
            rng = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + index)
            shard_w = G.sample_w_plus(rows, truncation=self.truncation, seed=rng, mean_latent=self.mean_latent)
        for start in range(0, rows, self.batch_size):
            stop = min(start + self.batch_size, rows)
            if source.kind == "sample":
                w_plus = shard_w[start:stop]
            elif source.files is not None:
                first = index * self.shard_size
                w_plus = self._encode(_load_files(source.files[first + start : first + stop], source.input_size))
            else:
                w_plus = self._encode(chunk[start:stop])
            yield codes_from_w_plus(G, w_plus, self.image_features_fn)

    def write(self, out: Path, index: int, rows: int, chunk: torch.Tensor | None, bar) -> None:
        parts: list[list[torch.Tensor]] = [[], [], []]
        for codes in self.batches(index, rows, chunk):
            for part, code in zip(parts, codes):
                part.append(code)
            bar.update(codes[0].shape[0])
        for kind, part in zip(KINDS, parts):
            _save_atomic(shard_path(out, kind, index), _to_numpy(part))


def _codes_meta(G, domain, source: _Source, shard_size: int, seed: int, truncation: float) -> dict:
    layout = layout_from_generator(G)
    return {
        "domain": domain,
        "source": source.kind,
        "n": source.n,
        "shard_size": shard_size,
        "seed": seed,
        "truncation": truncation,
        "layout": {"widths": list(layout.widths), "resolutions": list(layout.resolutions)},
        "n_latent": G.n_latent,
        "style_dim": G.style_dim,
        "complete": False,
    }


def _complete_meta(out: Path, meta: dict, counts: dict[int, int]) -> None:
    """Mark the folder complete once every shard is there (a resumed run fills the gaps)."""
    missing = [i for i, rows in counts.items() if not shard_complete(out, i, rows)]
    if missing:
        raise InputError(f"shards {missing} of {out} were not written; rerun the command to finish them")
    first = shard_path(out, "cspace", 0)
    meta.update(
        n=sum(counts.values()),
        shards=[counts[i] for i in sorted(counts)],
        clip_dim=int(np.load(first, mmap_mode="r", allow_pickle=False).shape[1]) if counts else None,
        complete=True,
    )
    write_json(out / META, meta)
    log.info("wrote %d codes in %d shards to %s", meta["n"], len(counts), out)


def make_codes(
    generator,
    image_features_fn: ImageFeatures,
    out_dir: str | os.PathLike,
    n: int | None = None,
    batch_size: int = 16,
    shard_size: int = 1024,
    seed: int = 0,
    truncation: float = 1.0,
    encoder: torch.nn.Module | None = None,
    latent_avg: torch.Tensor | None = None,
    images: str | os.PathLike | torch.Tensor | Iterable | None = None,
    input_size: int | None = None,
    progress: bool = True,
    accelerator=None,
    domain: str | None = None,
) -> Path:
    """Write W+/S/CLIP shards for `n` sampled images, or for `images` encoded with `encoder`.

    `image_features_fn(images [B, 3, size, size] in [-1, 1]) -> [B, D]` gives the CLIP image
    feature (e.g. `DomainClip.image_features`). `images` is a folder of aligned images, a tensor
    [N, 3, H, W] in [-1, 1], or an iterable of such batches (e.g. toy renders); encoder inputs are
    resized to `input_size` only when read from a folder. `n` caps the number of encoded images.
    An iterable is walked once per process (every process must see the same images).
    `truncation` < 1 pulls sampled w toward the mean (the authors' default is 1: no truncation).
    Returns the folder. Existing complete shards made with the same settings are kept.
    """
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch size and shard size must be >= 1 (got {batch_size}, {shard_size})")
    out = Path(out_dir)
    G = generator
    source = _resolve_source(G, n, images, encoder, latent_avg, input_size)
    if source.kind == "encode":
        truncation = 1.0  # meaningless for encoded images
    procs = Processes.of(accelerator)
    meta = _codes_meta(G, domain, source, shard_size, seed, truncation)
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out / META, meta)
        write_json(out / META, meta)
    procs.wait()

    mean_latent = G.mean_latent() if source.kind == "sample" and truncation < 1 else None
    if latent_avg is not None:
        latent_avg = latent_avg.to(next(G.parameters()).device).reshape(-1, G.n_latent, G.style_dim)
    writer = _ShardWriter(
        G, image_features_fn, source, batch_size, shard_size, seed, truncation, mean_latent, encoder, latent_avg
    )
    counts: dict[int, int] = {}
    with tqdm(total=source.n, desc="codes", unit="img", disable=not (progress and procs.is_main)) as bar:
        for index, rows, chunk in _shards(source, shard_size):
            counts[index] = rows
            if index % procs.world != procs.rank:
                continue
            if shard_complete(out, index, rows):
                log.debug("shard %d already written, skipped", index)
                bar.update(rows)
                continue
            writer.write(out, index, rows, chunk, bar)

    procs.wait()
    if procs.is_main:
        _complete_meta(out, meta, counts)
    return out


def read_meta(codes_dir: str | os.PathLike) -> dict:
    path = Path(codes_dir) / META
    if not path.is_file():
        raise InputError(
            f"{codes_dir} is not a codes folder (no {META}); create it with `python -m deltaedit make-codes`"
        )
    return json.loads(path.read_text())


def load_codes(codes_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W+ [N, n_latent, style_dim], S [N, total], CLIP [N, D]) float32 arrays of a codes folder."""
    codes_dir = Path(codes_dir)
    meta = read_meta(codes_dir)
    if not meta.get("complete"):
        raise InputError(f"{codes_dir} is incomplete; rerun make-codes with the same arguments to finish it")
    out = []
    for kind in KINDS:
        parts = []
        for index, rows in enumerate(meta["shards"]):
            path = shard_path(codes_dir, kind, index)
            if _shard_rows(path) != rows:
                raise InputError(f"{path} is missing or damaged; rerun make-codes with the same arguments")
            parts.append(np.load(path, allow_pickle=False))
        out.append(np.concatenate(parts) if parts else np.zeros((0,), np.float32))
    return out[0], out[1], out[2]
