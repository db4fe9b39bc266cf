"""Atomic writes: a file or folder either appears whole or not at all.

Everything the library writes for a user (weights, codes, checkpoints, reports, PNGs) goes through
these helpers, so an interrupted run (Ctrl-C, a full disk, a killed worker) never leaves a
half-written file that a later load or `--resume` would trip over.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
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
    tmp = _sibling(path, path.stem, path.suffix)
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create their file 0600: give it a plain write's mode
            os.chmod(tmp, _plain_file_mode())
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
    tmp = _sibling(path, f"{path.name}-new", "")
    tmp.mkdir()
    try:
        yield tmp
        for written in tmp.rglob("*"):  # as in atomic_write: save_pretrained's safetensors come out 0600
            if written.is_file() and not written.is_symlink():
                os.chmod(written, _plain_file_mode())
        old = None
        if path.exists():
            old = _sibling(path, f"{path.name}-old", "")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sibling(path: Path, stem: str, suffix: str) -> Path:
    """An unused hidden name in `path`'s folder (same filesystem, so os.replace is atomic).

    Not tempfile.mkstemp/mkdtemp: those create 0600/0700 entries, and the renamed result must
    get the permissions a plain write would give it (weights folders are shared, Spaces serve
    the PNGs).
    """
    return path.with_name(f".{stem}-{uuid.uuid4().hex[:12]}{suffix}")


def _plain_file_mode() -> int:
    """The mode open(path, "w") gives a new file: 0o666 less the process umask (read from /proc
    where it can be, so that no other thread ever runs under a changed umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
