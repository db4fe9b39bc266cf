"""Safe image and latent-code input/output.

`load_image` accepts whatever a user may hand us (a path, raw bytes, a PIL image, a numpy array)
and returns a plain RGB PIL image, refusing oversized, empty, truncated or non-image input with an
`InputError` that says what to do. `to_tensor` / `tensor_to_pil` convert exactly like the authors'
`inference_real.py` (torchvision transforms in, `torchvision.utils.save_image` rounding out).
`save_png` writes atomically so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms

from .errors import InputError
from .fileio import atomic_write

# 50 megapixels: every phone camera photo fits; a decompression bomb does not.
DEFAULT_MAX_PIXELS = 50_000_000

_HOW_TO_FIX = "Upload a JPEG, PNG or WebP photo"
# The formats Pillow may open for us; no other decoder ever sees user bytes (Pillow's EPS plugin,
# for one, hands the file to Ghostscript). MPO is how many phones label their JPEGs (older Pillows
# register it apart from JPEG); only the names this Pillow registers are listed.
Image.init()  # registers every plugin's name; `Image.open(formats=...)` then picks among them
ALLOWED_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP") if f in Image.OPEN)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def load_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load `source` as an RGB PIL image (EXIF orientation applied, first frame of animations).

    The pixel count is checked from the header before any pixel data is decoded. Transparent
    images are composited on white; 16-bit and CMYK images are converted to 8-bit RGB.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return _to_rgb(_first_frame_upright(source))
    if isinstance(source, np.ndarray):
        return load_image(_array_to_pil(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError(f"The uploaded image is empty (0 bytes). {_HOW_TO_FIX}.")
        return _decode(io.BytesIO(data), "the uploaded image", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"Image file {path} does not exist. Check the path.")
        if path.stat().st_size == 0:
            raise InputError(f"Image file {path} is empty (0 bytes). {_HOW_TO_FIX}.")
        with path.open("rb") as fh:
            return _decode(fh, f"image file {path}", max_pixels)
    raise InputError(
        f"Cannot read an image from a {type(source).__name__}; pass a file path, bytes, a PIL image"
        " or a numpy array."
    )


def _decode(fh, what: str, max_pixels: int) -> Image.Image:
    try:
        # Our own limit is checked below; PIL's bomb warning would only duplicate it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh, formats=ALLOWED_FORMATS) as img:  # reads the header only
                _check_pixels(img.size, max_pixels)
                img.seek(0)
                img.load()
                return _to_rgb(_first_frame_upright(img))
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{what} is too large to decode safely ({exc}). Resize it below {max_pixels:,} pixels."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{what} is not an image that can be read (wrong extension or unsupported format; allowed:"
            f" {', '.join(ALLOWED_FORMATS)}). {_HOW_TO_FIX}."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(
            f"{what} is damaged or truncated and cannot be decoded ({exc}). Re-save or re-export"
            f" it and try again. {_HOW_TO_FIX}."
        ) from exc


def check_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, tuple[int, int]]:
    """(format, size) of an image file read from its header alone: an InputError when the file is
    not one of ALLOWED_FORMATS or has more than `max_pixels` pixels. Nothing is decoded."""
    path = Path(path)
    what = f"image file {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as img:
                _check_pixels(img.size, max_pixels)
                return img.format, img.size
    except Image.DecompressionBombError as exc:
        raise InputError(f"{what} is too large to decode safely ({exc}). Resize it below {max_pixels:,} pixels.") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{what} is not a readable image (allowed: {', '.join(ALLOWED_FORMATS)}). {_HOW_TO_FIX}."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{what} is damaged or cannot be read ({exc}). {_HOW_TO_FIX}.") from exc


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"The image has no pixels ({width}x{height}). {_HOW_TO_FIX}.")
    if width * height > max_pixels:
        raise InputError(
            f"The image is too large: {width}x{height} = {width * height:,} pixels, the limit is"
            f" {max_pixels:,}. Resize or crop it and try again."
        )


def _first_frame_upright(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    # exif_transpose returns a new image either way, detached from the (soon closed) file.
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in {"I", "F"}:
        return _high_depth_to_rgb(img)
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit greyscale to 8-bit RGB; PIL's own convert would clip everything above 255."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    elif img.mode != "F" and (img.mode.startswith("I;16") or values.max(initial=0) > 255):
        values = values / 257.0  # 65535 -> 255
    grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"An image array must be HxW, HxWx3 or HxWx4; got shape {tuple(array.shape)}.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise InputError(f"An image array must be numeric; got dtype {array.dtype}.")
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0 else 1.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def center_square(img: Image.Image) -> tuple[Image.Image, str | None]:
    """The largest centred square of `img` (proportions kept, nothing squashed) and a notice saying
    what was cut, or `img` itself and None when it is square already. The models take square
    pictures: resizing a 300 x 200 photo straight to a square would make the face narrower."""
    width, height = img.size
    if width == height:
        return img, None
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    cut = "left and right" if width > height else "top and bottom"
    notice = (
        f"The photo is {width} x {height}: its centre {side} x {side} square was used (the {cut} cut off)"
        " so the face keeps its proportions; crop it yourself to choose another part."
    )
    return square, notice


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [-1, 1], exactly as the authors' `inference_real.py` prepares photos.

    They use torchvision `Resize(256)` + `ToTensor()` + `Normalize(0.5, 0.5)`; Resize on a PIL
    image means PIL's BILINEAR filter with antialiasing (not LANCZOS or BICUBIC). We pass
    `(size, size)`, identical for the square aligned faces they feed and square for any other.
    """
    transform = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    return transform(_to_rgb(img)).unsqueeze(0)


