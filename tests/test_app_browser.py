"""The page in a real browser: Debian's chromium driven by Playwright (no `playwright install`).

What a new user does and sees: upload a toy face, type or click a target, edit with each backbone,
run an example, compare. Pictures must be shown whole and crisp (64 px toy results scaled up, never
cropped), the two layers of the before/after slider must line up, controls that do nothing on the
toy domain must not be offered, an edit that changes nothing must say so, and long work must show
progress. Saves a screenshot to test-artifacts/app.png.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import REPO, app_url  # noqa: F401 - the session's server fixture
from PIL import Image

from deltaedit import service

CHROMIUM = os.environ.get("DELTAEDIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
EXAMPLE = REPO / "assets" / "examples" / "toy_brown_hair.png"
EDIT_TIMEOUT_MS = 120_000  # a D edit on a busy 2-core CPU

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM}: install it with `apt-get install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium refuses root without it
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):  # noqa: F811 - the fixture imported above
    """A fresh page per test (no state left over from the one before)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#input-image", timeout=30_000)
    yield page
    page.close()


def upload(page, path: Path = EXAMPLE) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    # The upload has finished when the input shows the picture.
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)


def edit(page, backbone: str, target: str) -> str:
    """Type `target`, press the backbone's edit button, wait for the summary; returns its text."""
    page.locator("#target-text textarea").fill(target)
    page.locator(f"#edit-{backbone}").click()
    info = page.locator(f"#edit-info-{backbone}")
    info.get_by_text("edit(s) in").wait_for(timeout=EDIT_TIMEOUT_MS)
    return info.inner_text()


def fetch_image(page, src: str) -> np.ndarray:
    response = page.request.get(src)
    assert response.ok, f"{src}: {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.int16)


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((np.abs(a - b).max(axis=-1) > 16).mean())


def box(locator) -> dict:
    b = locator.bounding_box()
    assert b is not None, "element is not rendered"
    return b


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack
    )


def drawn_box(img) -> dict:
    """Where the picture itself is drawn inside an <img> (object-fit: contain letterboxes it)."""
    return img.evaluate(
        """img => {
            const r = img.getBoundingClientRect();
            const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            const w = img.naturalWidth * s, h = img.naturalHeight * s;
            return {x: r.x + (r.width - w) / 2, y: r.y + (r.height - h) / 2, width: w, height: h};
        }"""
    )


def style(locator, prop: str) -> str:
    return locator.evaluate(f"e => getComputedStyle(e).getPropertyValue('{prop}')")


def test_upload_type_edit_and_see_the_result(page):
    upload(page)
    summary = edit(page, "gan", "face with smile")
    assert "DeltaEdit-G" in summary
    result = page.locator("#before-after-gan img").first
    result.wait_for(state="visible", timeout=30_000)
    # The browser decoded a real picture (naturalWidth is 0 for a broken or missing image).
    assert result.evaluate("img => img.complete && img.naturalWidth") > 0
    assert page.locator(".toast-body.error").count() == 0

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def test_small_results_are_shown_whole_crisp_and_the_slider_layers_line_up(page):
    upload(page)
    edit(page, "gan", "face with smile\nface with blond hair")
    slider = page.locator("#before-after-gan")
    layers = slider.locator("img[data-testid=imageslider-image]")
    assert layers.count() == 2
    for i in range(2):
        layers.nth(i).wait_for(state="visible", timeout=30_000)
        assert layers.nth(i).evaluate("img => img.complete && img.naturalWidth") == 64
    container = box(slider)
    before, after = box(layers.nth(0)), box(layers.nth(1))
    # Both layers occupy one box (the halves line up at the handle) inside the component.
    for key in ("x", "y", "width", "height"):
        assert abs(before[key] - after[key]) <= 1, (before, after)
    for layer in (layers.nth(0), layers.nth(1)):
        assert inside(box(layer), container), (box(layer), container)
        assert inside(drawn_box(layer), container)
        assert style(layer, "object-fit") == "contain"
        assert style(layer, "image-rendering") == "pixelated"
    # Shown large: a 64 px picture drawn at least 3x.
    assert drawn_box(layers.nth(0))["height"] >= 192

    gallery = page.locator("#gallery-gan")
    thumbs = gallery.locator("img")
    assert thumbs.count() == 2
    gallery_box = box(gallery)
    for i in range(thumbs.count()):
        img = thumbs.nth(i)
        img.wait_for(state="visible", timeout=30_000)
        cell = img.locator("xpath=..")
        assert inside(box(img), box(cell)), "a gallery picture spills out of its cell"
        assert inside(box(cell), gallery_box), "a gallery cell spills out of the gallery"
        assert inside(drawn_box(img), box(cell))
        assert style(img, "object-fit") == "contain"
        assert style(img, "image-rendering") == "pixelated"


def test_each_tab_has_examples_and_an_example_changes_the_picture(page):
    for kind, tab in (("gan", "DeltaEdit-G"), ("diffusion", "DeltaEdit-D"), ("compare", "Compare")):
        page.get_by_role("tab", name=tab).click()
        rows = page.locator(f"#examples-{kind} tbody tr")
        rows.first.wait_for(timeout=10_000)
        assert rows.count() == len(service.EXAMPLES[kind])
    # The non-neutral source example: "face with black hair" -> "face with blond hair".
    page.get_by_role("tab", name="DeltaEdit-G").click()
    index = [source for _, source, _ in service.EXAMPLES["gan"]].index("face with black hair")
    page.locator("#examples-gan tbody tr").nth(index).click()
    info = page.locator("#edit-info-gan")
    info.get_by_text("edit(s) in").wait_for(timeout=EDIT_TIMEOUT_MS)
    assert page.locator("#target-text textarea").input_value() == "face with blond hair"
    layers = page.locator("#before-after-gan img[data-testid=imageslider-image]")
    layers.nth(1).wait_for(state="visible", timeout=30_000)
    before = fetch_image(page, layers.nth(0).get_attribute("src"))
    after = fetch_image(page, layers.nth(1).get_attribute("src"))
    assert changed_fraction(before, after) > 0.05, "the example left the picture unchanged"


