"""DDIM inversion / sampling / editing with tiny seeded models (no trained weights needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltaedit.errors import InputError, WeightsError
from deltaedit.nn.style_unet import StyleConditionedUNet
from deltaedit.pipelines.diffusion import (
    CUDA_DTYPE,
    DEFAULT_SCHEDULER_CONFIG,
    CudaGraphUNet,
    DiffusionBackbone,
    change_weights,
    changed_pixels,
    ddim_invert,
    ddim_sample,
    inference_dtype,
    psnr,
)

# Untrained UNets predict noise that is unrelated to x_t, which the standard schedule (ᾱ_T ≈ 4e-5)
# amplifies ~150x; a milder schedule keeps the maths identical but the round trip well-conditioned.
MILD = {**DEFAULT_SCHEDULER_CONFIG, "beta_end": 0.002}
S = 16


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return DiffusionBackbone(StyleConditionedUNet.tiny(style_dim=S, sample_size=16), MILD)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    return x0, torch.randn(1, S, generator=g), torch.randn(3, S, generator=g)


class OracleEps(nn.Module):
    """The exact ε for a data set holding one image x*: ε(x_t, t) = (x_t − √ᾱ_t x*) / √(1−ᾱ_t)."""

    def __init__(self, target, alphas_cumprod):
        super().__init__()
        self.register_buffer("target", target)
        self.register_buffer("ac", alphas_cumprod)

    dtype = torch.float32
    device = torch.device("cpu")

    def forward(self, x, t, s):
        a = self.ac[t]
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


def test_ddim_equations_with_an_exact_noise_predictor():
    from diffusers import DDIMScheduler

    target = torch.rand(1, 3, 8, 8) * 2 - 1
    oracle = OracleEps(
        target, DDIMScheduler(**{k: v for k, v in DEFAULT_SCHEDULER_CONFIG.items()}).alphas_cumprod
    )
    x_T = torch.randn(2, 3, 8, 8)
    # Eq. 12 with a perfect ε lands on the data point from any noise, at any step count.
    for steps in (1, 7, 50):
        out = ddim_sample(oracle, DEFAULT_SCHEDULER_CONFIG, x_T, torch.zeros(2, 1), steps)
        assert torch.allclose(out, target.expand(2, -1, -1, -1), atol=1e-4)
    # Inverting x* and decoding again is exact too (the standard schedule, 50 steps).
    inv = ddim_invert(oracle, DEFAULT_SCHEDULER_CONFIG, target, torch.zeros(1, 1), 50)
    back = ddim_sample(oracle, DEFAULT_SCHEDULER_CONFIG, inv, torch.zeros(1, 1), 50)
    assert psnr(back, target).item() > 60


def test_inversion_then_sampling_reproduces_the_input(backbone, data):
    x0, s, deltas = data
    x_T = backbone.invert(x0, s, steps=20)
    same = psnr(backbone.sample(x_T, s, steps=20), x0).item()
    other = psnr(backbone.sample(x_T, s + deltas[:1] * 2, steps=20), x0).item()
    assert same > 35
    assert same > other + 8
    # More steps: a finer discretisation of the same ODE, a closer round trip.
    coarse = psnr(backbone.sample(backbone.invert(x0, s, steps=4), s, steps=4), x0).item()
    assert same > coarse


def test_fixed_point_refinement_makes_inversion_tighter(backbone, data):
    x0, s, _ = data
    plain = psnr(backbone.sample(backbone.invert(x0, s, 8), s, 8), x0).item()
    refined = psnr(backbone.sample(backbone.invert(x0, s, 8, refine=2), s, 8), x0).item()
    last_only = psnr(backbone.sample(backbone.invert(x0, s, 8, refine=2, refine_last=2), s, 8), x0).item()
    assert refined > plain + 10
    assert plain < last_only < refined


def test_edit_is_deterministic_and_conditioned(backbone, data):
    x0, s, deltas = data
    a = backbone.edit(x0, s, deltas, strength=1.0, steps=6)
    b = backbone.edit(x0, s, deltas, strength=1.0, steps=6)
    assert a.reconstruction.shape == (1, 3, 16, 16) and a.edits.shape == (3, 3, 16, 16)
    assert torch.equal(a.edits, b.edits) and torch.equal(a.reconstruction, b.reconstruction)
    assert (a.edits - a.reconstruction).abs().flatten(1).max(1).values.min() > 1e-3
    rec, edits = a  # unpacks like a tuple
    assert edits is a.edits and rec is a.reconstruction


def test_batch_of_targets_equals_single_edits(backbone, data):
    x0, s, deltas = data
    batched = backbone.edit(x0, s, deltas, strength=0.7, steps=5)
    for i in range(3):
        single = backbone.edit(x0, s, deltas[i : i + 1], strength=0.7, steps=5)
        assert torch.allclose(single.edits[0], batched.edits[i], atol=1e-5)
        assert torch.allclose(single.reconstruction, batched.reconstruction, atol=1e-5)


def test_zero_strength_gives_the_reconstruction(backbone, data):
    x0, s, deltas = data
    out = backbone.edit(x0, s, deltas, strength=0.0, steps=10)
    assert torch.allclose(out.edits, out.reconstruction.expand(3, -1, -1, -1), atol=1e-5)
    assert psnr(out.reconstruction, x0).item() > 30


def test_preserve_details_returns_the_input_at_zero_strength(backbone, data):
    x0, s, deltas = data
    out = backbone.edit(x0, s, deltas, strength=0.0, steps=5, preserve_details=True)
    assert torch.allclose(out.reconstruction, x0, atol=1e-4)
    assert torch.allclose(out.edits, x0.expand(3, -1, -1, -1), atol=1e-4)
    moved = backbone.edit(x0, s, deltas, strength=2.0, steps=5, preserve_details=True)
    assert (moved.edits - x0).abs().max() > 1e-3


def test_save_load_round_trip(backbone, data, tmp_path):
    x0, s, deltas = data
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler" / "scheduler_config.json").is_file()
    loaded = DiffusionBackbone.from_pretrained(tmp_path)
    assert loaded.scheduler_config["beta_end"] == MILD["beta_end"]
    a = backbone.edit(x0, s, deltas, steps=4)
    b = loaded.edit(x0, s, deltas, steps=4)
    # Same weights; freshly loaded tensors may take another conv kernel path (last-bit differences).
    assert torch.allclose(a.edits, b.edits, atol=1e-5)
    assert torch.allclose(a.reconstruction, b.reconstruction, atol=1e-5)


def test_missing_weights_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="train-diffusion"):
        DiffusionBackbone.from_pretrained(tmp_path)


def test_bad_inputs_raise_input_error(backbone, data):
    x0, s, deltas = data
    with pytest.raises(InputError, match="images must be"):
        backbone.edit(x0[:, :, :8], s, deltas)
    with pytest.raises(InputError, match="one image"):
        backbone.edit(x0.expand(2, -1, -1, -1), s, deltas)
    with pytest.raises(InputError, match="delta_s"):
        backbone.edit(x0, s, deltas[:, :4])
    with pytest.raises(InputError, match="steps"):
        backbone.edit(x0, s, deltas, steps=0)
    with pytest.raises(InputError, match="strength"):
        backbone.edit(x0, s, deltas, strength=float("nan"))


def test_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.ones(2, 3, 4, 4)
    # MSE 1 on a range of 2: 10·log10(4).
    assert torch.allclose(psnr(a, b), torch.full((2,), 6.0206), atol=1e-3)
    assert psnr(a, a).min() > 100
    with pytest.raises(InputError):
        psnr(a, b[:1])


# ---- the traced CPU fast path -------------------------------------------------------------------


def test_traced_unet_matches_eager_and_traces_each_shape_once(data):
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16)
    eager = DiffusionBackbone(unet, MILD, traced=False)
    traced = DiffusionBackbone(unet, MILD, traced=True)
    assert eager.denoiser is unet and traced.denoiser is not unet
    x0, s, ds = data
    a = eager.edit(x0, s, ds, steps=8)
    b = traced.edit(x0, s, ds, steps=8)
    torch.testing.assert_close(b.edits, a.edits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.reconstruction, a.reconstruction, atol=1e-5, rtol=0)
    graphs = traced.denoiser._graphs
    # inversion runs at batch 1, decoding at 1 + 3 targets; every call after the first reuses a graph
    assert sorted(k[0][0] for k in graphs) == [1, 4] and all(g is not None for g in graphs.values())
    # The traced graph is conditioned like the module: another s, another output.
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor(500)
    assert not torch.allclose(traced.denoiser(x, t, s), traced.denoiser(x, t, s + 1))


def test_traced_unet_defaults_to_cpu_float32_and_resets_on_to(backbone):
    assert backbone.traced is None and backbone.denoiser is not backbone.unet  # CPU, float32
    first = backbone.denoiser
    backbone.to(dtype=torch.bfloat16)
    assert backbone.denoiser is backbone.unet  # only float32 is traced by default
    backbone.to(dtype=torch.float32)
    assert backbone.denoiser is not first  # graphs held the old weights: rebuilt


def test_tracing_failure_falls_back_to_the_eager_module(backbone, data, monkeypatch, caplog):
    x0, s, ds = data
    expected = DiffusionBackbone(backbone.unet, MILD, traced=False).edit(x0, s, ds, steps=4)

    def broken(*args, **kwargs):
        raise RuntimeError("no tracing today")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with caplog.at_level("WARNING"):
        out = backbone.edit(x0, s, ds, steps=4)
    assert "no tracing today" in caplog.text
    torch.testing.assert_close(out.edits, expected.edits)


def test_traced_unet_keeps_the_module_input_errors(backbone):
    with pytest.raises(InputError, match="style code"):
        backbone.denoiser(torch.randn(1, 3, 16, 16), torch.tensor(3), torch.randn(1, S + 1))


# ---- precision and the GPU path -------------------------------------------------------------------


def test_style_statistics_stay_float32_in_half_precision():
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16)
    # A channel far from zero with a narrow spread: bf16 rounds 5.01 to 5.0, a fifth of a std.
    mean, std = torch.full((S,), 5.01), torch.full((S,), 0.05)
    unet.set_style_stats(mean, std)
    s = mean + std * torch.randn(2, S)
    reference = unet.embed_style(s)
    backbone = DiffusionBackbone(unet, MILD).to(dtype=torch.bfloat16)
    assert unet.dtype == torch.bfloat16 and unet.style_mean.dtype == torch.float32
    assert torch.equal(unet.style_mean, mean) and torch.equal(unet.style_std, std)
    half = backbone.unet.embed_style(s).float()
    assert (half - reference).norm() / reference.norm() < 0.05
    unet.half()  # every casting route keeps them
    assert unet.style_mean.dtype == torch.float32


def test_style_statistics_loaded_in_half_precision_become_float32_again(tmp_path):
    torch.manual_seed(0)
    StyleConditionedUNet.tiny(style_dim=S, sample_size=16).save_pretrained(tmp_path)
    unet = StyleConditionedUNet.from_pretrained(tmp_path, torch_dtype=torch.float16)
    unet.half()  # any later cast restores float32 statistics
    assert unet.dtype == torch.float16 and unet.style_mean.dtype == unet.style_std.dtype == torch.float32


def test_inference_dtype_is_half_on_a_gpu_only():
    assert inference_dtype("cpu") == torch.float32
    assert inference_dtype("cuda:0") == CUDA_DTYPE and CUDA_DTYPE in (torch.float16, torch.bfloat16)


def test_cuda_graphs_are_the_gpu_default_unless_turned_off(backbone, monkeypatch):
    # Only the choice is tested here (capture needs a GPU, tested below): the device is faked.
    monkeypatch.setattr(DiffusionBackbone, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.delenv("DELTAEDIT_CUDA_GRAPHS", raising=False)
    assert isinstance(backbone.denoiser, CudaGraphUNet)
    monkeypatch.setenv("DELTAEDIT_CUDA_GRAPHS", "0")  # what app.py sets on ZeroGPU
    assert backbone.denoiser is backbone.unet
    backbone.cuda_graphs = True  # an explicit choice wins over the variable
    assert isinstance(backbone.denoiser, CudaGraphUNet)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_match_eager_and_capture_each_shape_once(data):
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16).cuda()
    eager = DiffusionBackbone(unet, MILD, cuda_graphs=False)
    graphed = DiffusionBackbone(unet, MILD)
    assert eager.denoiser is unet and isinstance(graphed.denoiser, CudaGraphUNet)
    x0, s, ds = data
    a = eager.edit(x0, s, ds, steps=8)
    b = graphed.edit(x0, s, ds, steps=8)
    assert b.edits.is_cuda
    torch.testing.assert_close(b.edits, a.edits, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.reconstruction, a.reconstruction, atol=1e-4, rtol=0)
    graphs = graphed.denoiser._graphs
    assert sorted(k[0][0] for k in graphs) == [1, 4] and all(g is not None for g in graphs.values())
    # Conditioned like the module, and each call's output is its own (not the graph's buffer).
    x, t, s = torch.randn(1, 3, 16, 16, device="cuda"), torch.tensor(500, device="cuda"), s.cuda()
    first = graphed.denoiser(x, t, s)
    kept = first.clone()
    second = graphed.denoiser(x, t, s + 1)
    assert not torch.allclose(first, second) and torch.equal(first, kept)
    torch.testing.assert_close(first, unet(x, t, s), atol=1e-4, rtol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_edit_on_cuda_stays_close_to_float32(data, dtype):
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16)
    reference = DiffusionBackbone(unet, MILD).to("cuda").edit(*data, steps=8)
    half = DiffusionBackbone(StyleConditionedUNet.from_config(unet.config), MILD)
    half.unet.load_state_dict(unet.state_dict())
    out = half.to("cuda", dtype).edit(*data, steps=8)
    assert out.edits.dtype == torch.float32  # the scheduler maths stays float32
    assert psnr(out.edits, reference.edits).min() > 30


# ---- the rendering-conditioned (residual) model ----------------------------------------------------


def _linear_render(styles: torch.Tensor) -> torch.Tensor:
    """A stand-in generator R(s) [N, 3, 16, 16]: smooth, in (-0.3, 0.3), a different image per s."""
    ramp = torch.linspace(-1, 1, 16)
    base = torch.tanh(styles[:, :3]).view(-1, 3, 1, 1) * 0.2
    image = base + 0.1 * torch.tanh(styles[:, 3:4]).view(-1, 1, 1, 1) * ramp.view(1, 1, 1, 16)
    return image.expand(-1, 3, 16, 16).contiguous()


@pytest.fixture
def residual_backbone():
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16, render_channels=3)
    return DiffusionBackbone(unet, MILD)


@pytest.fixture
def small_data(data):
    x0, s, deltas = data
    return x0 * 0.5, s, deltas  # |x0| <= 0.5: no clamping anywhere in these tests


def _silence(backbone: DiffusionBackbone) -> DiffusionBackbone:
    """Make the UNet predict ε = 0 whatever its inputs: DDIM then only rescales x, exactly invertibly."""
    with torch.no_grad():
        backbone.unet.unet.conv_out.weight.zero_()
        backbone.unet.unet.conv_out.bias.zero_()
    backbone._fast_unet = None
    return backbone


def test_residual_edit_changes_the_output_exactly_by_the_change_of_the_rendering(
    residual_backbone, small_data
):
    x0, s, deltas = small_data
    backbone = _silence(residual_backbone)
    out = backbone.edit(x0, s, deltas, strength=1.5, steps=20, render=_linear_render)
    renders = _linear_render(torch.cat([s, s + 1.5 * deltas]))
    # The UNet ignores everything, so the residual x0 − R(s) comes back unchanged and each edit is
    # x0 + R(s') − R(s): the whole edit reaches the output through the generator.
    torch.testing.assert_close(out.reconstruction, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.edits - out.reconstruction, renders[1:] - renders[:1], atol=1e-4, rtol=0)
    assert (renders[1:] - renders[:1]).abs().flatten(1).max(1).values.min() > 1e-2  # a real change
    # The same with the renderings given as a tensor.
    given = backbone.edit(x0, s, deltas, strength=1.5, steps=20, render=renders)
    torch.testing.assert_close(given.edits, out.edits)


def test_residual_inversion_then_decoding_gives_the_input_back(residual_backbone, small_data):
    x0, s, deltas = small_data
    out = residual_backbone.edit(x0, s, deltas, strength=1.0, steps=20, render=_linear_render)
    assert psnr(out.reconstruction, x0).item() > 35
    # invert/sample are in image space too: x_T of the residual, R(s) + the decoded residual.
    r = _linear_render(s)
    x_T = residual_backbone.invert(x0, s, steps=20, render=r)
    assert psnr(residual_backbone.sample(x_T, s, steps=20, render=r), x0).item() > 35
    # The UNet sees the rendering: another R(s) with the same s decodes differently.
    other = residual_backbone.sample(x_T, s, steps=20, render=r + 0.2) - (r + 0.2)
    assert (other - (residual_backbone.sample(x_T, s, steps=20, render=r) - r)).abs().max() > 1e-4


def test_residual_edit_is_conditioned_on_s_and_the_rendering(residual_backbone, small_data):
    x0, s, deltas = small_data
    out = residual_backbone.edit(x0, s, deltas, strength=1.0, steps=8, render=_linear_render)
    renders = _linear_render(torch.cat([s, s + deltas]))
    residuals = torch.cat([out.reconstruction, out.edits]) - renders
    # A trained-or-not UNet decodes the residual differently under another (s', R(s')).
    assert (residuals[1:] - residuals[:1]).abs().flatten(1).max(1).values.min() > 1e-4


def test_residual_model_traced_matches_eager(small_data):
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16, render_channels=3)
    eager = DiffusionBackbone(unet, MILD, traced=False)
    traced = DiffusionBackbone(unet, MILD, traced=True)
    x0, s, ds = small_data
    a = eager.edit(x0, s, ds, steps=6, render=_linear_render)
    b = traced.edit(x0, s, ds, steps=6, render=_linear_render)
    torch.testing.assert_close(b.edits, a.edits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.reconstruction, a.reconstruction, atol=1e-5, rtol=0)
    graphs = traced.denoiser._graphs
    assert sorted(k[0][0] for k in graphs) == [1, 4] and all(g is not None for g in graphs.values())
    # The traced graph takes the rendering as an input, not as a constant of the trace.
    x, t, r = torch.randn(1, 3, 16, 16), torch.tensor(500), _linear_render(s)
    torch.testing.assert_close(traced.denoiser(x, t, s, r + 0.5), unet(x, t, s, r + 0.5), atol=1e-5, rtol=0)
    assert not torch.allclose(traced.denoiser(x, t, s, r), traced.denoiser(x, t, s, r + 0.5))
    # Malformed calls reach the module's checks.
    with pytest.raises(InputError, match="rendering"):
        traced.denoiser(x, t, s)


def test_rendering_is_required_by_a_residual_model_and_refused_by_a_plain_one(
    backbone, residual_backbone, small_data
):
    x0, s, deltas = small_data
    with pytest.raises(InputError, match="residual"):
        residual_backbone.edit(x0, s, deltas, steps=2)
    with pytest.raises(InputError, match=r"render must be .*\[4, 3, 16, 16\]"):
        residual_backbone.edit(x0, s, deltas, steps=2, render=torch.zeros(3, 3, 16, 16))
    with pytest.raises(InputError, match="render must be"):
        residual_backbone.edit(x0, s, deltas, steps=2, render=lambda st: torch.zeros(len(st), 3, 8, 8))
    with pytest.raises(InputError, match="residual"):
        residual_backbone.invert(x0, s, steps=2)
    with pytest.raises(InputError, match="render_channels 0"):
        backbone.edit(x0, s, deltas, steps=2, render=_linear_render)
    with pytest.raises(InputError, match="render_channels 0"):
        backbone.sample(torch.randn(1, 3, 16, 16), s, steps=2, render=_linear_render(s))


def test_plain_models_edit_exactly_as_before(backbone, data, tmp_path):
    """render_channels 0: the samplers' plain calls, and an old folder without the new config keys."""
    x0, s, deltas = data
    out = backbone.edit(x0, s, deltas, strength=0.8, steps=5, refine_last=None)
    x_T = ddim_invert(backbone.unet, MILD, x0, s, 5, refine=1)
    styles = torch.cat([s, s + 0.8 * deltas])
    expected = ddim_sample(backbone.unet, MILD, x_T.expand(4, -1, -1, -1), styles, 5).clamp(-1, 1)
    torch.testing.assert_close(torch.cat([out.reconstruction, out.edits]), expected, atol=1e-5, rtol=0)
    backbone.save_pretrained(tmp_path)
    import json

    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("render_channels", "time_scale_shift", "unet_extra"):
        config.pop(key, None)  # a folder written before these existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = DiffusionBackbone.from_pretrained(tmp_path)
    assert old.render_channels == 0
    again = old.edit(x0, s, deltas, strength=0.8, steps=5, refine_last=None)
    torch.testing.assert_close(again.edits, out.edits, atol=1e-5, rtol=0)


