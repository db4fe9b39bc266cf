"""`python -m deltaedit relevance`: compute a generator's relevance matrix fs3 (StyleCLIP global directions)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "relevance"
HELP = "compute the relevance matrix fs3 [S, D] of a domain's generator (StyleCLIP global directions)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="ffhq", help="domain id: ffhq or toy (default: ffhq)")
    p.add_argument(
        "--weights-dir", type=Path, default=None, help="folder with the generator and CLIP weights"
    )
    p.add_argument("--out", type=Path, required=True, help="output .npy")
    p.add_argument("--n-samples", type=int, default=100, help="codes averaged per channel (StyleCLIP: 100)")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded per batch (default 32)")
    p.add_argument("--alpha", type=float, default=5.0, help="perturbation in channel standard deviations (5)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation of the sampled codes (0.7)")
    p.add_argument(
        "--codes",
        type=Path,
        default=None,
        help="take the samples and channel statistics from this make-codes folder's W+ instead of"
        " sampling z (for generators trained as decoders; the toy domain encodes renders without it)",
    )
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
    from ..domain import Domain
    from ..errors import InputError
    from ..fileio import atomic_write
    from ..relevance import compute_fs3

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.n_samples < 1:
        raise InputError("--n-samples must be at least 1")
    domain = Domain.open(args.domain, args.weights_dir)
    G = models.load_generator(domain, device)
    clip = models.load_clip(domain, device)
    codes = domain_codes(args, G, device, domain)
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
        codes=codes,
    )
    print(
        f"{stats['batches_run']} of {stats['batches']} batches of {stats['images_per_batch']} images,"
        f" {stats['seconds_per_batch']:.3f} s per batch on {device}:"
        f" the full matrix takes about {stats['projected_seconds'] / 3600:.2f} h here"
    )
    if args.estimate:
        return 0
    with atomic_write(args.out) as tmp:
        np.save(tmp, fs3.numpy().astype(np.float32))
    print(f"wrote {args.out} {tuple(fs3.shape)}")
    return 0


def domain_codes(args, G, device, domain):
    """W+ codes to perturb: `--codes`, encoded renders for a render-sampled domain, else None (z)."""
    import torch

    from .. import models
    from ..errors import InputError

    if args.codes is not None:
        from ..training.codes import load_codes

        w_plus = torch.from_numpy(load_codes(args.codes)[0])
        if tuple(w_plus.shape[1:]) != (G.n_latent, G.style_dim):
            raise InputError(
                f"{args.codes} holds W+ of shape {list(w_plus.shape[1:])} but the {args.domain} generator"
                f" takes [{G.n_latent}, {G.style_dim}]; were the codes made for this domain?"
            )
        return w_plus.to(device)
    if domain.config.samples_by_rendering:
        from ..toy.dataset import encoded_renders
        from ..toy.stages.relevance import FS3_CODES

        encoder, latent_avg = models.load_encoder(domain, device)
        return encoded_renders(encoder, latent_avg, FS3_CODES, args.seed, device)
    return None
