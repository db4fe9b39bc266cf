"""Long loops report their steps through tqdm, which Gradio's track_tqdm shows on the page."""

from __future__ import annotations

import torch

from deltaedit import progress
from deltaedit.nn.style_unet import StyleConditionedUNet
from deltaedit.pipelines.diffusion import DiffusionBackbone


def test_ddim_inversion_and_sampling_report_every_step(monkeypatch):
    bars = []

    def recording_steps(iterable, desc):
        items = list(iterable)
        bars.append((desc, len(items)))
        return items

    monkeypatch.setattr(progress, "steps", recording_steps)
    torch.manual_seed(0)
    backbone = DiffusionBackbone(StyleConditionedUNet.tiny(style_dim=8, sample_size=16), traced=False)
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    backbone.edit(x0, torch.randn(1, 8), torch.randn(2, 8), steps=6, refine=0)
    assert bars == [("DDIM inversion", 6), ("DDIM sampling", 6)]


def test_a_bar_stays_off_without_a_terminal_and_still_yields_everything(capsys):
    assert list(progress.steps(range(5), "refinement")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # pytest's stderr is no terminal: no bar in logs
