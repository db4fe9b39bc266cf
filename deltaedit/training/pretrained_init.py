"""Start DeltaEdit-D from a public unconditional DDPM (a diffusers `UNet2DModel`), e.g. a face model.

Training FFHQ DeltaEdit-D from scratch costs about 20 GPU-hours per 100k steps (see
`deltaedit.training.diffusion`). A public face DDPM such as `google/ddpm-ema-celebahq-256` already
knows how to denoise faces at 256 px; only the conditioning on the style code s is new.

- `load_pretrained_unet(source)`: the public model from a local diffusers folder (the UNet's own
  folder or a pipeline folder with `unet/`) or a hub repo id (`org/name`, `org/name@revision`),
  found and downloaded with the conventions of `deltaedit.weights` (a weights dir, the hub cache,
  offline errors that say what to download and where to put it).
- `conditioned_from_pretrained(unet, style_dim, render_channels)`: a `StyleConditionedUNet` with
  exactly that architecture (`time_scale_shift` = the model's `resnet_time_scale_shift`, every other
  `UNet2DModel` keyword through `unet_extra`) and its weights. What the public model lacks starts
  at zero: the style projection's output layer (so the style embedding added to the time embedding
  is exactly 0) and, with `render_channels` > 0, conv_in's input channels for the generator's
  rendering R(s). At step 0 the conditioned model's output equals the public model's bit for bit,
  for any s and any rendering; training starts from the public model and learns the conditioning.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from .. import weights
from ..errors import InputError, WeightsError
from ..nn.style_unet import StyleConditionedUNet

log = logging.getLogger(__name__)

# UNet2DModel keywords that StyleConditionedUNet takes under its own name.
_OWN_KEYWORDS = {
    "sample_size": "sample_size",
    "block_out_channels": "block_out_channels",
    "down_block_types": "down_block_types",
    "up_block_types": "up_block_types",
    "layers_per_block": "layers_per_block",
    "attention_head_dim": "attention_head_dim",
    "norm_num_groups": "norm_num_groups",
    "dropout": "dropout",
    "time_embedding_dim": "time_embedding_dim",
    "resnet_time_scale_shift": "time_scale_shift",
}
# Set by StyleConditionedUNet itself (channels from in_channels/render_channels; s as class embedding).
_WRAPPER_KEYWORDS = {"in_channels", "out_channels", "class_embed_type", "num_class_embeds"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

# config.json of google/ddpm-ema-celebahq-256 (the DDPM CelebA-HQ 256 model, EMA weights) as diffusers
# >= 0.22 saves it: the architecture `--init google/ddpm-ema-celebahq-256` rebuilds, 113.7M parameters.
# Tests and `--estimate` without downloads build it with `UNet2DModel.from_config` (random weights).
DDPM_EMA_CELEBAHQ_256_CONFIG: dict = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "add_attention": True,
    "attention_head_dim": None,
    "attn_norm_num_groups": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "class_embed_type": None,
    "down_block_types": [
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 0,
    "downsample_type": "conv",
    "dropout": 0.0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "num_train_timesteps": None,
    "out_channels": 3,
    "resnet_time_scale_shift": "default",
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "upsample_type": "conv",
}


# ---------------------------------------------------------------------------------------------- loading
def _unet_folder(folder: Path) -> Path:
    """The folder holding the UNet's config.json: `folder` itself or its `unet/`."""
    for candidate in (folder, folder / "unet"):
        config = candidate / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_class_name")
            except (OSError, ValueError) as exc:
                raise WeightsError(f"{config} is not readable JSON ({exc})") from exc
            if name == "UNet2DModel":
                return candidate
    raise WeightsError(
        f"{folder} holds no diffusers UNet2DModel (a config.json with \"_class_name\": \"UNet2DModel\""
        " at the top or in unet/); pass a public DDPM such as google/ddpm-ema-celebahq-256 or its folder"
    )


def resolve_pretrained(source: str | Path, weights_dir=None, download: bool = True) -> Path:
    """Local folder of `source`: an existing folder, or a hub repo id (`org/name[@revision]`)
    looked up in `weights_dir`/DELTAEDIT_WEIGHTS_DIR (as `<name>/`), the hub cache, then downloaded."""
    path = Path(str(source)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"--init {source}: a diffusers model folder or a hub repo id is expected, not a file")
        return path
    text = str(source)
    if not _REPO_ID.match(text):
        raise InputError(
            f"--init {source}: no such folder, and not a hub repo id (org/name, optionally @revision)"
        )
    repo_id, _, revision = text.partition("@")
    tag = weights.hub_folder_tag(repo_id, revision or None)
    return weights.resolve(tag, weights_dir, download=download)


