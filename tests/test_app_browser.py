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
from app_server import REPO, AppServer, app_url, toy_weights_env  # noqa: F401 - the session's server fixture
from PIL import Image

from deltaedit import service

CHROMIUM = os.environ.get("DELTAEDIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
EXAMPLE = REPO / "assets" / "examples" / "toy_brown_hair.png"
EDIT_TIMEOUT_MS = 120_000  # a D edit on a busy 2-core CPU

pytestmark = pytest.mark.browser
pytest_plugins = ["fixtures_ffhq"]  # ffhq_weights: random weights in the official file formats
FFHQ_EDIT_TIMEOUT_MS = 600_000  # full-size StyleGAN2 and ViT-B/32 on a busy 2-core CPU


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
    chips.wait_for(state="visible", timeout=30_000)  # rendered just after the photo box on a busy machine
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


def no_horizontal_overflow(locator) -> list[str]:
    """The element and every descendant whose content is wider than its box (clipped or scrolled)."""
    return locator.evaluate(
        """root => [root, ...root.querySelectorAll('*')]
            .filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')
            .map(e => e.tagName + ': ' + e.textContent.slice(0, 60))"""
    )


def visible_toasts(page):
    return page.locator("[data-testid=toast-body]:visible")


def test_domain_without_weights_says_so_in_the_page(page):
    status = page.locator("#domain-status")
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="FFHQ faces").click()
    status.get_by_text("could not be loaded").wait_for(timeout=60_000)
    text = status.inner_text()
    assert "stylegan2-ffhq-config-f" in text  # names the missing file
    # How to add them, in words the app honours, readable without scrolling sideways.
    assert "DELTAEDIT_WEIGHTS_DIR" in text and "python -m deltaedit download --domain ffhq" in text
    assert "--weights-dir" not in text
    assert no_horizontal_overflow(status) == []
    key = status.get_by_text("DELTAEDIT_WEIGHTS_DIR").first
    assert inside(box(key), box(status))
    # DeltaEdit-D's notice does not pretend DeltaEdit-G works, and wraps too.
    page.get_by_role("tab", name="DeltaEdit-D").click()
    notice = page.locator("#d-notice")
    notice.get_by_text("neither are DeltaEdit-G").wait_for(timeout=10_000)
    assert "still works" not in notice.inner_text()
    assert no_horizontal_overflow(notice) == []
    # Edit without weights: one short pop-up per run, replaced by the next run's (a pop-up
    # otherwise stays 10 s, so "Error (2)" would pile up).
    page.locator("#target-text textarea").fill("face with smile")
    page.locator("#edit-diffusion").click()
    texts = page.locator("[data-testid=toast-text]")
    texts.get_by_text("DeltaEdit-D weights are not available").wait_for(timeout=30_000)
    assert visible_toasts(page).count() == 1
    d_message = visible_toasts(page).first.inner_text()
    assert len(d_message) < 300 and "--weights-dir" not in d_message
    page.get_by_role("tab", name="DeltaEdit-G").click()
    page.locator("#edit-gan").click()
    texts.get_by_text("weight files are missing").wait_for(timeout=30_000)
    texts.get_by_text("DeltaEdit-D weights are not available").wait_for(state="detached", timeout=3_000)
    assert visible_toasts(page).count() == 1 and texts.count() == 1
    message = visible_toasts(page).first.inner_text()
    assert "stylegan2-ffhq-config-f.pt" in message and len(message) < 300
    assert box(visible_toasts(page).first)["height"] < 200
    page.locator("[data-testid=toast-close]").click()
    # FFHQ photos are aligned; the toy vocabulary does not apply to the real CLIP.
    page.locator("#align-face").wait_for(state="visible", timeout=10_000)
    page.locator("#vocabulary").wait_for(state="hidden", timeout=10_000)
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="Toy faces (built-in)").click()
    status.get_by_text("models loaded").wait_for(timeout=60_000)
    page.locator("#align-face").wait_for(state="hidden", timeout=10_000)
    page.locator("#vocabulary").wait_for(state="visible", timeout=10_000)


def test_notices_are_listed_once_per_run_in_the_summary_without_pop_ups(page):
    upload(page)
    first = edit(page, "gan", "happy face")
    assert "changed nothing" in first and "happy face" in first
    page.locator("#target-text textarea").fill("sleepy face")
    page.locator("#edit-gan").click()
    info = page.locator("#edit-info-gan")
    info.get_by_text("sleepy face").wait_for(timeout=EDIT_TIMEOUT_MS)
    summary = info.inner_text()
    assert "changed nothing" in summary and "happy face" not in summary  # replaced, not appended
    assert visible_toasts(page).count() == 0, "a notice also popped up over the page"


