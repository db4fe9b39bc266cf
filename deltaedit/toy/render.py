"""Procedural cartoon faces for the built-in toy domain.

Every shape is a polygon in unit face coordinates ([0, 1]², y down), moved by the face's jitter
(rotation about the image centre, scale, offset) and drawn with PIL at `size * supersample`, then
downsampled with LANCZOS for anti-aliasing. Transforming points instead of rotating the picture
keeps the background and shoulders covering the whole frame and is fast (hundreds of images/s).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError
from ..fileio import atomic_write
from .attributes import FaceAttributes

HAIR_RGB = {"black": (28, 24, 24), "blond": (238, 206, 106), "red": (196, 58, 28), "brown": (104, 62, 34)}
SKIN_RGB = {"pale": (252, 222, 204), "medium": (222, 168, 124), "tanned": (158, 104, 66)}
CLOTHES_RGB = {
    "blue": (44, 84, 204),
    "green": (40, 156, 64),
    "purple": (128, 52, 160),
    "orange": (240, 128, 32),
}
BACKGROUND_RGB = {
    "gray": (132, 132, 132),
    "pink": (238, 166, 196),
    "cyan": (112, 214, 224),
    "white": (246, 246, 246),
}
FACE_HALF_WIDTH = {"normal": 0.18, "chubby": 0.235, "thin": 0.135}

EYE_Y = 0.47
EYE_DX = 0.08
MOUTH_Y = 0.595
HEAD_CY, HEAD_RY = 0.46, 0.235
GLASSES_R = 0.07
FRAME_RGB = (16, 16, 20)
MOUTH_RGB = (112, 26, 36)
# The face is drawn zoomed about ZOOM_CENTRE so that it fills the frame like an aligned FFHQ crop:
# at 64 px every feature (glasses frames, mouth, pupils) then spans at least two pixels.
ZOOM = 1.3
ZOOM_CENTRE = (0.5, 0.47)
STROKE = 0.03  # glasses frames and the closed mouth, in face units (about 2.5 px)


@lru_cache(maxsize=64)
def _unit_arc(start: float, stop: float, n: int) -> np.ndarray:
    t = np.radians(np.linspace(start, stop, n))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(cx, cy, rx, ry, start=0.0, stop=360.0, n=40) -> np.ndarray:
    return _unit_arc(start, stop, n) * (rx, ry) + (cx, cy)


def _shade(rgb, factor):
    return tuple(int(min(255, c * factor)) for c in rgb)


class _Canvas:
    """Draws unit-coordinate polygons through the face's jitter transform."""

    def __init__(self, attrs: FaceAttributes, pixels: int):
        j = attrs.jitter
        a = math.radians(j.angle)
        s = j.scale * ZOOM * pixels
        # p_pixels = A @ (p - ZOOM_CENTRE) + t
        self.matrix = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
        self.offset = np.array([(ZOOM_CENTRE[0] + j.dx) * pixels, (ZOOM_CENTRE[1] + j.dy) * pixels])
        self.pixels = pixels
        self.image = Image.new("RGB", (pixels, pixels), BACKGROUND_RGB[attrs.background_color])
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in ((points - ZOOM_CENTRE) @ self.matrix.T + self.offset).tolist()]

    def polygon(self, points: np.ndarray, rgb):
        self.draw.polygon(self._xy(points), fill=rgb)

    def line(self, points: np.ndarray, rgb, width: float):
        w = max(1, round(width * self.pixels))
        self.draw.line(self._xy(points), fill=rgb, width=w, joint="curve")


