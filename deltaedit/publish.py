"""Publish a DeltaEdit-D training run to the Hugging Face hub, with a generated model card.

`publish_diffusion(run_dir, repo_id)` uploads what `DiffusionBackbone.from_pretrained` reads
(config.json, diffusion_pytorch_model.safetensors, scheduler/), the run's record (training.json,
log.jsonl), the latest sample grid, and a README.md model card written from the run: the training
command, steps, data, base model, and evaluation numbers when given. Optimizer checkpoints and
encoded shards stay local. One `create_repo` + one `upload_folder` commit; the returned commit id
is what a user (or the weights registry) pins:

    DELTAEDIT_D_FFHQ_REPO=USER/NAME DELTAEDIT_D_FFHQ_REVISION=<commit> python -m deltaedit edit ...
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, WeightsError

# What a DeltaEdit-D folder must hold (weights.DIFFUSION_FILES downloads exactly these).
REQUIRED_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")
RECORD_FILES = ("training.json", "log.jsonl")


@dataclass
class PublishResult:
    repo_id: str
    url: str
    commit: str | None
    files: list[str]


# ---------------------------------------------------------------------------------------------- reading the run
def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise InputError(
            f"{run_dir} is not a finished DeltaEdit-D run: {', '.join(missing)} missing (train-diffusion"
            " writes them when it finishes; an interrupted run can be finished with --resume latest)"
        )
    return run_dir


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_summary(run_dir: str | Path) -> dict:
    """What the card says about a run, read from its files (absent parts are left out)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    training = _read_json(run_dir / "training.json")
    summary: dict = {
        "style_dim": config.get("style_dim"),
        "sample_size": config.get("sample_size"),
        "render_channels": config.get("render_channels", 0),
        "command": training.get("command"),
        "settings": training.get("settings", {}),
    }
    state = _read_json(run_dir / "checkpoint" / "state.json")
    losses = []
    log_file = run_dir / "log.jsonl"
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "loss" in record:
                losses.append((record.get("step"), record["loss"]))
    summary["steps"] = state.get("step") or (losses[-1][0] if losses else None)
    if losses:
        tail = [loss for _, loss in losses[-100:]]
        summary["final_loss"] = sum(tail) / len(tail)
        summary["final_loss_steps"] = len(tail)
    try:
        from safetensors import safe_open

        with safe_open(str(run_dir / "diffusion_pytorch_model.safetensors"), "pt") as f:
            total = 0
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
        summary["parameters"] = total
    except Exception:  # noqa: BLE001 - the card just leaves the count out
        pass
    samples = sorted((run_dir / "samples").glob("step_*.png")) if (run_dir / "samples").is_dir() else []
    summary["sample"] = samples[-1].name if samples else None
    return summary


def parse_eval(pairs: list[str] | None, json_file: str | Path | None = None) -> dict:
    """Evaluation numbers from NAME=VALUE strings and/or a flat JSON object file."""
    numbers: dict = {}
    if json_file:
        try:
            data = json.loads(Path(json_file).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--eval-json {json_file}: not a readable JSON file ({exc})") from exc
        if not isinstance(data, dict):
            raise InputError(f"--eval-json {json_file} must hold a JSON object of name: value")
        numbers.update(data)
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"--eval expects NAME=VALUE (e.g. 'reconstruction PSNR=31.2 dB'), got {pair!r}")
        numbers[name.strip()] = value.strip()
    return numbers


# ---------------------------------------------------------------------------------------------- the card
def _describe_data(settings: dict) -> str:
    data = settings.get("data") or []
    domain = settings.get("domain")
    parts = []
    for source in data:
        if source == "generator":
            parts.append(
                f"(image, s) pairs drawn on the fly from the {domain} StyleGAN2 (truncation levels"
                f" {settings.get('truncation')}, {settings.get('generator_noise', 'random')} per-pixel"
                f" noise, stream seed {settings.get('seed')}); s is the exact style code of each image"
            )
        else:
            parts.append(f"photos from `{Path(source).name}` with style codes from the {domain} encoder (e4e)")
    if len(parts) == 2:
        mix = settings.get("data_mix")
        return f"{parts[0]}; mixed with {parts[1]} ({0.25 if mix is None else mix:.0%} of each batch)"
    return parts[0] if parts else "not recorded"


def _usage(repo_id: str, domain: str) -> list[str]:
    """How the project loads this repo for `domain`: its registry entry's environment variables,
    else a local copy in --weights-dir."""
    from . import weights
    from .config import load_domain_config

    edit = (
        f"python -m deltaedit edit --backbone diffusion --domain {domain} --image face.jpg"
        ' --target "face with a smile" --out smile.png'
    )
    try:
        src = weights.get_source(load_domain_config(domain).weights["diffusion"])
    except (KeyError, InputError):
        src = None
    if src is not None and src.hub_repo_env:
        pin = f" {src.revision_env}=<commit of this upload>" if src.revision_env else ""
        return ["```", f"{src.hub_repo_env}={repo_id}{pin} \\", f"  {edit}", "```"]
    name = src.filename if src is not None else "diffusion"
    return ["```", f"hf download {repo_id} --local-dir WEIGHTS/{name}", f"{edit} --weights-dir WEIGHTS", "```"]


