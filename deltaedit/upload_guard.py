"""Which file values a request may carry: files uploaded to this server, nothing else (docs/security.md).

A Gradio file input must only ever receive files that the server stored through its own upload
route. Gradio 6.31 checks this for payloads marked `{"meta": {"_type": "gradio.FileData"}}`, but a
bare `{"path": "/some/server/file.png"}` skips that check, and `gr.Image` then opens the path
itself: any image on the server can be read back through an edit. A `"url"` with no uploaded path
makes Gradio fetch or decode it (a `data:` URL of a 13000 x 13000 PNG is decoded before any check
of ours). `refused_paths` names every such value in a request body; `request_guard.RequestGuard`
answers 400 before Gradio sees the request.

The check is lexical first (absolute, normalised, under the upload folder, no `..`, no scheme), so a
caller-named file outside the upload folder is never opened, copied or even stat-ed; only a path
that is already inside our own upload folder is `lstat`-ed, to refuse a symlink, FIFO or device
node placed there. Pure Python: no gradio import, so it is tested without a server.
"""

from __future__ import annotations

import os
import stat

REFUSED_MESSAGE = "upload the image; server paths and URLs are not accepted"


def is_uploaded_file(path, upload_dir: str) -> bool:
    """True when `path` names a regular file inside `upload_dir` (an absolute folder)."""
    if not isinstance(path, str) or not path or "\x00" in path or "://" in path:
        return False
    # Lexical checks first: nothing outside the upload folder is ever touched on disk.
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        return False  # relative, '..', '//', './' or a trailing separator
    if not path.startswith(upload_dir.rstrip(os.sep) + os.sep):
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False  # a symlink, FIFO, socket or device node planted in the folder
    # No symlinked folder on the way out of the upload folder either.
    return os.path.realpath(path).startswith(os.path.realpath(upload_dir) + os.sep)


def refused_paths(payload, upload_dir: str) -> list[str]:
    """Every file value in a decoded JSON payload that is not an uploaded file: a `"path"` outside
    the upload folder, or a `"url"` (data:, http:, file:) standing without an uploaded path."""
    refused: list[str] = []
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                if not is_uploaded_file(item["path"], upload_dir):
                    refused.append(str(item["path"]))
            elif isinstance(item.get("url"), str) and item["url"]:
                refused.append(item["url"][:80])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return refused
