"""Reliability checks of the running app (`app.py`) through its public gradio_client API.

Two checks, both against a server on this machine only:

* hostile input (`hostile_cases`, `run_case`): broken, odd or oversized photos, prompts and
  numbers; and server paths named instead of uploads (`run_server_paths`, raw JSON to every
  public endpoint), which must be refused at once with nothing copied. Each case expects a clear error or a sensible result; after each the server must still
  answer and, when we launched it ourselves (`launch_app`), nothing may be written outside its
  temp folders and a refused request may leave no download file behind.
* load (`run_load`): N concurrent edits; every request must be answered or told that the queue is
  full (the app bounds its queue), none lost. It reports p50/p95 latency and the server's memory
  (RSS from /proc/PID/status) before and after.

`python -m deltaedit reliability` runs both and prints a table. gradio_client (not gradio) is
imported on first use, so the library stays gradio-free.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# What a server we launched may create in its private temp folder: its download folder (service),
# Gradio's upload/result cache and torch's compile cache. Anything else is a stray file.
ALLOWED_TEMP_ENTRIES = ("deltaedit-app-", "gradio", "torchinductor_")
MAX_GROWTH_MB = 300.0
EDIT = dict(domain="toy", source="face", strength=1.0, threshold=0.03, seed=0, align=True)


# ---------------------------------------------------------------- the server


def check_local_url(url: str) -> str:
    """`url` with a trailing slash; refuses anything but this machine (the checks are a small DoS)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
        raise InputError(
            f"the reliability checks only run against this machine (http://127.0.0.1:PORT/), not {url!r}"
        )
    return url if url.endswith("/") else url + "/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` in MB (VmRSS of /proc/PID/status); None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def is_serving(url: str, timeout: float = 10.0) -> bool:
    """The page answers with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class LaunchedApp:
    """`python app.py` on a free localhost port, with an empty working folder and a private TMPDIR.

    The private folders make "no file left behind" checkable: the working folder must stay empty,
    the temp folder may hold only `ALLOWED_TEMP_ENTRIES`, and after a normal stop (SIGTERM) the
    download folder must be gone.
    """

    def __init__(self, extra_env: dict[str, str] | None = None, start_timeout_s: float = 180.0):
        self.root = Path(tempfile.mkdtemp(prefix="deltaedit-reliability-"))
        self.cwd = self.root / "cwd"
        self.tmp = self.root / "tmp"
        self.cwd.mkdir()
        self.tmp.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.root / "server.log"
        env = {
            **os.environ,
            **(extra_env or {}),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "TMPDIR": str(self.tmp),
            "GRADIO_TEMP_DIR": str(self.tmp / "gradio"),
            "GRADIO_EXAMPLES_CACHE": str(self.tmp / "gradio" / "examples"),
            "DELTAEDIT_PRELOAD": "",
        }
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py")],
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        self.startup_s = self._wait_ready(start_timeout_s)
        self.leftovers_after_stop: list[str] | None = None

    def _wait_ready(self, timeout: float) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{tail}")
            if is_serving(self.url, timeout=5):
                return time.perf_counter() - t0
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{tail}")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def output_dir(self) -> Path | None:
        """The service's download folder (`deltaedit-app-*` in the private temp folder)."""
        found = sorted(self.tmp.glob("deltaedit-app-*"))
        return found[0] if found else None

    def output_files(self) -> set[str]:
        folder = self.output_dir()
        return {p.name for p in folder.glob("*.png")} if folder else set()

    def stray_files(self) -> list[str]:
        """Files written where the app should never write: its working folder or elsewhere in TMPDIR."""
        strays = [str(p) for p in self.cwd.rglob("*")]
        strays += [str(p) for p in self.tmp.iterdir() if not p.name.startswith(ALLOWED_TEMP_ENTRIES)]
        return strays

    def stop(self) -> None:
        """SIGTERM (as a container stop), then record what the app left in its temp folder."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        if self.leftovers_after_stop is None and self.tmp.is_dir():
            self.leftovers_after_stop = [p.name for p in self.tmp.glob("deltaedit-app-*")]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LaunchedApp:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def launch_app(weights_dir: str | os.PathLike | None = None, **kwargs) -> LaunchedApp:
    """Start the app (toy weights from `weights_dir`, else the packaged ones); use as a context manager."""
    env = {"DELTAEDIT_WEIGHTS_DIR": str(weights_dir)} if weights_dir else {}
    return LaunchedApp(env, **kwargs)


def make_client(url: str, download_dir: Path, max_workers: int = 8):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(download_dir), max_workers=max_workers)


# ---------------------------------------------------------------- hostile input


def _png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: a decompression bomb without the memory."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def write_hostile_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Odd, broken and hostile image files, by case name (names carry a `hostile-` marker)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / f"hostile-{name}"
        files[name].write_bytes(data)

    def save(name: str, image: Image.Image, fmt: str, **kwargs) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt, **kwargs)
        put(name, buf.getvalue())
        return buf.getvalue()

    put("zero-bytes.png", b"")
    jpeg = save("ok.jpg", _noise((48, 48)), "JPEG", quality=90)
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    png = save("ok.png", _noise((48, 48), seed=1), "PNG")
    put("truncated.png", png[: len(png) // 2])
    put("text-renamed.png", b"this is a text file, not a picture\n" * 20)
    put("svg.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    put("bomb-400mpx.png", _png_claiming_size(20_000, 20_000))  # over PIL's own hard limit
    put("bomb-64mpx.png", _png_claiming_size(8_000, 8_000))  # under PIL's, over ours (50 Mpx)
    save("1x1.png", Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")
    grey16 = (np.arange(40 * 40, dtype=np.uint32).reshape(40, 40) * 40).astype(np.uint16)
    save("16bit.png", Image.fromarray(grey16), "PNG")
    save("cmyk.jpg", _noise((40, 40), "CMYK", seed=2), "JPEG")
    save("palette.png", _noise((40, 40), seed=3).convert("P"), "PNG")
    frames = [_noise((32, 32), seed=s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue())
    save("rgba.png", _noise((40, 40), "RGBA", seed=4), "PNG")
    save("grey.png", _noise((40, 40), "L", seed=5), "PNG")
    rotated = _noise((48, 24), seed=6)
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    save("exif-rotated.jpg", rotated, "JPEG", exif=exif)
    return files


@dataclass
class Case:
    """One hostile request: `request` is the keyword arguments of `client.predict`."""

    name: str
    group: str  # image, prompt, number
    request: dict
    expect: str  # "ok" (a sensible result) or "error" (a clear message)
    match: str = ""  # regex the error message (or, for "ok", the summary) must contain


def hostile_cases(files: dict[str, Path]) -> list[Case]:
    """The hostile-input cases against /edit_gan (and /edit_diffusion for its own slider)."""
    from gradio_client import handle_file

    def image(name: str, expect: str, match: str = "") -> Case:
        request = dict(EDIT, image=handle_file(files[name]), target="face with a smile", api_name="/edit_gan")
        return Case(f"image {name}", "image", request, expect, match)

    def prompt(name: str, expect: str, match: str = "", **change) -> Case:
        return Case(
            f"prompt {name}", "prompt", dict(EDIT, image=None, api_name="/edit_gan", **change), expect, match
        )

    def number(name: str, match: str, api_name: str = "/edit_gan", **change) -> Case:
        request = dict(EDIT, image=None, target="face with a smile", api_name=api_name, **change)
        if api_name == "/edit_diffusion":
            request.setdefault("steps", 10)
        return Case(f"number {name}", "number", request, "error", match)

    unreadable = r"not a readable image|cannot be decoded|not an image|empty"
    return [
        image("zero-bytes.png", "error", unreadable),
        image("truncated.jpg", "error", r"damaged or truncated|not a readable image"),
        image("truncated.png", "error", r"damaged or truncated|not a readable image"),
        image("text-renamed.png", "error", unreadable),
        image("svg.svg", "error", unreadable),
        image("bomb-400mpx.png", "error", r"too large|not a readable image"),
        image("bomb-64mpx.png", "error", r"too large"),
        image("1x1.png", "ok"),
        image("16bit.png", "ok"),
        image("cmyk.jpg", "ok"),
        image("palette.png", "ok"),
        image("animated.gif", "ok"),
        image("rgba.png", "ok"),
        image("grey.png", "ok"),
        image("exif-rotated.jpg", "ok"),
        prompt("empty", "error", r"target text is empty", target=""),
        prompt("spaces only", "error", r"target text is empty", target="   \n\t  "),
        prompt("10,000 characters", "error", r"limit is 300", target=("face with a big smile " * 500)[:10_000]),
        prompt("10,000-character source", "error", r"source text .*limit is 300", target="face with a smile", source="x" * 10_000),
        prompt("77 tokens in 200 characters", "ok", r"too long", target="face with " + "a " * 90),
        prompt("control characters", "ok", target="face\x00 with\x1b[31m smile\x07\r"),
        prompt("mixed scripts and emoji", "ok", target="face with 笑顔 улыбка ابتسامة 😀👓"),
        prompt("identical source and target", "ok", r"nothing to edit", target="face", source="face"),
        prompt(
            "too many lines",
            "error",
            r"at most \d+ targets",
            target="\n".join(f"face {i}" for i in range(40)),
        ),
        number("strength 1e6", r"maximum", strength=1e6),
        number("strength -1e6", r"minimum", strength=-1e6),
        number("strength not a number", r"must be a number", strength="abc"),
        number("threshold -1", r"minimum", threshold=-1),
        number("seed 1e12", r"maximum", seed=1e12),
        number("seed not a number", r"must be a number", seed="twelve"),
        number("steps 100000", r"maximum", api_name="/edit_diffusion", steps=100_000),
        number("steps one over the slider", r"maximum", api_name="/edit_diffusion", steps=201),
        number("domain as a path", r"not in the list of choices", domain="../../etc/passwd"),
    ]


# ---------------------------------------------------------------- server paths instead of uploads

# Each public endpoint's inputs in order; the image goes where `None` stands.
SERVER_PATH_ENDPOINTS = {
    "/edit_gan": ["toy", None, "face", "face with a smile", 1.0, 0.03, 0, True],
    "/edit_diffusion": ["toy", None, "face", "face with a smile", 1.0, 0.03, 5, 0, True],
    "/compare": ["toy", None, "face", "face with a smile", 1.0, 0.03, 5, 0, True],
}
BIG_FILE_BYTES = 150 * 2**20


def server_path_targets(work: Path, upload_dir: Path | None = None) -> dict[str, str]:
    """Paths on this machine that a hostile caller could name instead of uploading a file.

    `work` receives a sparse 150 MB file and a FIFO; with the server's `upload_dir`, a symlink
    planted inside it that points outside (as a local attacker or a bug could leave one).
    """
    import matplotlib

    work.mkdir(parents=True, exist_ok=True)
    big = work / "big-150mb.bin"
    with big.open("wb") as f:
        f.truncate(BIG_FILE_BYTES)  # sparse: no real disk use
    fifo = work / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    # A readable image outside every temp folder and the working directory.
    server_image = Path(matplotlib.get_data_path()) / "images" / "matplotlib.png"
    targets = {
        "/etc/passwd": "/etc/passwd",
        "server image": str(server_image),
        "150 MB file": str(big),
        "/dev/zero": "/dev/zero",
        "/proc/self/environ": "/proc/self/environ",
        "FIFO": str(fifo),
        "file:// URL": "file:///etc/passwd",
        "http URL": "http://127.0.0.1:9/face.png",
        "'..' segments": f"{upload_dir or tempfile.gettempdir()}/../../etc/passwd",
        "relative path": "assets/toy/generator.safetensors",
    }
    if upload_dir is not None:
        planted = upload_dir / "deltaedit-hostile-link"
        planted.mkdir(parents=True, exist_ok=True)
        link = planted / "face.png"
        if not link.is_symlink():
            link.symlink_to(server_image)
        targets["symlink out of the upload folder"] = str(link)
    return targets


def _files_under(folder: Path | None) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder is not None and folder.is_dir() else set()


def run_server_path_case(
    url: str, api_name: str, name: str, path: str, bare: bool, cache_dir: Path | None = None
) -> CaseResult:
    """POST an API call whose image names `path` (as FileData, or `bare`: just {"path": ...}).

    Sent as raw JSON: gradio_client would read a local path itself and upload the file, which is
    the caller's own file, not the server's. Passes when the server answers at once with the
    refusal message and nothing new appears in its cache folder.
    """
    import json

    from .upload_guard import REFUSED_MESSAGE

    image = {"path": path} if bare else {"path": path, "meta": {"_type": "gradio.FileData"}}
    data = [image if value is None else value for value in SERVER_PATH_ENDPOINTS[api_name]]
    request = urllib.request.Request(
        f"{check_local_url(url)}gradio_api/call{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    before = _files_under(cache_dir)
    t0 = time.perf_counter()
    status, text = 0, ""
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read(2000).decode(errors="replace")
    except (urllib.error.URLError, TimeoutError) as exc:
        text = f"no answer: {exc}"
    seconds = time.perf_counter() - t0
    problem = ""
    if status != 400 or REFUSED_MESSAGE not in text:
        problem = f"not refused (HTTP {status}): {text[:160]}"
    elif seconds > 5:
        problem = f"refused only after {seconds:.1f} s"
    elif new := _files_under(cache_dir) - before:
        problem = f"files appeared in the cache: {sorted(new)[:3]}"
    label = f"{name} {'bare' if bare else 'FileData'} -> {api_name}"
    outcome = "error" if status == 400 else ("lost" if not status else "ok")
    return CaseResult(label, "server path", not problem, outcome, problem or REFUSED_MESSAGE, seconds)


def run_server_paths(url: str, work: Path, upload_dir: Path | None = None) -> list[CaseResult]:
    """Every server-path target against every public endpoint, as FileData and as a bare dict."""
    targets = server_path_targets(work, upload_dir)
    return [
        run_server_path_case(url, api_name, name, path, bare, upload_dir)
        for api_name in SERVER_PATH_ENDPOINTS
        for name, path in targets.items()
        for bare in (False, True)
    ]


@dataclass
class CaseResult:
    name: str
    group: str
    passed: bool
    outcome: str  # "ok", "error" or "lost"
    detail: str
    seconds: float


def _looks_sensible(result) -> str:
    """'' when an /edit_gan answer is a usable edit; otherwise what is wrong with it."""
    (before, after), gallery, files, summary = result
    with Image.open(before) as b, Image.open(after) as a:
        if b.size != a.size or min(a.size) < 8:
            return f"before {b.size} / after {a.size} are not a usable pair"
        if not np.isfinite(np.asarray(a, dtype=np.float32)).all():
            return "the edited image has non-finite pixels"
    if not files or not gallery or "DeltaEdit-G" not in summary:
        return "the answer lacks its download file, gallery or summary"
    return ""


def run_case(client, case: Case, app: LaunchedApp | None = None, timeout_s: float = 120.0) -> CaseResult:
    """Send one case; check its outcome, that the server still serves and (launched app) the files."""
    before_outputs = app.output_files() if app else set()
    t0 = time.perf_counter()
    outcome, text, problem = "lost", "", ""
    try:
        result = client.submit(**case.request).result(timeout=timeout_s)
        outcome, text = "ok", str(result[3])
        if case.request.get("api_name") == "/edit_gan":
            problem = _looks_sensible(result)
    except TimeoutError:
        problem = f"no answer within {timeout_s:.0f} s"
    except Exception as exc:  # AppError (gr.Error), ValueError from the client: both say "refused"
        outcome, text = "error", str(exc)
    seconds = time.perf_counter() - t0

    if outcome != "lost" and outcome != case.expect:
        problem = f"expected {case.expect}, got {outcome}: {text[:200]}"
    elif case.match and outcome != "lost" and not re.search(case.match, text):
        problem = f"message does not say /{case.match}/: {text[:200]}"
    elif outcome == "error" and ("Traceback" in text or "upstream Gradio app has raised" in text):
        problem = f"an unexplained server error instead of a clear message: {text[:200]}"
    if not problem and not is_serving(client.src):
        problem = "the server stopped answering"
    if not problem and app is not None:
        strays = app.stray_files()
        new_outputs = app.output_files() - before_outputs
        if strays:
            problem = f"files written outside the app's temp folders: {strays[:3]}"
        elif outcome == "error" and new_outputs:
            problem = f"a refused request left download files: {sorted(new_outputs)[:3]}"
    detail = problem or (text.splitlines()[0][:120] if text else outcome)
    return CaseResult(case.name, case.group, not problem, outcome, detail, seconds)


def run_hostile(url: str, app: LaunchedApp | None = None, timeout_s: float = 120.0) -> list[CaseResult]:
    """Every hostile case against the app at `url`, then one ordinary edit (the server still works)."""
    url = check_local_url(url)
    with tempfile.TemporaryDirectory(prefix="deltaedit-hostile-") as work:
        work = Path(work)
        client = make_client(url, work / "downloads")
        cases = hostile_cases(write_hostile_files(work / "files"))
        cases.append(
            Case(
                "ordinary edit afterwards",
                "health",
                dict(EDIT, image=None, target="face with a smile", api_name="/edit_gan"),
                "ok",
            )
        )
        results = [run_case(client, case, app, timeout_s) for case in cases[:-1]]
        results += run_server_paths(url, work / "server-paths", app.tmp / "gradio" if app else None)
        # The ordinary edit comes last: the server still works after all of it.
        return results + [run_case(client, cases[-1], app, timeout_s)]


# ---------------------------------------------------------------- raw calls from a chosen visitor


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
    import json

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


def disk_mb(folder: Path | None) -> float:
    """Megabytes of the files under `folder` (0 when it does not exist)."""
    if folder is None or not folder.is_dir():
        return 0.0
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return total / 2**20


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
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _upload(url: str, files: list[tuple[str, bytes]], source: str = ATTACKER) -> tuple[int, str]:
    body, content_type = _multipart_body(files)
    return raw_request(url, "POST", "/gradio_api/upload", body, source, 60.0, content_type)


def _uploaded_path(url: str, name: str, data: bytes) -> str:
    import json

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


def abuse_case(url: str, row: int, upload_dir: Path | None = None) -> CaseResult:
    """Row `row` of issue 25's table, sent as one anonymous visitor; passes when it is refused at
    once (or bounded) with a message naming the field or limit, and nothing is left on disk."""
    import json

    t0 = time.perf_counter()
    before = _files_under(upload_dir)
    problems: list[str] = []
    uploaded: set[str] = set()  # the files this case uploads on purpose (and their folders)

    def upload(name: str, data: bytes) -> dict:
        path = _uploaded_path(url, name, data)
        uploaded.update({path, str(Path(path).parent)})
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def expect(answer: RawAnswer, statuses, pattern: str, within_s: float) -> None:
        problem = _refused(answer, statuses, pattern)
        if not problem and answer.seconds > within_s:
            problem = f"refused only after {answer.seconds:.1f} s (limit {within_s:g} s)"
        if problem:
            problems.append(problem)

    if row == 1:
        for route in ("run", "api"):
            status, text = raw_request(url, "POST", f"/gradio_api/{route}/edit_gan", json.dumps({"data": GAN_CALL}).encode())
            expect(RawAnswer(status, "refused", text, 0.0), (403,), r"closed.*queue", 2.0)
    elif row == 2:
        expect(raw_call(url, "edit_gan", _with(GAN_CALL, 3, "a" * 40_000)), (), r"300", 10.0)
        expect(raw_call(url, "edit_gan", _with(GAN_CALL, 3, "a" * 2**20)), (413,), r"300 characters", 2.0)
    elif row == 3:
        lines = "\n".join(_unique_words(2_800_000, seed) for seed in range(10))
        expect(raw_call(url, "edit_gan", _with(GAN_CALL, 3, lines)), (413,), r"maximum is \d+ KB", 5.0)
    elif row == 4:
        small = "data:image/png;base64," + __import__("base64").b64encode(_png_claiming_size(13000, 13000)).decode()
        expect(raw_call(url, "edit_gan", _with(GAN_CALL, 1, {"url": small})), (400,), r"URLs are not accepted", 2.0)
        image = upload("huge.png", _png_of_size(13000, 13000))
        expect(raw_call(url, "edit_gan", _with(GAN_CALL, 1, image)), (), r"too large.*50,000,000", 10.0)
    elif row == 5:
        heavy = _with(D_CALL, 3, "\n".join(f"face with smile {i}" for i in range(16)))
        heavy[6] = 200
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(lambda _: raw_call(url, "edit_diffusion", heavy, timeout=120), range(40)))
        accepted = [a for a in answers if a.status == 200]
        limited = [a for a in answers if a.status == 429]
        if len(accepted) > 3 or len(limited) < 37:
            problems.append(f"one visitor had {len(accepted)} calls queued ({len(limited)} told to wait)")
        elif not re.search(r"already have \d+ edits waiting", limited[0].text):
            problems.append(f"the per-visitor refusal does not say why: {limited[0].text[:120]}")
        for answer in accepted:  # each queued one is refused for its cost, cheaply
            expect(answer, (), r"at most 800", 60.0)
    elif row == 6:
        status, text = _upload(url, [(f"big{i}.bin", b"\0" * (19 * 2**20)) for i in range(5)])
        expect(RawAnswer(status, "refused", text, 0.0), (413,), r"maximum is \d+ MB", 5.0)
        status, text = _upload(url, [(f"small{i}.png", b"x") for i in range(1000)])
        expect(RawAnswer(status, "refused", text, 0.0), (400,), r"at most \d+ files", 5.0)
    elif row == 7:
        body = json.dumps({"data": _with(GAN_CALL, 3, "x" * (7_600_000))}).encode()
        with ThreadPoolExecutor(max_workers=3) as pool:
            answers = list(pool.map(lambda _: raw_call(url, "edit_gan", None, body=body), range(3)))
        for answer in answers:
            expect(answer, (413,), r"maximum is \d+ KB", 5.0)
    elif row == 8:
        for body in (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"[" * 30_000):
            expect(raw_call(url, "edit_gan", None, body=body), (400, 413), r"nested too deeply|maximum is \d+ KB", 2.0)
        deep = b'{"data": ' + b"[" * 40 + b"]" * 40 + b"}"
        expect(raw_call(url, "edit_gan", None, body=deep), (400,), r"nested too deeply \(at most \d+", 2.0)
    elif row == 9:
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
        for name in ("face.eps", "face.png"):
            image = upload(name, eps)
            answer = raw_call(url, "edit_gan", _with(GAN_CALL, 1, image))
            expect(answer, (), r"not a readable image \(allowed: PNG, JPEG", 10.0)
            if "ghostscript" in answer.text.lower():
                problems.append("Pillow handed the file to Ghostscript")
    elif row == 10:
        expect(raw_call(url, "edit_diffusion", _with(D_CALL, 6, float("nan"))), (), r"DDIM steps must be a finite number", 10.0)
        expect(raw_call(url, "edit_gan", GAN_CALL[:-1]), (400,), r"takes 8 values.*domain, image, source", 2.0)
    elif row == 11:
        for target in ("http://example.com/face.png", "https://127.0.0.1:9/x"):
            status, text = raw_request(url, "GET", f"/gradio_api/file={target}")
            expect(RawAnswer(status, "refused", text, 0.0), (403,), r"does not fetch URLs", 2.0)
    else:
        raise InputError(f"no abuse row {row}; rows: {', '.join(map(str, ABUSE_ROWS))}")
    if new := _files_under(upload_dir) - before - uploaded:
        problems.append(f"files appeared in the upload folder: {sorted(new)[:3]}")
    seconds = time.perf_counter() - t0
    name = f"row {row}: {ABUSE_ROWS[row]}"
    return CaseResult(name, "abuse", not problems, "error", "; ".join(problems) or "refused or bounded", seconds)


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
        return _percentile(self.legit_latencies_s, 50)

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


# ---------------------------------------------------------------- load


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    answered: int = 0
    queue_full: int = 0  # told so by the server: the bounded queue working as designed
    errors: int = 0  # other error answers
    lost: int = 0  # no answer within the time limit
    latencies_s: list[float] = field(default_factory=list)  # of the answered requests
    wall_s: float = 0.0
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    error_messages: list[str] = field(default_factory=list)

    @property
    def p50_s(self) -> float | None:
        return _percentile(self.latencies_s, 50)

    @property
    def p95_s(self) -> float | None:
        return _percentile(self.latencies_s, 95)

    @property
    def growth_mb(self) -> float | None:
        if self.rss_before_mb is None or self.rss_after_mb is None:
            return None
        return self.rss_after_mb - self.rss_before_mb

    @property
    def passed(self) -> bool:
        accounted = self.answered + self.queue_full + self.errors + self.lost == self.requests
        growth_ok = self.growth_mb is None or self.growth_mb <= MAX_GROWTH_MB
        return accounted and self.lost == 0 and self.errors == 0 and self.answered > 0 and growth_ok


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def visitor_address(i: int) -> str:
    """The loopback address of visitor `i` (127.0.1.1, 127.0.1.2, ...): the app counts its
    per-visitor queue limit by address, so a load of many visitors comes from many addresses."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def run_load(
    url: str,
    requests: int = 50,
    concurrency: int = 50,
    timeout_s: float = 120.0,
    pid: int | None = None,
    request: Callable[[int], tuple[str, list]] | None = None,
) -> LoadReport:
    """`requests` edits from `concurrency` visitors at a time, all within `timeout_s`; each answered,
    queue-full or lost. Request i comes from visitor i % concurrency (its own loopback address).

    One warm-up edit runs first so that lazily loaded models are not counted as growth. `request(i)`
    gives the i-th request as (api name, values) (default: /edit_gan of the seeded sample i).
    """
    url = check_local_url(url)
    if not 1 <= requests <= 1000 or not 1 <= concurrency <= 200:
        raise InputError("--requests must be 1..1000 and --concurrency 1..200 (this is a local check)")
    if request is None:

        def request(i: int) -> tuple[str, list]:
            return "edit_gan", _with(GAN_CALL, 6, i)

    report = LoadReport(requests, concurrency)
    lock = threading.Lock()
    raw_call(url, *request(requests), source=visitor_address(0))  # warm-up
    report.rss_before_mb = rss_mb(pid) if pid else None
    deadline = time.monotonic() + timeout_s

    def one(i: int) -> None:
        api_name, data = request(i)
        answer = raw_call(url, api_name, data, visitor_address(i % concurrency), max(0.1, deadline - time.monotonic()))
        with lock:
            if answer.event == "complete":
                report.answered += 1
                report.latencies_s.append(answer.seconds)
            elif answer.status == 503 and "queue is full" in answer.text.lower():
                report.queue_full += 1
            elif answer.event == "lost" or answer.status == 0:
                report.lost += 1
            else:
                report.errors += 1
                report.error_messages.append(f"HTTP {answer.status} {answer.event}: {answer.text[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    report.wall_s = time.perf_counter() - t0
    report.rss_after_mb = rss_mb(pid) if pid else None
    return report


# ---------------------------------------------------------------- report


def format_report(
    cases: list[CaseResult],
    load: LoadReport | None,
    app: LaunchedApp | None = None,
    abuse: AbuseReport | None = None,
) -> str:
    """A plain-text table: hostile cases tried/passed per group, failures, the abuse run, then the load."""
    lines = []
    cases = cases + (abuse.cases if abuse else [])
    if cases:
        lines += ["hostile input", f"  {'group':<10}{'tried':>7}{'passed':>8}"]
        for group in dict.fromkeys(c.group for c in cases):
            mine = [c for c in cases if c.group == group]
            lines.append(f"  {group:<10}{len(mine):>7}{sum(c.passed for c in mine):>8}")
        lines.append(f"  {'total':<10}{len(cases):>7}{sum(c.passed for c in cases):>8}")
        lines += [f"  FAILED {c.name}: {c.detail}" for c in cases if not c.passed]

    def fmt(value, unit):
        return "n/a" if value is None else f"{value:.{2 if unit == 's' else 0}f} {unit}"

    if abuse is not None:
        lines += ["abuse (rows of issue 25 from one visitor while another edits toy faces)"]
        lines += [f"  {'ok ' if c.passed else 'BAD'} {c.name} ({c.seconds:.1f} s): {c.detail}" for c in abuse.cases]
        lines += [
            f"  legitimate visitor: {len(abuse.legit_latencies_s)} edits, p50 {fmt(abuse.legit_p50_s, 's')}"
            f" (limit {MAX_LEGIT_P50_S:g} s), lost {abuse.legit_lost}, errors {len(abuse.legit_errors)}",
            f"  server RSS start {fmt(abuse.rss_start_mb, 'MB')}, peak {fmt(abuse.rss_peak_mb, 'MB')},"
            f" growth {fmt(abuse.memory_growth_mb, 'MB')} (limit {MAX_ABUSE_MEMORY_MB:.0f} MB)",
            f"  upload folder start {abuse.disk_start_mb:.1f} MB, peak {abuse.disk_peak_mb:.1f} MB,"
            f" growth {abuse.disk_peak_mb - abuse.disk_start_mb:.1f} MB (limit {MAX_ABUSE_DISK_MB:.0f} MB)",
            f"  {'PASSED' if abuse.passed else 'FAILED'}",
        ]
        lines += [f"  legitimate error: {e}" for e in abuse.legit_errors[:3]]
    if load is not None:

        lines += [
            "load",
            f"  requests {load.requests} (concurrency {load.concurrency}) in {load.wall_s:.1f} s",
            f"  answered {load.answered}, queue full {load.queue_full}, errors {load.errors}, lost {load.lost}",
            f"  latency p50 {fmt(load.p50_s, 's')}, p95 {fmt(load.p95_s, 's')}",
            f"  server RSS before {fmt(load.rss_before_mb, 'MB')}, after {fmt(load.rss_after_mb, 'MB')},"
            f" growth {fmt(load.growth_mb, 'MB')} (limit {MAX_GROWTH_MB:.0f} MB)",
        ]
        lines += [f"  error: {m}" for m in load.error_messages[:5]]
        lines.append(f"  {'PASSED' if load.passed else 'FAILED'}")
    if app is not None and app.leftovers_after_stop is not None:
        left = app.leftovers_after_stop
        lines.append(f"temp folders after stop: {'none left' if not left else 'LEFT ' + ', '.join(left)}")
    return "\n".join(lines)