def tensor_to_pil(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Image.Image:
    """[3, H, W] or [1, 3, H, W] -> PIL, rounding like `save_image(normalize=True, value_range)`."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"tensor_to_pil takes one image; got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W]; got shape {tuple(x.shape)}")
    return tensors_to_pils(x[None], value_range)[0]


def tensors_to_pils(batch: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> list[Image.Image]:
    """[B, 3, H, W] -> B PIL images, rounded like `tensor_to_pil`. The rounding to bytes happens on
    the tensor's device: from a GPU, one copy of uint8 pixels instead of four times as many floats."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected an image batch [B, 3, H, W]; got shape {tuple(batch.shape)}")
    return pixels_to_pils(tensors_to_pixels(batch, value_range))


def tensors_to_pixels(batch: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[B, 3, H, W] -> host uint8 [B, H, W, 3], rounded on the tensor's device (one small copy)."""
    low, high = value_range
    x = (batch.detach().float().clamp(low, high) - low) / max(high - low, 1e-5)
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def pixels_to_pils(pixels: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(p, "RGB") for p in pixels]


def save_png(image: torch.Tensor | Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` as a PNG at `path` atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    pil = image if isinstance(image, Image.Image) else tensor_to_pil(image)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        pil.save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def save_animation(frames: list[Image.Image], path: str | os.PathLike, frame_ms: int = 150) -> Path:
    """Write `frames` as a looping animation (GIF or WebP, from the suffix) that plays them forward
    and back, atomically."""
    path = Path(path)
    kind = {".gif": "GIF", ".webp": "WEBP"}.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"an animation is written as .gif or .webp, not {path.suffix or 'no suffix'!r}")
    if not frames:
        raise InputError("an animation needs at least one frame")
    loop = list(frames) + list(frames[-2:0:-1])  # forward, then back: a seamless loop
    options = {"lossless": True} if kind == "WEBP" else {"disposal": 2}
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        loop[0].save(fh, format=kind, save_all=True, append_images=loop[1:], duration=frame_ms, loop=0, **options)
    return path


def load_latents(
    path: str | os.PathLike,
    n_latent: int | None = None,
    style_dim: int | None = None,
    index: int | None = None,
) -> torch.Tensor:
    """W+ codes from a `.npy` file as float32 [1, n_latent, style_dim].

    Accepts [n_latent, style_dim] or [1, n_latent, style_dim]; a batch [B, n_latent, style_dim]
    needs `index` to pick one row. `n_latent` / `style_dim`, when given, are checked.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Latent file {path} does not exist. Check the path.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(
                f"{path} holds Python objects, which are not loaded for safety. Save the codes as"
                " a plain float array: np.save(path, np.asarray(codes, dtype=np.float32))."
            ) from exc
        raise InputError(f"{path} is not a valid .npy file ({exc}). Save it with np.save.") from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npy file ({exc}). Save it with np.save.") from exc
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise InputError(f"{path} is an .npz archive; save one array with np.save as .npy.")
    if array.dtype.kind not in "fiu":
        raise InputError(f"{path} holds {array.dtype} values; W+ codes must be float numbers.")

    expected = f"[{n_latent or 'n_latent'}, {style_dim or 'style_dim'}]"
    if array.ndim == 3 and index is not None:
        if not -array.shape[0] <= index < array.shape[0]:
            raise InputError(f"{path} holds {array.shape[0]} codes; index {index} is out of range.")
        array = array[index]
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        hint = " (a batch: pick one row with --index N, or index= in Python)" if array.ndim == 3 else ""
        raise InputError(
            f"{path} has shape {tuple(array.shape)}{hint}; W+ codes must be {expected} or"
            f" [1, {expected[1:-1]}]."
        )
    if (n_latent is not None and array.shape[0] != n_latent) or (
        style_dim is not None and array.shape[1] != style_dim
    ):
        raise InputError(
            f"{path} has W+ shape {tuple(array.shape)} but this generator needs {expected}; was it"
            " made for another domain?"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{path} contains NaN or infinite values; re-export the codes.")
    return torch.from_numpy(np.array(array, dtype=np.float32)).unsqueeze(0)
