"""Shared test fixtures: a clean environment, seeded RNGs and the `../shared` data folder (skipped
cleanly if absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np  # none of these three imports huggingface_hub
import pytest
import torch

# The suite's own settings: they choose where the test data is and how many threads run, never what
# the library does.
SUITE_SETTINGS = ("DELTAEDIT_SHARED_DIR", "DELTAEDIT_TEST_THREADS", "DELTAEDIT_CHROMIUM")
# Everything else the library, huggingface_hub and gradio read from the environment is cleared, so a
# run gives the same result whatever the caller's shell holds (HF_HUB_OFFLINE=1 or
# DELTAEDIT_WEIGHTS_DIR=/elsewhere included); a test that needs one sets it with monkeypatch.
# HF_HOME and HF_HUB_CACHE only say where the caller's downloads are; the tests that touch a hub
# cache point HF_HUB_CACHE into tmp_path themselves.
_CLEARED_PREFIXES = ("DELTAEDIT_", "GRADIO_", "HF_HUB_")
_CLEARED_NAMES = (
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
)
_KEPT = (*SUITE_SETTINGS, "HF_HUB_CACHE")


def _controlled(name: str) -> bool:
    return name not in _KEPT and (name.startswith(_CLEARED_PREFIXES) or name in _CLEARED_NAMES)


CALLER_ENVIRONMENT = {name: os.environ.pop(name) for name in list(os.environ) if _controlled(name)}
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports from the apps the tests start

# huggingface_hub copies HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) and HF_ENDPOINT into its
# `constants` at import, and its downloads check that copy, not the environment. Clearing the
# variables above is enough when it is imported later (the usual case); if a plugin imported it
# first, its copies are reset to what the cleared environment gives.
if "huggingface_hub.constants" in sys.modules:
    _hub = sys.modules["huggingface_hub.constants"]
    _hub.HF_HUB_OFFLINE = False
    _hub.ENDPOINT = _hub._HF_DEFAULT_ENDPOINT


REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DELTAEDIT_SHARED_DIR", REPO.parent / "shared"))

torch.set_num_threads(int(os.environ.get("DELTAEDIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds third-party code that uses the legacy global RNG


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def checkpoint_formats(shared_dir) -> Path:
    path = shared_dir / "checkpoint-formats"
    if not path.is_dir():
        pytest.skip("checkpoint-formats are absent")
    return path


@pytest.fixture(scope="session")
def ffhq_examples(shared_dir) -> Path:
    path = shared_dir / "data" / "ffhq_examples"
    if not (path / "wplus_img_feat.npy").is_file():
        pytest.skip("ffhq_examples data is absent")
    return path


@pytest.fixture
def uploads(tmp_path):
    """A stand-in for Gradio's upload folder holding one uploaded file, abc123/face.png."""
    folder = tmp_path / "gradio"
    (folder / "abc123").mkdir(parents=True)
    (folder / "abc123" / "face.png").write_bytes(b"png")
    return folder


def _shipped_toy_editor(backbone: str, what: str):
    from deltaedit.api import load_editor

    try:
        return load_editor("toy", backbone=backbone, device="cpu")
    except Exception as exc:
        pytest.skip(f"toy {what} weights unavailable: {exc}")


@pytest.fixture(scope="module")
def toy_g():
    """The shipped toy DeltaEdit-G editor (skipped where its weights are not here)."""
    return _shipped_toy_editor("gan", "DeltaEdit-G")


@pytest.fixture(scope="module")
def toy_d():
    """The shipped toy DeltaEdit-D editor (skipped where its weights are not here)."""
    return _shipped_toy_editor("diffusion", "DeltaEdit-D")
