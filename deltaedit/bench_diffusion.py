"""`bench`'s DeltaEdit-D rows: the toy edit and its live re-edit; on a GPU the toy model's
precision and the FFHQ-sized UNet's speed (random weights: the timings depend on shapes only)."""

from __future__ import annotations

from functools import partial

import torch

from .bench import Row, _sync_for, _time


def bench_diffusion(device: str = "cpu") -> list[Row]:
    """DeltaEdit-D: the toy edit (50 inversion + 50 sampling steps) on this device; on a GPU also
    the half-precision check on the toy weights and the FFHQ-sized UNet at 256 px."""
    from .pipelines.diffusion_editor import DiffusionEditor

    try:
        editor = DiffusionEditor.load("toy", device)
    except Exception as exc:  # noqa: BLE001 - reported in the table, not fatal for the benchmark
        return [Row("DeltaEdit-D toy edit", None, note=f"skipped: {exc}"[:100])]
    codes = editor.sample(seed=0)
    # One whole edit as the app runs it: the toy's DeltaEdit-D defaults (refinement of Δs included),
    # the rendering R(s') of the target for the residual model, 50 inversion + 50 sampling steps.
    edit = partial(editor.edit, codes=codes, targets=["face with eyeglasses"])
    edit(steps=5)  # warm-up: traces (CPU) or captures (GPU) the UNet once per input shape
    sync = _sync_for(device)
    # Best of 3, as timeit: other load on the machine only ever adds time.
    elapsed = _time(partial(edit, steps=50), 3, sync)
    without = _time(partial(edit, steps=50, refine_steps=0), 3, sync)
    on_cpu = device == "cpu"
    refine_steps = editor.gan.resolve_refine_steps(None, backbone="diffusion")
    runner = "" if on_cpu else f"{_dtype_name(editor.backbone.unet.dtype)}, {_unet_runner(editor.backbone)}; "
    design = "residual on R(s)" if editor.backbone.render_channels else "full image"
    extra = editor.config.extra
    if editor.backbone.render_channels:  # the rule the editor applies (DiffusionEditor.edit)
        design += f", {extra.get('diffusion_residual', 'decode')}"
        if extra.get("diffusion_change_ramp") is not None:
            lo, hi = extra["diffusion_change_ramp"]
            design += f", change ramp {lo:g}-{hi:g}"
        elif extra.get("diffusion_change_threshold") is not None:
            design += f", change mask {extra['diffusion_change_threshold']:g}"
    depth = float(extra.get("diffusion_depth", 1.0))
    if depth < 1:  # the chain the toy default runs: that fraction of the 50 steps each way
        design += f", depth {depth:g} ({round(50 * depth)}+{round(50 * depth)} UNet steps)"
    if editor.prior is not None:  # the image prior's redraw: its depth of 50 steps, draws batched
        prior = editor.prior
        design += f", image prior {round(prior.steps * prior.depth)} steps x {prior.draws} draws"
        if prior.structure_sigma > 0:
            design += f" above {prior.structure_sigma:g} px"
    rows = [
        Row(
            f"DeltaEdit-D toy edit, 64 px, 50+50 steps, refinement included ({device}, median of 3)",
            elapsed,
            without,
            target=("<= 1.5 s" if on_cpu else "<= 0.3 s"),
            ok=elapsed <= (1.5 if on_cpu else 0.3),
            note=f"{runner}{design}; refine_steps {refine_steps}; naive column: no refinement",
        )
    ]
    # The live strength slider: a kept plan (Δs and the inverted input) decoded at a new strength.
    plan = editor.plan(codes=codes, targets=["face with eyeglasses"], steps=50)
    live = _time(lambda: editor.decode_plan(plan, strength=1.3), 3, sync)
    rows.append(
        Row(
            "DeltaEdit-D live strength re-edit (kept plan)",
            live,
            elapsed,
            target="one decoding pass",
            note=f"{live / elapsed:.2f}x the whole edit; no text, mapper, refinement or inversion",
        )
    )
    if str(device).startswith("cuda"):
        rows += _toy_precision_rows(editor, device)
        rows += _ffhq_sized_unet_rows(device)
    return rows


HALF_DTYPES = (torch.float16, torch.bfloat16)


