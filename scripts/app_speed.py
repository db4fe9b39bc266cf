"""How fast is the app? `python scripts/app_speed.py [--screenshot docs/app.png]`

Starts `python app.py` on a free port and prints the page-ready time (process start until the
page answers) and the round trip of a toy DeltaEdit-G edit through the gradio_client API (first
call, then the median of a few more). With --screenshot it also opens the page in Debian's
chromium, runs an edit there and saves a screenshot.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from app_server import AppServer, toy_weights_env  # noqa: E402

EXAMPLE = REPO / "assets" / "examples" / "toy_black_hair.png"


def edit_round_trips(url: str, repeats: int) -> list[float]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        client.predict(
            domain="toy",
            image=handle_file(EXAMPLE),
            source="face",
            target=["face with smile", "face with eyeglasses", "face with red hair"][i % 3],
            strength=1.0,
            threshold=0.03,
            seed=0,
            api_name="/edit_gan",
        )
        times.append(time.perf_counter() - t0)
    return times


def screenshot(url: str, path: Path, chromium: str) -> None:
    import os

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#input-image input[type=file]").set_input_files(
            str(REPO / "assets/examples/toy_brown_hair.png")
        )
        page.locator("#input-image img").first.wait_for(state="visible")
        page.locator("#target-text textarea").fill(
            "face with smile\nface with blond hair\nface with eyeglasses"
        )
        page.locator("#edit-gan").click()
        page.locator("#edit-info-gan").get_by_text("DeltaEdit-G").wait_for(timeout=120_000)
        page.wait_for_timeout(1000)  # let the images finish loading
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="edits after the first (default 3)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page after an edit")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    env = toy_weights_env()
    if env is None:
        print("toy weights are absent: run `python -m deltaedit toy train` or set DELTAEDIT_WEIGHTS_DIR")
        return 1
    server = AppServer(env)
    try:
        ready = server.wait_ready()
        print(f"page ready after `python app.py`: {ready:.1f} s")
        times = edit_round_trips(server.url, args.repeats)
        print(f"toy DeltaEdit-G edit round trip via gradio_client: first {times[0]:.2f} s, "
              f"then median {statistics.median(times[1:]):.2f} s over {len(times) - 1}")  # fmt: skip
        if args.screenshot:
            screenshot(server.url, args.screenshot, args.chromium)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
