"""One visitor against the public Space (issue 25's rows): raw HTTP from a chosen loopback address, and
the run that sends every row while a second visitor edits."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

# ---------------------------------------------------------------- raw calls from a chosen visitor
from .hostile import CaseResult, _png_claiming_size
from .server import check_local_url, disk_mb, files_under, percentile, rss_mb


@dataclass
class RawAnswer:
    """What the server said to one raw call: the HTTP status of the POST, then (when it queued the
    job) the final event ("complete" or "error") and its text."""

    status: int
    event: str
    text: str
    seconds: float


def _connection(url: str, source: str, timeout: float):
    import http.client

    parts = urllib.parse.urlsplit(check_local_url(url))
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=(source, 0))


def raw_request(url: str, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.1",
                timeout: float = 30.0, content_type: str = "application/json") -> tuple[int, str]:  # fmt: skip
    """One HTTP request to the app from loopback address `source` (each address is one visitor)."""
    conn = _connection(url, source, timeout)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(4000).decode(errors="replace")
    except (OSError, TimeoutError) as exc:
        return 0, f"no answer: {exc}"
    finally:
        conn.close()


def raw_call(url: str, api_name: str, data, source: str = "127.0.0.1", timeout: float = 120.0,
             body: bytes | None = None) -> RawAnswer:  # fmt: skip
    """POST /gradio_api/call/NAME with raw JSON (or a raw `body`) as visitor `source`, then read the
    job's events to the end. gradio_client cannot choose its source address or send broken JSON."""

    t0 = time.perf_counter()
    payload = body if body is not None else json.dumps({"data": data}).encode()
    status, text = raw_request(url, "POST", f"/gradio_api/call/{api_name}", payload, source, timeout)
    if status != 200:
        return RawAnswer(status, "refused", text, time.perf_counter() - t0)
    event_id = json.loads(text)["event_id"]
    conn = _connection(url, source, timeout)
    try:
        conn.request("GET", f"/gradio_api/call/{api_name}/{event_id}")
        stream = conn.getresponse().read().decode(errors="replace")
    except (OSError, TimeoutError) as exc:
        return RawAnswer(status, "lost", f"no answer: {exc}", time.perf_counter() - t0)
    finally:
        conn.close()
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, re.M)
    event, text = events[-1] if events else ("lost", stream[:200])
    return RawAnswer(status, event, text, time.perf_counter() - t0)


# ---------------------------------------------------------------- abuse: one visitor against the public Space

ATTACKER = "127.0.0.1"
GAN_CALL = ["toy", None, "face", "face with a smile", 0.85, 0.1, 0, True]
D_CALL = ["toy", None, "face", "face with a smile", 0.85, 0.1, 50, 0, True]
ABUSE_ROWS = {
    1: "direct /run and /api routes",
    2: "one 40,000-letter target; a 1 MB one",
    3: "10 targets of 2.8 MB of unique words",
    4: "a data: URL image; a 13000 x 13000 PNG upload",
    5: "40 DeltaEdit-D calls at once from one visitor",
    6: "an upload of 5 x 19 MB; one of 1000 small files",
    7: "3 bodies of 7.6 MB at once",
    8: "JSON nested 100,000 deep",
    9: "an EPS file as the image",
    10: "steps = NaN; a value missing",
    11: "/file=http(s) URL (an open proxy?)",
}


