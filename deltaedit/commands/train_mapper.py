"""`python -m deltaedit train-mapper`: train the Delta Mapper on codes from make-codes (text-free).

Multi-GPU: `accelerate launch -m deltaedit train-mapper ...` (one batch per process and step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training.distil import DISTIL_ANCHOR, DISTIL_BATCH, DISTIL_LR, DISTIL_STEPS

NAME = "train-mapper"
HELP = "train the Delta Mapper on image-pair codes (no text), the authors' objective"


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_arguments(p)
    _add_pairing_arguments(p)
    _add_distil_arguments(p)
    _add_schedule_arguments(p)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What to train on, where to write it, and how long."""
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
        default=None,
        help="total optimiser steps (default 200000, about the authors' 50 passes over 258k codes;"
        f" with --distil {DISTIL_STEPS})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"pairs per step and process (default 64; with --distil {DISTIL_BATCH})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Adam learning rate (default 0.5, with --distil {DISTIL_LR}; layers scale it by 0.01)",
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


def _add_pairing_arguments(p: argparse.ArgumentParser) -> None:
    """Which code pairs the mapper learns from."""
    p.add_argument(
        "--delta-noise",
        type=float,
        default=0.0,
        help="add this x a random unit vector to each training delta (default 0: the authors' objective)",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=None,
        help="pair codes with one of their K nearest codes in CLIP space (one-attribute-like deltas)"
        " instead of a random partner (default 0: the authors' random partners; the toy domain uses 16;"
        " with --distil 16)",
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
        default=None,
        help="with --neighbours: fraction of pairs that keep a random partner (default 0.5; with --distil 0)",
    )


def _add_distil_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group(
        "distillation of the refinement (not in the paper; see deltaedit.training.distil)"
    )
    d.add_argument(
        "--distil",
        action="store_true",
        help="fine-tune the mapper given as --resume (weights, or a distillation's .train_state.pt) so"
        " that its one-pass Δs does what --refine-steps does at inference: the refinement's loss through"
        " the domain's generator and CLIP, on the image deltas of code pairs grounded with the domain's"
        " feature bank (text-free)",
    )
    d.add_argument(
        "--strength",
        type=float,
        default=None,
        help="with --distil: the edit strength to distil for (default: the domain's DeltaEdit-G default)",
    )
    d.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="with --distil: the relevance threshold to distil for (default: the domain's default)",
    )
    d.add_argument(
        "--anchor",
        type=float,
        default=DISTIL_ANCHOR,
        help=f"with --distil: weight of the MSE to the starting mapper's output (default {DISTIL_ANCHOR})",
    )
    d.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="with --distil: folder of the domain's generator, CLIP, fs3 and feature bank (default:"
        " the domain's own weights)",
    )


def _add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """When to log, validate and save; where to run."""
    p.add_argument(
        "--log-every", type=int, default=None, help="steps between log lines (default 1000; --distil 100)"
    )
    p.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="steps between validation losses (default 5000; --distil 500)",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="steps between training-state saves (default 10000; --distil 500)",
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


_DEFAULTS = {  # (authors' objective, --distil)
    "steps": (200_000, DISTIL_STEPS),
    "batch_size": (64, DISTIL_BATCH),
    "lr": (0.5, DISTIL_LR),
    "log_every": (1000, 100),
    "val_every": (5000, 500),
    "save_every": (10000, 500),
    "neighbours": (0, 16),
    "random_fraction": (0.5, 0.0),
}


def run(args) -> int:
    from ..errors import InputError
    from ..training.codes import read_meta
    from ..training.mapper import train_mapper
    from .make_codes import make_accelerator

    for name, pair in _DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, pair[1] if args.distil else pair[0])
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
    if args.distil:
        return run_distil(args, layout, clip_dim)
    unused = [f"--{n}" for n in ("strength", "threshold", "weights_dir") if getattr(args, n) is not None]
    if unused:
        raise InputError(f"{', '.join(u.replace('_', '-') for u in unused)} only apply with --distil")
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


def run_distil(args, layout, clip_dim) -> int:
    """`train-mapper --distil`: the refinement's objective trained into the mapper (one device)."""
    import torch

    from .. import models
    from ..domain import Domain
    from ..errors import InputError
    from ..training.distil import DistilModels, distil_mapper
    from ..training.mapper import load_mapper_weights, load_training_state

    if args.resume is None:
        raise InputError(
            "--distil fine-tunes a trained mapper: pass its weights (or a distillation state) as --resume"
        )
    state = load_training_state(args.resume)
    resume, init = None, None
    if state.get("settings", {}).get("distil"):
        resume = args.resume  # a distillation to continue; its starting mapper is in the state
        from ..nn.mapper import DeltaMapper

        init = DeltaMapper(layout, clip_dim)
        init.load_state_dict(state["reference"])
    elif "optimizer" in state:  # a train_mapper state: fine-tune its weights
        from ..nn.mapper import DeltaMapper

        init = DeltaMapper(layout, clip_dim)
        init.load_state_dict(state["model"])
    else:
        init = load_mapper_weights(args.resume, layout, clip_dim)
    domain = Domain.open(args.domain, args.weights_dir)
    defaults = domain.config.defaults_for("gan")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    distil_models = DistilModels(
        models.load_generator(domain, device),
        models.load_clip(domain, device),
        models.load_relevance(domain),
        models.load_feature_bank(domain),
    )
    result = distil_mapper(
        args.codes,
        distil_models,
        init,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        strength=defaults.strength if args.strength is None else args.strength,
        threshold=defaults.threshold if args.threshold is None else args.threshold,
        anchor=args.anchor,
        val_fraction=args.val_fraction,
        seed=args.seed,
        resume=resume,
        progress=not args.no_progress,
        log_every=args.log_every,
        val_every=args.val_every,
        save_every=args.save_every,
        device=device,
        neighbours=args.neighbours,
        min_distance=args.min_distance,
        random_fraction=args.random_fraction,
    )
    val = ""
    if len(result.val_losses) >= 2:
        val = f", validation refinement loss {result.val_losses[0][1]:.4f} -> {result.val_losses[-1][1]:.4f}"
    print(
        f"wrote {result.path} ({result.steps} distillation steps{val}); resume with --resume {result.state_path}"
    )
    return 0
