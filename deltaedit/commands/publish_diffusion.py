"""`python -m deltaedit publish-diffusion RUN_DIR --repo USER/NAME`: upload DeltaEdit-D weights to the hub.

Uploads the run's weights, scheduler, training record and latest sample grid with a generated model
card (`deltaedit.publish`), then prints the commit to pin. Needs a hub write token (`hf auth login`
or HF_TOKEN, or --token).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "publish-diffusion"
HELP = "upload a DeltaEdit-D training run to the Hugging Face hub with a generated model card"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished train-diffusion --out folder")
    p.add_argument("--repo", required=True, help="hub model repo USER/NAME (created if absent)")
    p.add_argument(
        "--eval",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="an evaluation number for the card, e.g. 'reconstruction PSNR=31.2 dB' (repeatable)",
    )
    p.add_argument("--eval-json", type=Path, default=None, help="a JSON object of evaluation numbers")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="hub token (default: the logged-in one or HF_TOKEN)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument(
        "--card-only", action="store_true", help="print the model card and upload nothing"
    )


def run(args: argparse.Namespace) -> int:
    from ..publish import check_run_dir, model_card, parse_eval, publish_diffusion

    numbers = parse_eval(args.eval, args.eval_json)
    if args.card_only:
        print(model_card(check_run_dir(args.run_dir), args.repo, numbers))
        return 0
    result = publish_diffusion(
        args.run_dir,
        args.repo,
        token=args.token,
        private=args.private,
        eval_numbers=numbers,
        commit_message=args.message,
    )
    print(f"uploaded {len(result.files)} files to {result.url}")
    if result.commit:
        print(f"commit {result.commit}")
    print(
        "load it with: DELTAEDIT_D_FFHQ_REPO="
        f"{result.repo_id}" + (f" DELTAEDIT_D_FFHQ_REVISION={result.commit}" if result.commit else "")
        + " python -m deltaedit edit --backbone diffusion --domain ffhq ..."
    )
    return 0
