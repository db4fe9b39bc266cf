"""Flags that `edit` and `eval` share, so that they read and behave the same in both."""

from __future__ import annotations

import argparse


def add_edit_options(p: argparse.ArgumentParser) -> None:
    """--strength, --threshold, --steps and --refine-steps, with the editors' defaults."""
    p.add_argument("--strength", type=float, default=1.0, help="alpha in s + alpha*delta_s (default 1.0)")
    p.add_argument(
        "--threshold", type=float, default=0.03, help="disentanglement threshold on |fs3 . dt| (default 0.03)"
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (diffusion backbone only; default 50)")
    p.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="CLIP-guided refinement steps on the mapper's delta_s (not in the paper; default 0: off)",
    )


def edit_options(args: argparse.Namespace) -> dict:
    """The editor keyword arguments those flags give (`steps` only for the diffusion backbone)."""
    kwargs = dict(strength=args.strength, threshold=args.threshold, refine_steps=args.refine_steps)
    if args.backbone == "diffusion":
        kwargs["steps"] = args.steps
    return kwargs
