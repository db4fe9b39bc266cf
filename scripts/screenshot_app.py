"""Regenerate docs/app.png from a real run: the app's Compare tab after both backbones edit a toy face.

    python scripts/screenshot_app.py                       # starts `python app.py` on a free port
    python scripts/screenshot_app.py --url http://127.0.0.1:7860/   # or uses a running app
    python scripts/screenshot_app.py --image assets/examples/toy_brown_hair.png --target "face with bangs"

Needs Playwright (`pip install playwright`, in requirements-dev.txt) and a Chromium; Debian's
`/usr/bin/chromium` is used by default (`--chromium PATH` or $DELTAEDIT_CHROMIUM to change it), so
no `playwright install` is needed. Prints the Compare summary so the times and each backbone's
settings can be checked against the picture. Look at the picture before committing it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
        "GRADIO_EXAMPLES_CACHE": str(workdir / "examples"),
    }
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited:\n{(workdir / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"app.py did not answer within 240 s:\n{(workdir / 'server.log').read_text()[-3000:]}")


def screenshot(url: str, image: Path, target: str, out: Path, chromium: str, width: int, height: int) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#input-image", timeout=60_000)
        page.locator("#input-image input[type=file]").set_input_files(str(image))
        page.locator("#input-image img").first.wait_for(state="visible", timeout=60_000)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#target-text textarea").fill(target)
        page.locator("#compare-run").click()
        page.locator("#compare-info table").wait_for(timeout=300_000)
        page.locator("#compare-diffusion img").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_timeout(1500)  # labels relabelled, toasts settled
        for close in page.locator(".toast-close").all():  # a notice toast would hide the header
            close.click()
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        summary = page.locator("#compare-info").inner_text()
        browser.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running app (default: start `python app.py` for the run)")
    parser.add_argument("--image", type=Path, default=REPO / "assets" / "examples" / "toy_black_hair.png")
    parser.add_argument("--target", default="face with eyeglasses")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "app.png")
    parser.add_argument("--chromium", default=os.environ.get("DELTAEDIT_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="deltaedit-screenshot-"))
    process = None
    try:
        url = args.url
        if url is None:
            process, url = _start_app(workdir)
        summary = screenshot(url, args.image, args.target, args.out, args.chromium, args.width, args.height)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
