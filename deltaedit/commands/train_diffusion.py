"""`python -m deltaedit train-diffusion`: train the DeltaEdit-D UNet on (image, style code) pairs.

Data (`--data`, repeatable):
- `DIR` holding `*.images.npy` + `*.styles.npy` shards, or a folder of aligned images that is first
  encoded with `--domain`'s encoder (image -> W+ -> S);
- `generator`: (image, exact s) pairs drawn on the fly from `--domain`'s StyleGAN2 (seeded by
  `--seed`, resumable; see `deltaedit.training.generator_data`). A photo folder given as a second
  `--data` is mixed in: `--data-mix F` of the rows come from it.

`--init HUB_REPO_OR_DIR` starts from a public unconditional DDPM (e.g. google/ddpm-ema-celebahq-256)
with zero-initialised conditioning (`deltaedit.training.pretrained_init`). `--estimate N` times N
training steps on this device and prints the projected hours of the schedule (`--steps`).

The FFHQ recipe is in docs/ffhq-diffusion.md. Multi-GPU: `accelerate launch -m deltaedit train-diffusion ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import tempfile
import time
from pathlib import Path

from .options import add_time_limit_option, time_limit_seconds

NAME = "train-diffusion"
HELP = "train the style-conditioned diffusion model (DeltaEdit-D) on images and their style codes"
GENERATOR = "generator"
ESTIMATE_WARMUP = 2  # steps run before timing starts (allocator, cuDNN autotuning, first decodes)
TRAINING_FILE = "training.json"  # the command and its settings, written into --out (model cards read it)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="folder of .npy shards or of aligned images, or 'generator' (pairs drawn from --domain's"
        " StyleGAN2); give it twice ('generator' and a folder) to mix with --data-mix",
    )
    p.add_argument(
        "--data-mix",
        type=float,
        default=None,
        help="with --data generator and a folder: fraction of each batch from the folder (default 0.25)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder: weights, samples, checkpoint")
    p.add_argument(
        "--config",
        default="toy",
        help="UNet preset (toy: 64 px, ffhq: 256 px, tiny) or a config.json file (default: toy);"
        " ignored with --init",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="HUB_REPO_OR_DIR",
        help="start from a public unconditional diffusers UNet2DModel (hub repo id, e.g."
        " google/ddpm-ema-celebahq-256, or its folder); the style conditioning starts at zero",
    )
    p.add_argument(
        "--render-channels",
        type=int,
        default=None,
        help="with --init: channels of the generator rendering R(s) fed to the UNet (0: none;"
        " default: the ffhq preset's)",
    )
    p.add_argument(
        "--domain",
        default=None,
        help="the domain (ffhq, toy) whose encoder encodes an image folder and whose generator"
        " --data generator samples",
    )
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with local weight files")
    p.add_argument(
        "--device",
        default=None,
        help="device for encoding and generating (default: this process's GPU if any)",
    )
    _add_schedule_arguments(p)
    _add_generator_data_arguments(p.add_argument_group("--data generator"))
    p.add_argument(
        "--estimate",
        type=int,
        default=None,
        metavar="N",
        help="time N training steps on this device (after a short warm-up), print s/step, memory and"
        " the projected hours of --steps, and write nothing to --out",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """How long and how fast to train, and when to sample, save and stop."""
    p.add_argument("--steps", type=int, default=100_000, help="total optimisation steps (default 100000)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up (default 500)")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay (default 0.9999)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training run and of --data generator")
    p.add_argument("--resume", default=None, help="checkpoint folder, or 'latest' for OUT/checkpoint")
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid every K steps")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save a checkpoint every K steps")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    add_time_limit_option(
        p, "stop at a checkpoint after MINUTES (exit code 75); rerun with --resume latest to continue"
    )


def _add_generator_data_arguments(g) -> None:
    """How `--data generator` draws its training images."""
    g.add_argument(
        "--truncation",
        default="0.5,0.7,1.0",
        help="truncation levels mixed row by row, comma-separated (default 0.5,0.7,1.0)",
    )
    g.add_argument(
        "--generator-noise",
        choices=("random", "fixed"),
        default="random",
        help="per-pixel noise of the decoded images: seeded random (default) or the generator's fixed buffers",
    )
    g.add_argument(
        "--decode-batch", type=int, default=16, help="rows decoded per generator call (default 16)"
    )
    g.add_argument(
        "--random-generator",
        action="store_true",
        help="the domain's generator architecture with random weights (timing a GPU without downloads)",
    )


def domain_style_fn(domain: str, device: str, weights_dir=None):
    """images [B,3,H,W] in [-1,1] -> flat S codes [B,S] with the domain's encoder and generator."""
    import torch
    import torch.nn.functional as F

    from ..domain import Domain
    from ..models import load_encoder, load_generator
    from ..nn.stylespace import w_plus_to_s

    domain = Domain.open(domain, weights_dir)
    size = domain.config.encoder.input_size
    G = load_generator(domain, device)
    encoder, latent_avg = load_encoder(domain, device)

    @torch.no_grad()
    def style_fn(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        w_plus = encoder(x) + latent_avg
        return torch.cat(w_plus_to_s(G, w_plus), dim=1)

    return style_fn


def _device(args) -> str:
    if args.device:
        return args.device
    from accelerate import PartialState

    return str(PartialState().device)  # this process's GPU under `accelerate launch`


def _split_data(args) -> tuple[bool, list[str]]:
    """(uses the generator, the folders) from the --data flags, checked."""
    from ..errors import InputError

    sources = list(args.data)
    generator = GENERATOR in sources
    folders = [d for d in sources if d != GENERATOR]
    if sources.count(GENERATOR) > 1 or len(folders) > 1 or not sources:
        raise InputError("give --data once, or twice as 'generator' plus one folder to mix in")
    if args.data_mix is not None and not (generator and folders):
        raise InputError("--data-mix mixes a folder into --data generator: give both")
    if generator and not args.domain:
        raise InputError("--data generator needs --domain (ffhq, toy): the generator to sample")
    return generator, folders


def _image_size(args, init_model) -> int:
    from ..training.diffusion import config_sample_size

    return init_model.config.sample_size if init_model is not None else config_sample_size(_config(args))


def _config(args):
    config = args.config
    if Path(config).is_file():
        config = json.loads(Path(config).read_text())
    return config


def build_init(args, style_dim: int):
    """The --init model (None without it)."""
    if not args.init:
        return None
    from ..nn.style_unet import PRESETS
    from ..training.pretrained_init import init_from_pretrained

    render = args.render_channels
    if render is None:
        render = int(PRESETS["ffhq"].get("render_channels", 0))
    return init_from_pretrained(args.init, style_dim, render, weights_dir=args.weights_dir)


def _style_dim(args) -> int | None:
    """The domain's S size (None without --domain: then the data says)."""
    if not args.domain:
        return None
    import torch

    from ..config import load_domain_config
    from ..nn.stylegan2 import Generator
    from ..nn.stylespace import layout_from_generator

    with torch.device("meta"):  # architecture only: no weights are made or read
        G = Generator.from_config(load_domain_config(args.domain).generator)
    return layout_from_generator(G).total


def build_data(args, image_size: int, render_channels: int, style_fn):
    """What train_diffusion gets as `dataset`: a folder, or a GeneratorStream (with photos mixed in)."""
    from ..training.diffusion import resolve_dataset
    from ..training.generator_data import domain_generator_stream

    generator, folders = _split_data(args)
    if not generator:
        return folders[0]
    photos, fraction = None, 0.0
    if folders:
        photos = resolve_dataset(folders[0], args.out or Path(tempfile.gettempdir()), image_size, style_fn)
        fraction = 0.25 if args.data_mix is None else args.data_mix
    return domain_generator_stream(
        args.domain,
        image_size,
        device=_device(args),
        weights_dir=args.weights_dir,
        random_weights=args.random_generator,
        seed=args.seed,
        truncations=args.truncation,
        noise=args.generator_noise,
        decode_batch=args.decode_batch,
        photos=photos,
        photo_fraction=fraction,
        renders=render_channels > 0,
    )


def command_line(args: argparse.Namespace) -> str:
    """The `python -m deltaedit train-diffusion ...` line that gives `args` (flags left at their
    default are left out), however the command was started (shell, `main([...])`, accelerate)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    words = [NAME]
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            words.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                words += [flag, str(item)]
    return "python -m deltaedit " + shlex.join(words)


def write_training_record(args, out: Path) -> None:
    """OUT/training.json: the command line and its settings (read by `publish-diffusion`'s card)."""
    from ..fileio import write_json

    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")
    }
    settings.pop("command", None)
    settings.pop("verbose", None)
    record = {"command": command_line(args), "settings": settings}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / TRAINING_FILE, record)