def test_align_option_follows_the_domain_and_compare_labels_what_it_shows(page):
    align = page.locator("#align-face")
    assert not align.is_visible(), "the FFHQ alignment option is offered on the toy domain"
    upload(page)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#target-text textarea").fill("face with eyeglasses")
    page.locator("#compare-run").click()
    page.locator("#compare-info table").wait_for(timeout=EDIT_TIMEOUT_MS)
    # Gradio updates the outputs one by one: on a busy machine the input's label still shows the
    # progress timer when the info table is already there.
    page.locator("#compare-input").get_by_text("Input (the photo)").wait_for(timeout=30_000)
    labels = {k: page.locator(f"#compare-{k}").inner_text() for k in ("input", "gan", "diffusion")}
    assert "Input (the photo)" in labels["input"]
    assert "DeltaEdit-G ·" in labels["gan"] and " s" in labels["gan"]
    assert "DeltaEdit-D" in labels["diffusion"]
    shown = fetch_image(page, page.locator("#compare-input img").first.get_attribute("src"))
    uploaded = np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.int16)
    assert np.array_equal(shown, uploaded), "Compare's input is not the uploaded photo"
    gan = fetch_image(page, page.locator("#compare-gan img").first.get_attribute("src"))
    assert changed_fraction(uploaded, gan) > 0.02
    # Side by side: the three pictures share one row.
    tops = {round(box(page.locator(f"#compare-{k}"))["y"]) for k in ("input", "gan", "diffusion")}
    assert len(tops) == 1
    # A Compare example (cached after its first run) is labelled the same way.
    page.locator("#examples-compare tbody tr").nth(0).click()
    page.locator("#compare-gan").get_by_text("DeltaEdit-G ·").wait_for(timeout=EDIT_TIMEOUT_MS)
    assert page.locator("#target-text textarea").input_value() == service.EXAMPLES["compare"][0][2]


def test_sliders_follow_the_tab_and_compare_uses_each_backbones_defaults(page):
    strength_box = page.locator("#strength input[type=number]")
    g_strength, _ = service.edit_defaults("toy", "gan")
    d_strength, d_threshold = service.edit_defaults("toy", "diffusion")
    strength_box.fill("2")
    strength_box.press("Enter")
    page.get_by_role("tab", name="DeltaEdit-D").click()
    page.wait_for_function(
        f"() => Number(document.querySelector('#strength input[type=number]').value) === {d_strength}"
    )
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function(
        f"() => Number(document.querySelector('#strength input[type=number]').value) === {g_strength}"
    )
    assert "own defaults" in page.locator("#compare-note").inner_text()
    page.locator("#target-text textarea").fill("face with bangs")
    page.locator("#compare-run").click()
    table = page.locator("#compare-info table")
    table.wait_for(timeout=EDIT_TIMEOUT_MS)
    rows = table.locator("tbody tr")
    assert rows.nth(0).locator("td").nth(1).inner_text() == f"{g_strength:g}"
    if rows.count() > 1:  # DeltaEdit-D weights present
        assert rows.nth(1).locator("td").nth(1).inner_text() == f"{d_strength:g}"
        assert rows.nth(1).locator("td").nth(2).inner_text() == f"{d_threshold:g}"


def test_known_phrases_are_offered_and_an_unknown_word_says_nothing_changed(page):
    chips = page.locator("#vocabulary")
    assert chips.is_visible()
    chips.get_by_text("face with bangs", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#target-text textarea').value === 'face with bangs'"
    )
    upload(page)
    summary = edit(page, "gan", "happy face")
    assert "changed nothing" in summary
    assert "face with a smile" in summary  # the nearest known phrase


def test_a_diffusion_edit_shows_its_progress_while_it_runs(page):
    page.get_by_role("tab", name="DeltaEdit-D").click()
    page.locator("#target-text textarea").fill("face with eyeglasses")
    page.locator("#edit-diffusion").click()
    # The callback's own message first, then the library's tqdm bars (refinement, DDIM steps).
    shown = re.compile("DeltaEdit-D|refinement|DDIM")
    progress = page.locator(".progress-level").filter(has_text=shown).first
    progress.wait_for(state="visible", timeout=30_000)
    page.locator("#edit-info-diffusion").get_by_text("edit(s) in").wait_for(timeout=EDIT_TIMEOUT_MS)
    assert page.locator(".progress-level").filter(has_text=shown).count() == 0


def test_domain_without_weights_says_so_in_the_page(page):
    status = page.locator("#domain-status")
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="FFHQ faces").click()
    status.get_by_text("could not be loaded").wait_for(timeout=60_000)
    assert "stylegan2-ffhq-config-f" in status.inner_text()  # names the missing file
    # FFHQ photos are aligned; the toy vocabulary does not apply to the real CLIP.
    page.locator("#align-face").wait_for(state="visible", timeout=10_000)
    page.locator("#vocabulary").wait_for(state="hidden", timeout=10_000)
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="Toy faces (built-in)").click()
    status.get_by_text("models loaded").wait_for(timeout=60_000)
    page.locator("#align-face").wait_for(state="hidden", timeout=10_000)
    page.locator("#vocabulary").wait_for(state="visible", timeout=10_000)
