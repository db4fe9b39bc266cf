"""Hostile input through the public API: broken, odd or oversized photos, prompts and numbers, and server
paths named instead of uploads; each case expects a clear error or a sensible result."""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------- hostile input
from .server import EDIT, LaunchedApp, check_local_url, files_under, is_serving, make_client


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
        prompt(
            "10,000 characters", "error", r"limit is 300", target=("face with a big smile " * 500)[:10_000]
        ),
        prompt(
            "10,000-character source",
            "error",
            r"source text .*limit is 300",
            target="face with a smile",
            source="x" * 10_000,
        ),
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


def run_server_path_case(
    url: str, api_name: str, name: str, path: str, bare: bool, cache_dir: Path | None = None
) -> CaseResult:
    """POST an API call whose image names `path` (as FileData, or `bare`: just {"path": ...}).

    Sent as raw JSON: gradio_client would read a local path itself and upload the file, which is
    the caller's own file, not the server's. Passes when the server answers at once with the
    refusal message and nothing new appears in its cache folder.
    """
    import json

    from ..upload_guard import REFUSED_MESSAGE

    image = {"path": path} if bare else {"path": path, "meta": {"_type": "gradio.FileData"}}
    data = [image if value is None else value for value in SERVER_PATH_ENDPOINTS[api_name]]
    request = urllib.request.Request(
        f"{check_local_url(url)}gradio_api/call{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    before = files_under(cache_dir)
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
    elif new := files_under(cache_dir) - before:
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
