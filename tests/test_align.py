"""FFHQ alignment: crop-square geometry from synthetic landmarks, HOG detection on a real photo."""

from __future__ import annotations

from pathlib import Path

import conftest
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from deltaedit.align import FaceAligner, align_from_landmarks, detect_faces, face_quad
from deltaedit.errors import InputError, NoFaceError

EYE_L, EYE_R, MOUTH = (0, 0, 255), (255, 0, 0), (0, 255, 0)


def synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r, rng=None) -> np.ndarray:
    """68 points whose eyes (36-47) average to eye_l / eye_r and whose mouth corners are 48 / 54."""
    rng = rng or np.random.default_rng(0)
    lm = rng.uniform(0, 10, (68, 2))  # points the alignment must ignore
    ring = np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]], dtype=float)  # mean 0
    lm[36:42] = np.asarray(eye_l, float) + ring
    lm[42:48] = np.asarray(eye_r, float) + ring
    lm[48:60] = (np.asarray(mouth_l, float) + np.asarray(mouth_r, float)) / 2
    lm[48], lm[54] = mouth_l, mouth_r
    return lm


def textured_scene(size, eye_l, eye_r, mouth_c, seed=0) -> Image.Image:
    """Smooth random texture with coloured dots at the eye centres and the mouth centre."""
    rng = np.random.default_rng(seed)
    noise = gaussian_filter(rng.uniform(0, 255, (size[1], size[0], 3)), [6, 6, 0])
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-9) * 120 + 60
    img = Image.fromarray(noise.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for (x, y), colour in ((eye_l, EYE_L), (eye_r, EYE_R), (mouth_c, MOUTH)):
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), fill=colour)
    return img


def blob_centre(img: Image.Image, colour) -> np.ndarray:
    arr = np.asarray(img).astype(int)
    dist = np.abs(arr - np.array(colour)).sum(axis=2)
    ys, xs = np.nonzero(dist < 120)
    assert len(xs) > 0, f"colour {colour} not found"
    return np.array([xs.mean(), ys.mean()])


def expected_position(quad, qsize, point, out):
    """Where `point` lands in the aligned image: its coordinates along the square's axes."""
    tl, bl, tr = quad[0], quad[1], quad[3]
    u = np.dot(point - tl, (tr - tl) / qsize) / qsize * out
    v = np.dot(point - tl, (bl - tl) / qsize) / qsize * out
    return np.array([u, v])


# --- geometry --------------------------------------------------------------------------------


def test_face_quad_worked_example():
    # Eyes 60 px apart, mouth 60 px below them: |x| = max(2 * 60, 1.8 * 60) = 120.
    lm = synthetic_landmarks((70, 120), (130, 120), (75, 180), (125, 180))
    quad, qsize = face_quad(lm)
    assert qsize == pytest.approx(240)
    centre = np.array([100, 120 + 0.1 * 60])
    np.testing.assert_allclose(quad, centre + np.array([[-120, -120], [-120, 120], [120, 120], [120, -120]]))


def test_face_quad_is_a_square_of_the_documented_size():
    rng = np.random.default_rng(5)
    for _ in range(20):
        eye_l = rng.uniform(50, 150, 2)
        eye_r = eye_l + rng.uniform([30, -20], [90, 20])
        mouth_c = (eye_l + eye_r) / 2 + rng.uniform([-10, 40], [10, 90])
        mouth_l, mouth_r = mouth_c - [20, 0], mouth_c + [20, 0]
        quad, qsize = face_quad(synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r, rng))
        sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
        np.testing.assert_allclose(sides, qsize)
        np.testing.assert_allclose(np.linalg.norm(quad[2] - quad[0]), qsize * np.sqrt(2))
        eye_avg = (eye_l + eye_r) / 2
        np.testing.assert_allclose(quad.mean(axis=0), eye_avg + 0.1 * (mouth_c - eye_avg), atol=1e-9)
        half = max(2 * np.linalg.norm(eye_r - eye_l), 1.8 * np.linalg.norm(mouth_c - eye_avg))
        assert qsize == pytest.approx(2 * half)


def test_face_quad_rejects_bad_landmarks():
    with pytest.raises(InputError):
        face_quad(np.zeros((5, 2)))
    bad = synthetic_landmarks((70, 120), (130, 120), (75, 180), (125, 180))
    bad[40, 0] = np.nan
    with pytest.raises(InputError):
        face_quad(bad)