def _unique_words(n_chars: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = rng.choice(letters, size=(n_chars // 9 + 1, 8))
    return " ".join("".join(w) for w in words)[:n_chars]


def _png_of_size(width: int, height: int) -> bytes:
    """A real, fully decodable black PNG of width x height, made row by row (little memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    chunks = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
    idat = b"".join(chunks)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _multipart_body(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "deltaedit-abuse-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _upload(url: str, files: list[tuple[str, bytes]], source: str = ATTACKER) -> tuple[int, str]:
    body, content_type = _multipart_body(files)
    return raw_request(url, "POST", "/gradio_api/upload", body, source, 60.0, content_type)


def _uploaded_path(url: str, name: str, data: bytes) -> str:

    status, text = _upload(url, [(name, data)], source="127.0.0.3")
    if status != 200:
        raise RuntimeError(f"the upload of {name} failed: HTTP {status} {text[:120]}")
    return json.loads(text)[0]


def _refused(answer: RawAnswer, statuses: tuple[int, ...], pattern: str) -> str:
    """'' when `answer` was refused with one of `statuses` (or an error event) saying /pattern/."""
    said = answer.status in statuses or (answer.status == 200 and answer.event == "error")
    if not said:
        return f"not refused: HTTP {answer.status} {answer.event} {answer.text[:120]}"
    if not re.search(pattern, answer.text, re.I):
        return f"refused without naming the limit (/{pattern}/): {answer.text[:160]}"
    return ""


@dataclass
class _AbuseRun:
    """One abuse row's visit: what it uploaded on purpose and what went wrong."""

    url: str
    problems: list[str] = field(default_factory=list)
    uploaded: set[str] = field(default_factory=set)  # the files uploaded on purpose (and their folders)

    def upload(self, name: str, data: bytes) -> dict:
        path = _uploaded_path(self.url, name, data)
        self.uploaded.update({path, str(Path(path).parent)})
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def expect(self, answer: RawAnswer, statuses, pattern: str, within_s: float) -> None:
        """`answer` must be a refusal with one of `statuses` saying /pattern/, within `within_s`."""
        problem = _refused(answer, statuses, pattern)
        if not problem and answer.seconds > within_s:
            problem = f"refused only after {answer.seconds:.1f} s (limit {within_s:g} s)"
        if problem:
            self.problems.append(problem)


def abuse_case(url: str, row: int, upload_dir: Path | None = None) -> CaseResult:
    """Row `row` of issue 25's table, sent as one anonymous visitor; passes when it is refused at
    once (or bounded) with a message naming the field or limit, and nothing is left on disk."""
    if row not in ROW_SENDERS:
        raise InputError(f"no abuse row {row}; rows: {', '.join(map(str, ABUSE_ROWS))}")
    t0 = time.perf_counter()
    before = files_under(upload_dir)
    run = _AbuseRun(url)
    ROW_SENDERS[row](run)
    if new := files_under(upload_dir) - before - run.uploaded:
        run.problems.append(f"files appeared in the upload folder: {sorted(new)[:3]}")
    seconds = time.perf_counter() - t0
    detail = "; ".join(run.problems) or "refused or bounded"
    return CaseResult(f"row {row}: {ABUSE_ROWS[row]}", "abuse", not run.problems, "error", detail, seconds)


def _send_row_1(run: _AbuseRun) -> None:
    """Row 1: direct /run and /api routes."""
    for route in ("run", "api"):
        status, text = raw_request(
            run.url, "POST", f"/gradio_api/{route}/edit_gan", json.dumps({"data": GAN_CALL}).encode()
        )
        run.expect(RawAnswer(status, "refused", text, 0.0), (403,), r"closed.*queue", 2.0)


def _send_row_2(run: _AbuseRun) -> None:
    """Row 2: one 40,000-letter target; a 1 MB one."""
    run.expect(raw_call(run.url, "edit_gan", _with(GAN_CALL, 3, "a" * 40_000)), (), r"300", 10.0)
    run.expect(raw_call(run.url, "edit_gan", _with(GAN_CALL, 3, "a" * 2**20)), (413,), r"300 characters", 2.0)


def _send_row_3(run: _AbuseRun) -> None:
    """Row 3: 10 targets of 2.8 MB of unique words."""
    lines = "\n".join(_unique_words(2_800_000, seed) for seed in range(10))
    run.expect(raw_call(run.url, "edit_gan", _with(GAN_CALL, 3, lines)), (413,), r"maximum is \d+ KB", 5.0)


def _send_row_4(run: _AbuseRun) -> None:
    """Row 4: a data: URL image; a 13000 x 13000 PNG upload."""
    small = (
        "data:image/png;base64," + __import__("base64").b64encode(_png_claiming_size(13000, 13000)).decode()
    )
    run.expect(
        raw_call(run.url, "edit_gan", _with(GAN_CALL, 1, {"url": small})),
        (400,),
        r"URLs are not accepted",
        2.0,
    )
    image = run.upload("huge.png", _png_of_size(13000, 13000))
    run.expect(raw_call(run.url, "edit_gan", _with(GAN_CALL, 1, image)), (), r"too large.*50,000,000", 10.0)


def _send_row_5(run: _AbuseRun) -> None:
    """Row 5: 40 DeltaEdit-D calls at once from one visitor."""
    heavy = _with(D_CALL, 3, "\n".join(f"face with smile {i}" for i in range(16)))
    heavy[6] = 200
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(lambda _: raw_call(run.url, "edit_diffusion", heavy, timeout=120), range(40)))
    accepted = [a for a in answers if a.status == 200]
    limited = [a for a in answers if a.status == 429]
    if len(accepted) > 3 or len(limited) < 37:
        run.problems.append(f"one visitor had {len(accepted)} calls queued ({len(limited)} told to wait)")
    elif not re.search(r"already have \d+ edits waiting", limited[0].text):
        run.problems.append(f"the per-visitor refusal does not say why: {limited[0].text[:120]}")
    for answer in accepted:  # each queued one is refused for its cost, cheaply
        run.expect(answer, (), r"at most 800", 60.0)


def _send_row_6(run: _AbuseRun) -> None:
    """Row 6: an upload of 5 x 19 MB; one of 1000 small files."""
    status, text = _upload(run.url, [(f"big{i}.bin", b"\0" * (19 * 2**20)) for i in range(5)])
    run.expect(RawAnswer(status, "refused", text, 0.0), (413,), r"maximum is \d+ MB", 5.0)
    status, text = _upload(run.url, [(f"small{i}.png", b"x") for i in range(1000)])
    run.expect(RawAnswer(status, "refused", text, 0.0), (400,), r"at most \d+ files", 5.0)


def _send_row_7(run: _AbuseRun) -> None:
    """Row 7: 3 bodies of 7.6 MB at once."""
    body = json.dumps({"data": _with(GAN_CALL, 3, "x" * (7_600_000))}).encode()
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda _: raw_call(run.url, "edit_gan", None, body=body), range(3)))
    for answer in answers:
        run.expect(answer, (413,), r"maximum is \d+ KB", 5.0)


