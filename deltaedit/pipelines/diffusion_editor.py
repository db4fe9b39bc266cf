"""DeltaEdit-D: the same encoder, CLIP, mapper and relevance selection as DeltaEdit-G, with a
style-conditioned diffusion model as the decoder.

image -> encoder -> W+ -> s; Δs from the mapper (masked by fs3 exactly as for the GAN); the image is
DDIM-inverted under s and decoded under s + α·Δs (`DiffusionBackbone.edit`).
"""

from __future__ import annotations

import time
from functools import cache, partial

import torch
import torch.nn.functional as F

from .. import weights
from ..config import load_domain_config
from ..errors import InputError
from .diffusion import DiffusionBackbone, inference_dtype, psnr
from .gan import EditResult, GanEditor, SourceCodes, check_refine_steps, check_whole_number, make_result

STEPS_RANGE = (1, 1000)


class DiffusionEditor:
    def __init__(self, gan: GanEditor, backbone: DiffusionBackbone):
        if backbone.style_dim != gan.layout.total:
            raise InputError(
                f"the diffusion model is conditioned on {backbone.style_dim} style values but the"
                f" {gan.config.id} generator has {gan.layout.total}; were the weights trained for this domain?"
            )
        self.gan = gan
        self.backbone = backbone
        self.config = gan.config

    @classmethod
    def load(cls, domain: str = "ffhq", device: str = "cpu", weights_dir=None) -> DiffusionEditor:
        return _cached_editor(domain, str(device), str(weights_dir) if weights_dir else None)

    @property
    def generator(self):
        return self.gan.generator

    def sample(self, seed: int) -> SourceCodes:
        return self.gan.sample(seed)

    def encode_image(self, image, align: bool = True) -> SourceCodes:
        return self.gan.encode_image(image, align=align)

    def _input_image(self, codes: SourceCodes) -> torch.Tensor:
        """What the diffusion model inverts: the encoder's input for photos, else the GAN rendering."""
        x = codes.input_image if codes.input_image is not None else codes.image
        if x is None:
            raise InputError("the source has no image to invert")
        size = self.backbone.image_size
        if x.shape[-1] != size:
            x = F.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.clamp(-1, 1)

    @torch.no_grad()
    def edit(
        self,
        *,
        image=None,
        latents=None,
        codes: SourceCodes | None = None,
        targets,
        source: str | None = None,
        strength: float = 1.0,
        threshold: float = 0.03,
        align: bool = True,
        steps: int = 50,
        refine_steps: int = 0,
    ) -> EditResult:
        t0 = time.perf_counter()
        gan = self.gan
        targets, source_text, strength, threshold = gan.resolve_request(targets, source, strength, threshold)
        steps = check_whole_number("steps", steps, STEPS_RANGE)
        refine_steps = check_refine_steps(refine_steps)
        codes = gan.prepare(image=image, latents=latents, codes=codes, align=align)
        if codes.input_image is None and codes.image is None:
            codes.image = gan.render(codes)
        timings = {"encode": time.perf_counter() - t0}
        t = time.perf_counter()
        delta_t, notices = gan.text_deltas(targets, source_text)
        delta_s = gan.style_deltas(codes, delta_t, threshold)
        # The same (optionally refined) Δs as DeltaEdit-G would apply.
        delta_s = gan.refined_style_deltas(codes, delta_t, delta_s, strength, refine_steps)
        timings["mapper"] = time.perf_counter() - t
        t = time.perf_counter()
        x0 = self._input_image(codes)
        out = self.backbone.edit(x0, codes.s, delta_s, strength=strength, steps=steps)
        timings["diffusion"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return make_result(
            codes,
            out.reconstruction,
            out.edits,
            targets,
            source_text,
            strength,
            threshold,
            codes.s + strength * delta_s,
            delta_s,
            codes.notices + notices,
            timings,
            input_tensor=x0,
        )


@cache
def _cached_editor(domain: str, device: str, weights_dir: str | None) -> DiffusionEditor:
    cfg = load_domain_config(domain)
    if "diffusion" not in cfg.weights:
        raise InputError(f"domain {domain!r} has no DeltaEdit-D model")
    path = weights.resolve(cfg.weights["diffusion"], weights_dir)
    return DiffusionEditor(
        GanEditor.load(domain, device, weights_dir),
        DiffusionBackbone.from_pretrained(path, device, inference_dtype(device)),
    )


def _best_time(fn, repeat: int, device: str) -> float:
    """Best of `repeat` runs, as timeit: other load on the machine only ever adds time."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def benchmark_rows(device: str = "cpu") -> list[dict]:
    """Bench rows for DeltaEdit-D: the toy edit (50 inversion + 50 sampling steps) on this device; on
    a GPU also the FFHQ-sized UNet at 256 px and the precision check of half precision."""
    rows = []
    try:
        editor = DiffusionEditor.load("toy", device)
    except Exception as exc:  # noqa: BLE001 - reported in the table, not fatal for the benchmark
        return [dict(name="DeltaEdit-D toy edit", ours=None, note=f"skipped: {exc}"[:100])]
    codes = editor.sample(seed=0)
    editor.edit(codes=codes, targets=["face with eyeglasses"], steps=5)  # warm-up: traces or captures
    elapsed = _best_time(
        lambda: editor.edit(codes=codes, targets=["face with eyeglasses"], steps=50), 3, device
    )
    on_cpu = device == "cpu"
    rows.append(
        dict(
            name=f"DeltaEdit-D toy edit, 64 px, 50+50 steps ({device}, best of 3)",
            ours=elapsed,
            target="<= 3 s" if on_cpu else "",
            ok=elapsed <= 3 if on_cpu else None,
            note="" if on_cpu else f"{str(editor.backbone.unet.dtype).removeprefix('torch.')}, CUDA graphs",
        )
    )
    if str(device).startswith("cuda"):
        rows += _toy_precision_rows(editor, device)
        rows += _ffhq_sized_rows(device)
    return rows


HALF_DTYPES = (torch.float16, torch.bfloat16)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _toy_precision_rows(editor: DiffusionEditor, device: str, n: int = 8) -> list[dict]:
    """Reconstruction PSNR (α = 0, 50 + 50 steps) of the shipped toy weights per precision."""
    path = weights.resolve(editor.config.weights["diffusion"], None)
    sources = [editor.sample(seed=seed) for seed in range(n)]
    x0 = torch.cat([editor._input_image(c) for c in sources])
    s = torch.cat([c.s for c in sources])
    mean_psnr = {}
    for dtype in (torch.float32, *HALF_DTYPES):
        backbone = DiffusionBackbone.from_pretrained(path, device, dtype)
        psnrs = []
        for i in range(n):
            out = backbone.edit(x0[i : i + 1], s[i : i + 1], torch.zeros_like(s[:0]), steps=50)
            psnrs.append(float(psnr(out.reconstruction, x0[i : i + 1].to(out.reconstruction))))
        mean_psnr[dtype] = sum(psnrs) / n
    reference = mean_psnr[torch.float32]
    return [
        dict(
            name=f"toy reconstruction PSNR, {_dtype_name(dtype)} ({n} faces)",
            ours=mean_psnr[dtype],
            baseline=reference,
            unit="dB",
            target="within 0.5 dB of float32",
            ok=abs(mean_psnr[dtype] - reference) <= 0.5,
            note="naive column: float32",
        )
        for dtype in HALF_DTYPES
    ]


def _ffhq_sized_rows(device: str, steps: int = 50) -> list[dict]:
    """A 50 + 50-step edit at 256 px with the FFHQ preset's UNet, per precision, CUDA graphs against
    eager calls. Random weights: the timings depend on shapes only (the precision check is the toy's)."""
    from ..config import load_domain_config
    from ..nn.style_unet import StyleConditionedUNet

    style_dim = _ffhq_style_dim(load_domain_config("ffhq"))
    torch.manual_seed(0)
    master = StyleConditionedUNet.from_preset("ffhq", style_dim=style_dim).to(device)
    size = master.config.sample_size
    x0 = torch.rand(1, 3, size, size, device=device) * 2 - 1
    s = torch.randn(1, style_dim, device=device)
    delta_s = 0.1 * torch.randn(1, style_dim, device=device)
    rows = []
    for dtype in (torch.float32, *HALF_DTYPES):
        times = {}
        for graphs in (False, True):  # the peak memory read last is the graphs'
            unet = StyleConditionedUNet.from_config(master.config)
            unet.load_state_dict(master.state_dict())
            backbone = DiffusionBackbone(unet, cuda_graphs=graphs).to(device, dtype)
            if str(device).startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            backbone.edit(x0, s, delta_s, steps=steps)  # warm-up and capture
            times[graphs] = _best_time(partial(backbone.edit, x0, s, delta_s, steps=steps), 3, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if str(device).startswith("cuda") else 0
            del backbone, unet
        rows.append(
            dict(
                name=f"D edit {size} px, FFHQ-size UNet, {steps}+{steps} ({_dtype_name(dtype)})",
                ours=times[True],
                baseline=times[False],
                target="<= 2 s (H100)",
                ok=times[True] <= 2,
                note=f"naive: no CUDA graphs; peak GPU memory {peak:.1f} GB (with graphs)",
            )
        )
    return rows


def _ffhq_style_dim(config) -> int:
    from ..nn.stylegan2 import Generator
    from ..nn.stylespace import layout_from_generator

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return layout_from_generator(Generator.from_config(config.generator)).total
