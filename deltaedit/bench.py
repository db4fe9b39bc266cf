"""`python -m deltaedit bench`: our editing path beside the authors' naive sequence, as a table.

The naive sequence is what `scripts/inference.py` does per edit: encode all 79 prompts at the full
77-token context for both the source and the target text, then decode the source and the edit in
two separate generator passes. Ours embeds only the new phrase (the neutral text is cached) on the
truncated-context fast path, reuses the source's codes and rendering, and decodes all targets in
one pass. Without `--weights-dir` the FFHQ models have random weights in the official shapes:
timings and memory depend on shapes, not on values.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    name: str
    ours: float | None
    baseline: float | None = None
    unit: str = "s"
    target: str = ""
    ok: bool | None = None
    note: str = ""


def _time(fn, repeat: int = 1, sync=lambda: None) -> float:
    """Median wall time of `repeat` calls of `fn` (each between two device syncs)."""
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


GPU_REPEAT = 10  # GPU rows are the median of this many warm runs
STAGES = ("text", "mapper", "refine", "decode", "transfer", "pil")


def stage_breakdown(results) -> tuple[float, str]:
    """(median total, "text 1.0 · mapper 2.0 · ... ms") over EditResults' `timings`."""
    medians = {
        k: statistics.median(r.timings.get(k, 0.0) for r in results)
        for k in STAGES
        if any(k in r.timings for r in results)
    }
    total = statistics.median(r.timings["total"] for r in results)
    return total, " · ".join(f"{k} {v * 1000:.1f}" for k, v in medians.items()) + " ms"


def random_ffhq_clip(device: str = "cpu"):
    """The FFHQ domain's CLIP (ViT-B-32-quickgelu) with random weights, as a `DomainClip`."""
    import open_clip

    from .clip import DomainClip, build_tokenizer
    from .config import load_domain_config

    cfg = load_domain_config("ffhq")
    model = (
        open_clip.create_model(cfg.clip.model_name, pretrained=None).eval().requires_grad_(False).to(device)
    )
    return DomainClip(model, build_tokenizer(cfg.clip.model_name), cfg)


def random_ffhq_editor(device: str = "cpu"):
    """A DeltaEdit-G editor with random weights in the official FFHQ shapes (no files needed)."""
    from .config import load_domain_config
    from .domain import Domain
    from .nn.mapper import DeltaMapper
    from .nn.stylegan2 import Generator
    from .nn.stylespace import layout_from_generator
    from .pipelines.gan import GanEditor

    cfg = load_domain_config("ffhq")
    torch.manual_seed(0)
    G = Generator.from_config(cfg.generator).eval().requires_grad_(False).to(device)
    mapper = (
        DeltaMapper(layout_from_generator(G), clip_dim=cfg.clip.embed_dim)
        .eval()
        .requires_grad_(False)
        .to(device)
    )
    clip = random_ffhq_clip(device)
    fs3 = torch.randn(layout_from_generator(G).total, cfg.clip.embed_dim) * 0.02
    return GanEditor(Domain.open("ffhq"), G, mapper, clip, fs3, device=device)


def bench_text(clip, phrase: str = "face with a sparkling smile", repeat: int = 2) -> list[Row]:
    """The fast text path against full-context `encode_text`, for a `DomainClip`."""
    naive_vec = fast_vec = None

    def naive_fn():
        nonlocal naive_vec
        naive_vec = clip.embed_text_naive(phrase)

    naive = _time(naive_fn, repeat)

    def fast():
        nonlocal fast_vec
        clip.clear_cache() if hasattr(clip, "clear_cache") else clip._cache.clear()
        fast_vec = clip.embed_text(phrase)

    fast_t = _time(fast, repeat)
    diff = float((fast_vec.float().cpu() - naive_vec.float().cpu()).abs().max())
    # The speed-up is a CPU target (the tower's compute); on a GPU only the result must agree.
    on_cpu = clip.device.type == "cpu"
    return [
        Row(
            "embed a new phrase (79 templates)",
            fast_t,
            naive,
            target=">= 3x faster, max diff <= 1e-5" if on_cpu else "max diff <= 1e-5",
            ok=(naive / fast_t >= 3 or not on_cpu) and diff <= 1e-5,
            note=f"speed-up {naive / fast_t:.1f}x, max diff {diff:.1e}",
        ),
    ]


