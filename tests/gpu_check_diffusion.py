"""Temporary device check for DeltaEdit-D (not a pytest module): FFHQ step time, toy-size training + inversion."""
import json, os, sys, time
from pathlib import Path
import torch
from torch.utils.flop_counter import FlopCounterMode
from deltaedit.nn.style_unet import StyleConditionedUNet
from deltaedit.pipelines.diffusion import DiffusionBackbone, psnr
from deltaedit.training.diffusion import train_diffusion, image_grid

OUT = Path(os.environ.get("OUT", "/tmp/out")); dev = "cuda"
res = {"device": torch.cuda.get_device_name()}
torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
# 1. FFHQ UNet: FLOPs and training step time (bf16 autocast, AdamW)
m = StyleConditionedUNet.from_preset("ffhq", 6048).to(dev)
res["ffhq_params_M"] = sum(p.numel() for p in m.parameters()) / 1e6
with torch.no_grad(), FlopCounterMode(display=False) as fc:
    m(torch.randn(1, 3, 256, 256, device=dev), 500, torch.randn(1, 6048, device=dev))
res["ffhq_fwd_gflop_per_image"] = fc.get_total_flops() / 1e9
opt = torch.optim.AdamW(m.parameters(), 1e-4)
for B in (16, 32):
    x = torch.randn(B, 3, 256, 256, device=dev); s = torch.randn(B, 6048, device=dev); t = torch.randint(0, 1000, (B,), device=dev)
    for i in range(13):
        if i == 3: torch.cuda.synchronize(); t0 = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            loss = (m(x, t, s).float() - x).pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(); res[f"ffhq_step_s_batch{B}"] = (time.perf_counter() - t0) / 10
del m, opt; torch.cuda.empty_cache()
print(json.dumps(res), flush=True)
# 2. toy-size model on procedural faces with codes s = f(z)
g = torch.Generator().manual_seed(0)
N, S = 20000, 1024
A1 = torch.randn(8, 256, generator=g); A2 = torch.randn(256, S, generator=g) / 16
def render(z):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    c = lambda k: z[:, k].view(-1, 1, 1, 1)
    rgb = lambda r, g_, b_: torch.cat([r, g_, b_], 1)
    zero = 0 * c(0)
    bg = rgb(0.3 * c(0), 0.3 * c(1), zero - 0.2)
    cx, cy, r = 0.1 * c(2), 0.05 * c(3), 0.55 + 0.08 * c(3)
    face = (((xx - cx) ** 2 + ((yy - cy) / 1.25) ** 2) < r**2).float()
    skin = rgb(0.6 + 0.2 * c(4).tanh(), 0.3 + 0.15 * c(4).tanh(), zero + 0.1)
    hair = ((yy < cy - 0.35) & (((xx - cx) ** 2 + ((yy - cy) / 1.25) ** 2) < (r + 0.12) ** 2)).float()
    hc = rgb(c(7).tanh(), 0.5 * c(7).tanh(), zero - 0.5)
    er = 0.06 + 0.02 * c(5).tanh()
    eyes = ((((xx - cx).abs() - 0.22) ** 2 + (yy - cy + 0.1) ** 2) < er**2).float()
    mouth = (((yy - cy - 0.35 - 0.64 * c(6).tanh() * (xx - cx) ** 2).abs() < 0.03) & ((xx - cx).abs() < 0.2)).float()
    img = bg * (1 - face) + skin * face
    img = img * (1 - hair) + hc * hair
    img = img * (1 - eyes) - eyes
    img = img * (1 - mouth) + mouth * torch.tensor([0.8, -0.6, -0.6]).view(1, 3, 1, 1)
    return img.clamp(-1, 1)
z = torch.randn(N, 8, generator=g)
images = torch.cat([render(c) for c in z.split(1000)]); styles = torch.tanh(z @ A1) @ A2
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
t0 = time.perf_counter()
out = train_diffusion((images[:-16], styles[:-16]), "toy", OUT / "toy_run", steps=steps, batch_size=64, lr=3e-4,
                      warmup_steps=100, ema_decay=0.999, sample_every=steps // 2, checkpoint_every=0, progress=False)
res["toy_train_s"] = time.perf_counter() - t0; res["toy_steps"] = steps
b = DiffusionBackbone.from_pretrained(out, device=dev)
x0, s0 = images[-16:].to(dev), styles[-16:].to(dev)
for refine in (0, 1, 2):
    xT = b.invert(x0, s0, 50, refine=refine); rec = b.sample(xT, s0, 50).clamp(-1, 1)
    res[f"toy_recon_psnr_refine{refine}"] = psnr(rec, x0).tolist()
e = b.edit(x0[:1], s0[:1], (s0[1:4] - s0[:1]), strength=1.0, steps=50)
res["toy_edit_psnr_to_target"] = psnr(e.edits, x0[1:4]).tolist(); res["toy_edit_psnr_to_source"] = psnr(e.edits, x0[:1].expand(3, -1, -1, -1)).tolist()
e0 = b.edit(x0[:1], s0[:1], (s0[1:4] - s0[:1]), strength=0.0, steps=50)
res["toy_alpha0_psnr"] = psnr(e0.edits, x0[:1].expand(3, -1, -1, -1)).tolist()
image_grid([x0[:4].cpu(), torch.cat([e.reconstruction, e.edits]).cpu()]).save(OUT / "toy_edit.png")
print(json.dumps(res), flush=True)
(OUT / "result.json").write_text(json.dumps(res, indent=1))