@pytest.mark.parametrize("out", [64, 128])
def test_features_land_where_the_square_puts_them(out):
    eye_l, eye_r, mouth_l, mouth_r = (150, 160), (210, 160), (155, 220), (205, 220)
    mouth_c = (180, 220)
    img = textured_scene((360, 380), eye_l, eye_r, mouth_c)
    lm = synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r)
    aligned = align_from_landmarks(img, lm, output_size=out)
    assert aligned.size == (out, out) and aligned.mode == "RGB"
    quad, qsize = face_quad(lm)
    for point, colour in ((eye_l, EYE_L), (eye_r, EYE_R), (mouth_c, MOUTH)):
        want = expected_position(quad, qsize, np.array(point, float), out)
        np.testing.assert_allclose(blob_centre(aligned, colour), want, atol=1.5)


def test_rotated_face_comes_out_upright():
    centre = np.array([200.0, 200.0])
    pts = {"eye_l": (170, 180), "eye_r": (230, 180), "mouth_l": (175, 240), "mouth_r": (225, 240)}
    img = textured_scene((400, 400), pts["eye_l"], pts["eye_r"], (200, 240), seed=3)
    upright = align_from_landmarks(img, synthetic_landmarks(*pts.values()), output_size=64)

    angle = 25.0
    rotated = img.rotate(angle, resample=Image.Resampling.BICUBIC, center=tuple(centre))
    theta = np.deg2rad(angle)  # PIL rotates counter-clockwise on screen (y down)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    moved = [tuple(rot @ (np.array(p, float) - centre) + centre) for p in pts.values()]
    realigned = align_from_landmarks(rotated, synthetic_landmarks(*moved), output_size=64)

    a, b = np.asarray(upright, float), np.asarray(realigned, float)
    np.testing.assert_allclose(blob_centre(realigned, EYE_L), blob_centre(upright, EYE_L), atol=1.0)
    np.testing.assert_allclose(blob_centre(realigned, EYE_R), blob_centre(upright, EYE_R), atol=1.0)
    assert np.abs(a - b).mean() < 6.0
    # Without the rotation the two would differ a lot: the check above has teeth.
    naive = align_from_landmarks(rotated, synthetic_landmarks(*pts.values()), output_size=64)
    assert np.abs(np.asarray(naive, float) - a).mean() > 2 * np.abs(a - b).mean()


def test_square_leaving_the_photo_is_padded_not_black():
    eye_l, eye_r, mouth_l, mouth_r = (30, 40), (90, 40), (35, 100), (85, 100)
    img = textured_scene((300, 300), eye_l, eye_r, (60, 100))
    lm = synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r)
    padded = np.asarray(align_from_landmarks(img, lm, output_size=64))
    unpadded = np.asarray(align_from_landmarks(img, lm, output_size=64, enable_padding=False))
    assert unpadded[:4, :4].max() == 0  # PIL fills outside the photo with black
    assert padded[:4, :4].min() > 30  # reflected, blurred texture instead
    assert np.abs(padded[40:, 40:].astype(int) - unpadded[40:, 40:]).mean() < 3  # inside: same


def test_big_face_goes_through_the_shrink_step():
    eye_l, eye_r, mouth_l, mouth_r = (500, 520), (800, 520), (520, 820), (780, 820)
    img = textured_scene((1300, 1300), eye_l, eye_r, (650, 820), seed=4)
    ImageDraw.Draw(img).ellipse((470, 490, 530, 550), fill=EYE_L)  # dots big enough to survive
    ImageDraw.Draw(img).ellipse((770, 490, 830, 550), fill=EYE_R)
    lm = synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r)
    quad, qsize = face_quad(lm)
    assert np.floor(qsize / 64 * 0.5) > 1
    aligned = align_from_landmarks(img, lm, output_size=64)
    assert aligned.size == (64, 64)
    want = expected_position(quad, qsize, np.array(eye_l, float), 64)
    np.testing.assert_allclose(blob_centre(aligned, EYE_L), want, atol=1.5)


def test_transform_size_larger_than_output():
    lm = synthetic_landmarks((150, 160), (210, 160), (155, 220), (205, 220))
    img = textured_scene((360, 380), (150, 160), (210, 160), (180, 220))
    direct = np.asarray(align_from_landmarks(img, lm, output_size=64), float)
    supersampled = np.asarray(align_from_landmarks(img, lm, output_size=64, transform_size=256), float)
    assert supersampled.shape == (64, 64, 3)
    assert np.abs(direct - supersampled).mean() < 8


