"""The upload guard on its own (no server): which paths count as uploads, and the ASGI middleware."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from deltaedit import upload_guard
from deltaedit.upload_guard import REFUSED_MESSAGE, ServerPathGuard, is_uploaded_file, refused_paths


@pytest.fixture
def uploads(tmp_path):
    folder = tmp_path / "gradio"
    (folder / "abc123").mkdir(parents=True)
    (folder / "abc123" / "face.png").write_bytes(b"png")
    return folder


def test_only_regular_files_inside_the_upload_folder_count(uploads, tmp_path):
    root = str(uploads)
    assert is_uploaded_file(f"{root}/abc123/face.png", root)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (uploads / "abc123" / "link.png").symlink_to(outside)
    (uploads / "linked").symlink_to(tmp_path)  # a symlinked folder inside the upload folder
    os.mkfifo(uploads / "abc123" / "fifo")
    refused = [
        str(outside),
        "/etc/passwd",
        "/dev/zero",
        "/proc/self/environ",
        f"{root}/abc123/link.png",
        f"{root}/linked/secret.png",
        f"{root}/abc123/fifo",
        f"{root}/abc123/missing.png",
        f"{root}/abc123",  # a folder
        f"{root}/../secret.png",
        f"{root}/abc123/../abc123/face.png",
        f"{root}//abc123/face.png",
        f"{root}abc/face.png",  # a sibling folder whose name starts the same
        "abc123/face.png",
        f"file://{root}/abc123/face.png",
        "http://127.0.0.1/face.png",
        f"{root}/abc123/face.png\x00.jpg",
        "",
        None,
        42,
        ["/etc/passwd"],
    ]
    for path in refused:
        assert not is_uploaded_file(path, root), path


def test_paths_outside_the_upload_folder_are_never_touched(uploads, monkeypatch):
    touched = []
    for name in ("lstat", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda p, *a, _real=real, **k: touched.append(p) or _real(p, *a, **k))
    assert not is_uploaded_file("/dev/zero", str(uploads))
    assert not is_uploaded_file("/etc/passwd", str(uploads))
    assert touched == []


def test_every_path_in_a_payload_is_checked_with_or_without_meta(uploads):
    good = f"{uploads}/abc123/face.png"
    payload = {
        "data": [
            "toy",
            {"path": good, "meta": {"_type": "gradio.FileData"}},
            {"path": "/etc/passwd"},  # no meta: Gradio itself does not check these
            [{"nested": {"path": "/dev/zero", "meta": {"_type": "gradio.FileData"}}}],
            {"url": "http://example.invalid/x.png"},  # no path: nothing to open
        ],
        "session_hash": "x",
    }
    assert sorted(refused_paths(payload, str(uploads))) == ["/dev/zero", "/etc/passwd"]
    assert refused_paths({"data": [{"path": good}]}, str(uploads)) == []


class RecordingApp:
    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(guard, body: bytes, content_type=b"application/json", method="POST", chunk=7):
    """Run the middleware on one request (body sent in chunks); returns (status, response body)."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/gradio_api/call/edit_gan",
             "headers": [(b"content-type", content_type)]}
    asyncio.run(guard(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_middleware_refuses_before_the_app_and_replays_good_bodies(uploads):
    app = RecordingApp()
    guard = ServerPathGuard(app, uploads)
    bad = json.dumps({"data": ["toy", {"path": "/etc/passwd"}]}).encode()
    status, body = call(guard, bad)
    assert status == 400 and json.loads(body)["error"] == REFUSED_MESSAGE
    assert app.bodies == []  # Gradio never saw it
    good = json.dumps({"data": ["toy", {"path": f"{uploads}/abc123/face.png"}], "x": "y" * 100}).encode()
    assert call(guard, good) == (200, b"ok")
    assert app.bodies == [good]  # the whole body, byte for byte
    # Uploads (multipart), GETs and bodies that are not JSON pass through to Gradio's own routes.
    assert call(guard, b'{"path": "/etc/passwd"}', content_type=b"multipart/form-data; boundary=x")[0] == 200
    assert call(guard, b'{"path": "/etc/passwd"}', method="GET")[0] == 200
    assert call(guard, b"not json {")[0] == 200


def test_the_middleware_caps_the_json_body(uploads, monkeypatch):
    app = RecordingApp()
    guard = ServerPathGuard(app, uploads, max_json_bytes=100)
    status, body = call(guard, json.dumps({"data": ["x" * 500]}).encode(), chunk=64)
    assert status == 413 and app.bodies == []
    assert upload_guard.MAX_JSON_BYTES >= 2**20  # a long prompt still fits
