"""The suite gives the same result whatever the caller's environment holds (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import conftest

REPO = Path(__file__).resolve().parents[1]

# What a caller's shell may well export; each of these used to turn passing tests red.
HOSTILE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "DELTAEDIT_OFFLINE": "1",
    "DELTAEDIT_WEIGHTS_DIR": "/nonexistent",
    "DELTAEDIT_CACHE": "/nonexistent",
    "GRADIO_SERVER_PORT": "1",
}


def test_controlled_variables_are_the_library_s_not_the_suite_s():
    for name in HOSTILE:
        assert conftest._controlled(name), name
    for name in (*conftest.SUITE_SETTINGS, "HF_HUB_CACHE", "PATH", "HOME", "OMP_NUM_THREADS"):
        assert not conftest._controlled(name), name
    # None of them reaches the tests (gradio itself may set a few, e.g. HF_HUB_DISABLE_TELEMETRY).
    assert not [name for name in HOSTILE if name in os.environ]


def test_downloads_pass_with_an_offline_caller_environment():
    """Online downloads from local servers (and huggingface_hub's, which reads its import-time copy
    of HF_HUB_OFFLINE) run in a fresh interpreter started with the hostile environment."""
    tests = [
        "tests/test_weights.py::test_url_download_to_cache",
        "tests/test_weights.py::test_hub_download_through_fake_endpoint",
        "tests/test_weights.py::test_packaged_and_cache_lookup",
    ]
    env = {**os.environ, **HOSTILE, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *tests],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "3 passed" in run.stdout