def _send_row_8(run: _AbuseRun) -> None:
    """Row 8: JSON nested 100,000 deep."""
    for body in (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"[" * 30_000):
        run.expect(
            raw_call(run.url, "edit_gan", None, body=body),
            (400, 413),
            r"nested too deeply|maximum is \d+ KB",
            2.0,
        )
    deep = b'{"data": ' + b"[" * 40 + b"]" * 40 + b"}"
    run.expect(
        raw_call(run.url, "edit_gan", None, body=deep), (400,), r"nested too deeply \(at most \d+", 2.0
    )


def _send_row_9(run: _AbuseRun) -> None:
    """Row 9: an EPS file as the image."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
    for name in ("face.eps", "face.png"):
        image = run.upload(name, eps)
        answer = raw_call(run.url, "edit_gan", _with(GAN_CALL, 1, image))
        run.expect(answer, (), r"not a readable image \(allowed: PNG, JPEG", 10.0)
        if "ghostscript" in answer.text.lower():
            run.problems.append("Pillow handed the file to Ghostscript")


def _send_row_10(run: _AbuseRun) -> None:
    """Row 10: steps = NaN; a value missing."""
    run.expect(
        raw_call(run.url, "edit_diffusion", _with(D_CALL, 6, float("nan"))),
        (),
        r"DDIM steps must be a finite number",
        10.0,
    )
    run.expect(
        raw_call(run.url, "edit_gan", GAN_CALL[:-1]), (400,), r"takes 8 values.*domain, image, source", 2.0
    )


def _send_row_11(run: _AbuseRun) -> None:
    """Row 11: /file=http(s) URL (an open proxy?)."""
    for target in ("http://example.com/face.png", "https://127.0.0.1:9/x"):
        status, text = raw_request(run.url, "GET", f"/gradio_api/file={target}")
        run.expect(RawAnswer(status, "refused", text, 0.0), (403,), r"does not fetch URLs", 2.0)


ROW_SENDERS = {
    1: _send_row_1,
    2: _send_row_2,
    3: _send_row_3,
    4: _send_row_4,
    5: _send_row_5,
    6: _send_row_6,
    7: _send_row_7,
    8: _send_row_8,
    9: _send_row_9,
    10: _send_row_10,
    11: _send_row_11,
}


def _with(values: list, index: int, value) -> list:
    changed = list(values)
    changed[index] = value
    return changed


@dataclass
class AbuseReport:
    """The abuse rows run while a legitimate visitor keeps editing toy faces."""

    cases: list[CaseResult]
    legit_latencies_s: list[float]
    legit_lost: int
    legit_errors: list[str]
    rss_start_mb: float | None
    rss_peak_mb: float | None
    disk_start_mb: float
    disk_peak_mb: float

    @property
    def legit_p50_s(self) -> float | None:
        return percentile(self.legit_latencies_s, 50)

    @property
    def memory_growth_mb(self) -> float | None:
        if self.rss_start_mb is None or self.rss_peak_mb is None:
            return None
        return self.rss_peak_mb - self.rss_start_mb

    @property
    def passed(self) -> bool:
        p50 = self.legit_p50_s
        growth = self.memory_growth_mb
        return (
            all(c.passed for c in self.cases)
            and p50 is not None
            and p50 <= MAX_LEGIT_P50_S
            and self.legit_lost == 0
            and not self.legit_errors
            and (growth is None or growth <= MAX_ABUSE_MEMORY_MB)
            and self.disk_peak_mb - self.disk_start_mb <= MAX_ABUSE_DISK_MB
        )


MAX_LEGIT_P50_S = 2.0
MAX_ABUSE_MEMORY_MB = 1536.0
MAX_ABUSE_DISK_MB = 200.0


def run_abuse(url: str, pid: int | None = None, upload_dir: Path | None = None,
              rows: list[int] | None = None, legit_source: str = "127.0.0.2") -> AbuseReport:  # fmt: skip
    """Every abuse row from one visitor while another (`legit_source`) edits toy faces one after the
    other; server memory (RSS) and the upload folder's disk use are sampled throughout."""
    url = check_local_url(url)
    rows = rows or list(ABUSE_ROWS)
    raw_call(url, "edit_gan", GAN_CALL, source=legit_source)  # warm-up: models and caches loaded
    rss_start, disk_start = rss_mb(pid) if pid else None, disk_mb(upload_dir)
    peaks = {"rss": rss_start, "disk": disk_start}
    done = threading.Event()
    latencies: list[float] = []
    lost, errors = [0], []

    def sample() -> None:
        while not done.is_set():
            if pid and (now := rss_mb(pid)) is not None:
                peaks["rss"] = max(peaks["rss"] or 0.0, now)
            peaks["disk"] = max(peaks["disk"], disk_mb(upload_dir))
            done.wait(0.2)

    def legitimate() -> None:
        seed = 1
        while not done.is_set():
            data = _with(GAN_CALL, 6, seed)
            answer = raw_call(url, "edit_gan", data, source=legit_source, timeout=60)
            if answer.event == "complete":
                latencies.append(answer.seconds)
            elif answer.event == "lost" or answer.status == 0:
                lost[0] += 1
            else:
                errors.append(f"HTTP {answer.status} {answer.event}: {answer.text[:120]}")
            seed += 1

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=legitimate, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        # The legitimate visitor's results land in the same folder, so here it is watched as a whole
        # (peak disk use) rather than file by file as `abuse_case` does on a quiet server.
        cases = [abuse_case(url, row) for row in rows]
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=90)
    return AbuseReport(cases, latencies, lost[0], errors, rss_start, peaks["rss"], disk_start, peaks["disk"])