def estimate(args, train_kwargs: dict) -> dict:
    """Run ESTIMATE_WARMUP + N steps in a scratch folder; returns the measured figures."""
    import torch

    from ..training.diffusion import train_diffusion

    n = args.estimate
    if n < 1:
        from ..errors import InputError

        raise InputError("--estimate needs N >= 1 steps to time")
    parent = args.out.parent if args.out else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".estimate-") as tmp:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        train_kwargs = {
            **train_kwargs,
            "out_dir": tmp,
            "steps": n + ESTIMATE_WARMUP,
            "resume": None,
            "sample_every": 0,
            "checkpoint_every": 0,
            "time_limit": None,
        }
        train_diffusion(**train_kwargs)
        total = time.time() - t0
        times = [json.loads(line)["time"] for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    steps = [b - a for a, b in zip(times[ESTIMATE_WARMUP - 1 :], times[ESTIMATE_WARMUP:])]
    per_step = sum(steps) / len(steps)
    result = {
        "device": _device_name(),
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
        "timed_steps": len(steps),
        "seconds_per_step": per_step,
        "images_per_second": args.batch_size / per_step,
        "schedule_steps": args.steps,
        "projected_hours": per_step * args.steps / 3600,
        "setup_and_save_seconds": total - sum(steps),
    }
    if torch.cuda.is_available():
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads)"


