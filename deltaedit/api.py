"""The Python API: `load_editor(domain, backbone)` returns an editor with `.edit(...)`.

>>> from deltaedit import load_editor
>>> editor = load_editor("toy", backbone="gan")
>>> result = editor.edit(latents=editor.sample(seed=3).w_plus, targets=["face with a smile"])
>>> result.edited_images[0].save("smile.png")
"""

from __future__ import annotations

from .errors import InputError

BACKBONES = ("gan", "diffusion")


def load_editor(domain="ffhq", backbone: str = "gan", device: str = "cpu", weights_dir=None):
    """The shared, cached editor of `domain` (ffhq, toy; or a `deltaedit.domain.Domain`) for
    `backbone` (gan, diffusion), its weights looked for in `weights_dir` first."""
    if backbone == "gan":
        from .pipelines.gan import GanEditor

        return GanEditor.load(domain, device, weights_dir)
    if backbone == "diffusion":
        from .pipelines.diffusion_editor import DiffusionEditor

        return DiffusionEditor.load(domain, device, weights_dir)
    raise InputError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
