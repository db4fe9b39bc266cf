"""FFHQ face alignment, as e4e's `utils/alignment.py` does it before encoding a real photo.

dlib's HOG detector finds the face (built into the `dlib-bin` wheel, no download), the 68-point
landmark model (`shape_predictor_68_face_landmarks.dat`, a downloaded weight) places the points,
and `align_from_landmarks` cuts the oriented square the FFHQ dataset was made with: centred
between eyes and mouth, rotated so the eyes are level, reflect-padded and blurred where the
square leaves the photo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from .errors import InputError, NoFaceError, WeightsError

log = logging.getLogger(__name__)

NO_FACE_MESSAGE = (
    "No face found in the photo. Upload a photo with one clearly visible, roughly frontal face,"
    " or use --no-align (in the app: untick 'Align face') for an already aligned face crop."
)

# e4e detects with one upsampling step; we cap the detector's input so a 12-megapixel photo does
# not become a 48-megapixel HOG pass (landmarks are still placed on the full-resolution photo).
DETECT_MAX_SIDE = 1024

# (left, top, right, bottom) in pixels of the image given to `align`.
Box = tuple[int, int, int, int]
# predictor(rgb uint8 [H, W, 3], box) -> landmarks [68, 2] (x, y)
Predictor = Callable[[np.ndarray, Box], np.ndarray]


def _dlib():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - dlib-bin is a requirement
        raise InputError(
            "Face alignment needs dlib: `pip install dlib-bin`, or use --no-align for an already"
            " aligned face."
        ) from exc
    return dlib


_DETECTOR = None


def detect_faces(img: Image.Image, upsample: int = 1, max_side: int = DETECT_MAX_SIDE) -> list[Box]:
    """Face boxes from dlib's HOG frontal detector, largest first, in `img` pixel coordinates."""
    global _DETECTOR
    dlib = _dlib()
    if _DETECTOR is None:
        _DETECTOR = dlib.get_frontal_face_detector()
    rgb = img.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        small = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(small, Image.Resampling.BILINEAR)
    rects = _DETECTOR(np.asarray(rgb), upsample)
    boxes = [
        (
            round(r.left() / scale),
            round(r.top() / scale),
            round(r.right() / scale),
            round(r.bottom() / scale),
        )
        for r in rects
    ]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def dlib_predictor(landmarks_path: str | os.PathLike) -> Predictor:
    """Wrap dlib's 68-point shape predictor as `predictor(rgb_array, box) -> [68, 2]`."""
    dlib = _dlib()
    path = os.fspath(landmarks_path)
    if not os.path.isfile(path):
        raise WeightsError(
            f"Face landmark model {path} is missing. Run `python -m deltaedit download` or put"
            " shape_predictor_68_face_landmarks.dat in $DELTAEDIT_WEIGHTS_DIR; or use --no-align."
        )
    try:
        shape_predictor = dlib.shape_predictor(path)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path} is not a valid dlib landmark model ({exc}). Delete it and download"
            " shape_predictor_68_face_landmarks.dat again."
        ) from exc

    def predict(rgb: np.ndarray, box: Box) -> np.ndarray:
        shape = shape_predictor(rgb, dlib.rectangle(*box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    return predict


def face_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop square from 68 landmarks: corners [4, 2] (TL, BL, BR, TR) and side length."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"expected 68 finite (x, y) landmarks; got shape {lm.shape}")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5  # outer mouth corners
    eye_to_mouth = mouth_avg - eye_avg

    # x: half a side along the eye line (tilted by the eye-mouth axis), y: x turned 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise NoFaceError(NO_FACE_MESSAGE)
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _pad_outside(img: Image.Image, quad: np.ndarray, qsize: float, border: int):
    """Where the square leaves the photo: reflect, blur towards the edge, fade to the median.
    Returns the padded picture and the square moved onto it."""
    from scipy.ndimage import gaussian_filter

    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
            1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]
    return img, quad


def align_from_landmarks(
    img: Image.Image,
    lm: np.ndarray,
    output_size: int = 256,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> Image.Image:
    """Crop `img` to the FFHQ square of landmarks `lm` [68, 2] (e4e's `align_face` after detection).

    e4e aligns with output_size = transform_size = 256; the FFHQ dataset used 1024 / 4096.
    """
    transform_size = transform_size or output_size
    img = img.convert("RGB")
    quad, qsize = face_quad(lm)
    if qsize < 8:
        raise InputError(f"The face is too small ({qsize:.0f} px across) to align; use a larger photo.")

    # Shrink: pre-scale big photos so the final resampling does not alias.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the square plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    if enable_padding:
        img, quad = _pad_outside(img, quad, qsize, border)

    # Transform: sample the (rotated) square into an upright transform_size image.
    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        (quad + 0.5).flatten(),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img


class FaceAligner:
    """Detect the (largest) face, place 68 landmarks, return the FFHQ-aligned crop.

    `landmarks_path` is dlib's shape_predictor_68_face_landmarks.dat; tests may pass `predictor`
    (any `predictor(rgb_array, box) -> [68, 2]`) instead.
    """

    def __init__(
        self,
        landmarks_path: str | os.PathLike | None = None,
        output_size: int = 256,
        predictor: Predictor | None = None,
    ):
        if predictor is None:
            if landmarks_path is None:
                raise ValueError("FaceAligner needs landmarks_path or predictor")
            predictor = dlib_predictor(landmarks_path)
        self.predictor = predictor
        self.output_size = output_size
        self.detect_max_side = DETECT_MAX_SIDE

    def landmarks(self, img: Image.Image) -> tuple[np.ndarray, list[str]]:
        """68 landmarks of the largest face and notices; NoFaceError when there is none."""
        boxes = detect_faces(img, max_side=self.detect_max_side)
        if not boxes:
            raise NoFaceError(NO_FACE_MESSAGE)
        notices = []
        if len(boxes) > 1:
            notices.append(f"Found {len(boxes)} faces in the photo; edited the largest one.")
            log.info(notices[-1])
        lm = self.predictor(np.asarray(img.convert("RGB")), boxes[0])
        return np.asarray(lm, dtype=np.float64), notices

    def align(self, img: Image.Image, output_size: int | None = None) -> tuple[Image.Image, list[str]]:
        """(aligned RGB image of output_size x output_size, notices)."""
        lm, notices = self.landmarks(img)
        return align_from_landmarks(img, lm, output_size or self.output_size), notices
