"""Text deltas grounded in one image, through a bank of the domain's CLIP image features.

Not in the paper; used when a domain ships a feature bank (the toy domain does). DeltaEdit feeds
the mapper Δt = CLIP("face with blond hair") − CLIP("face"): one direction for every face. Two
things separate it from the image delta the mapper was trained on (README, "Which part costs
what"), and a bank of image features of the domain removes both without labels:

1. Δt has components in which image features never vary (text-only directions). Projecting it
   on the principal subspace of the bank's features (99.5 % of their variance) removes them: on
   the toy domain its cosine to the mean image delta of a prompt goes from 0.88 to 0.995.
2. The image delta of a categorical attribute depends on the face's current value: black → blond
   is not red → blond, but the text names only the target. The projected direction d splits the
   bank into the images that have what the text asks for (the upper of two 1-D clusters of
   (f − mean)·d) and the rest. The attribute's subspace H is where the bank varies more than that
   cluster: the leading eigenvectors of Cov(bank) − Cov(cluster). The grounded delta for an image
   with feature i is H Hᵀ (mean(cluster) − i): i's own value of the attribute, swapped for the
   cluster's, and nothing else (black → blond for a black-haired face, red → blond for a red one).
   A prompt that names two attributes leaves a direction once the first attribute's subspace is
   taken out; the split is repeated on it, and the swaps add up.

A bank is any set of unit CLIP image features of the domain's images (`make-codes` writes them);
`FeatureBank.ground` falls back to the text delta where the bank cannot split (a direction in
which the images do not vary).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, WeightsError
from .weights import load_npy_matrix

# Principal subspace kept for step 1 (fraction of the bank's feature variance).
DEFAULT_VARIANCE = 0.995
# Eigenvalues of Cov(bank) − Cov(cluster) above this fraction of the largest span H.
SUBSPACE_RATIO = 0.5
# Fewest bank images on either side of the split for it to count.
MIN_CLUSTER = 8
# A Δt that keeps less than this fraction of its length in the bank's subspace asks for something
# the images do not vary in: it is left as it is.
MIN_IN_SUBSPACE = 0.25
# Attribute pursuit stops when less than this fraction of the projected Δt is left unexplained.
RESIDUAL_STOP = 0.35
MAX_ATTRIBUTES = 4
_SPLIT_ITERATIONS = 30
_CACHE_SIZE = 256


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def load_feature_bank(path, clip_dim: int | None = None) -> FeatureBank:
    """A FeatureBank from an .npy matrix [N, D] of CLIP image features (no pickles)."""
    path = Path(path)
    features = load_npy_matrix(path, "feature bank", "N, D")
    if clip_dim is not None and features.shape[1] != clip_dim:
        raise WeightsError(f"{path} holds {features.shape[1]}-d features; this CLIP has {clip_dim}")
    try:
        return FeatureBank(torch.from_numpy(features.astype(np.float32)))
    except InputError as exc:  # a bad file is a weights problem, not the caller's input
        raise WeightsError(f"{path}: {exc}; delete it and retry") from exc


class FeatureBank:
    """CLIP image features [N, D] of a domain's images; grounds text deltas in one image."""

    def __init__(self, features: torch.Tensor, variance: float = DEFAULT_VARIANCE):
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.ndim != 2 or len(features) < 2 * MIN_CLUSTER:
            raise InputError(
                f"a feature bank needs [N, D] features with N >= {2 * MIN_CLUSTER}, got {tuple(features.shape)}"
            )
        if not torch.isfinite(features).all():
            raise InputError("the feature bank contains NaN or Inf values")
        self.features = _unit(features)
        self.mean = self.features.mean(0)
        centred = self.features - self.mean
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        explained = (singular**2).cumsum(0) / (singular**2).sum().clamp(min=1e-12)
        k = int(torch.searchsorted(explained, torch.tensor(variance)).item()) + 1
        self.basis = vh[: min(k, len(vh))]  # [k, D]
        self.covariance = centred.T @ centred / (len(centred) - 1)
        self._attributes: dict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._lock = threading.Lock()  # the app edits from several threads

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def attributes(self, delta_t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(cluster mean [D], subspace H [D, r])] of each attribute `delta_t` [D] asks for (one for
        "face with X", two for "face with X and Y"); empty where the bank cannot split."""
        delta_t = torch.as_tensor(delta_t, dtype=torch.float32).cpu()
        key = delta_t.numpy().tobytes()
        with self._lock:
            if key in self._attributes:
                return self._attributes[key]
        found = self._find_attributes(delta_t)
        with self._lock:
            if len(self._attributes) >= _CACHE_SIZE:
                self._attributes.pop(next(iter(self._attributes)))
            return self._attributes.setdefault(key, found)  # the first writer's list wins

    def _find_attributes(self, delta_t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        direction = delta_t @ self.basis.T @ self.basis
        length = float(direction.norm())
        if length < MIN_IN_SUBSPACE * float(delta_t.norm()):
            return []
        found = []
        spanned = torch.zeros(len(direction), 0)  # orthonormal basis of the subspaces found so far
        # Attribute pursuit: split along what is left of the direction once the attributes found
        # so far are taken out of it, until little is left. Each new subspace is kept orthogonal
        # to the earlier ones, so no swap is counted twice.
        while len(found) < MAX_ATTRIBUTES and float(direction.norm()) >= RESIDUAL_STOP * length:
            attribute = self._split(direction)
            if attribute is None:
                break
            target, subspace = attribute
            subspace = subspace - spanned @ (spanned.T @ subspace)
            u, singular, _ = torch.linalg.svd(subspace, full_matrices=False)
            subspace = u[:, singular > 0.5]
            if subspace.shape[1] == 0:
                break
            found.append((target, subspace))
            spanned = torch.cat([spanned, subspace], dim=1)
            direction = direction - subspace @ (subspace.T @ direction)
        return found

    def _split(self, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        along = (self.features - self.mean) @ _unit(direction)
        upper = along >= _two_means_cut(along)  # the upper of two 1-D clusters
        n_upper = int(upper.sum())
        if n_upper < MIN_CLUSTER or len(along) - n_upper < MIN_CLUSTER:
            return None
        cluster = self.features[upper]
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariance - torch.cov(cluster.T))
        if float(eigenvalues[-1]) <= 0:
            return None
        return cluster.mean(0), eigenvectors[:, eigenvalues >= SUBSPACE_RATIO * eigenvalues[-1]]

    def ground(self, delta_t: torch.Tensor, image_feature: torch.Tensor) -> torch.Tensor:
        """Grounded deltas [T, D] for text deltas `delta_t` [T, D] and one image feature [1, D] or [D].

        A zero Δt stays zero (nothing to edit); where the bank cannot split, Δt is returned as is.
        """
        delta_t = torch.as_tensor(delta_t)
        if delta_t.ndim != 2 or delta_t.shape[1] != self.dim:
            raise InputError(f"text deltas must be [T, {self.dim}], got {tuple(delta_t.shape)}")
        image = _unit(torch.as_tensor(image_feature, dtype=torch.float32).reshape(-1).cpu())
        rows = []
        for dt in delta_t.float().cpu():
            found = self.attributes(dt) if float(dt.norm()) > 0 else []
            if not found:
                rows.append(dt)
                continue
            rows.append(sum(h @ (h.T @ (target - image)) for target, h in found))
        return torch.stack(rows).to(device=delta_t.device, dtype=delta_t.dtype)


def _two_means_cut(values: torch.Tensor) -> torch.Tensor:
    """The threshold of a 2-means clustering of 1-D `values`, started from the extremes."""
    cut = (values.min() + values.max()) / 2
    for _ in range(_SPLIT_ITERATIONS):
        above = values >= cut
        if above.all() or not above.any():
            break
        new_cut = (values[~above].mean() + values[above].mean()) / 2
        if torch.isclose(new_cut, cut):
            break
        cut = new_cut
    return cut