def _draw_face(c: _Canvas, a: FaceAttributes):
    skin = SKIN_RGB[a.skin_tone]
    hair = HAIR_RGB[a.hair_color]
    rx = FACE_HALF_WIDTH[a.face_width]

    # Hair behind the head: the top half of an ellipse continued straight down to the jaw.
    back = _ellipse(0.5, HEAD_CY, rx + 0.045, HEAD_RY + 0.045, 180, 360, 32)
    back = np.concatenate([[[0.5 - rx - 0.045, 0.64]], back, [[0.5 + rx + 0.045, 0.64]]])
    c.polygon(back, hair)
    # Neck, then clothes over the shoulders (down past the frame so jitter never uncovers it).
    c.polygon(np.array([[0.44, 0.6], [0.56, 0.6], [0.57, 0.86], [0.43, 0.86]]), _shade(skin, 0.88))
    c.polygon(_ellipse(0.5, 1.02, 0.46, 0.27, 180, 360, 32), CLOTHES_RGB[a.clothes_color])
    c.polygon(np.array([[0.45, 0.75], [0.55, 0.75], [0.5, 0.81]]), _shade(skin, 0.88))
    # Head.
    c.polygon(_ellipse(0.5, HEAD_CY, rx, HEAD_RY), skin)
    # Hair cap: the part of a slightly larger ellipse above the hairline.
    hairline = 0.315
    cap = _ellipse(0.5, HEAD_CY, rx + 0.02, HEAD_RY + 0.03, 180, 360, 40)
    cap = cap[cap[:, 1] <= hairline + 0.04]
    cap[:, 1] = np.minimum(cap[:, 1], hairline)
    c.polygon(cap, hair)
    if a.bangs == "yes":
        # A jagged fringe over the forehead, stopping just above the eyes.
        xs = np.linspace(0.5 - rx + 0.01, 0.5 + rx - 0.01, 9)
        tips = np.where(np.arange(9) % 2 == 0, 0.385, 0.405)
        fringe = np.concatenate([[[0.5 - rx - 0.01, 0.3]], np.stack([xs, tips], 1), [[0.5 + rx + 0.01, 0.3]]])
        c.polygon(fringe, hair)
    # Eyes: white, then pupil.
    big = a.big_eyes == "yes"
    erx, ery, pupil = (0.058, 0.05, 0.032) if big else (0.036, 0.028, 0.02)
    for side in (-1, 1):
        ex = 0.5 + side * EYE_DX
        c.polygon(_ellipse(ex, EYE_Y, erx, ery, n=24), (250, 250, 250))
        c.polygon(_ellipse(ex, EYE_Y + 0.002, pupil, pupil, n=16), (34, 26, 40))
    # Nose.
    c.polygon(np.array([[0.5, 0.5], [0.485, 0.545], [0.515, 0.545]]), _shade(skin, 0.82))
    # Mouth: an open smile (dark half-ellipse with teeth) or a closed straight line.
    if a.smile == "yes":
        c.polygon(_ellipse(0.5, MOUTH_Y - 0.01, 0.085, 0.065, 0, 180, 20), MOUTH_RGB)
        c.polygon(_ellipse(0.5, MOUTH_Y - 0.01, 0.068, 0.022, 0, 180, 12), (250, 250, 250))
    else:
        c.line(np.array([[0.45, MOUTH_Y + 0.01], [0.55, MOUTH_Y + 0.01]]), MOUTH_RGB, STROKE)
    if a.eyeglasses == "yes":
        for side in (-1, 1):
            ex = 0.5 + side * EYE_DX
            c.line(_ellipse(ex, EYE_Y, GLASSES_R, GLASSES_R * 0.85, n=28), FRAME_RGB, STROKE)
            # Temple arm from the rim to the side of the head.
            c.line(
                np.array(
                    [
                        [ex + side * GLASSES_R, EYE_Y - 0.01],
                        [ex + side * max(GLASSES_R, rx - EYE_DX), EYE_Y - 0.02],
                    ]
                ),
                FRAME_RGB,
                STROKE,
            )
        c.line(
            np.array([[0.5 - EYE_DX + GLASSES_R, EYE_Y], [0.5 + EYE_DX - GLASSES_R, EYE_Y]]),
            FRAME_RGB,
            STROKE,
        )


def render(attrs: FaceAttributes, size: int = 64, supersample: int = 4) -> Image.Image:
    """Draw one face as an RGB PIL image of `size` x `size`."""
    if size < 16 or supersample < 1:
        raise InputError(f"render needs size >= 16 and supersample >= 1 (got {size}, {supersample})")
    canvas = _Canvas(attrs, size * supersample)
    _draw_face(canvas, attrs)
    if supersample == 1:
        return canvas.image
    # reducing_gap: a box pre-reduction then LANCZOS; 3x faster, visually the same.
    return canvas.image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)


def sample_attributes(n: int, seed: int) -> list[FaceAttributes]:
    rng = np.random.default_rng(seed)
    return [FaceAttributes.sample(rng) for _ in range(n)]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def render_many(attrs_list: list[FaceAttributes], size: int = 64, supersample: int = 4) -> np.ndarray:
    out = np.empty((len(attrs_list), size, size, 3), dtype=np.uint8)
    for i, attrs in enumerate(attrs_list):
        out[i] = np.asarray(render(attrs, size, supersample))
    return out


def render_batch(
    n: int, seed: int, size: int = 64, supersample: int = 4, as_tensor: bool = False
) -> tuple[np.ndarray | torch.Tensor, list[FaceAttributes]]:
    """`n` random faces, deterministic per `seed`: (uint8 [n, size, size, 3] or float [n, 3, size,
    size] in [-1, 1] when `as_tensor`, their attributes)."""
    attrs = sample_attributes(n, seed)
    images = render_many(attrs, size, supersample)
    return (images_to_tensor(images) if as_tensor else images), attrs


def contact_sheet(images: np.ndarray, columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile uint8 [N, H, W, 3] images into one picture."""
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i in range(n):
        r, col = divmod(i, columns)
        sheet.paste(Image.fromarray(images[i]), (pad + col * (w + pad), pad + r * (h + pad)))
    return sheet


def save_contact_sheet(path: str | Path, n: int = 16, seed: int = 0, size: int = 64) -> Path:
    """Write a PNG grid of `n` random renders (for eyeballing the renderer)."""
    images, _ = render_batch(n, seed, size=size)
    path = Path(path)
    with atomic_write(path) as tmp:
        contact_sheet(images).save(tmp)
    return path
