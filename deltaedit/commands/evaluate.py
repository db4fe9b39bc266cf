"""`python -m deltaedit eval --domain toy`: score edits with the toy attribute classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_edit_options, edit_options

NAME = "eval"
HELP = "edit N random toy faces with the standard prompts and report success and preservation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="toy", help="only the toy domain has an attribute classifier")
    p.add_argument("--backbone", choices=["gan", "diffusion"], default="gan")
    p.add_argument("--n", type=int, default=50, help="number of random faces (default 50)")
    p.add_argument(
        "--seed", type=int, default=1000, help="seed of the faces (default 1000, unseen in training)"
    )
    add_edit_options(p)
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the classifier runs there too)")
    p.add_argument(
        "--by-example",
        action="store_true",
        help="edit each face by text and by an example pair A -> B of another face, side by side (either backbone)",
    )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one PNG per face to DIR: the input, then per edit the true edited render, the"
        " backbone's edit, the no-UNet baseline and DeltaEdit-G's",
    )


def run(args) -> int:
    from ..api import load_editor
    from ..domain import Domain
    from ..errors import InputError
    from ..toy.classifier import load_classifier
    from ..toy.evaluate import evaluate

    domain = Domain.open(args.domain, args.weights_dir)
    if "classifier" not in domain.config.weights:
        raise InputError(f"domain {args.domain!r} has no attribute classifier; eval supports --domain toy")
    if args.n < 1:
        raise InputError("--n must be at least 1")
    editor = load_editor(domain, backbone=args.backbone, device=args.device)
    classifier = load_classifier(domain.weight("classifier")).to(args.device)
    if args.by_example:
        from ..toy.evaluate_examples import evaluate_by_example

        print(evaluate_by_example(editor, classifier, n=args.n, seed=args.seed, **edit_options(args)).table())
        return 0
    report = evaluate(editor, classifier, n=args.n, seed=args.seed, save=args.save, **edit_options(args))
    print(report.table())
    return 0
