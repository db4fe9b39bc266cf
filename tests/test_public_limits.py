"""One anonymous visitor cannot stall, fill or bypass the public app (issue 25, docs/security.md).

Each row of the issue's table is sent to the running app (`deltaedit.reliability.abuse_case`, raw
HTTP from a loopback address of its own) and must be refused at once, or bounded, with a message
that names the field or the limit, leaving nothing in the upload folder. On the app as it was before
(commit 6f7e7a1) every row failed: direct routes answered 200, a data: URL was decoded, one visitor
queued 33 DeltaEdit-D jobs, 95 MB came in one upload, deep JSON gave HTTP 500, an EPS went to
Ghostscript, NaN steps gave "Something went wrong".

The library-side limits (prompt length before tokenizing, the tokenizer's word cache, the image
formats Pillow may open, the DeltaEdit-D cost) are tested here without a server too.
"""

from __future__ import annotations

import io
import time

import pytest
from app_server import shared_server
from PIL import Image

from deltaedit import reliability, service
from deltaedit.clip import BoundedWordCache, build_tokenizer
from deltaedit.errors import InputError
from deltaedit.imageio import ALLOWED_FORMATS, check_image_file, load_image
from deltaedit.pipelines.gan import MAX_PROMPT_CHARS, normalise_source, normalise_targets


@pytest.mark.parametrize("row", list(reliability.ABUSE_ROWS), ids=lambda r: f"row{r}")
def test_each_abuse_row_is_refused_or_bounded_against_the_running_app(row):
    server = shared_server()
    result = reliability.abuse_case(server.url, row, server.workdir / "gradio")
    assert result.passed, f"{result.name}: {result.detail}"
    assert server.process.poll() is None  # the server is still up


def test_another_visitor_is_served_while_one_fills_its_share():
    """Row 5's other half: the visitor at its limit is refused, a second one still gets an edit."""
    url = shared_server().url
    heavy = reliability.abuse._with(reliability.D_CALL, 6, 5)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        flood = [pool.submit(reliability.raw_call, url, "edit_diffusion", heavy, "127.0.0.5") for _ in range(8)]
        time.sleep(0.5)
        other = reliability.raw_call(url, "edit_gan", reliability.GAN_CALL, source="127.0.0.6")
        answers = [f.result() for f in flood]
    assert sum(a.status == 429 for a in answers) >= 5
    assert all(a.event == "complete" for a in answers if a.status == 200)
    assert other.event == "complete", other.text[:200]


def test_the_app_states_its_limits_where_a_caller_meets_them():
    import app

    # The DDIM-steps sliders and the service agree on one bound, and the request cost is bounded.
    sliders = [c for c in app.demo.blocks.values() if getattr(c, "label", None) in ("DDIM steps", "DDIM steps (D)")]
    assert len(sliders) == 2 and {s.maximum for s in sliders} == {service.MAX_DDIM_STEPS}
    assert service.MAX_DDIM_STEPS == 200
    assert app.demo._queue.max_size == app.QUEUE_SIZE and app.demo.api_open is False


# ---------------------------------------------------------------- the library's own limits


def test_prompts_are_refused_by_length_before_any_tokenizer():
    assert normalise_targets("x" * MAX_PROMPT_CHARS) == ["x" * MAX_PROMPT_CHARS]
    with pytest.raises(InputError, match=r"the target text is 301 characters long; the limit is 300"):
        normalise_targets("x" * 301)
    with pytest.raises(InputError, match=r"target line 2 is 1,048,576 characters"):
        normalise_targets("face with smile\n" + "a" * 2**20)
    with pytest.raises(InputError, match=r"at most 16 targets at once, got 999999 lines"):
        normalise_targets("\n" * 999_999)
    with pytest.raises(InputError, match=r"the source text is 400 characters long"):
        normalise_source("y" * 400)
    assert normalise_source("  face  ") == "face" and normalise_source("") is None
    with pytest.raises(InputError, match="must be text"):
        normalise_source(42)


def test_service_checks_text_and_cost_before_loading_any_model(monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded for a request that should have been refused")

    monkeypatch.setattr(service, "get_editor", no_models)
    with pytest.raises(InputError, match="limit is 300"):
        service.edit("gan", "toy", target="a" * 40_000)
    with pytest.raises(InputError, match="source text"):
        service.edit("gan", "toy", target="face with smile", source="b" * 301)
    lines = "\n".join(f"face {i}" for i in range(16))
    with pytest.raises(InputError, match=r"at most 800 per request \(got 200 x 16 = 3200\)"):
        service.edit("diffusion", "toy", target=lines, steps=200)
    with pytest.raises(InputError, match="from 1 to 200"):
        service.edit("diffusion", "toy", target="face", steps=201)
    with pytest.raises(InputError, match="from 1 to 200"):
        service.edit("diffusion", "toy", target="face", steps=float("nan"))
    assert service.check_diffusion_work(50, 16) == 50 and service.check_diffusion_work(200, 4) == 200


def test_the_tokenizers_word_cache_is_bounded():
    tokenizer = build_tokenizer("ViT-B-32-quickgelu")
    assert isinstance(tokenizer.cache, BoundedWordCache)
    special = dict(tokenizer.cache)
    tokenizer.cache.max_words = 500
    words = [f"zq{i:05d}x" for i in range(2000)]
    ids = [tokenizer.encode(w) for w in words]
    assert len(tokenizer.cache) <= 500
    assert all(tokenizer.cache[k] == v for k, v in special.items() if k in tokenizer.cache)
    # Starting over changes nothing but speed: the same words encode to the same ids.
    assert [tokenizer.encode(w) for w in words[:50]] == ids[:50]


def _image_bytes(fmt: str, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def test_pillow_opens_only_the_allowed_formats(tmp_path):
    assert {"PNG", "JPEG", "WEBP"} <= set(ALLOWED_FORMATS) and "EPS" not in ALLOWED_FORMATS
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        path = tmp_path / f"ok.{fmt.lower()}"
        path.write_bytes(_image_bytes(fmt))
        assert check_image_file(path) == (fmt, (8, 6))
        assert load_image(path).size == (8, 6)
    for fmt in ("TIFF", "PPM", "ICO"):  # formats Pillow reads, but we do not accept
        path = tmp_path / f"face.{fmt.lower()}.png"
        path.write_bytes(_image_bytes(fmt, (16, 16)))
        with pytest.raises(InputError, match=r"not a readable image \(allowed: PNG, JPEG"):
            check_image_file(path)
        with pytest.raises(InputError, match="not an image that can be read"):
            load_image(path)
    eps = tmp_path / "face.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InputError, match="not an image that can be read"):
        load_image(eps)


def test_the_pixel_limit_is_read_from_the_header(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "huge.png"
    path.write_bytes(reliability.abuse._png_of_size(13000, 13000))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    # Ours, or Pillow's own bomb check where the app set Pillow's limit to the same 50 MP.
    message = r"13000x13000 = 169,000,000 pixels, the limit is 50,000,000|169000000 pixels.*below 50,000,000"
    for check in (check_image_file, load_image):
        with pytest.raises(InputError, match=message):
            check(path)
    assert decoded == []  # the header only: decoding it would take seconds and 169 MB
