"""The training data of DeltaEdit-D (`train_diffusion(dataset=...)`): (image, style code s) rows,
with the generator's rendering R(s) for a rendering-conditioned UNet.

- a folder of shards: pairs `NAME.images.npy` (uint8 [N, H, W, 3]) + `NAME.styles.npy` (float32 or
  float16 [N, S]), row i of one matching row i of the other, and optionally `NAME.renders.npy`
  (float16 [N, 3, H, W]); write them with `write_shard`, read them with `ShardDataset`;
- a folder of images (png/jpg/webp) plus a `style_fn(images [B,3,H,W] in [-1,1]) -> s [B,S]`: the
  images are encoded once into shards under `OUT/shards/` (`encode_image_folder`);
- a `(images [N,3,H,W] in [-1,1], styles [N,S])` tuple (`PairDataset`), or any torch Dataset
  yielding such pairs.
`resolve_dataset` turns any of them into a Dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from ..fileio import atomic_dir, atomic_write

IMAGES_SUFFIX = ".images.npy"
STYLES_SUFFIX = ".styles.npy"
RENDERS_SUFFIX = ".renders.npy"  # optional: the generator's rendering R(s) of each row's style code
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
StyleFn = Callable[[torch.Tensor], torch.Tensor]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> uint8 [N,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_shard(folder: str | Path, name: str, images, styles, renders=None) -> Path:
    """Write one shard: images ([N,3,H,W] float in [-1,1] or uint8 [N,H,W,3]), styles [N,S] and,
    for a rendering-conditioned UNet, renders R(s) ([N,3,H,W] float in [-1,1], kept as float16)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        images = to_uint8_hwc(images)
    images = np.asarray(images)
    styles = np.asarray(styles.detach().cpu() if isinstance(styles, torch.Tensor) else styles, np.float32)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"shard images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if styles.ndim != 2 or styles.shape[0] != images.shape[0]:
        raise InputError(f"shard styles must be [{images.shape[0]}, S], got {styles.shape}")
    arrays = [(IMAGES_SUFFIX, images), (STYLES_SUFFIX, styles)]
    if renders is not None:
        renders = torch.as_tensor(renders).detach().float().cpu()
        want = (images.shape[0], 3, images.shape[1], images.shape[2])
        if tuple(renders.shape) != want:
            raise InputError(
                f"shard renders must be {list(want)} floats in [-1, 1], got {tuple(renders.shape)}"
            )
        arrays.append((RENDERS_SUFFIX, renders.clamp(-1, 1).half().numpy()))
    # Each file appears whole. A shard cut off between the two has images and no styles, which
    # ShardDataset reports by name (encode_image_folder also swaps its whole folder in at once).
    for suffix, array in arrays:
        with atomic_write(folder / f"{name}{suffix}") as tmp:
            np.save(tmp, array)
    return folder


class ShardDataset(Dataset):
    """(image [3,H,W] in [-1,1], s [S]) pairs read lazily (memory-mapped) from a folder of shards;
    (image, s, render [3,H,W]) triples when every shard has its `.renders.npy`."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        image_files = sorted(folder.glob(f"*{IMAGES_SUFFIX}"))
        if not image_files:
            raise InputError(f"no *{IMAGES_SUFFIX} shards in {folder}; write them with write_shard()")
        self.images, self.styles, self.renders = [], [], []
        for path in image_files:
            style_path = path.with_name(path.name[: -len(IMAGES_SUFFIX)] + STYLES_SUFFIX)
            if not style_path.is_file():
                raise InputError(f"shard {path.name} has no matching {style_path.name}")
            images, styles = (
                np.load(path, mmap_mode="r", allow_pickle=False),
                np.load(style_path, mmap_mode="r", allow_pickle=False),
            )
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise InputError(
                    f"{path.name}: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
                )
            if styles.ndim != 2 or styles.shape[0] != images.shape[0]:
                raise InputError(
                    f"{style_path.name}: expected [{images.shape[0]}, S] styles, got {styles.shape}"
                )
            self.images.append(images)
            self.styles.append(styles)
            render_path = path.with_name(path.name[: -len(IMAGES_SUFFIX)] + RENDERS_SUFFIX)
            if render_path.is_file():
                renders = np.load(render_path, mmap_mode="r", allow_pickle=False)
                want = (images.shape[0], 3, *images.shape[1:3])
                if renders.shape != want:
                    raise InputError(
                        f"{render_path.name}: expected renders {list(want)}, got {list(renders.shape)}"
                    )
                self.renders.append(renders)
        if self.renders and len(self.renders) != len(self.images):
            raise InputError(
                f"only {len(self.renders)} of the {len(self.images)} shards in {folder} have *{RENDERS_SUFFIX}:"
                " write every shard with its renders, or none"
            )
        shapes = {(a.shape[1:], b.shape[1]) for a, b in zip(self.images, self.styles)}
        if len(shapes) != 1:
            raise InputError(f"shards in {folder} disagree on image size or style size: {sorted(shapes)}")
        self.offsets = np.cumsum([0] + [len(a) for a in self.images])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int):
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        row = index - int(self.offsets[shard])
        image = torch.from_numpy(np.array(self.images[shard][row])).permute(2, 0, 1).float() / 127.5 - 1
        style = torch.from_numpy(np.array(self.styles[shard][row], dtype=np.float32))
        if not self.renders:
            return image, style
        return image, style, torch.from_numpy(np.array(self.renders[shard][row], dtype=np.float32))

    def style_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean/std of s, accumulated in float64 shard by shard."""
        total = sum(np.asarray(s, np.float64).sum(0) for s in self.styles)
        squares = sum(np.square(np.asarray(s, np.float64)).sum(0) for s in self.styles)
        mean = total / len(self)
        std = np.sqrt(np.maximum(squares / len(self) - mean**2, 0))
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


