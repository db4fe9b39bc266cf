"""Safe image loading, tensor conversion matching torchvision, atomic PNG saving, latent files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deltaedit.errors import InputError
from deltaedit.imageio import load_image, load_latents, save_png, tensor_to_pil, tensors_to_pils, to_tensor


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width`x`height` whose pixel data is a few bytes: undecodable."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


# --- load_image: sources and limits ---------------------------------------------------------


def test_loads_path_bytes_pil_and_array_alike(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    path = tmp_path / "a.png"
    img.save(path)
    for source in (path, str(path), path.read_bytes(), img, pixels):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (20, 12)
        np.testing.assert_array_equal(np.asarray(out), pixels)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # The file has no pixel data: decoding would fail as truncated, so the size error proves
    # the check runs on the header alone.
    with pytest.raises(InputError, match="too large"):
        load_image(_png_header_only(8000, 8000))  # 64 MP > default 50 MP, < PIL's bomb limit
    with pytest.raises(InputError, match="too large"):
        load_image(_png_header_only(30000, 30000))  # PIL's DecompressionBombError territory
    with pytest.raises(InputError, match="too large"):
        load_image(_png_bytes(Image.new("RGB", (100, 100))), max_pixels=5000)
    assert load_image(_png_bytes(Image.new("RGB", (50, 100))), max_pixels=5000).size == (50, 100)


def test_pixel_limit_applies_to_pil_input():
    with pytest.raises(InputError, match="too large"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9999)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"hello, I am a text file\n" * 10, "not an image")],
)
def test_rejects_empty_and_non_image_files(tmp_path, content, message):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_image(path)
    assert "JPEG" in str(info.value)  # says what to upload instead
    with pytest.raises(InputError, match=message):
        load_image(content)


def test_rejects_truncated_image(tmp_path):
    rng = np.random.default_rng(1)
    data = _png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="damaged or truncated"):
        load_image(path)


def test_missing_file_and_wrong_type():
    with pytest.raises(InputError, match="does not exist"):
        load_image("/nonexistent/photo.jpg")
    with pytest.raises(InputError, match="Cannot read"):
        load_image(12345)


def test_load_leaves_no_files_behind(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    load_image(path)
    load_image(path.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# --- load_image: orientation and modes ------------------------------------------------------


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left strip is now at the top


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    img.putpixel((1, 0), (0, 0, 0, 128))
    out = np.asarray(load_image(_png_bytes(img))).astype(int)
    assert tuple(out[3, 3]) == (255, 255, 255)  # fully transparent -> white, not red
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in out[0, 1])  # half-transparent black on white


def test_palette_with_transparency_and_la():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 255, 0] + [200, 0, 0] * 255)
    pal.putpixel((0, 0), 1)
    out = np.asarray(load_image(_png_bytes(pal, transparency=0)))
    assert tuple(out[3, 3]) == (255, 255, 255) and tuple(out[0, 0]) == (200, 0, 0)
    la = Image.new("LA", (2, 2), (0, 0))
    assert tuple(np.asarray(load_image(_png_bytes(la)))[0, 0]) == (255, 255, 255)


def test_16_bit_greyscale_keeps_its_tones():
    values = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)  # mode I;16
    out = np.asarray(load_image(_png_bytes(img)))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [200, 255]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


# Ink of six 16-px wide CMYK stripes: cyan, magenta, yellow, none (white), black, orange.
_CMYK_STRIPES = [
    (255, 0, 0, 0),
    (0, 255, 0, 0),
    (0, 0, 255, 0),
    (0, 0, 0, 0),
    (0, 0, 0, 255),
    (0, 128, 255, 0),
]


def _patterned(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A non-uniform image in `mode` and the RGB pixels [H, W, 3] it shows, worked out by hand."""
    if mode == "L":
        grey = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)  # every grey level 0..255
        return Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, axis=2)
    if mode == "1":
        on = (np.indices((12, 12)).sum(axis=0) // 3) % 2 == 1  # diagonal stripes
        img = Image.fromarray(np.where(on, 255, 0).astype(np.uint8), "L").convert("1")
        return img, np.repeat(np.where(on, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    ink = np.repeat(np.asarray(_CMYK_STRIPES, dtype=np.float64), 16, axis=0)[None].repeat(16, axis=0)
    white = 255.0 - ink[..., :3]  # each of C, M, Y takes away its complement, K darkens all three
    rgb = white * (255.0 - ink[..., 3:]) / 255.0
    return Image.fromarray(ink.astype(np.uint8), "CMYK"), np.rint(rgb).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK"])
def test_other_modes_become_rgb(mode):
    img, expected = _patterned(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == img.size
    # The colours survive the conversion: exactly for the lossless PNGs, within JPEG's loss for CMYK.
    tolerance = 12 if fmt == "JPEG" else 0
    np.testing.assert_allclose(np.asarray(out, dtype=np.int16), expected.astype(np.int16), atol=tolerance)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    out = np.asarray(load_image(buf.getvalue()))
    assert out[4, 4, 0] > 200 and out[4, 4, 2] < 50


# --- tensors ---------------------------------------------------------------------------------


def test_to_tensor_matches_authors_torchvision_transform():
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    x = to_tensor(img, 256)
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    # Independent reference: PIL bilinear resize, then /255, then (v - 0.5) / 0.5.
    ref = np.asarray(img.resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255.0
    ref = torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1)
    torch.testing.assert_close(x[0], ref, atol=1e-6, rtol=0)


def test_to_tensor_value_range():
    img = Image.new("RGB", (4, 4), (0, 255, 0))
    x = to_tensor(img, 4)
    assert x[0, 0].eq(-1).all() and x[0, 1].eq(1).all()


def test_tensor_to_pil_rounds_like_save_image(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 9, 7) * 0.8  # includes values outside [-1, 1]
    ref_path = tmp_path / "ref.png"
    torchvision.utils.save_image(x, ref_path, normalize=True, value_range=(-1, 1))
    ref = np.asarray(Image.open(ref_path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(x)), ref)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(x[0])), ref)


def test_batch_conversion_equals_one_by_one():
    batch = torch.rand(3, 3, 8, 8) * 2.4 - 1.2  # past both ends of the range: clamped
    pils = tensors_to_pils(batch)
    assert len(pils) == 3
    for pil, image in zip(pils, batch):
        assert np.array_equal(np.asarray(pil), np.asarray(tensor_to_pil(image)))
    assert np.asarray(pils[0]).max() == 255 and np.asarray(pils[0]).min() == 0
    with pytest.raises(ValueError, match="batch"):
        tensors_to_pils(batch[0])


def test_tensor_to_pil_rejects_batches():
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))