def load_pretrained_unet(source: str | Path, weights_dir=None, download: bool = True) -> UNet2DModel:
    """The public `UNet2DModel` named by `source` (folder or hub repo id), in float32 on the CPU."""
    folder = _unet_folder(resolve_pretrained(source, weights_dir, download))
    try:
        unet = UNet2DModel.from_pretrained(folder, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise WeightsError(f"{folder}: could not load the UNet2DModel ({exc}); is the download complete?") from exc
    log.info("pretrained UNet: %s (%.1fM parameters)", folder, sum(p.numel() for p in unet.parameters()) / 1e6)
    return unet.float().eval()


# ---------------------------------------------------------------------------------------------- building
def conditioned_config(unet_config, style_dim: int, render_channels: int = 0, **overrides) -> dict:
    """StyleConditionedUNet keyword arguments that rebuild the `UNet2DModel` of `unet_config` exactly."""
    cfg = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds") is not None:
        raise InputError(
            "the pretrained UNet is class-conditional; DeltaEdit-D starts from an unconditional DDPM"
            " (its class embedding is where the style code goes)"
        )
    channels = cfg.get("in_channels", 3)
    if cfg.get("out_channels", channels) != channels:
        raise InputError(
            f"the pretrained UNet maps {channels} to {cfg['out_channels']} channels; ε-prediction needs"
            " as many output channels as input channels"
        )
    accepted = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    kwargs: dict = {"style_dim": style_dim, "in_channels": channels, "patch_size": 1}
    extra: dict = {}
    for key, value in cfg.items():
        if key in _OWN_KEYWORDS:
            kwargs[_OWN_KEYWORDS[key]] = list(value) if isinstance(value, tuple) else value
        elif key in accepted and key not in _WRAPPER_KEYWORDS:
            extra[key] = list(value) if isinstance(value, tuple) else value
    kwargs["unet_extra"] = extra
    kwargs["render_channels"] = render_channels
    kwargs.update(overrides)
    return kwargs


class SplitInputConv(nn.Conv2d):
    """A conv_in that got input channels added: the original channels and the added ones are
    convolved separately and summed.

    Same parameters and state-dict keys as the plain `Conv2d` it replaces, and mathematically the
    same function (a saved model loads back as a plain Conv2d). Computed this way, zero weights on the
    added channels contribute exactly 0, so the output is bit-identical to the pretrained model's:
    one convolution over all channels may round differently, as the CPU and GPU backends choose
    their algorithm by shape (measured here: 128 outputs at 64 px differed by 6e-6).
    """

    def __init__(self, conv: nn.Conv2d, base_channels: int):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if conv.groups != 1 or not 0 < base_channels < conv.in_channels:
            raise InputError(f"cannot split {conv} after {base_channels} input channels")
        self.base_channels = base_channels
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.base_channels
        out = self._conv_forward(x[:, :c], self.weight[:, :c], self.bias)
        return out + self._conv_forward(x[:, c:], self.weight[:, c:], None)


@torch.no_grad()
def conditioned_from_pretrained(
    unet: UNet2DModel, style_dim: int, render_channels: int = 0, **overrides
) -> StyleConditionedUNet:
    """A StyleConditionedUNet = `unet` + zero-initialised style conditioning (and rendering input).

    `overrides`: further StyleConditionedUNet keywords (e.g. `style_hidden_dim`); keywords that change
    the architecture make the weights not fit and raise a WeightsError.
    """
    if render_channels < 0:
        raise InputError(f"render_channels must be >= 0, got {render_channels}")
    model = StyleConditionedUNet(**conditioned_config(unet.config, style_dim, render_channels, **overrides))
    source = unet.state_dict()
    target = model.unet.state_dict()
    channels = unet.config.in_channels
    # conv_in takes [sample, rendering] (StyleConditionedUNet concatenates in that order).
    expected = {k: tuple(v.shape) for k, v in target.items()}
    if render_channels:
        w = expected["conv_in.weight"]
        expected["conv_in.weight"] = (w[0], channels, *w[2:])
    weights.check_state_dict(source, expected, "the pretrained UNet")
    state = {}
    for key, value in source.items():
        if key == "conv_in.weight" and render_channels:
            # The rendering's input channels start at zero, like the style projection.
            full = torch.zeros(target[key].shape, dtype=target[key].dtype)
            full[:, :channels] = value
            value = full
        state[key] = value.to(target[key].dtype)
    model.unet.load_state_dict(state, strict=True)
    if render_channels:
        model.unet.conv_in = SplitInputConv(model.unet.conv_in, channels)
    out_layer = model.style_proj[-1]
    nn.init.zeros_(out_layer.weight)
    nn.init.zeros_(out_layer.bias)
    # The same mode as the source: diffusers' UNet blocks compute differently in train() and eval()
    # (dropout layers, even at p = 0), so equal outputs need equal modes.
    return model.train(unet.training)


def init_from_pretrained(
    source, style_dim: int, render_channels: int = 0, weights_dir=None, download: bool = True, **overrides
) -> StyleConditionedUNet:
    """`load_pretrained_unet` + `conditioned_from_pretrained`: what `train-diffusion --init` builds."""
    unet = load_pretrained_unet(source, weights_dir, download)
    return conditioned_from_pretrained(unet, style_dim, render_channels, **overrides)