def test_residual_model_saved_in_half_precision_loads_and_edits(residual_backbone, small_data, tmp_path):
    x0, s, deltas = small_data
    reference = residual_backbone.edit(x0, s, deltas, steps=6, render=_linear_render)
    residual_backbone.unet.half()
    residual_backbone.save_pretrained(tmp_path)  # as the toy stage ships its weights
    loaded = DiffusionBackbone.from_pretrained(tmp_path)
    assert loaded.unet.dtype == torch.float32 and loaded.render_channels == 3
    out = loaded.edit(x0, s, deltas, steps=6, render=_linear_render)
    assert psnr(out.edits, reference.edits).min() > 40


def test_a_partial_chain_inverts_and_decodes_only_its_fraction_of_the_steps(residual_backbone, small_data):
    x0, s, deltas = small_data
    half = residual_backbone.edit(x0, s, deltas, steps=20, render=_linear_render, depth=0.5)
    assert psnr(half.reconstruction, x0).item() > 35
    # Through a silenced UNet the residual comes back whole at any depth (exact DDIM rescaling).
    silent = _silence(residual_backbone)
    out = silent.edit(x0, s, deltas, strength=1.5, steps=20, render=_linear_render, depth=0.5)
    renders = _linear_render(torch.cat([s, s + 1.5 * deltas]))
    torch.testing.assert_close(out.edits - out.reconstruction, renders[1:] - renders[:1], atol=1e-4, rtol=0)
    # Half the chain: x_T is only partly noised (its scale is √ᾱ of the middle timestep, not ~0).
    r = renders[:1]
    x_half = ddim_invert(silent.unet, MILD, x0 - r, s, 20, render=r, depth=0.5)
    x_full = ddim_invert(silent.unet, MILD, x0 - r, s, 20, render=r)
    assert x_half.abs().mean() > x_full.abs().mean()
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(InputError, match="depth"):
            silent.edit(x0, s, deltas, steps=4, render=_linear_render, depth=bad)