class PairDataset(Dataset):
    """In-memory (images [N,3,H,W] in [-1,1], styles [N,S]) and optionally renders [N,3,H,W] (R(s))."""

    def __init__(self, images: torch.Tensor, styles: torch.Tensor, renders: torch.Tensor | None = None):
        if images.ndim != 4 or images.shape[1] != 3 or styles.ndim != 2 or len(images) != len(styles):
            raise InputError(
                f"expected images [N,3,H,W] and styles [N,S], got {tuple(images.shape)} and {tuple(styles.shape)}"
            )
        if renders is not None and tuple(renders.shape) != tuple(images.shape):
            raise InputError(
                f"renders must match the images {tuple(images.shape)}, got {tuple(renders.shape)}"
            )
        self.images, self.styles = images.float(), styles.float()
        self.renders = None if renders is None else renders.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.renders is None:
            return self.images[index], self.styles[index]
        return self.images[index], self.styles[index], self.renders[index]

    def style_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.styles.mean(0), self.styles.std(0, unbiased=False)


def _load_image(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1


def encode_image_folder(
    folder: str | Path,
    style_fn: StyleFn,
    out_dir: str | Path,
    image_size: int,
    batch_size: int = 16,
    shard_size: int = 1000,
    progress: bool = True,
) -> Path:
    """Encode every image of `folder` (resized to image_size) with `style_fn` into shards in out_dir.

    The shards appear in out_dir together when all are written: an interrupted run leaves none,
    so the next run encodes again instead of training on part of the folder.
    """
    from tqdm.auto import tqdm

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for first in tqdm(range(0, len(paths), shard_size), desc="encoding shards", disable=not progress):
            chunk = paths[first : first + shard_size]
            images, styles = [], []
            for i in range(0, len(chunk), batch_size):
                batch = torch.stack([_load_image(p, image_size) for p in chunk[i : i + batch_size]])
                with torch.no_grad():
                    styles.append(style_fn(batch).float().cpu())
                images.append(to_uint8_hwc(batch))
            write_shard(tmp, f"shard_{first // shard_size:05d}", np.concatenate(images), torch.cat(styles))
    return out_dir


def resolve_dataset(dataset, out_dir: Path, image_size: int, style_fn: StyleFn | None, progress=True):
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, tuple | list) and len(dataset) in (2, 3):
        return PairDataset(*dataset)
    if isinstance(dataset, str | Path):
        folder = Path(dataset)
        if not folder.is_dir():
            raise InputError(f"training data folder {folder} does not exist")
        if any(folder.glob(f"*{IMAGES_SUFFIX}")):
            return ShardDataset(folder)
        if style_fn is None:
            raise InputError(
                f"{folder} holds no *{IMAGES_SUFFIX} shards; to train on plain images pass style_fn "
                "(CLI: --domain) so each image gets its style code"
            )
        shards = out_dir / "shards"
        if not any(shards.glob(f"*{IMAGES_SUFFIX}")):
            encode_image_folder(folder, style_fn, shards, image_size, progress=progress)
        return ShardDataset(shards)
    raise InputError(
        f"unsupported training data {type(dataset).__name__}: pass a folder, a Dataset, (images, styles)"
        " or (images, styles, renders)"
    )