def format_estimate(r: dict) -> str:
    lines = [
        f"timed {r['timed_steps']} steps at batch {r['batch_size']} on {r['device']},"
        f" mixed precision {r['mixed_precision']}:",
        f"  {r['seconds_per_step']:.3f} s per step, {r['images_per_second']:.1f} images/s",
    ]
    if "peak_gpu_memory_gib" in r:
        lines.append(f"  peak GPU memory {r['peak_gpu_memory_gib']:.1f} GiB")
    lines.append(
        f"  projected: {r['schedule_steps']} steps (--steps) = {r['projected_hours']:.1f} hours on this"
        " device (one process; N GPUs with `accelerate launch` divide it by about N)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.diffusion import train_diffusion

    time_limit = time_limit_seconds(args)
    if args.out is None and args.estimate is None:
        raise InputError("--out is required (the folder for weights, samples and checkpoints)")
    _, folders = _split_data(args)
    style_fn = None
    if args.domain and any(not (Path(f).is_dir() and any(Path(f).glob("*.images.npy"))) for f in folders):
        style_fn = domain_style_fn(args.domain, _device(args), args.weights_dir)
    style_dim = _style_dim(args)
    if args.init and style_dim is None:
        raise InputError("--init needs --domain: the conditioning's size is the domain's style code size")
    init = build_init(args, style_dim) if args.init else None
    if init is not None:
        render_channels = int(init.config.render_channels)
    else:
        render_channels = _render_channels_of(_config(args))
    data = build_data(args, _image_size(args, init), render_channels, style_fn)
    train_kwargs = dict(
        dataset=data,
        config=dict(init.config) if init is not None else _config(args),
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
        init=init,
        time_limit=time_limit,
    )
    if args.estimate is not None:
        result = estimate(args, train_kwargs)
        print(format_estimate(result))
        return 0
    write_training_record(args, args.out)
    out = train_diffusion(**train_kwargs)
    print(
        f"weights written to {out} (load with DiffusionBackbone.from_pretrained; publish with"
        f" `python -m deltaedit publish-diffusion {out} --repo USER/NAME`)"
    )
    return 0


def _render_channels_of(config) -> int:
    from ..nn.style_unet import PRESETS

    if isinstance(config, dict):
        return int(config.get("render_channels", 0))
    if isinstance(config, str) and config in PRESETS:
        return int(PRESETS[config].get("render_channels", 0))
    return 0