def test_full_depth_is_the_default(residual_backbone, small_data):
    x0, s, deltas = small_data
    a = residual_backbone.edit(x0, s, deltas, steps=6, render=_linear_render)
    b = residual_backbone.edit(x0, s, deltas, steps=6, render=_linear_render, depth=1.0)
    assert torch.equal(a.edits, b.edits)


# ---- the learned-shift rule and the change mask (issue 26) ----------------------------------------


def test_shift_rule_moves_the_inputs_own_residual_by_the_unets_change_of_it(residual_backbone, small_data):
    x0, s, deltas = small_data
    kwargs = dict(strength=1.0, steps=10, render=_linear_render, depth=0.5)
    decoded = residual_backbone.edit(x0, s, deltas, **kwargs)
    shifted = residual_backbone.edit(x0, s, deltas, residual="shift", **kwargs)
    renders = _linear_render(torch.cat([s, s + deltas]))
    # The reconstruction is the input itself: D(s) − D(s) = 0.
    torch.testing.assert_close(shifted.reconstruction, x0, atol=1e-6, rtol=0)
    # Each edit is R(s') + (x0 − R(s)) + [D(s') − D(s)], D the residual decoded from the same x_T.
    unet_change = (decoded.edits - renders[1:]) - (decoded.reconstruction - renders[:1])
    want = renders[1:] + (x0 - renders[:1]) + unet_change
    torch.testing.assert_close(shifted.edits, want, atol=1e-5, rtol=0)
    assert unet_change.abs().max() > 1e-4  # the untrained UNet does change the residual


