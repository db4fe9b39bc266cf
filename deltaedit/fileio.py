"""Atomic writes: a file or folder either appears whole or not at all.

Everything the library writes for a user (weights, codes, checkpoints, reports, PNGs) goes through
these helpers, so an interrupted run (Ctrl-C, a full disk, a killed worker) never leaves a
half-written file that a later load or `--resume` would trip over.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same folder, same suffix); write the file there.

    On a clean exit it replaces `path` in one step (os.replace, atomic on one filesystem); on any
    error it is deleted and `path` keeps its old content, if it had any. The suffix is kept so
    that writers that pick a format from it (np.save, PIL, matplotlib) behave as for `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """Write `data` as JSON (trailing newline) to `path` atomically."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; fill it. On a clean exit it takes the place
    of `path` (an older `path` is moved aside first and deleted after); on error it is deleted.

    A crash between the two renames leaves the old folder as `.<name>-old-*` beside `path`,
    never a mix of old and new files inside `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-new-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
