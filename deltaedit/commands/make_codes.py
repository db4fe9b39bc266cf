"""`python -m deltaedit make-codes`: W+/S/CLIP codes for text-free mapper training.

Multi-GPU: `accelerate launch -m deltaedit make-codes ...`; each process writes its own shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "make-codes"
HELP = "sample (or encode) images and store their W+, S and CLIP image codes for train-mapper"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="ffhq", help="domain id: ffhq or toy (default: ffhq)")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="folder holding the weight files under their official names",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of codes to sample (toy: renders to encode); with --images, the most images to encode",
    )
    p.add_argument(
        "--images", type=Path, default=None, help="encode this folder of aligned images instead of sampling"
    )
    p.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        help="truncation of sampled w (default 1.0: none, as the authors)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (rerun with the same arguments to resume)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--shard-size", type=int, default=1024, help="codes per .npy shard (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled z or toy renders (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def make_accelerator(device: str | None):
    """An accelerate Accelerator on `device` (cpu / cuda / None = cuda when available)."""
    import torch
    from accelerate import Accelerator

    from ..errors import InputError

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if device not in (None, "cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda (got {device}); pick GPUs with CUDA_VISIBLE_DEVICES")
    return Accelerator(cpu=device == "cpu")


def run(args) -> int:
    from .. import models
    from ..domain import Domain
    from ..errors import InputError
    from ..training.codes import make_codes

    if args.n is None and args.images is None:
        raise InputError("pass --n N to sample codes, or --images FOLDER to encode images")
    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    domain = Domain.open(args.domain, args.weights_dir)
    cfg = domain.config
    accelerator = make_accelerator(args.device)
    device = str(accelerator.device)
    G = models.load_generator(domain, device)
    clip = models.load_clip(domain, device)
    encoder = latent_avg = None
    images = args.images
    if images is None and cfg.samples_by_rendering:
        # A decoder-only generator (the toy domain) has no z prior: encode seeded renders instead.
        from ..toy.dataset import rendered_batches

        images = rendered_batches(args.n, args.seed)
    if images is not None:
        encoder, latent_avg = models.load_encoder(domain, device)
    out = make_codes(
        G,
        clip.image_features,
        args.out,
        n=args.n,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        truncation=args.truncation,
        encoder=encoder,
        latent_avg=latent_avg,
        images=images,
        input_size=cfg.encoder.input_size,
        progress=not args.no_progress,
        accelerator=accelerator,
        domain=args.domain,
    )
    if accelerator.is_main_process:
        print(f"wrote codes to {out}")
    return 0
