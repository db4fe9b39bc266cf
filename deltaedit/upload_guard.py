"""Refuse API requests that name a server file instead of uploading one (docs/security.md).

A Gradio file input must only ever receive files that the server stored through its own upload
route. Gradio 6.31 checks this for payloads marked `{"meta": {"_type": "gradio.FileData"}}`, but a
bare `{"path": "/some/server/file.png"}` skips that check, and `gr.Image` then opens the path
itself: any image on the server can be read back through an edit. `ServerPathGuard` is an ASGI
middleware that looks at every JSON request body before Gradio does and answers 400 when any
`"path"` in it is not a regular file inside the upload folder.

The check is lexical first (absolute, normalised, under the upload folder, no `..`, no scheme), so a
caller-named file outside the upload folder is never opened, copied or even stat-ed; only a path
that is already inside our own upload folder is `lstat`-ed, to refuse a symlink, FIFO or device
node placed there. Pure Python and ASGI: no gradio import, so it is tested without a server.
"""

from __future__ import annotations

import json
import os
import stat

REFUSED_MESSAGE = "upload the image; server paths are not accepted"
MAX_JSON_BYTES = 8 * 2**20  # a request body is a few prompts and numbers; files come by upload


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
    """Every `"path"` value in a decoded JSON payload that is not an uploaded file."""
    refused: list[str] = []
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item and not is_uploaded_file(item["path"], upload_dir):
                refused.append(str(item["path"]))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return refused


class ServerPathGuard:
    """ASGI middleware: a JSON POST naming a file outside the upload folder gets 400, at once."""

    def __init__(self, app, upload_dir: str | os.PathLike, max_json_bytes: int = MAX_JSON_BYTES):
        self.app = app
        self.upload_dir = os.path.abspath(os.fspath(upload_dir))  # as Gradio spells its paths
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or _is_multipart(scope):
            return await self.app(scope, receive, send)  # uploads themselves go to Gradio's route
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if len(body) > self.max_json_bytes:
                return await _reply(send, 413, "the request is too large; upload files instead")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        try:
            payload = json.loads(body) if body else None
        except (UnicodeDecodeError, ValueError):
            payload = None  # not JSON: the route itself refuses it
        if refused_paths(payload, self.upload_dir):
            return await _reply(send, 400, REFUSED_MESSAGE)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


def _is_multipart(scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