def model_card(run_dir: str | Path, repo_id: str, eval_numbers: dict | None = None) -> str:
    """README.md for the hub repo of a DeltaEdit-D run."""
    s = run_summary(run_dir)
    settings = s["settings"]
    init = settings.get("init")
    base_model = init if init and not Path(str(init)).exists() and "/" in str(init) else None
    domain = settings.get("domain") or "ffhq"
    front = ["---", "library_name: diffusers", "tags:"]
    front += [f"- {t}" for t in ("deltaedit", "deltaedit-d", "style-conditioned-diffusion", "image-editing")]
    if base_model:
        front.append(f"base_model: {base_model.split('@')[0]}")
    front.append("---")
    lines = [
        *front,
        "",
        f"# DeltaEdit-D ({domain})",
        "",
        "A style-conditioned diffusion UNet for text-driven image editing with DeltaEdit (Lyu et al.,"
        " \"DeltaSpace\", arXiv 2310.08785): a diffusers `UNet2DModel` conditioned on a StyleGAN2"
        " style code s; an edit decodes the image's DDIM inversion under s + Δs, where Δs comes from"
        " the DeltaEdit mapper and a text prompt. Load it with the `deltaedit` project.",
        "",
        "## Model",
        "",
        f"- image size: {s['sample_size']} px; style code size: {s['style_dim']}",
    ]
    if s.get("parameters"):
        lines.append(f"- parameters: {s['parameters'] / 1e6:.1f}M")
    if s.get("render_channels"):
        lines.append(
            f"- rendering-conditioned: the generator's rendering R(s) enters as {s['render_channels']}"
            " extra input channels and the model denoises the residual x0 − R(s)"
        )
    if init:
        lines.append(
            f"- initialised from `{init}` (unconditional DDPM; the style conditioning started at zero,"
            " so at step 0 this model equalled it exactly)"
        )
    lines += ["", "## Training", ""]
    if s.get("command"):
        lines += ["```", s["command"], "```", ""]
    lines.append(f"- steps: {s['steps'] if s['steps'] is not None else 'not recorded'}")
    for key, label in (("batch_size", "batch size per process"), ("lr", "learning rate"),
                       ("mixed_precision", "mixed precision"), ("ema_decay", "EMA decay")):
        if key in settings:
            lines.append(f"- {label}: {settings[key]}")
    lines.append(f"- data: {_describe_data(settings)}")
    if s.get("final_loss") is not None:
        lines.append(f"- mean training loss over the last {s['final_loss_steps']} steps: {s['final_loss']:.4f}")
    lines += ["", "## Evaluation", ""]
    if eval_numbers:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in eval_numbers.items()]
    else:
        lines.append("No evaluation numbers were given when this model was published.")
    if s.get("sample"):
        lines += [
            "",
            f"![samples](samples/{s['sample']}) (top row: training images; bottom row: sampled from their s)",
        ]
    lines += ["", "## Use", "", *_usage(repo_id, domain)]
    lines += [
        "",
        "Only config.json, diffusion_pytorch_model.safetensors and scheduler/ are needed.",
        "",
        "## Licence",
        "",
        "Check the licences of what this model was made from before use: the base model (if any), the"
        " StyleGAN2 generator that drew the training images (NVIDIA's FFHQ StyleGAN2 weights are for"
        " non-commercial use) and any photos.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- upload
def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # a 0.5 GB weights file is not copied when the folders share a disk
    except OSError:
        shutil.copy2(src, dest)


def stage(run_dir: Path, staging: Path, card: str) -> list[str]:
    """Fill `staging` with the files to upload; returns their paths relative to it."""
    files = list(REQUIRED_FILES) + [f for f in RECORD_FILES if (run_dir / f).is_file()]
    files += [str(p.relative_to(run_dir)) for p in sorted((run_dir / "scheduler").iterdir()) if p.is_file()]
    summary_sample = run_summary(run_dir).get("sample")
    if summary_sample:
        files.append(f"samples/{summary_sample}")
    files = list(dict.fromkeys(files))
    for rel in files:
        _link_or_copy(run_dir / rel, staging / rel)
    (staging / "README.md").write_text(card)
    return sorted([*files, "README.md"])


def publish_diffusion(
    run_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    eval_numbers: dict | None = None,
    commit_message: str | None = None,
    api=None,
) -> PublishResult:
    """Create (or reuse) the hub model repo `repo_id` and upload the run to it in one commit."""
    run_dir = check_run_dir(run_dir)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"--repo must be USER/NAME (or ORG/NAME), got {repo_id!r}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    card = model_card(run_dir, repo_id, eval_numbers)
    steps = run_summary(run_dir).get("steps")
    message = commit_message or (f"DeltaEdit-D weights ({steps} steps)" if steps else "DeltaEdit-D weights")
    try:
        repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir, prefix=".publish-") as tmp:
            files = stage(run_dir, Path(tmp), card)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, repo_type="model", commit_message=message
            )
    except (InputError, WeightsError):
        raise
    except Exception as exc:  # hub / network errors: say what to check
        raise WeightsError(
            f"could not publish to the hub repo {repo_id}: {exc}. Check the network, and that a write"
            " token is set (`hf auth login` or HF_TOKEN)"
        ) from exc
    url = str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
    commit = getattr(info, "oid", None)
    return PublishResult(repo_id, url, commit, files)