def test_the_seeds_sample_is_shown_and_gallery_captions_are_whole(page):
    targets = ["face with bangs and red hair", "face with a smile"]
    preview = page.locator("#seed-sample")
    assert not preview.is_visible()
    edit(page, "gan", "\n".join(targets))
    # No photo: the face the edit started from is shown, with its seed.
    preview.get_by_text("Seed 0").wait_for(timeout=30_000)
    picture = preview.locator("img").first
    picture.wait_for(state="visible", timeout=30_000)
    assert picture.evaluate("img => img.complete && img.naturalWidth") == 64
    # Every caption reads the whole target: not cut with an ellipsis, not spilling out.
    captions = page.locator("#gallery-gan .caption-label")
    assert captions.count() == len(targets)
    for i, target in enumerate(targets):
        caption = captions.nth(i)
        assert caption.inner_text() == target
        assert caption.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight")
        assert style(caption, "text-overflow") != "ellipsis"
        cell = page.locator("#gallery-gan .thumbnail-item").nth(i)
        assert inside(box(caption), box(cell))
        assert box(caption)["y"] >= drawn_box(cell.locator("img"))["y"] + drawn_box(cell.locator("img"))["height"] - 1
    # A photo replaces the sample: the preview goes away.
    upload(page)
    preview.wait_for(state="hidden", timeout=10_000)


def test_a_file_that_is_not_an_image_is_refused_on_upload(page, tmp_path):
    fake = tmp_path / "x.png"
    fake.write_text("this is a text file, not a picture\n" * 20)
    page.locator("#input-image input[type=file]").set_input_files(str(fake))
    page.locator("[data-testid=toast-text]").get_by_text("not").first.wait_for(timeout=30_000)
    message = visible_toasts(page).first.inner_text()
    assert "image" in message.lower() and str(tmp_path) not in message
    page.wait_for_function("() => !document.querySelector('#input-image img')")  # the upload is removed