def test_changed_pixels_ignores_isolated_pixels_and_keeps_changed_regions():
    source = torch.zeros(1, 3, 12, 12)
    renders = torch.zeros(2, 3, 12, 12)
    renders[0, 1, 5, 5] = 0.9  # one pixel: its 3x3 mean 0.1 stays under 0.2
    renders[1, 2, 2:7, 2:7] = -0.3  # a 5x5 region in one channel: changed where the mean is 0.3
    keep = changed_pixels(source, renders, 0.2)
    assert keep.shape == (2, 1, 12, 12) and keep.dtype == torch.bool
    assert not keep[0].any()
    assert keep[1, 0, 3:6, 3:6].all() and keep[1].sum() < 49  # the inside, not the whole neighbourhood
    assert not keep[1, 0, 8:].any()


def test_change_threshold_returns_the_inputs_pixels_where_the_rendering_stays(residual_backbone, small_data):
    x0, s, deltas = small_data

    def render(styles):  # the edit changes the left half of the rendering only
        out = _linear_render(s).expand(styles.shape[0], -1, -1, -1).clone()
        out[:, :, :, :8] += 0.5 * torch.tanh(styles - s)[:, :3].view(-1, 3, 1, 1)
        return out

    deltas = deltas.abs() + 0.5  # a clear change: |0.5 tanh(Δ)| > 0.2 in every row
    kwargs = dict(strength=1.0, steps=10, render=render, depth=0.5, residual="shift")
    free = residual_backbone.edit(x0, s, deltas, **kwargs)
    masked = residual_backbone.edit(x0, s, deltas, change_threshold=0.2, **kwargs)
    torch.testing.assert_close(masked.reconstruction, x0, atol=1e-6, rtol=0)
    # Right of the changed half (one column of 3x3 averaging aside): exactly the input.
    torch.testing.assert_close(
        masked.edits[..., 9:], x0[..., 9:].expand_as(masked.edits[..., 9:]), atol=0, rtol=0
    )
    assert (free.edits[..., 9:] - x0[..., 9:]).abs().max() > 1e-4  # the UNet's shift reached there
    # Inside it: the edit as without the mask.
    torch.testing.assert_close(masked.edits[..., :7], free.edits[..., :7], atol=0, rtol=0)


