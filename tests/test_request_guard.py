"""The request guard on its own (no server): every per-request rule of deltaedit/request_guard.py.

Each test runs the ASGI middleware on hand-made requests and a recording app, so it sees both what
the caller is told and whether Gradio (the app) ever received the request.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from deltaedit.request_guard import (
    CLOSED_ROUTE,
    NO_FETCH,
    BlocksEndpoints,
    Limits,
    RequestGuard,
    client_address,
    count_multipart_parts,
    nesting_depth,
    parse_size,
)
from deltaedit.upload_guard import REFUSED_MESSAGE


@pytest.fixture
def uploads(tmp_path):
    folder = tmp_path / "gradio"
    (folder / "abc123").mkdir(parents=True)
    (folder / "abc123" / "face.png").write_bytes(b"png")
    return folder


class RecordingApp:
    """Stands for Gradio: records each body it reads; `gate` (when set) holds every call open."""

    def __init__(self, gate: asyncio.Event | None = None):
        self.bodies = []
        self.gate = gate

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        if self.gate is not None:
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def request(path="/gradio_api/call/edit_gan", body=b"", content_type=b"application/json", method="POST",
            chunk=7, length=True, client="10.0.0.1", headers=()):  # fmt: skip
    """(scope, receive, reads): one request whose body comes in `chunk`-byte messages."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    reads = []

    async def receive():
        reads.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    all_headers = [(b"content-type", content_type), *headers]
    if length:
        all_headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": all_headers, "client": (client, 5000)}
    return scope, receive, reads


async def _run(guard, scope, receive):
    sent = []

    async def send(message):
        sent.append(message)

    await guard(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def call(guard, **kwargs):
    scope, receive, reads = request(**kwargs)
    status, body = asyncio.run(_run(guard, scope, receive))
    message = json.loads(body)["error"] if status != 200 else body.decode()
    return status, message, reads


def data_body(*values) -> bytes:
    return json.dumps({"data": list(values)}).encode()


# ---------------------------------------------------------------- uploads only, one door, no fetching


def test_server_paths_and_urls_are_refused_before_the_app_and_good_bodies_replayed(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads)
    for image in ({"path": "/etc/passwd"}, {"url": "data:image/png;base64,iVBORw0KGgo="}):
        status, message, _ = call(guard, body=data_body("toy", image))
        assert (status, message) == (400, REFUSED_MESSAGE)
    assert app.bodies == []  # Gradio never saw them
    good = json.dumps({"data": ["toy", {"path": f"{uploads}/abc123/face.png"}], "x": "y" * 100}).encode()
    assert call(guard, body=good)[:2] == (200, "ok")
    assert app.bodies == [good]  # the whole body, byte for byte
    # GETs and bodies that are not JSON pass through to Gradio's own routes.
    assert call(guard, body=b'{"path": "/etc/passwd"}', method="GET")[0] == 200
    assert call(guard, body=b"not json {")[0] == 200


@pytest.mark.parametrize("path", ["/gradio_api/run/edit_gan", "/gradio_api/api/edit_gan/", "/gradio_api/run/predict"])
def test_the_direct_routes_that_skip_the_queue_are_closed(uploads, path):
    app = RecordingApp()
    status, message, _ = call(RequestGuard(app, uploads), path=path, body=data_body("toy"))
    assert (status, message) == (403, CLOSED_ROUTE) and app.bodies == []
    # The queue's own routes stay open.
    for open_path in ("/gradio_api/call/edit_gan", "/gradio_api/queue/join"):
        assert call(RequestGuard(app, uploads), path=open_path, body=data_body("toy"))[0] == 200


def test_unqueued_page_events_may_still_use_the_direct_route(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads, endpoints=FakeEndpoints())
    assert call(guard, path="/gradio_api/run/predict", body=data_body(1))[0] == 200
    assert call(guard, path="/gradio_api/run/edit_gan", body=data_body("toy", None, "x"))[0] == 403


@pytest.mark.parametrize("url", ["http://example.com/a.png", "https://127.0.0.1/x", "HTTPS://a.b/c", "data:,x"])
def test_the_file_route_never_fetches_a_url(uploads, url):
    app = RecordingApp()
    status, message, _ = call(RequestGuard(app, uploads), path=f"/gradio_api/file={url}", method="GET")
    assert (status, message) == (403, NO_FETCH) and app.bodies == []
    assert call(RequestGuard(app, uploads), path="/gradio_api/file=/tmp/gradio/abc/x.png", method="GET")[0] == 200


# ---------------------------------------------------------------- bounded bodies


def test_a_large_json_body_is_refused_from_its_length_without_being_read(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads, Limits(max_json_bytes=1000))
    status, message, reads = call(guard, body=data_body("x" * 5000))
    assert status == 413 and "too large: the maximum is 1000 bytes" in message
    assert reads == [] and app.bodies == []  # not one byte was read
    # Without a Content-Length (chunked), reading stops at the limit.
    status, _, reads = call(guard, body=data_body("x" * 5000), length=False, chunk=100)
    assert status == 413 and len(reads) <= 11 and app.bodies == []
    assert call(guard, body=data_body("x" * 900))[0] == 200


def test_the_default_json_limit_fits_every_legitimate_request_and_little_more():
    limits = Limits()
    # 16 target lines of 300 characters, every one escaped as \uXXXX, plus the other values.
    worst = json.dumps({"data": ["toy", None, "é" * 300, "\n".join(["é" * 300] * 16), 1.0, 0.1, 50, 0, True]})
    assert len(worst.encode()) < limits.max_json_bytes <= 128 * 1024


def test_deep_nesting_gets_400_naming_the_limit(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads, Limits(max_depth=32, max_json_bytes=200_000))
    status, message, _ = call(guard, body=b'{"data": ' + b"[" * 40 + b"]" * 40 + b"}")
    assert status == 400 and "nested too deeply" in message and "32" in message
    # Deeper than Python's own JSON parser goes: still a 400, never a server error.
    status, message, _ = call(guard, body=b"[" * 50_000 + b"]" * 50_000)
    assert status == 400 and "nested too deeply" in message
    assert app.bodies == []
    assert call(guard, body=b'{"data": ' + b"[" * 30 + b"]" * 30 + b"}")[0] == 200


def test_nesting_depth_is_counted_without_recursion():
    assert nesting_depth("x", 10) == 0
    assert nesting_depth({"a": [1, {"b": []}]}, 10) == 4
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep, 32) == 33  # stops as soon as it is past the limit


