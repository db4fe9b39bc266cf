"""The gate in front of the public app: every HTTP request passes here before Gradio sees it.

One anonymous visitor must not be able to stall, fill or bypass a public Space (docs/security.md,
issue 25). `RequestGuard` is an ASGI middleware that enforces, per request and before any of
Gradio's own parsing, copying or decoding:

- **one door**: the direct `/run/NAME` and `/api/NAME` routes (which skip the queue) are closed to
  every queued event; every call of one joins the bounded queue (the page's few unqueued events,
  such as loading an example's values, still use `/run/predict`);
- **no fetching**: `/file=http(s)://...` (Gradio would fetch the URL for the caller) is refused;
- **bounded bodies**: a JSON body over `Limits.max_json_bytes` is refused from its Content-Length,
  unread; nesting deeper than `Limits.max_depth` gets 400 (the walk is iterative, so it never
  recurses); an upload request over `Limits.max_upload_bytes` is refused unread, and one with more
  than `Limits.max_files_per_upload` files is refused before Gradio writes any of them;
- **uploads only**: every `"path"` must be a file Gradio stored through its upload route, and a
  `"url"` without such a path is refused (`upload_guard`);
- **whole calls**: a call with the wrong number of values is refused with the endpoint's parameter
  names (`Endpoints.expected_values`);
- **a fair queue**: one client (its address) holds at most `Limits.jobs_per_client` queued jobs.

The guard knows Gradio only through `Endpoints`, a duck-typed view of the app that `app.py` builds
from its Blocks: no gradio import here, so the rules are tested without a server.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from typing import Protocol

from .upload_guard import REFUSED_MESSAGE, refused_paths

KB = 1024
MB = 1024 * KB


@dataclass(frozen=True)
class Limits:
    """What one request may carry. A request is a few prompts and numbers; images come by upload."""

    # 16 target lines of 300 characters, each escaped as \uXXXX, fit with room to spare.
    max_json_bytes: int = 64 * KB
    # One upload request: a file at the upload size limit plus the multipart framing.
    max_upload_bytes: int = 20 * MB + 64 * KB
    # An edit takes one photo; a few more leave room for clipboard pastes and retries.
    max_files_per_upload: int = 4
    max_depth: int = 32
    jobs_per_client: int = 3
    # Said with a refused JSON body: what the app's requests are meant to carry.
    json_hint: str = "send images by upload and text as short prompts"


class Endpoints(Protocol):
    """What the guard needs to know about the app's events (see `app.py: GradioEndpoints`)."""

    def expected_values(self, route: str, name: str, payload) -> tuple[str, list[str], set[int]] | None:
        """(endpoint, parameter names, accepted value counts) for a call, or None when unknown."""

    def is_job(self, route: str, name: str, payload) -> bool:
        """Whether this call starts work that counts against the caller's queued jobs."""

    def skips_queue(self, route: str, name: str, payload) -> bool:
        """Whether a direct /run or /api call would run a queued event outside the queue (the page
        itself calls its few unqueued events, e.g. loading an example's values, that way)."""

    def queued_jobs(self, client: str, client_of) -> int:
        """How many counted jobs of `client` are waiting or running (`client_of(scope) -> str`)."""


# Gradio's API routes, below its `/gradio_api` prefix.
_ROUTE = re.compile(r"/gradio_api/(?P<route>call/v2|call|run|api)/(?P<name>[^/]+)/?$")
_JOIN = re.compile(r"/gradio_api/queue/join/?$")
_UPLOAD = re.compile(r"/gradio_api/upload/?$")
_FETCH = re.compile(r"/gradio_api/file=(?:https?|ftp|file|data):", re.IGNORECASE)

CLOSED_ROUTE = (
    "direct calls to /run and /api are closed on this app; every call goes through the queue:"
    " use gradio_client, or POST /gradio_api/call/NAME"
)
NO_FETCH = "this app does not fetch URLs for callers; upload the file instead"


