"""`python -m deltaedit bench`: speed and memory of our path beside the authors' naive sequence."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "bench"
HELP = "benchmark editing speed and memory (prints a table)"
PARTS = ("text", "gan", "sweep", "memory", "diffusion")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="real FFHQ weights (default: random weights, official shapes)",
    )
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")


def run(args) -> int:
    import torch

    from ..bench import format_table, run_benchmarks

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    rows = run_benchmarks(args.device, args.weights_dir, tuple(args.only))
    print(format_table(rows))
    return 0