def test_unknown_residual_rules_and_bad_thresholds_are_refused(residual_backbone, small_data):
    x0, s, deltas = small_data
    with pytest.raises(InputError, match="residual"):
        residual_backbone.edit(x0, s, deltas, steps=2, render=_linear_render, residual="invert")
    with pytest.raises(InputError, match="change_threshold"):
        residual_backbone.edit(x0, s, deltas, steps=2, render=_linear_render, change_threshold=-0.1)


def test_change_weights_ramp_from_lo_to_hi_and_a_flat_ramp_is_the_threshold():
    source = torch.zeros(1, 3, 12, 12)
    renders = torch.zeros(4, 3, 12, 12)
    for i, value in enumerate((0.05, 0.3, 0.6, 0.2)):
        renders[i, 1] = value  # a uniform change: its 3x3 mean is the value everywhere
    w = change_weights(source, renders, (0.1, 0.5))
    assert w.shape == (4, 1, 12, 12) and w.dtype == torch.float32
    torch.testing.assert_close(w[:, 0, 6, 6], torch.tensor([0.0, 0.5, 1.0, 0.25]))
    flat = change_weights(source, renders, (0.2, 0.2))
    torch.testing.assert_close(flat, changed_pixels(source, renders, 0.2).float(), atol=0, rtol=0)


