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
        self._centred = centred
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
        return self.attributes_of_rows(torch.as_tensor(delta_t).reshape(1, -1))[0]

    def attributes_of_rows(self, delta_t: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """`attributes` of each row of `delta_t` [T, D], the uncached rows found together."""
        delta_t = torch.as_tensor(delta_t, dtype=torch.float32).detach().cpu()
        keys = [row.numpy().tobytes() for row in delta_t]
        with self._lock:
            known = {k: self._attributes[k] for k in keys if k in self._attributes}
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        if missing:
            rows = torch.stack([delta_t[keys.index(k)] for k in missing])
            found = self._find_attributes(rows)
            with self._lock:
                for key, attributes in zip(missing, found):
                    if len(self._attributes) >= _CACHE_SIZE:
                        self._attributes.pop(next(iter(self._attributes)))
                    # the first writer's list wins
                    known[key] = self._attributes.setdefault(key, attributes)
        return [known[k] for k in keys]

    def _find_attributes(self, delta_t: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The attributes of each row of `delta_t` [T, D]; the rows' splits run as one batch."""
        direction = delta_t @ self.basis.T @ self.basis
        length = direction.norm(dim=1)
        active = (length >= MIN_IN_SUBSPACE * delta_t.norm(dim=1)).tolist()
        found: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(len(delta_t))]
        # orthonormal basis of the subspaces found so far, per row
        spanned = [torch.zeros(delta_t.shape[1], 0) for _ in range(len(delta_t))]
        # Attribute pursuit: split along what is left of the direction once the attributes found
        # so far are taken out of it, until little is left. Each new subspace is kept orthogonal
        # to the earlier ones, so no swap is counted twice.
        for _ in range(MAX_ATTRIBUTES):
            rows = [
                i
                for i, on in enumerate(active)
                if on and float(direction[i].norm()) >= RESIDUAL_STOP * float(length[i])
            ]
            if not rows:
                break
            for i, attribute in zip(rows, self._split(direction[rows])):
                if attribute is None:
                    active[i] = False
                    continue
                target, subspace = attribute
                subspace = subspace - spanned[i] @ (spanned[i].T @ subspace)
                u, singular, _ = torch.linalg.svd(subspace, full_matrices=False)
                subspace = u[:, singular > 0.5]
                if subspace.shape[1] == 0:
                    active[i] = False
                    continue
                found[i].append((target, subspace))
                spanned[i] = torch.cat([spanned[i], subspace], dim=1)
                direction[i] = direction[i] - subspace @ (subspace.T @ direction[i])
            active = [on and i in rows for i, on in enumerate(active)]
        return found

    def _split(self, directions: torch.Tensor):
        """(cluster mean, subspace) of the split along each row of `directions` [R, D], or None
        (one direction [D]: its own result, not a list)."""
        if directions.ndim == 1:
            return self._split(directions[None])[0]
        along = self._centred @ _unit(directions).T  # [N, R]
        upper = along >= _two_means_cut(along)  # the upper of two 1-D clusters, per column
        n_upper = upper.sum(dim=0)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * directions.shape[0]
        ok = ((n_upper >= MIN_CLUSTER) & (len(along) - n_upper >= MIN_CLUSTER)).nonzero().flatten()
        if len(ok) == 0:
            return out
        member = upper[:, ok].T.float()  # [K, N]
        n = member.sum(dim=1)
        means = member @ self._centred / n[:, None]  # cluster means, centred on the bank's
        x = self._centred
        second = (member[:, :, None] * x).transpose(1, 2) @ x  # [K, D, D], one batched product
        outer = n[:, None, None] * means[:, :, None] * means[:, None, :]
        cluster_cov = (second - outer) / (n - 1)[:, None, None]
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariance - cluster_cov)
        for k, row in enumerate(ok.tolist()):
            top = eigenvalues[k, -1]
            if float(top) > 0:
                out[row] = means[k] + self.mean, eigenvectors[k][:, eigenvalues[k] >= SUBSPACE_RATIO * top]
        return out

    def ground(self, delta_t: torch.Tensor, image_feature: torch.Tensor) -> torch.Tensor:
        """Grounded deltas [T, D] for text deltas `delta_t` [T, D] and the image feature of the face
        they edit: one for all rows ([1, D] or [D]) or one per row ([T, D], as mapper distillation
        grounds the image deltas of a batch of code pairs).

        A zero Δt stays zero (nothing to edit); where the bank cannot split, Δt is returned as is.
        """
        delta_t = torch.as_tensor(delta_t)
        if delta_t.ndim != 2 or delta_t.shape[1] != self.dim:
            raise InputError(f"text deltas must be [T, {self.dim}], got {tuple(delta_t.shape)}")
        images = torch.as_tensor(image_feature, dtype=torch.float32).detach().cpu()
        if images.ndim == 2 and images.shape[0] == len(delta_t) and images.shape[1] == self.dim:
            images = _unit(images)
        elif images.numel() == self.dim:
            images = _unit(images.reshape(1, -1)).expand(len(delta_t), -1)
        else:
            raise InputError(
                f"image features must be [{self.dim}], [1, {self.dim}] or [{len(delta_t)}, {self.dim}],"
                f" got {tuple(images.shape)}"
            )
        rows = []
        deltas = delta_t.detach().float().cpu()
        # Mapper distillation grounds a batch of image deltas at once: their splits run together.
        attributes = self.attributes_of_rows(deltas)
        for dt, image, found in zip(deltas, images, attributes):
            found = found if float(dt.norm()) > 0 else []
            if not found:
                rows.append(dt)
                continue
            rows.append(sum(h @ (h.T @ (target - image)) for target, h in found))
        return torch.stack(rows).to(device=delta_t.device, dtype=delta_t.dtype)


def _two_means_cut(values: torch.Tensor) -> torch.Tensor:
    """The threshold of a 2-means clustering of 1-D `values` [N] (or of each column of [N, R]),
    started from the extremes."""
    cut = (values.min(dim=0).values + values.max(dim=0).values) / 2
    live = torch.ones_like(cut, dtype=torch.bool)  # columns still iterating
    n = values.shape[0]
    for _ in range(_SPLIT_ITERATIONS):
        above = values >= cut
        n_above = above.sum(dim=0)
        live &= (n_above > 0) & (n_above < n)
        if not live.any():
            break
        upper = torch.where(above, values, 0).sum(dim=0) / n_above.clamp(min=1)
        lower = torch.where(above, 0, values).sum(dim=0) / (n - n_above).clamp(min=1)
        new_cut = (lower + upper) / 2
        settled = torch.isclose(new_cut, cut)
        cut = torch.where(live & ~settled, new_cut, cut)
        live &= ~settled
    return cut
