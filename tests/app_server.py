"""Test helper: run `python app.py` on a free localhost port in a subprocess, once per test session.

The app needs the toy domain's weights: the packaged ones in assets/toy, else a folder named by
$DELTAEDIT_WEIGHTS_DIR (e.g. the output of `python -m deltaedit toy train --smoke --out DIR`).
Without either the tests that use the server are skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOY_FILES = (
    "generator.safetensors",
    "encoder.safetensors",
    "mapper.safetensors",
    "fs3.npy",
    "clip.safetensors",
)
START_TIMEOUT_S = 180


def toy_weights_env() -> dict[str, str] | None:
    """Extra environment for the app to find complete toy weights, or None when there are none."""
    packaged = REPO / "assets" / "toy"
    if all((packaged / f).is_file() for f in TOY_FILES):
        return {}
    folder = os.environ.get("DELTAEDIT_WEIGHTS_DIR")
    if folder and all((Path(folder) / f).is_file() for f in TOY_FILES):
        return {"DELTAEDIT_WEIGHTS_DIR": folder}
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` in a subprocess; `url` once the page answers."""

    def __init__(self, extra_env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.workdir = Path(tempfile.mkdtemp(prefix="deltaedit-app-test-"))
        self.log_path = self.workdir / "server.log"
        env = {
            **os.environ,
            **extra_env,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            # Gradio's upload/result cache and the lazily cached examples stay out of the checkout.
            "GRADIO_TEMP_DIR": str(self.workdir / "gradio"),
            "GRADIO_EXAMPLES_CACHE": str(self.workdir / "examples"),
            "DELTAEDIT_PRELOAD": "",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        }
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py")],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until the page answered; raises with the server log if it never does."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"app.py did not answer within {timeout} s:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


_SERVER: AppServer | None = None


def shared_server() -> AppServer:
    """The session's one server (both app test modules use it); skips when toy weights are absent."""
    global _SERVER
    env = toy_weights_env()
    if env is None:
        pytest.skip(
            "toy weights are absent: build them with `python -m deltaedit toy train` (assets/toy) or set"
            " DELTAEDIT_WEIGHTS_DIR to a folder of toy weights"
        )
    if _SERVER is None:
        server = AppServer(env)
        server.wait_ready()
        _SERVER = server
    return _SERVER


def stop_shared_server() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


@pytest.fixture(scope="session")
def app_url():
    """URL of the running app (started on first use, stopped at the end of the session)."""
    server = shared_server()
    yield server.url
    stop_shared_server()