def _multipart(n_files: int, size: int = 10, boundary: bytes = b"XyZ") -> bytes:
    parts = [
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="f%d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" % i + b"a" * size + b"\r\n"
        for i in range(n_files)
    ]
    return b"".join(parts) + b"--" + boundary + b"--\r\n"


def test_multipart_parts_are_counted():
    for n in (0, 1, 5):
        assert count_multipart_parts(_multipart(n), b"multipart/form-data; boundary=XyZ") == n
    assert count_multipart_parts(_multipart(3), b'multipart/form-data; boundary="XyZ"') == 3


def test_upload_requests_are_bounded_in_bytes_and_files_before_gradio_writes_any(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads, Limits(max_upload_bytes=5000, max_files_per_upload=4))
    multipart = b"multipart/form-data; boundary=XyZ"
    upload = "/gradio_api/upload"
    status, message, reads = call(guard, path=upload, body=_multipart(2, size=3000), content_type=multipart)
    assert status == 413 and "upload request is too large" in message and reads == []
    status, message, _ = call(guard, path=upload, body=_multipart(5), content_type=multipart)
    assert (status, message) == (400, "at most 4 files per upload request, got 5")
    status, message, reads = call(guard, path=upload, body=_multipart(1), content_type=multipart, length=False)
    assert status == 411 and "Content-Length" in message and reads == []
    assert app.bodies == []
    body = _multipart(4)
    assert call(guard, path=upload, body=body, content_type=multipart)[0] == 200
    assert app.bodies == [body]


# ---------------------------------------------------------------- whole calls, fair queue


class FakeEndpoints:
    """Two endpoints: /edit_gan (a job, 3 values) and /relabel (not a job, 1 value)."""

    def __init__(self, queued: dict[str, int] | None = None):
        self.queued = queued or {}

    def expected_values(self, route, name, payload):
        if name in ("edit_gan", "0"):
            return "/edit_gan", ["domain", "image", "target"], {3}
        return ("/relabel", ["summary"], {1}) if name == "relabel" else None

    def is_job(self, route, name, payload):
        return name in ("edit_gan", "0")

    def queued_jobs(self, client, client_of):
        return self.queued.get(client, 0)

    def skips_queue(self, route, name, payload):
        return name != "predict"  # /run/predict stands for the page's unqueued events here


def test_a_call_with_the_wrong_number_of_values_names_the_parameters(uploads):
    app = RecordingApp()
    guard = RequestGuard(app, uploads, endpoints=FakeEndpoints())
    status, message, _ = call(guard, body=data_body("toy", None))
    assert status == 400 and message == "/edit_gan takes 3 values in this order: domain, image, target; got 2"
    status, message, _ = call(guard, body=b'{"data": "toy"}')
    assert status == 400 and "got no list of values" in message
    status, message, _ = call(guard, path="/gradio_api/call/v2/edit_gan", body=b'{"domain": "toy", "imgae": 1}')
    assert status == 400 and "no parameter imgae" in message and "domain, image, target" in message
    assert app.bodies == []
    assert call(guard, body=data_body("toy", None, "face with smile"))[0] == 200
    join = json.dumps({"data": ["toy", None, "x"], "fn_index": 0, "session_hash": "s"}).encode()
    assert call(guard, path="/gradio_api/queue/join", body=join)[0] == 200


