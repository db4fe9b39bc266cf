"""The README is the front door: short, with the two commands, and every link it makes resolves."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 250


def _text() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_short():
    lines = _text().splitlines()
    assert len(lines) < MAX_LINES, f"README.md has {len(lines)} lines; keep it under {MAX_LINES}"


def test_readme_gives_the_two_commands_and_they_exist():
    text = _text()
    for command in ("./scripts/run_app.sh", "./scripts/test.sh"):
        assert command in text, f"README.md does not show {command}"
        assert (REPO / command).is_file()


def test_readme_shows_the_app_and_covers_the_front_door_topics():
    text = _text()
    assert "](docs/app.png)" in text and (REPO / "docs" / "app.png").is_file()
    for heading in (
        "## Command line",
        "## Python API",
        "## gradio_client API",
        "## Weights",
        "## Limitations",
    ):
        assert heading in text
    for endpoint in ("/edit_gan", "/edit_diffusion", "/compare", "/sample"):
        assert f"`{endpoint}`" in text


def _local_links(path: Path) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8"))
    return [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link)]


def test_every_local_link_in_the_readme_and_the_docs_exists():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for link in _local_links(page):
            if link and not (page.parent / link).exists():
                missing.append(f"{page.relative_to(REPO)} -> {link}")
    assert not missing, "broken links: " + ", ".join(missing)
    assert any(link.startswith("docs/") for link in _local_links(README))