class Refusal(Exception):
    """A request the guard answers itself: HTTP `status` and a message naming the field or limit."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def client_address(scope, trust_proxy: bool = False) -> str:
    """Who sent the request: the peer address, or behind one trusted proxy (a hosted Space) the
    address that proxy appended last to X-Forwarded-For (earlier entries are the caller's own)."""
    if trust_proxy:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"x-forwarded-for":
                last = value.decode("latin-1").split(",")[-1].strip()
                if last:
                    return last
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def nesting_depth(payload, limit: int) -> int:
    """Depth of a decoded JSON value, counted iteratively; stops early once past `limit`."""
    deepest, stack = 0, [(payload, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def count_multipart_parts(body: bytes, content_type: bytes) -> int:
    """Number of parts in a multipart body (each part opens with a CRLF-led `--boundary`)."""
    match = re.search(rb'boundary="?([^";]+)"?', content_type)
    if not match:
        raise Refusal(400, "the upload has no multipart boundary")
    delimiter = b"--" + match.group(1)
    # The first delimiter may start the body; every later one follows a CRLF. The closing
    # delimiter (`--boundary--`) opens no part.
    opened = body.count(b"\r\n" + delimiter) + (1 if body.startswith(delimiter) else 0)
    closed = 1 if (b"\r\n" + delimiter + b"--") in body or body.startswith(delimiter + b"--") else 0
    return opened - closed


class RequestGuard:
    """ASGI middleware enforcing `Limits` before Gradio (see the module docstring)."""

    def __init__(
        self,
        app,
        upload_dir: str | os.PathLike,
        limits: Limits | None = None,
        endpoints: Endpoints | None = None,
        trust_proxy: bool = False,
    ):
        self.app = app
        self.upload_dir = os.path.abspath(os.fspath(upload_dir))  # as Gradio spells its paths
        self.limits = limits or Limits()
        self.endpoints = endpoints
        self.trust_proxy = trust_proxy
        self._joining: dict[str, int] = {}  # calls of each client between this check and the queue

    def client_of(self, scope) -> str:
        return client_address(scope, self.trust_proxy)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        try:
            if _FETCH.search(path):
                raise Refusal(403, NO_FETCH)
            if scope["method"] != "POST":
                return await self.app(scope, receive, send)
            if _is_multipart(scope):
                messages = await self._read_upload(scope, receive)
                return await self.app(scope, _replay(messages, receive), send)
            messages, body = await self._read(scope, receive, self.limits.max_json_bytes, "JSON body", self.limits.json_hint)
            return await self._forward_json(scope, path, messages, body, receive, send)
        except Refusal as refusal:
            return await _reply(send, refusal.status, refusal.message)

    async def _forward_json(self, scope, path, messages, body, receive, send):
        payload = _decode_json(body)
        if payload is not None and nesting_depth(payload, self.limits.max_depth) > self.limits.max_depth:
            raise Refusal(400, f"the request is nested too deeply (at most {self.limits.max_depth} levels)")
        if refused_paths(payload, self.upload_dir):
            raise Refusal(400, REFUSED_MESSAGE)
        route, name = _call_of(path, payload)
        if route in ("run", "api") and (self.endpoints is None or self.endpoints.skips_queue(route, name, payload)):
            raise Refusal(403, CLOSED_ROUTE)
        if route is None or self.endpoints is None:
            return await self.app(scope, _replay(messages, receive), send)
        self._check_values(route, name, payload)
        if not self.endpoints.is_job(route, name, payload):
            return await self.app(scope, _replay(messages, receive), send)
        client = self.client_of(scope)
        # Calls still on their way to the queue count too: a burst arrives before any is queued.
        waiting = self._joining.get(client, 0) + self.endpoints.queued_jobs(client, self.client_of)
        if waiting >= self.limits.jobs_per_client:
            raise Refusal(
                429,
                f"you already have {waiting} edits waiting (at most {self.limits.jobs_per_client} per"
                " visitor); wait for them to finish, then try again",
            )
        self._joining[client] = self._joining.get(client, 0) + 1
        try:
            return await self.app(scope, _replay(messages, receive), send)
        finally:
            self._joining[client] -= 1
            if not self._joining[client]:
                del self._joining[client]

    def _check_values(self, route: str, name: str, payload) -> None:
        expected = self.endpoints.expected_values(route, name, payload)
        if expected is None or not isinstance(payload, dict):
            return
        endpoint, names, counts = expected
        data = payload.get("data")
        if route == "call/v2":
            unknown = sorted(set(payload) - set(names) - {"oauth_token"})
            if unknown:
                raise Refusal(400, f"{endpoint} has no parameter {', '.join(unknown)}; its parameters: {', '.join(names)}")
            return
        if not isinstance(data, list) or len(data) not in counts:
            got = f"{len(data)}" if isinstance(data, list) else "no list of values"
            raise Refusal(
                400,
                f"{endpoint} takes {max(counts)} values in this order: {', '.join(names)}; got {got}",
            )

    async def _read(self, scope, receive, limit: int, what: str, hint: str) -> tuple[list, bytes]:
        """The whole body (at most `limit` bytes): refused unread when Content-Length says more."""
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            raise Refusal(413, _too_large(what, limit, hint))
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if len(body) > limit:
                raise Refusal(413, _too_large(what, limit, hint))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages, body

    async def _read_upload(self, scope, receive) -> list:
        """An upload request, read whole (bounded) so its files are counted before Gradio writes one."""
        if _content_length(scope) is None:
            raise Refusal(411, "send the upload with a Content-Length header")
        hint = "upload one photo at a time"
        messages, body = await self._read(scope, receive, self.limits.max_upload_bytes, "upload request", hint)
        if _UPLOAD.search(scope.get("path", "")):
            parts = count_multipart_parts(body, _header(scope, b"content-type") or b"")
            if parts > self.limits.max_files_per_upload:
                raise Refusal(
                    400,
                    f"at most {self.limits.max_files_per_upload} files per upload request, got {parts}",
                )
        return messages


def _call_of(path: str, payload) -> tuple[str | None, str]:
    """('call' | 'call/v2' | 'run' | 'api' | 'join', endpoint name or fn index) or (None, '')."""
    match = _ROUTE.search(path)
    if match:
        return match.group("route"), match.group("name")
    if _JOIN.search(path):
        fn_index = payload.get("fn_index") if isinstance(payload, dict) else None
        return "join", str(fn_index)
    return None, ""


def _decode_json(body: bytes):
    if not body:
        return None
    try:
        return json.loads(body)
    except RecursionError:
        raise Refusal(400, "the request is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        return None  # not JSON: the route itself refuses it


def parse_size(text: str) -> int:
    """Bytes in a size written as Gradio's `max_file_size` takes it: "20mb", "512kb", "1000"."""
    match = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 20mb)")
    return int(match.group(1)) * {"b": 1, None: 1, "kb": KB, "mb": MB, "gb": 1024 * MB}[match.group(2)]


def _too_large(what: str, limit: int, hint: str) -> str:
    size = f"{limit // MB} MB" if limit >= MB else f"{limit // KB} KB" if limit >= KB else f"{limit} bytes"
    return f"the {what} is too large: the maximum is {size}; {hint}"


def _header(scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            return value
    return None


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _is_multipart(scope) -> bool:
    return (_header(scope, b"content-type") or b"").lower().startswith(b"multipart/")


def _replay(messages: list, receive):
    async def replay():
        return messages.pop(0) if messages else await receive()

    return replay


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BlocksEndpoints:
    """`Endpoints` read from a running Gradio Blocks, duck-typed (`blocks.fns`, `blocks._queue`), so
    the library still never imports gradio. `jobs` names the event functions whose calls count
    against a visitor's queued jobs (the edits; not the page's small UI events)."""

    def __init__(self, blocks, jobs: set[str] | frozenset[str]):
        self.blocks = blocks
        self.jobs = frozenset(jobs)

    def _fn(self, route: str, name: str):
        fns = self.blocks.fns
        if route == "join":
            try:
                return fns.get(int(name))
            except ValueError:
                return None
        return next((fn for fn in fns.values() if fn.api_name == name), None)

    def expected_values(self, route, name, payload):
        fn = self._fn(route, name)
        if fn is None or fn.fn is None:
            return None
        params = list(inspect.signature(fn.fn).parameters)[: len(fn.inputs)]
        public = [p for p, block in zip(params, fn.inputs) if not getattr(block, "skip_api", False)]
        if route == "join":  # the page sends a value for every input, its own State included
            return f"/{fn.api_name or fn.name}", params, {len(fn.inputs)}
        return f"/{name}", public, {len(public), len(fn.inputs)}

    def is_job(self, route, name, payload) -> bool:
        fn = self._fn(route, name)
        return fn is not None and fn.name in self.jobs

    def skips_queue(self, route, name, payload) -> bool:
        # Gradio's /run/NAME takes the event from `fn_index` when the body has one, else from NAME.
        fn_index = payload.get("fn_index") if isinstance(payload, dict) else None
        fn = self._fn("join", str(fn_index)) if fn_index is not None else self._fn(route, name)
        return fn is None or bool(fn.queue)

    def queued_jobs(self, client: str, client_of) -> int:
        queue = getattr(self.blocks, "_queue", None)
        events = list(getattr(queue, "event_ids_to_events", {}).values())
        return sum(
            1
            for event in events
            if event.fn.name in self.jobs
            and getattr(event, "request", None) is not None
            and client_of(event.request.scope) == client
        )
