"""`python -m deltaedit relevance`: compute a generator's relevance matrix fs3 (StyleCLIP global directions)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "relevance"
HELP = "compute the relevance matrix fs3 [S, D] of a domain's generator (StyleCLIP global directions)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="ffhq", help="domain id: ffhq or toy (default: ffhq)")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with the generator and CLIP weights")
    p.add_argument("--out", type=Path, required=True, help="output .npy")
    p.add_argument("--n-samples", type=int, default=100, help="codes averaged per channel (StyleCLIP: 100)")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded per batch (default 32)")
    p.add_argument("--alpha", type=float, default=5.0, help="perturbation in channel standard deviations (5)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation of the sampled codes (0.7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--estimate",
        type=int,
        default=0,
        metavar="BATCHES",
        help="only time this many batches and print the projected cost of the full computation",
    )


def run(args) -> int:
    import numpy as np
    import torch

    from .. import models
    from ..errors import InputError
    from ..relevance import compute_fs3

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.n_samples < 1:
        raise InputError("--n-samples must be at least 1")
    G = models.load_generator(args.domain, device, args.weights_dir)
    clip = models.load_clip(args.domain, device, args.weights_dir)
    stats: dict = {}
    fs3 = compute_fs3(
        G,
        clip,
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        alpha=args.alpha,
        truncation=args.truncation,
        seed=args.seed,
        max_batches=args.estimate or None,
        stats=stats,
    )
    print(
        f"{stats['batches_run']} of {stats['batches']} batches of {stats['images_per_batch']} images,"
        f" {stats['seconds_per_batch']:.3f} s per batch on {device}:"
        f" the full matrix takes about {stats['projected_seconds'] / 3600:.2f} h here"
    )
    if args.estimate:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npy")
    np.save(tmp, fs3.numpy().astype(np.float32))
    tmp.replace(args.out)
    print(f"wrote {args.out} {tuple(fs3.shape)}")
    return 0
