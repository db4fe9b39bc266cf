"""The page in a real browser: Debian's chromium driven by Playwright (no `playwright install`).

Uploads a toy face, types a target, clicks the DeltaEdit-G button and waits for the before/after
slider; saves a screenshot to test-artifacts/app.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_server import REPO, app_url  # noqa: F401 - the session's server fixture

CHROMIUM = os.environ.get("DELTAEDIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
EXAMPLE = REPO / "assets" / "examples" / "toy_brown_hair.png"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(app_url):  # noqa: F811 - the fixture imported above
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM}: install it with `apt-get install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium refuses root without it
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url, wait_until="domcontentloaded")
        yield page
        browser.close()


def test_upload_type_edit_and_see_the_result(page):
    page.wait_for_selector("#input-image", timeout=30_000)
    page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLE))
    # The upload has finished when the input shows the picture.
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#target-text textarea").fill("face with smile")
    page.locator("#edit-gan").click()

    info = page.locator("#edit-info-gan")
    info.get_by_text("DeltaEdit-G").wait_for(timeout=60_000)
    assert "edit(s) in" in info.inner_text()
    result = page.locator("#before-after-gan img").first
    result.wait_for(state="visible", timeout=30_000)
    # The browser decoded a real picture (naturalWidth is 0 for a broken or missing image).
    assert result.evaluate("img => img.complete && img.naturalWidth") > 0
    assert page.locator(".toast-body.error").count() == 0

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def test_domain_without_weights_says_so_in_the_page(page):
    status = page.locator("#domain-status")
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="FFHQ faces").click()
    status.get_by_text("could not be loaded").wait_for(timeout=60_000)
    assert "stylegan2-ffhq-config-f" in status.inner_text()  # names the missing file
    page.locator("#domain-choice input").click()
    page.get_by_role("option", name="Toy faces (built-in)").click()
    status.get_by_text("models loaded").wait_for(timeout=60_000)