# --- detection (dlib HOG, built in) -------------------------------------------------------------


def _fake_predictor(calls):
    def predict(rgb, box):
        calls.append(box)
        left, top, right, bottom = box
        w, h = right - left, bottom - top
        return synthetic_landmarks(
            (left + 0.3 * w, top + 0.4 * h),
            (left + 0.7 * w, top + 0.4 * h),
            (left + 0.35 * w, top + 0.75 * h),
            (left + 0.65 * w, top + 0.75 * h),
        )

    return predict


@pytest.fixture(scope="module")
def face_photo(shared_dir) -> Image.Image:
    path = shared_dir / "data" / "photos" / "aligned_face_256.jpg"
    if not path.is_file():
        pytest.skip("aligned_face_256.jpg is absent")
    return Image.open(path).convert("RGB")


def test_hog_finds_exactly_one_face(face_photo):
    boxes = detect_faces(face_photo)
    assert len(boxes) == 1
    left, top, right, bottom = boxes[0]
    assert 0 <= left < 128 < right <= 256 and 0 <= top < 128 < bottom <= 256


def test_blank_image_raises_no_face():
    aligner = FaceAligner(predictor=_fake_predictor([]))
    with pytest.raises(NoFaceError, match="--no-align"):
        aligner.align(Image.new("RGB", (256, 256), (128, 128, 128)))


def test_largest_of_several_faces_is_used_with_a_notice(face_photo):
    canvas = Image.new("RGB", (640, 320), (255, 255, 255))
    canvas.paste(face_photo.resize((160, 160)), (20, 80))
    canvas.paste(face_photo.resize((300, 300)), (320, 10))
    calls = []
    aligned, notices = FaceAligner(predictor=_fake_predictor(calls)).align(canvas, output_size=32)
    assert aligned.size == (32, 32)
    assert len(notices) == 1 and "largest" in notices[0] and "2 faces" in notices[0]
    left, top, right, bottom = calls[0]
    assert left > 300 and right - left > 150  # the big face on the right


def test_one_face_gives_no_notice_and_detection_scales_back(face_photo):
    # Above the detector's size cap it detects on a smaller copy; the box must come back in the
    # big photo's pixels.
    big = face_photo.resize((640, 640), Image.Resampling.BILINEAR)
    calls = []
    aligner = FaceAligner(predictor=_fake_predictor(calls))
    aligner.detect_max_side = 320
    _, notices = aligner.align(big)
    assert notices == []
    left, top, right, bottom = calls[0]
    (s_left, s_top, s_right, s_bottom) = detect_faces(face_photo)[0]
    ratio = 640 / 256
    assert (right - left) == pytest.approx((s_right - s_left) * ratio, rel=0.3)
    centre = np.array([left + right, top + bottom]) / 2
    small_centre = np.array([s_left + s_right, s_top + s_bottom]) / 2 * ratio
    np.testing.assert_allclose(centre, small_centre, atol=0.08 * 640)


def test_missing_landmark_model_is_a_weights_error(tmp_path):
    from deltaedit.errors import WeightsError

    with pytest.raises(WeightsError, match="download"):
        FaceAligner(tmp_path / "shape_predictor_68_face_landmarks.dat")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a valid"):
        FaceAligner(junk)


# --- the real landmark model -----------------------------------------------------------------


def _landmark_file() -> Path | None:
    # The caller's folders, which conftest keeps out of the library's environment.
    caller = conftest.CALLER_ENVIRONMENT
    for folder in (caller.get("DELTAEDIT_WEIGHTS_DIR"), caller.get("DELTAEDIT_CACHE")):
        if folder and (Path(folder) / "shape_predictor_68_face_landmarks.dat").is_file():
            return Path(folder) / "shape_predictor_68_face_landmarks.dat"
    return None


@pytest.mark.slow
def test_real_landmarks_keep_an_aligned_face_aligned(face_photo):
    path = _landmark_file()
    if path is None:
        pytest.skip("shape_predictor_68_face_landmarks.dat not in $DELTAEDIT_WEIGHTS_DIR")
    aligned, notices = FaceAligner(path).align(face_photo, output_size=256)
    assert notices == [] and aligned.size == (256, 256)
    diff = np.abs(np.asarray(aligned, float) - np.asarray(face_photo, float)).mean()
    assert diff < 30  # an FFHQ-aligned photo re-aligns to nearly itself