def test_one_visitor_holds_at_most_a_few_jobs_and_others_are_still_served(uploads):
    async def scenario():
        gate = asyncio.Event()
        app = RecordingApp(gate)
        guard = RequestGuard(app, uploads, Limits(jobs_per_client=3), endpoints=FakeEndpoints())
        body = data_body("toy", None, "face with smile")
        # A burst: every call is still on its way to the queue when the next arrives.
        burst = [asyncio.create_task(_run(guard, *request(body=body)[:2])) for _ in range(5)]
        await asyncio.sleep(0.05)
        other = asyncio.create_task(_run(guard, *request(body=body, client="10.0.0.2")[:2]))
        light = asyncio.create_task(_run(guard, *request(path="/gradio_api/call/relabel", body=data_body("x"))[:2]))
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*burst), await other, await light, guard

    burst, other, light, guard = asyncio.run(scenario())
    statuses = sorted(status for status, _ in burst)
    assert statuses == [200, 200, 200, 429, 429]
    refusal = next(json.loads(body)["error"] for status, body in burst if status == 429)
    assert refusal.startswith("you already have 3 edits waiting (at most 3 per visitor)")
    assert other[0] == 200 and light[0] == 200  # another visitor, and the page's small events
    assert guard._joining == {}  # every reservation was released

    # Jobs already in Gradio's queue count as well.
    guard = RequestGuard(RecordingApp(), uploads, Limits(jobs_per_client=3), endpoints=FakeEndpoints({"10.0.0.1": 3}))
    assert call(guard, body=data_body("toy", None, "x"))[0] == 429
    assert call(guard, body=data_body("toy", None, "x"), client="10.0.0.9")[0] == 200


def test_behind_a_proxy_the_visitor_is_the_address_the_proxy_appended():
    headers = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4")]  # the first entry is the caller's own claim
    scope = {"client": ("10.1.1.1", 1), "headers": headers}
    assert client_address(scope, trust_proxy=True) == "1.2.3.4"
    assert client_address(scope, trust_proxy=False) == "10.1.1.1"
    assert client_address({"client": ("10.1.1.1", 1), "headers": []}, trust_proxy=True) == "10.1.1.1"


def test_blocks_endpoints_reads_the_apps_events_and_queue():
    def edit_gan(domain, image, source, target, strength, threshold, seed, align=True, progress=None):
        return None

    def compare(domain, image, source, target, strength, threshold, steps, seed, align, sliders_moved, progress=None):
        return None

    def block(skip=False):
        return SimpleNamespace(skip_api=skip)

    gan = SimpleNamespace(fn=edit_gan, name="edit_gan", api_name="edit_gan", inputs=[block() for _ in range(8)])
    cmp_inputs = [block() for _ in range(9)] + [block(skip=True)]  # the page's State
    cmp = SimpleNamespace(fn=compare, name="compare", api_name="compare", inputs=cmp_inputs)
    tab = SimpleNamespace(fn=lambda: None, name="<lambda>", api_name=None, inputs=[], queue=False)
    gan.queue = cmp.queue = True

    def event(fn, host):
        return SimpleNamespace(fn=fn, request=SimpleNamespace(scope={"client": (host, 1), "headers": []}))

    events = {"a": event(gan, "1.1.1.1"), "b": event(cmp, "1.1.1.1"), "c": event(tab, "1.1.1.1"), "d": event(gan, "2.2.2.2")}
    blocks = SimpleNamespace(fns={0: gan, 1: cmp, 2: tab}, _queue=SimpleNamespace(event_ids_to_events=events))
    endpoints = BlocksEndpoints(blocks, {"edit_gan", "compare"})

    endpoint, names, counts = endpoints.expected_values("call", "compare", None)
    assert endpoint == "/compare" and names[-1] == "align" and len(names) == 9 and counts == {9, 10}
    assert endpoints.expected_values("join", "1", None) == ("/compare", list(names) + ["sliders_moved"], {10})
    assert endpoints.expected_values("call", "nothing", None) is None
    assert endpoints.is_job("call", "edit_gan", None) and endpoints.is_job("join", "1", None)
    assert not endpoints.is_job("join", "2", None) and not endpoints.is_job("join", "x", None)
    assert endpoints.queued_jobs("1.1.1.1", client_address) == 2  # the tab event does not count
    assert endpoints.queued_jobs("2.2.2.2", client_address) == 1
    # The direct route is closed to queued events, by name or by the fn_index in the body.
    assert endpoints.skips_queue("run", "edit_gan", {}) and endpoints.skips_queue("run", "predict", {"fn_index": 1})
    assert not endpoints.skips_queue("run", "predict", {"fn_index": 2})
    assert endpoints.skips_queue("run", "predict", {"fn_index": 99}) and endpoints.skips_queue("api", "nothing", {})


def test_sizes_are_read_as_gradio_writes_them():
    assert parse_size("20mb") == 20 * 2**20 and parse_size("512KB") == 512 * 1024 and parse_size("7") == 7
    with pytest.raises(ValueError, match="20mb"):
        parse_size("twenty")