def test_deltaspace_plots_are_whole_and_nothing_covers_their_titles(page):
    page.get_by_role("tab", name="DeltaSpace").click()
    gallery = page.locator("#deltaspace-pictures")
    pictures = gallery.locator(".thumbnail-item img")
    pictures.nth(1).wait_for(state="visible", timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#deltaspace-pictures .thumbnail-item img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    outer = box(gallery)
    assert no_horizontal_overflow(gallery) == []
    assert gallery.evaluate(
        "g => [g, ...g.querySelectorAll('*')].every(e => e.scrollHeight <= e.clientHeight + 1"
        " || getComputedStyle(e).overflowY === 'visible')"
    ), "a plot scrolls inside its box"
    labels = gallery.locator("[data-testid=block-label]:visible")
    for i in range(2):
        drawn = drawn_box(pictures.nth(i))
        assert inside(drawn, outer), (drawn, outer)
        # The plot's title (its top tenth) is not under the gallery's label.
        title = {**drawn, "height": drawn["height"] / 10}
        for j in range(labels.count()):
            label = box(labels.nth(j))
            overlap_x = min(title["x"] + title["width"], label["x"] + label["width"]) - max(title["x"], label["x"])
            overlap_y = min(title["y"] + title["height"], label["y"] + label["height"]) - max(title["y"], label["y"])
            assert overlap_x <= 0 or overlap_y <= 0, "the label covers a plot's title"


@pytest.fixture(scope="module")
def ffhq_app_url(ffhq_weights, tmp_path_factory):
    """A second app whose DELTAEDIT_WEIGHTS_DIR holds FFHQ weights in the official formats (random
    values, no photo encoder): offline, with an empty cache."""
    env = toy_weights_env()
    if env is None or "DELTAEDIT_WEIGHTS_DIR" in env:
        pytest.skip("needs the packaged toy weights (DELTAEDIT_WEIGHTS_DIR is taken by the FFHQ folder)")
    cache = tmp_path_factory.mktemp("ffhq-app-cache")
    server = AppServer(
        {
            "DELTAEDIT_WEIGHTS_DIR": str(ffhq_weights),
            "HF_HUB_OFFLINE": "1",
            "DELTAEDIT_OFFLINE": "1",
            "DELTAEDIT_CACHE": str(cache / "deltaedit"),
            "HF_HUB_CACHE": str(cache / "hf"),
        }
    )
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def test_ffhq_with_official_format_weights_offers_sample_examples_and_runs_one(browser, ffhq_app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(ffhq_app_url, wait_until="domcontentloaded")
        page.wait_for_selector("#input-image", timeout=30_000)
        # Toy examples say that a click switches the domain; FFHQ's need no photo files.
        assert "switches the domain to Toy faces" in page.locator("#examples-gan").inner_text()
        rows = page.locator("#examples-ffhq-gan tbody tr")
        rows.first.wait_for(timeout=10_000)
        assert rows.count() == len(service.SAMPLE_EXAMPLES["ffhq"]["gan"])
        assert "switches the domain to FFHQ faces" in page.locator("#examples-ffhq-gan").inner_text()
        seed, _, target = service.SAMPLE_EXAMPLES["ffhq"]["gan"][0]
        # Gradio fills the cells after the row appears: wait for the text rather than read it once.
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(rows.first).to_contain_text(str(seed), timeout=10_000)
        expect(rows.first).to_contain_text(target, timeout=10_000)
        page.get_by_role("tab", name="Compare").click()
        compare_rows = page.locator("#examples-ffhq-compare tbody tr")
        compare_rows.first.wait_for(timeout=10_000)
        assert compare_rows.count() == len(service.SAMPLE_EXAMPLES["ffhq"]["compare"])
        page.get_by_role("tab", name="DeltaEdit-G").click()
        upload(page)  # a photo in the box: the example edits its sample, not this photo
        rows.first.click()
        page.wait_for_function("() => !document.querySelector('#input-image img')")
        page.wait_for_function(
            "() => document.querySelector('#domain-choice input').value === 'FFHQ faces'"
        )
        status = page.locator("#domain-status")
        status.get_by_text("models loaded").wait_for(timeout=FFHQ_EDIT_TIMEOUT_MS)
        info = page.locator("#edit-info-gan")
        info.get_by_text(f"random sample, seed {seed}").wait_for(timeout=FFHQ_EDIT_TIMEOUT_MS)
        assert "DeltaEdit-G" in info.inner_text()
        assert page.locator("#target-text textarea").input_value() == target
        layers = page.locator("#before-after-gan img[data-testid=imageslider-image]")
        layers.nth(1).wait_for(state="visible", timeout=60_000)
        assert layers.nth(1).evaluate("img => img.complete && img.naturalWidth") == 1024
        # G works here and D has no weights: the D tab says exactly that, inside its box.
        page.get_by_role("tab", name="DeltaEdit-D").click()
        notice = page.locator("#d-notice")
        notice.get_by_text("DeltaEdit-G still works").wait_for(timeout=30_000)
        assert no_horizontal_overflow(notice) == [] and no_horizontal_overflow(status) == []
        assert "--weights-dir" not in notice.inner_text()
        assert visible_toasts(page).count() == 0
    finally:
        page.close()


# ---------------------------------------------------------------- issue 28: live strength, by example, sweep


@pytest.mark.parametrize(("backbone", "tab"), [("gan", "DeltaEdit-G"), ("diffusion", "DeltaEdit-D")])
def test_letting_go_of_the_strength_slider_redraws_the_edit_without_text_or_mapper(page, backbone, tab):
    upload(page)
    page.get_by_role("tab", name=tab).click()
    edit(page, backbone, "face with eyeglasses")
    after = page.locator(f"#before-after-{backbone} img[data-testid=imageslider-image]").nth(1)
    first = fetch_image(page, after.get_attribute("src"))
    # Drag: the range input moves to 2.0 and is let go (Gradio's release event).
    slider = page.locator("#strength input[type=range]")
    slider.fill("2")
    slider.dispatch_event("pointerup")
    slider.dispatch_event("mouseup")
    info = page.locator(f"#edit-info-{backbone}")
    info.get_by_text("redrawn at strength 2").wait_for(timeout=EDIT_TIMEOUT_MS)
    # The server counted the mapper's runs during the redraw: none (and no text or encoder work;
    # DeltaEdit-D: no inversion either, tests/test_diffusion_redraw.py counts it).
    assert "mapper runs: 0" in info.inner_text()
    redrawn = fetch_image(page, after.get_attribute("src"))
    assert changed_fraction(first, redrawn) > 0.01, "the redraw left the picture unchanged"


def test_by_example_tab_edits_with_a_clicked_pair(page):
    page.get_by_role("tab", name="By example").click()
    rows = page.locator("#examples-by-example tbody tr")
    rows.first.wait_for(timeout=10_000)
    rows.first.click()
    info = page.locator("#edit-info-example")
    info.get_by_text("edit(s) in").wait_for(timeout=EDIT_TIMEOUT_MS)
    layers = page.locator("#before-after-example img[data-testid=imageslider-image]")
    layers.nth(1).wait_for(state="visible", timeout=30_000)
    before = fetch_image(page, layers.nth(0).get_attribute("src"))
    after = fetch_image(page, layers.nth(1).get_attribute("src"))
    assert changed_fraction(before, after) > 0.02, "the example pair left the picture unchanged"
    assert "by example" in page.locator("#gallery-example").inner_text()


def test_sweep_tab_shows_a_strip_and_offers_the_animation(page):
    page.locator("#target-text textarea").fill("face with eyeglasses")
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#sweep-run").click()
    page.locator("#sweep-info").get_by_text("strengths from 0").wait_for(timeout=EDIT_TIMEOUT_MS)
    frames = page.locator("#sweep-strip img")
    frames.nth(6).wait_for(state="visible", timeout=30_000)
    assert frames.count() == 7
    # The whole strip is on screen: no frame cut off at the right.
    grid = page.locator("#sweep-strip .grid-container")
    assert grid.evaluate("g => g.scrollWidth <= g.clientWidth + 1")
    assert page.locator("#sweep-strip .caption-label").nth(3).inner_text() == "0.85"
    first = fetch_image(page, frames.nth(0).get_attribute("src"))
    last = fetch_image(page, frames.nth(6).get_attribute("src"))
    assert changed_fraction(first, last) > 0.02
    assert ".gif" in page.locator("#sweep-animation").inner_text()