def test_change_ramp_keeps_the_input_below_lo_blends_between_and_is_the_hard_rule_above_hi(
    residual_backbone, small_data
):
    x0, s, deltas = small_data

    def render(styles):  # the left half changes by 0.6 (per channel), the right half by 0.3
        out = _linear_render(s).expand(styles.shape[0], -1, -1, -1).clone()
        sign = torch.sign(torch.tanh(styles - s)[:, :3]).view(-1, 3, 1, 1)
        out[:, :, :, :8] += 0.6 * sign
        out[:, :, :, 8:] += 0.3 * sign
        return out

    deltas = deltas.abs() + 0.5
    kwargs = dict(strength=1.0, steps=10, render=render, depth=0.5, residual="shift")
    free = residual_backbone.edit(x0, s, deltas, **kwargs)
    hard = residual_backbone.edit(x0, s, deltas, change_threshold=0.2, **kwargs)
    # Every change is above hi = 0.25: the ramp is the hard rule, which here moves every pixel.
    high = residual_backbone.edit(x0, s, deltas, change_ramp=(0.1, 0.25), **kwargs)
    torch.testing.assert_close(high.edits, hard.edits, atol=1e-6, rtol=0)
    torch.testing.assert_close(high.edits, free.edits, atol=1e-6, rtol=0)
    # Every change is at most 0.6, under lo = 0.7: the input exactly, edits and reconstruction alike.
    low = residual_backbone.edit(x0, s, deltas, change_ramp=(0.7, 1.0), **kwargs)
    torch.testing.assert_close(low.edits, x0.expand_as(low.edits), atol=0, rtol=0)
    torch.testing.assert_close(low.reconstruction, x0, atol=1e-6, rtol=0)
    # Between: a ramp (0.2, 0.4) weighs the right half (change 0.3) by 0.5, the left by 1.
    mid = residual_backbone.edit(x0, s, deltas, change_ramp=(0.2, 0.4), **kwargs)
    want = x0 + 0.5 * (free.edits - x0)
    torch.testing.assert_close(mid.edits[..., 10:], want[..., 10:], atol=1e-5, rtol=0)
    torch.testing.assert_close(mid.edits[..., :6], free.edits[..., :6], atol=1e-6, rtol=0)
    # The kept-plan path applies the same rule.
    inversion = residual_backbone.invert_source(x0, s, 10, render=render(s), depth=0.5)
    again = residual_backbone.decode_inversion(
        inversion, deltas, render=render, residual="shift", change_ramp=(0.2, 0.4)
    )
    torch.testing.assert_close(again.edits, mid.edits, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "ramp, match",
    [
        ((0.5, 0.1), "0 <= lo <= hi"),
        ((-0.1, 0.5), "0 <= lo <= hi"),
        ((0.1,), "pair"),
        ("0.1,0.5", "pair"),
        ((0.1, float("nan")), "0 <= lo <= hi"),
    ],
)
def test_bad_change_ramps_are_refused(residual_backbone, small_data, ramp, match):
    x0, s, deltas = small_data
    with pytest.raises(InputError, match=match):
        residual_backbone.edit(x0, s, deltas, steps=2, render=_linear_render, change_ramp=ramp)


