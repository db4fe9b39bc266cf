"""The files the page offers for download (edited PNGs, sweep GIFs): one temp folder per process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

from .fileio import atomic_write


def _remove_if_owner(folder: Path, pid: int) -> None:
    # Forked workers (ZeroGPU runs GPU calls in one) inherit atexit hooks: only the creator cleans.
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


class OutputStore:
    """PNG files offered for download, in one temp folder removed at exit; old files are pruned."""

    def __init__(self, max_age_s: float = 3600.0):
        self.max_age_s = max_age_s
        self._dir: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="deltaedit-app-"))
                atexit.register(_remove_if_owner, self._dir, os.getpid())
            return self._dir

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for old in [*self.path.glob("*.png"), *self.path.glob("*.gif")]:
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:  # pruned by a concurrent request
                pass

    def save_animation(self, frames: list[Image.Image], stem: str) -> Path:
        """A looping GIF of `frames` for download (named like `save`'s PNGs)."""
        from .imageio import save_animation

        self.prune()
        safe = "".join(c if c.isalnum() else "_" for c in stem)[:40].strip("_") or "sweep"
        return save_animation(frames, self.path / f"{safe}-{uuid.uuid4().hex[:8]}.gif")

    def save(self, image: Image.Image, stem: str) -> Path:
        self.prune()
        safe = "".join(c if c.isalnum() else "_" for c in stem)[:40].strip("_") or "edit"
        path = self.path / f"{safe}-{uuid.uuid4().hex[:8]}.png"
        with atomic_write(path) as tmp:
            image.save(tmp, format="PNG")
        return path


OUTPUTS = OutputStore()