def _unet_runner(backbone) -> str:
    """How the UNet ran: captured CUDA graphs only if every shape was captured, else eager."""
    from .pipelines.diffusion import CudaGraphUNet

    runner = backbone.denoiser
    captured = isinstance(runner, CudaGraphUNet) and all(g is not None for g in runner._graphs.values())
    return "CUDA graphs" if captured else "eager"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _toy_precision_rows(editor, device: str, n: int = 8) -> list[Row]:
    """Reconstruction PSNR (α = 0, 50 + 50 steps) of the shipped toy weights per precision."""
    from . import weights
    from .pipelines.diffusion import DiffusionBackbone, psnr

    path = weights.resolve(editor.config.weights["diffusion"], None)
    sources = [editor.sample(seed=seed) for seed in range(n)]
    x0 = torch.cat([editor._input_image(c) for c in sources])
    s = torch.cat([c.s for c in sources])
    mean_psnr = {}
    depth = float(editor.config.extra.get("diffusion_depth", 1.0))  # as the editor runs it
    for dtype in (torch.float32, *HALF_DTYPES):
        backbone = DiffusionBackbone.from_pretrained(path, device, dtype)
        total = 0.0
        for i in range(n):
            render = None
            if backbone.render_channels:  # the residual model: R(s) of this face's code

                def render(styles, codes=sources[i]):
                    return editor.render_styles(codes, styles)

            out = backbone.edit(
                x0[i : i + 1], s[i : i + 1], torch.zeros_like(s[:0]), steps=50, render=render, depth=depth
            )
            total += float(psnr(out.reconstruction, x0[i : i + 1].to(out.reconstruction)))
        mean_psnr[dtype] = total / n
    reference = mean_psnr[torch.float32]
    return [
        Row(
            f"toy reconstruction PSNR, {_dtype_name(dtype)} ({n} faces)",
            mean_psnr[dtype],
            reference,
            "dB",
            "within 0.5 dB of float32",
            abs(mean_psnr[dtype] - reference) <= 0.5,
            "naive column: float32",
        )
        for dtype in HALF_DTYPES
    ]


def _ffhq_sized_unet_rows(device: str, steps: int = 50) -> list[Row]:
    """A 50 + 50-step edit at 256 px with the FFHQ preset's UNet, per precision, CUDA graphs against
    eager calls. Random weights: the timings depend on shapes only (the precision check is the toy's)."""
    from .config import load_domain_config
    from .nn.style_unet import StyleConditionedUNet
    from .nn.stylegan2 import Generator
    from .nn.stylespace import layout_from_generator
    from .pipelines.diffusion import CUDA_DTYPE, DiffusionBackbone

    with torch.device("meta"):  # the FFHQ layout's size: shapes only, no memory, no initialisation
        style_dim = layout_from_generator(Generator.from_config(load_domain_config("ffhq").generator)).total
    torch.manual_seed(0)
    master = StyleConditionedUNet.from_preset("ffhq", style_dim=style_dim).to(device)
    size = master.config.sample_size
    x0 = torch.rand(1, 3, size, size, device=device) * 2 - 1
    s = torch.randn(1, style_dim, device=device)
    delta_s = 0.1 * torch.randn(1, style_dim, device=device)
    on_cuda = str(device).startswith("cuda")
    rows = []
    for dtype in (torch.float32, *HALF_DTYPES):
        times = {}
        for graphs in (False, True):  # the peak memory read last is the graphs'
            unet = StyleConditionedUNet.from_config(master.config)
            unet.load_state_dict(master.state_dict())
            backbone = DiffusionBackbone(unet, cuda_graphs=graphs).to(device, dtype)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            edit = partial(backbone.edit, x0, s, delta_s, steps=steps)
            edit()  # warm-up and capture
            times[graphs] = _time(edit, 3, _sync_for(device))
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else 0.0
            del backbone, unet, edit
        rows.append(
            Row(
                f"D edit {size} px, FFHQ-size UNet, {steps}+{steps} ({_dtype_name(dtype)})",
                times[True],
                times[False],
                # The target is the shipped setting's: CUDA_DTYPE with graphs.
                target="<= 2 s (H100)" if dtype == CUDA_DTYPE else "",
                ok=times[True] <= 2 if dtype == CUDA_DTYPE else None,
                note=f"naive: no CUDA graphs; peak GPU memory {peak:.1f} GB (with graphs)",
            )
        )
    return rows
