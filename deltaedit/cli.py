"""`python -m deltaedit COMMAND ...`.

Each command lives in its own module under `deltaedit/commands/` and exposes `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`. Commands are imported lazily so `--help` is fast
and one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import DeltaEditError, TrainingPaused

# A training run that stopped at its --time-limit with a checkpoint (EX_TEMPFAIL: try again).
EXIT_PAUSED = 75

# command name -> module under deltaedit.commands
COMMANDS = {
    "edit": "edit",
    "bench": "bench",
    "make-codes": "make_codes",
    "train-mapper": "train_mapper",
    "relevance": "relevance",
    "train-diffusion": "train_diffusion",
    "publish-diffusion": "publish_diffusion",
    "toy": "toy",
    "eval": "evaluate",
    "analyze": "analyze",
    "download": "download",
    "reliability": "reliability",
}


def _load(module: str):
    return importlib.import_module(f"deltaedit.commands.{module}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deltaedit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only import the chosen command's module (others just get a stub entry for --help).
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, module in COMMANDS.items():
        try:
            mod = _load(module) if name == chosen or chosen is None else None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("deltaedit.commands"):
                continue  # command not built yet
            raise
        if chosen is None and mod is None:
            continue
        p = sub.add_parser(name, help=getattr(mod, "HELP", None), description=getattr(mod, "HELP", None))
        if mod is not None:
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except TrainingPaused as exc:  # not a failure: a scheduler reruns the command to continue
        print(f"paused: {exc}", file=sys.stderr)
        return EXIT_PAUSED
    except DeltaEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
