"""Flags that several commands share (`edit` and `eval`; the training commands), so that they read
and behave the same everywhere."""

from __future__ import annotations

import argparse


def add_edit_options(p: argparse.ArgumentParser) -> None:
    """--strength, --threshold, --steps and --refine-steps, with the editors' defaults."""
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="alpha in s + alpha*delta_s (default: the domain's, 1.0 for ffhq, 0.85 for toy)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="disentanglement threshold on |fs3 . dt| (default: the domain's, 0.03 for ffhq, 0.1 for toy)",
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (diffusion backbone only; default 50)")
    p.add_argument(
        "--refine-steps",
        type=int,
        default=None,
        help="CLIP-guided refinement steps on the mapper's delta_s (not in the paper; default: the"
        " domain's, 0 (off) for ffhq, 2 for toy)",
    )


def edit_options(args: argparse.Namespace) -> dict:
    """The editor keyword arguments those flags give (`steps` only for the diffusion backbone)."""
    kwargs = dict(strength=args.strength, threshold=args.threshold, refine_steps=args.refine_steps)
    if args.backbone == "diffusion":
        kwargs["steps"] = args.steps
    return kwargs


def add_time_limit_option(p: argparse.ArgumentParser, help: str) -> None:
    """--time-limit MINUTES of a training command that can pause at a checkpoint (exit code 75)."""
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES", help=help)


def time_limit_seconds(args: argparse.Namespace) -> float | None:
    """--time-limit in seconds, checked; None without one."""
    from ..errors import InputError

    if args.time_limit is None:
        return None
    if args.time_limit < 0:
        raise InputError(f"--time-limit is in minutes and must be >= 0, got {args.time_limit}")
    return args.time_limit * 60
