"""Which codes a mapper run pairs, step by step: the train/validation split, the seeded pair
sampler (random partners, or one of the nearest in CLIP space) and the fixed validation pairs.

Batches are a pure function of (seed, step): step k takes positions k*B .. k*B+B-1 of an endless
stream of seeded per-epoch permutations, and partners come from a generator seeded with
(seed, step). A resumed run therefore sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) code indices from a permutation seeded by `seed`."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 4:
        n_val = max(n_val, 2)  # a pair needs two codes
    if n - n_val < 2:
        raise InputError(f"{n} codes leave fewer than 2 for training; make more codes or lower val_fraction")
    order = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class PairSampler:
    """Index pairs (i, partner) for step k, a pure function of (seed, k): resumable exactly.

    With a `neighbours` table [n, K] (positions into `indices`, see `neighbour_table`) each pair
    takes one of i's K nearest partners, except a `random_fraction` of them that keep the authors'
    uniformly random partner.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        seed: int,
        neighbours: np.ndarray | None = None,
        random_fraction: float = 1.0,
    ):
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.neighbours = neighbours
        self.random_fraction = random_fraction
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.indices))
        return self._perms[epoch]

    def batch(self, step: int, slot: int = 0, slots: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Batch `slot` of `slots` (one per process) at `step`."""
        n = len(self.indices)
        positions = (step * slots + slot) * self.batch_size + np.arange(self.batch_size)
        first = np.array([self._perm(int(p // n))[p % n] for p in positions])
        partner = np.random.default_rng([self.seed, 2, step, slot]).integers(0, n, self.batch_size)
        if self.neighbours is not None:
            rng = np.random.default_rng([self.seed, 4, step, slot])
            near = self.neighbours[first, rng.integers(0, self.neighbours.shape[1], self.batch_size)]
            partner = np.where(rng.random(self.batch_size) < self.random_fraction, partner, near)
        return self.indices[first], self.indices[partner]


def neighbour_table(features: torch.Tensor, k: int, min_distance: float, chunk: int = 1024) -> np.ndarray:
    """[n, k] positions of each row's k nearest rows among unit `features` [n, D], skipping itself
    and rows closer than `min_distance` (the same image content up to jitter: a delta of noise)."""
    if not 1 <= k < len(features):
        raise InputError(f"neighbours must be between 1 and {len(features) - 1}, got {k}")
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rows = []
    for start in range(0, len(x), chunk):
        distance = torch.cdist(x[start : start + chunk], x)
        distance[distance < min_distance] = float("inf")
        distance[torch.arange(len(distance)), torch.arange(start, start + len(distance))] = float("inf")
        rows.append(distance.topk(k, largest=False).indices)
    return torch.cat(rows).numpy()


def pair_sampler(
    c: torch.Tensor,
    indices: np.ndarray,
    batch_size: int,
    seed: int,
    neighbours: int,
    min_distance,
    random_fraction,
) -> PairSampler:
    """The training pairs of `indices`: random partners, or nearest ones when `neighbours` > 0."""
    table = neighbour_table(c[torch.from_numpy(indices)], neighbours, min_distance) if neighbours else None
    return PairSampler(indices, batch_size, seed, table, random_fraction if neighbours else 1.0)


def validation_pairs(indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (i, partner) pairs inside the validation split, each code once as i."""
    partner = np.random.default_rng([seed, 3]).integers(0, len(indices), len(indices))
    return indices, indices[partner]


def check_pairing(neighbours: int, min_distance: float, random_fraction: float) -> None:
    if neighbours < 0 or min_distance < 0 or not 0 <= random_fraction <= 1:
        raise InputError(
            "neighbours and min_distance must be >= 0 and random_fraction between 0 and 1"
            f" (got {neighbours}, {min_distance}, {random_fraction})"
        )
