"""Shared test fixtures: seeded RNGs and the `../shared` data folder (skipped cleanly if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

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
