"""`python -m deltaedit train-mapper`: train the Delta Mapper on codes from make-codes (text-free).

Multi-GPU: `accelerate launch -m deltaedit train-mapper ...` (one batch per process and step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train-mapper"
HELP = "train the Delta Mapper on image-pair codes (no text), the authors' objective"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codes", type=Path, required=True, help="codes folder written by make-codes")
    p.add_argument("--domain", default="ffhq", help="domain id: ffhq or toy (default: ffhq)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="mapper weights: .pth (net_face.pth format) or .safetensors (+ .json layout)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=200_000,
        help="total optimiser steps (default 200000, about the authors' 50 passes over 258k codes)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step and process (default 64)")
    p.add_argument(
        "--lr", type=float, default=0.5, help="Adam learning rate (default 0.5; layers scale it by 0.01)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="codes held out for the validation loss (default 0.05)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the pairs and the initial weights (default 0)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a .train_state.pt to continue (or mapper weights to fine-tune)",
    )
    p.add_argument(
        "--delta-noise",
        type=float,
        default=0.0,
        help="add this x a random unit vector to each training delta (default 0: the authors' objective)",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="pair codes with one of their K nearest codes in CLIP space (one-attribute-like deltas)"
        " instead of a random partner (default 0: the authors' random partners; the toy domain uses 16)",
    )
    p.add_argument(
        "--min-distance",
        type=float,
        default=0.25,
        help="with --neighbours: skip partners closer than this (same content, other jitter; default 0.25)",
    )
    p.add_argument(
        "--random-fraction",
        type=float,
        default=0.5,
        help="with --neighbours: fraction of pairs that keep a random partner (default 0.5)",
    )
    p.add_argument("--log-every", type=int, default=1000, help="steps between log lines (default 1000)")
    p.add_argument(
        "--val-every", type=int, default=5000, help="steps between validation losses (default 5000)"
    )
    p.add_argument(
        "--save-every", type=int, default=10000, help="steps between training-state saves (default 10000)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def domain_layout(domain: str):
    """(StyleLayout, clip_dim) of a domain from its config alone: no weights are read."""
    from ..config import load_domain_config
    from ..nn.stylegan2 import Generator
    from ..nn.stylespace import layout_from_generator

    cfg = load_domain_config(domain)
    # Random weights, never loaded: only the architecture matters. (A plain CPU build, ~2 s at
    # 1024, is quicker than the first use of the meta device, which imports torch._prims.)
    G = Generator.from_config(cfg.generator)
    return layout_from_generator(G), cfg.clip.embed_dim


def run(args) -> int:
    from ..errors import InputError
    from ..training.codes import read_meta
    from ..training.mapper import train_mapper
    from .make_codes import make_accelerator

    layout, clip_dim = domain_layout(args.domain)
    meta = read_meta(args.codes)
    widths = meta.get("layout", {}).get("widths")
    if widths is not None and tuple(widths) != layout.widths:
        raise InputError(
            f"{args.codes} holds codes of another generator (domain {meta.get('domain')!r}); pass its --domain"
        )
    for name in ("log_every", "val_every", "save_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    accelerator = make_accelerator(args.device)
    result = train_mapper(
        args.codes,
        layout,
        clip_dim,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        log_every=args.log_every,
        val_every=args.val_every,
        save_every=args.save_every,
        accelerator=accelerator,
        delta_noise=args.delta_noise,
        neighbours=args.neighbours,
        min_distance=args.min_distance,
        random_fraction=args.random_fraction,
    )
    if accelerator.is_main_process:
        last_val = f", val loss {result.val_losses[-1][1]:.4f}" if result.val_losses else ""
        last_train = f"train loss {result.train_losses[-1]:.4f}" if result.train_losses else "no steps run"
        print(f"wrote {result.path} ({last_train}{last_val}); resume with --resume {result.state_path}")
    return 0