def test_round_trip_pil_tensor_pil_is_lossless():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = tensor_to_pil(to_tensor(Image.fromarray(pixels), 16))
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_save_png_is_atomic_and_clean(tmp_path, monkeypatch):
    target = tmp_path / "out" / "img.png"
    save_png(torch.zeros(3, 5, 5), target)
    assert np.asarray(Image.open(target)).shape == (5, 5, 3)
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.png"]

    before = target.read_bytes()

    def broken_save(self, fp, *a, **k):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (5, 5), (255, 255, 255)), target)
    assert target.read_bytes() == before  # old file intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.png"]  # no temp left


# --- latents ---------------------------------------------------------------------------------


def test_load_latents_accepts_2d_and_3d(tmp_path):
    codes = np.random.default_rng(4).standard_normal((18, 512)).astype(np.float64)
    for name, arr in (("a.npy", codes), ("b.npy", codes[None])):
        np.save(tmp_path / name, arr)
        out = load_latents(tmp_path / name, n_latent=18, style_dim=512)
        assert out.shape == (1, 18, 512) and out.dtype == torch.float32
        np.testing.assert_allclose(out[0].numpy(), codes, rtol=1e-6)


def test_load_latents_batch_needs_index(tmp_path, ffhq_examples):
    path = ffhq_examples / "wplus_img_feat.npy"
    with pytest.raises(InputError, match="index"):
        load_latents(path)
    out = load_latents(path, 18, 512, index=3)
    np.testing.assert_array_equal(out[0].numpy(), np.load(path)[3])


def test_load_latents_errors(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Python objects"):
        load_latents(tmp_path / "obj.npy")
    np.save(tmp_path / "shape.npy", np.zeros((10, 128), np.float32))
    with pytest.raises(InputError, match="another domain"):
        load_latents(tmp_path / "shape.npy", n_latent=18, style_dim=512)
    bad = np.zeros((18, 512), np.float32)
    bad[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        load_latents(tmp_path / "nan.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(InputError, match="npy"):
        load_latents(tmp_path / "text.npy")
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match="float"):
        load_latents(tmp_path / "strings.npy")
    with pytest.raises(InputError, match="does not exist"):
        load_latents(tmp_path / "missing.npy")


@pytest.mark.parametrize(("size", "box"), [((300, 200), (50, 0, 250, 200)), ((200, 300), (0, 50, 200, 250))])
def test_center_square_keeps_proportions_and_says_what_it_cut(size, box):
    from deltaedit.imageio import center_square

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))
    square, notice = center_square(img)
    assert square.size == (200, 200)
    assert np.array_equal(np.asarray(square), np.asarray(img.crop(box)))
    assert f"{size[0]} x {size[1]}" in notice and "200 x 200" in notice
    same, none = center_square(square)
    assert same is square and none is None
