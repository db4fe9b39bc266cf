"""`python -m deltaedit edit`: edit one photo or W+ latent with a text prompt, or by example pictures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_edit_options, edit_options

NAME = "edit"
HELP = "edit a photo or W+ latents with a target text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", choices=["gan", "diffusion"], default="gan")
    p.add_argument("--domain", default="ffhq", help="domain id: ffhq or toy (default: ffhq)")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="folder holding the weight files under their official names",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="a photo (JPEG/PNG/...)")
    src.add_argument("--latents", type=Path, help="a .npy of W+ latents, shape [18, 512] or [1, 18, 512]")
    p.add_argument(
        "--index", type=int, default=None, help="row to edit when --latents holds a batch [N, 18, 512]"
    )
    p.add_argument(
        "--no-align", action="store_true", help="the photo is already aligned (skip face alignment)"
    )
    p.add_argument("--target", action="append", help="target text; repeat for several edits")
    p.add_argument(
        "--example",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="edit by example: do to the face what changes picture A into picture B",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="edit by example: move the face toward this picture (the threshold decides how much comes along)",
    )
    p.add_argument("--source", default=None, help="source text (default: the domain's neutral text)")
    p.add_argument(
        "--sweep",
        type=int,
        metavar="K",
        help="render the first edit at K strengths from 0 to twice the strength (one batched decode):"
        " writes K frames (out_0 ... out_K-1) and a looping animation (--animation)",
    )
    p.add_argument("--animation", type=Path, default=None, help="with --sweep: the GIF or WebP (default: out.gif)")
    add_edit_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--out", type=Path, required=True, help="edited PNG (several targets: out, out_1, out_2, ...)"
    )
    p.add_argument("--source-out", type=Path, default=None, help="also write the reconstructed source PNG")


def _out_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out] + [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(1, n)]


def _write_sweep(sweep, args) -> int:
    from ..imageio import save_animation, save_png

    for notice in sweep.notices:
        print(f"notice: {notice}", file=sys.stderr)
    frames = [args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix or '.png'}") for i in range(len(sweep.frames))]
    for path, image, strength in zip(frames, sweep.frames, sweep.strengths):
        save_png(image, path)
        print(f"wrote {path} (strength {strength:g})")
    animation = args.animation or args.out.with_suffix(".gif")
    save_animation(sweep.frames, animation)
    print(f"wrote {animation}")
    return 0


def run(args) -> int:
    import torch

    from ..api import load_editor
    from ..errors import InputError
    from ..imageio import load_image, load_latents, save_png

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if not (args.target or args.example or args.reference):
        raise InputError("say what to change: --target TEXT, --example A.png B.png or --reference R.png")
    # Read the input before loading about a gigabyte of models, so bad input fails in a second.
    pictures = {}
    if args.example:
        pictures["example"] = tuple(load_image(path) for path in args.example)
    if args.reference:
        pictures["reference"] = load_image(args.reference)
    if args.image is not None:
        given = dict(image=load_image(args.image))
    else:
        from ..config import load_domain_config
        from ..nn.stylegan2 import Generator

        with torch.device("meta"):  # the W+ shape only; no weights
            G = Generator.from_config(load_domain_config(args.domain).generator)
        latents = load_latents(args.latents, n_latent=G.n_latent, style_dim=G.style_dim, index=args.index)
        given = dict(latents=latents)
    editor = load_editor(args.domain, backbone=args.backbone, device=device, weights_dir=args.weights_dir)
    given["align"] = not args.no_align  # photos and example pictures alike
    request = dict(**given, targets=args.target, source=args.source, **pictures, **edit_options(args))
    if args.sweep is not None:
        return _write_sweep(editor.sweep(count=args.sweep, **request), args)
    result = editor.edit(**request)
    for notice in result.notices:
        print(f"notice: {notice}", file=sys.stderr)
    for path, image in zip(_out_paths(args.out, len(result.edited_images)), result.edited_images):
        save_png(image, path)
        print(f"wrote {path}")
    if args.source_out is not None:
        save_png(result.source_image, args.source_out)
        print(f"wrote {args.source_out}")
    return 0