def bench_gan_edit(editor, device: str = "cpu", repeat: int = 1) -> list[Row]:
    from .nn.stylespace import decode_s

    sync = _sync_for(device)
    codes = editor.sample(seed=1)
    editor.clip.embed_text(editor.config.neutral_text)  # loaded once per process in both paths
    counter = iter(range(10**6))

    def ours():
        editor.edit(codes=codes, targets=[f"face with smile {next(counter)}"])

    def naive():
        clip = editor.clip
        dt = clip.embed_text_naive(f"face with smile {next(counter)}") - clip.embed_text_naive(
            editor.config.neutral_text
        )
        with torch.no_grad():
            cond = clip.condition(codes.clip_feature, dt.to(codes.clip_feature.device))
            ds = editor.mapper(codes.s, cond)
            w = codes.w_plus
            decode_s(editor.generator, editor.layout.split(codes.s), w)
            decode_s(editor.generator, editor.layout.split(codes.s + ds), w)

    ours()  # warm-up
    t_ours, t_naive = _time(ours, repeat, sync), _time(naive, repeat, sync)
    on_cpu = not device.startswith("cuda")  # the 45% is a CPU target; the GPU has its own below
    rows = [
        Row(
            f"one edit, new target, {editor.generator.size} px ({device})",
            t_ours,
            t_naive,
            target="<= 45% of naive" if on_cpu else "",
            ok=t_ours <= 0.45 * t_naive if on_cpu else None,
            note=f"{100 * t_ours / t_naive:.0f}% of naive",
        )
    ]

    def reedit():
        return editor.edit(codes=codes, targets=["face with smile 0"], strength=1.5, threshold=0.05)

    t_reedit = _time(reedit, repeat, sync)
    rows.append(
        Row(
            "re-edit, other strength/threshold",
            t_reedit,
            None,
            target="no CLIP work",
            ok=None,
            note="text embedding and source codes are cached",
        )
    )
    # The live strength slider: a kept plan decoded at a new strength, against one bare decode.
    plan = editor.plan(codes=codes, targets=["face with smile 0"])
    t_live = _time(lambda: editor.decode_plan(plan, strength=1.3), repeat, sync)
    t_bare = _time(lambda: decode_s(editor.generator, editor.layout.split(codes.s), codes.w_plus), repeat, sync)
    rows.append(
        Row(
            "live strength re-edit (kept plan)",
            t_live,
            t_bare,
            target="one decode",
            note=f"{t_live / t_bare:.2f}x a bare generator decode",
        )
    )
    if on_cpu:
        return rows
    return rows + _gan_gpu_rows(editor, codes, ours, reedit, counter, repeat, sync)


def _gan_gpu_rows(editor, codes, ours, reedit, counter, repeat: int, sync) -> list[Row]:
    """The GPU targets of one warm edit, eight batched targets and a re-edit, and the stages."""
    rows = []
    n = max(repeat, GPU_REPEAT)
    t1 = _time(ours, n, sync)
    t8 = _time(
        lambda: editor.edit(codes=codes, targets=[f"face with smile {next(counter)}" for _ in range(8)]),
        n,
        sync,
    )
    t_re = _time(reedit, n, sync)
    rows.append(Row(f"GPU: one edit, warm (median of {n})", t1 * 1000, None, "ms", "<= 20 ms", t1 <= 0.020))
    rows.append(Row("GPU: 8 targets batched", t8 * 1000, None, "ms", "<= 80 ms", t8 <= 0.080))
    rows.append(Row("GPU: re-edit of the same target", t_re * 1000, None, "ms", "<= 12 ms", t_re <= 0.012))
    # Per stage: the editor syncs at each stage boundary here, so these runs are a little slower.
    editor.sync_timings = True
    try:
        results = [
            editor.edit(codes=codes, targets=[f"face with smile {next(counter)}"]) for _ in range(n)
        ]
    finally:
        editor.sync_timings = False
    total, parts = stage_breakdown(results)
    rows.append(Row("GPU: one edit by stage (synced)", total * 1000, None, "ms", note=parts))
    return rows


def bench_toy_sweep(device: str = "cpu", repeat: int = 5) -> list[Row]:
    """Toy DeltaEdit-G: one edit, a 7-strength sweep (one batched decode) and a live re-edit."""
    from .api import load_editor

    try:
        editor = load_editor("toy", backbone="gan", device=device)
    except Exception as exc:  # e.g. a checkout without the toy weights
        return [Row("toy sweep of 7", None, note=f"skipped: {exc}"[:100])]
    sync = _sync_for(device)
    codes = editor.sample(seed=1)
    target = ["face with a smile"]
    editor.edit(codes=codes, targets=target)  # warm: text cached, source rendered, as in the app
    t_edit = _time(lambda: editor.edit(codes=codes, targets=target), repeat, sync)
    t_sweep = _time(lambda: editor.sweep(codes=codes, targets=target, count=7), repeat, sync)
    plan = editor.plan(codes=codes, targets=target)
    t_live = _time(lambda: editor.decode_plan(plan, strength=1.2), repeat, sync)
    return [
        Row("toy G: one edit (defaults)", t_edit * 1000, None, "ms"),
        Row("toy G: sweep of 7 strengths", t_sweep * 1000, t_edit * 1000, "ms", "<= 2x one edit",
            t_sweep <= 2 * t_edit, f"{t_sweep / t_edit:.2f}x one edit"),
        Row("toy G: live strength re-edit", t_live * 1000, t_edit * 1000, "ms", "<= 40 ms", t_live <= 0.040,
            "a kept plan decoded at a new strength"),
    ]  # fmt: skip