def test_a_threshold_and_a_ramp_together_are_refused(residual_backbone, small_data):
    x0, s, deltas = small_data
    with pytest.raises(InputError, match="not both"):
        residual_backbone.edit(
            x0, s, deltas, steps=2, render=_linear_render, change_threshold=0.2, change_ramp=(0.1, 0.5)
        )


def test_a_residual_scale_is_diffused_and_divided_out_again(small_data):
    x0, s, deltas = small_data
    torch.manual_seed(0)
    unet = StyleConditionedUNet.tiny(style_dim=S, sample_size=16, render_channels=3, residual_scale=8.0)
    backbone = DiffusionBackbone(unet, MILD, traced=False)
    assert backbone.residual_scale == 8.0
    out = backbone.edit(x0, s, deltas, steps=6, render=_linear_render, depth=0.5)
    renders = _linear_render(torch.cat([s, s + deltas]))
    # By hand: invert 8 (x0 − R(s)) under (s, R(s)); decode under each (s', R(s')); divide by 8.
    x_t = ddim_invert(unet, MILD, 8 * (x0 - renders[:1]), s, 6, 1, 10, render=renders[:1], depth=0.5)
    decoded = ddim_sample(
        unet,
        MILD,
        x_t.expand(1 + deltas.shape[0], -1, -1, -1),
        torch.cat([s, s + deltas]),
        6,
        render=renders,
        depth=0.5,
    )
    want = (renders + decoded / 8).clamp(-1, 1)
    torch.testing.assert_close(torch.cat([out.reconstruction, out.edits]), want, atol=1e-5, rtol=0)
    # invert / sample agree with it: R(s) + decoded residual / 8.
    x_T = backbone.invert(x0, s, steps=6, render=renders[:1])
    full = ddim_invert(unet, MILD, 8 * (x0 - renders[:1]), s, 6, render=renders[:1])
    torch.testing.assert_close(x_T, full, atol=1e-5, rtol=0)
    sampled = backbone.sample(x_T, s, steps=6, render=renders[:1])
    torch.testing.assert_close(
        sampled, renders[:1] + ddim_sample(unet, MILD, full, s, 6, render=renders[:1]) / 8
    )
