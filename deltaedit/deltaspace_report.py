"""The toy domain's DeltaSpace alignment report as the page shows it: read from the shipped copy,
or computed once per process."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .outputs import OUTPUTS

log = logging.getLogger(__name__)
# A report computed offline (`python -m deltaedit analyze --domain toy --out assets/deltaspace`).
CACHED_REPORT_DIR = Path(__file__).resolve().parents[1] / "assets" / "deltaspace"

_REPORT_LOCK = threading.Lock()
_REPORT: dict | None = None


def deltaspace_report(device: str, count: int = 64, tsne_iter: int = 300) -> dict:
    """The toy domain's DeltaSpace alignment report: {'table', 'report', 'pictures'}.

    Read from `assets/deltaspace/report.json` when it exists (`python -m deltaedit analyze --domain
    toy --out assets/deltaspace` writes it), else computed once per process from `count` toy
    renders and captions through the toy CLIP: each caption costs 79 template encodings, so
    `count` stays small (about 10-60 s on a 2-core CPU).
    """
    global _REPORT
    with _REPORT_LOCK:
        if _REPORT is None:
            _REPORT = _load_cached_report() or _compute_report(device, count, tsne_iter)
        return _REPORT


def _bundle(report: dict, folder: Path) -> dict:
    from .analysis import format_table

    pictures = [folder / f"{kind}_tsne.png" for kind in ("raw", "delta")]
    return {"table": format_table(report), "report": report, "pictures": [p for p in pictures if p.is_file()]}


def _load_cached_report() -> dict | None:
    import json

    path = CACHED_REPORT_DIR / "report.json"
    if not path.is_file():
        return None
    try:
        return _bundle(json.loads(path.read_text()), CACHED_REPORT_DIR)
    except (ValueError, KeyError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def _compute_report(device: str, count: int, tsne_iter: int) -> dict:
    from . import analysis

    image, text = analysis.toy_features(count, render_seed=0, device=device)
    report = analysis.alignment_report(image, text, seed=0)
    delta = analysis.pair_deltas(image, text, seed=0)
    out = OUTPUTS.path / "deltaspace"
    analysis.write_report(report, out, raw=(image, text), delta=delta, tsne_iter=tsne_iter)
    return _bundle(report, out)
