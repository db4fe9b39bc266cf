"""The app under test: launched on a free local port (or a given local URL), watched (RSS, disk) and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def files_under(folder: Path | None) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder is not None and folder.is_dir() else set()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
