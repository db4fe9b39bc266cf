"""`python -m deltaedit train-diffusion`: train the DeltaEdit-D UNet on (image, style code) pairs.

Data: `--data DIR` holding `*.images.npy` + `*.styles.npy` shards, or a folder of aligned images
that is first encoded with `--domain`'s encoder (image -> W+ -> S). Multi-GPU:
`accelerate launch -m deltaedit train-diffusion ...`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "train-diffusion"
HELP = "train the style-conditioned diffusion model (DeltaEdit-D) on images and their style codes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder of .npy shards or of aligned images")
    p.add_argument("--out", type=Path, required=True, help="output folder: weights, samples, checkpoint")
    p.add_argument(
        "--config",
        default="toy",
        help="UNet preset (toy: 64 px, ffhq: 256 px, tiny) or a config.json file (default: toy)",
    )
    p.add_argument(
        "--domain", default=None, help="encode an image folder with this domain's encoder (ffhq, toy)"
    )
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with local weight files")
    p.add_argument("--device", default=None, help="device for encoding images (default: cuda if available)")
    p.add_argument("--steps", type=int, default=100_000, help="total optimisation steps (default 100000)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up (default 500)")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay (default 0.9999)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="checkpoint folder, or 'latest' for OUT/checkpoint")
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid every K steps")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save a checkpoint every K steps")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def domain_style_fn(domain: str, device: str, weights_dir=None):
    """images [B,3,H,W] in [-1,1] -> flat S codes [B,S] with the domain's encoder and generator."""
    import torch
    import torch.nn.functional as F

    from ..config import load_domain_config
    from ..models import load_encoder, load_generator
    from ..nn.stylespace import w_plus_to_s

    size = load_domain_config(domain).encoder.input_size
    G = load_generator(domain, device, weights_dir)
    encoder, latent_avg = load_encoder(domain, device, weights_dir)

    @torch.no_grad()
    def style_fn(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        w_plus = encoder(x) + latent_avg
        return torch.cat(w_plus_to_s(G, w_plus), dim=1)

    return style_fn


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.diffusion import train_diffusion

    style_fn = None
    if args.domain:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        style_fn = domain_style_fn(args.domain, device, args.weights_dir)
    config = args.config
    if Path(config).is_file():
        config = json.loads(Path(config).read_text())
    out = train_diffusion(
        args.data,
        config=config,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        resume=args.resume,
        sample_every=args.sample_every,
        style_fn=style_fn,
        progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision,
        num_workers=args.num_workers,
    )
    print(f"weights written to {out} (load with DiffusionBackbone.from_pretrained)")
    return 0