def _write_random_ffhq_weights(folder: Path) -> None:
    """Random weights saved in the official containers, so loading is measured like the real thing."""
    import numpy as np
    import open_clip
    from safetensors.torch import save_file

    from .config import load_domain_config
    from .nn.e4e import Encoder4Editing
    from .nn.mapper import DeltaMapper
    from .nn.stylegan2 import Generator
    from .nn.stylespace import layout_from_generator

    cfg = load_domain_config("ffhq")
    G = Generator.from_config(cfg.generator)
    torch.save({"g_ema": G.state_dict()}, folder / "stylegan2-ffhq-config-f.pt")
    layout = layout_from_generator(G)
    torch.save(DeltaMapper(layout, clip_dim=512).state_dict(), folder / "net_face.pth")
    enc = Encoder4Editing.from_config(cfg.encoder, n_latent=G.n_latent, style_dim=G.style_dim)
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    torch.save(
        {"state_dict": state, "latent_avg": torch.zeros(G.n_latent, 512), "opts": {}},
        folder / "e4e_ffhq_encode.pt",
    )
    del G, enc, state
    model = open_clip.create_model(cfg.clip.model_name, pretrained=None)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    np.save(folder / "fs3.npy", np.zeros((layout.total, 512), np.float32))


_MEMORY_PROBE = """
import json, sys, torch
from deltaedit import models
from deltaedit.domain import Domain
d = Domain.open("ffhq", sys.argv[1])
models.load_generator(d, "cpu"); models.load_mapper(d, "cpu")
models.load_clip(d, "cpu"); models.load_encoder(d, "cpu")
# VmHWM belongs to this process's own address space (ru_maxrss would carry the parent's over exec).
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_gb": hwm_kb / 2**20}))
"""


def bench_memory(weights_dir: str | None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="deltaedit-bench-") as tmp:
        folder = Path(weights_dir) if weights_dir else Path(tmp)
        if not weights_dir:
            _write_random_ffhq_weights(folder)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(folder)], capture_output=True, text=True, env=env
        )
        if out.returncode:
            return [
                Row(
                    "peak memory, loaded FFHQ editor (CPU)",
                    None,
                    note=out.stderr.strip().splitlines()[-1][:120],
                )
            ]
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_gb"]
    return [
        Row(
            "peak memory, loaded FFHQ editor (CPU)",
            peak,
            None,
            "GB",
            "<= 3.5 GB",
            peak <= 3.5,
            note="generator + mapper + CLIP + e4e, whole process",
        )
    ]


def _sync_for(device: str):
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def _cell(value: float | None) -> str:
    return f"{value:10.3f}" if value is not None else f"{'-':>10s}"


def format_table(rows: list[Row]) -> str:
    head = f"| {'measurement':48s} | {'ours':>10s} | {'naive':>10s} | unit | {'target':32s} | ok   | note"
    lines = [head, "|" + "-" * (len(head) - 1)]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(
            f"| {r.name:48s} | {_cell(r.ours)} | {_cell(r.baseline)} | {r.unit:4s} | {r.target:32s} | {ok:4s} | {r.note}"
        )
    return "\n".join(lines)


def run_benchmarks(
    device: str = "cpu", weights_dir=None, parts=("text", "gan", "sweep", "memory", "diffusion")
) -> list[Row]:
    rows: list[Row] = []
    editor = clip = None
    if "gan" in parts or ("text" in parts and weights_dir):
        if weights_dir:
            from .pipelines.gan import GanEditor

            editor = GanEditor.from_weights("ffhq", device, weights_dir)
        else:
            editor = random_ffhq_editor(device)
        clip = editor.clip
    elif "text" in parts:
        clip = random_ffhq_clip(device)  # the text part needs no generator or mapper
    if "text" in parts:
        rows += bench_text(clip)
    if "gan" in parts:
        rows += bench_gan_edit(editor, device)
    if "sweep" in parts:
        rows += bench_toy_sweep(device)
    if "memory" in parts and not device.startswith("cuda"):
        rows += bench_memory(weights_dir)
    if "diffusion" in parts:
        from .bench_diffusion import bench_diffusion  # here: it imports this module

        rows += bench_diffusion(device)
    rows.append(
        Row("process peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, unit="GB")
    )
    return rows
