"""Reading weight files safely: .npy matrices never unpickled, torch checkpoints with
`weights_only=True`, and state dicts checked key by key against the module they load into."""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsError


def load_npy_matrix(path, what: str, axes: str) -> np.ndarray:
    """A float matrix from a .npy file, never unpickled; `what` and `axes` ("S, D") name it in
    the WeightsError a missing, unreadable or non-matrix file gets."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise WeightsError(f"{path} is not a readable .npy {what} ({exc}); delete it and retry") from exc
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise WeightsError(f"{path} must hold a float matrix [{axes}], got {matrix.dtype} {matrix.shape}")
    return matrix


def load_torch_file(path) -> object:
    """`torch.load(weights_only=True)` on CPU; missing, corrupt or code-carrying files -> WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    def load(mmap: bool):
        # argparse.Namespace is plain data (rosinality checkpoints store their training args in one).
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            # Memory-mapped: tensors are read from the page cache instead of copied into RAM first.
            return load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            return load(mmap=False)  # legacy (pre-zip) checkpoints cannot be mapped
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} holds objects other than tensors and plain data, which are not loaded for"
            f" safety ({str(exc).splitlines()[0]}); is it the right file?"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(
            f"{path} is corrupt or truncated ({exc}); delete it and download it again"
        ) from exc


def _shapes(expected) -> dict[str, tuple]:
    if isinstance(expected, torch.nn.Module):
        expected = expected.state_dict()
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in expected.items()}


def check_state_dict(state: dict, expected, file) -> None:
    """Raise WeightsError naming `file` and the first missing / unexpected / mis-shaped key.

    `expected` is a module (its state dict) or a mapping name -> shape.
    """
    want = _shapes(expected)
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    problems = []
    if missing:
        problems.append(
            f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    if wrong:
        k = wrong[0]
        problems.append(
            f"{k!r} has shape {list(got[k])}, expected {list(want[k])}"
            + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    if problems:
        raise WeightsError(f"{file} does not fit the model: {'; '.join(problems)}. Is it the right file?")
