"""`python -m deltaedit toy train|sheet`: reproduce the toy domain's weights, or look at its renders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..toy.train import GAN_STAGES, STAGES
from .options import add_time_limit_option, time_limit_seconds

NAME = "toy"
HELP = "train every weight of the built-in toy domain (toy train), or render a contact sheet (toy sheet)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="toy_command", required=True)
    t = sub.add_parser(
        "train", help="train the toy CLIP, generator, encoder, mapper, relevance and classifier"
    )
    t.add_argument(
        "--out", type=Path, default=None, help="output folder (default: assets/toy in the repository)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="retrain stages whose files already exist")
    t.add_argument(
        "--budget",
        choices=["cpu", "gpu", "smoke"],
        default="cpu",
        help="steps per stage: cpu (this 2-core machine; DeltaEdit-D only with --stages diffusion),"
        " gpu (more steps, DeltaEdit-D too),"
        " smoke (a few steps of every stage, to test the pipeline)",
    )
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    add_time_limit_option(
        t,
        "stop the DeltaEdit-D stage (or its prior's) at a checkpoint once MINUTES have passed (exit code 75);"
        " the same command again continues it",
    )
    t.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=None,
        help="run only these stages (default: every stage but diffusion and prior for --budget cpu,"
        " whose DeltaEdit-D stages run on their own with --stages diffusion prior; every stage otherwise)",
    )
    s = sub.add_parser("sheet", help="write a PNG grid of random renders")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    if args.toy_command == "sheet":
        from ..toy.render import save_contact_sheet

        print(f"wrote {save_contact_sheet(args.out, n=args.n, seed=args.seed)}")
        return 0
    from ..toy.train import ASSETS, FULL, GPU, SMOKE, train_toy

    time_limit = time_limit_seconds(args)
    budget = {"cpu": FULL, "gpu": GPU, "smoke": SMOKE}[args.budget]
    summary = train_toy(
        args.out or ASSETS,
        seed=args.seed,
        budget=budget,
        force=args.force,
        stages=tuple(args.stages or (GAN_STAGES if args.budget == "cpu" else STAGES)),
        device=args.device,
        time_limit=time_limit,
    )
    print(json.dumps(summary, indent=2))
    return 0
