"""`eval`'s counterfactual PSNR: each edit against the true edited toy render, for the backbone, the
no-UNet baseline R(s') + (x − R(s)) and DeltaEdit-G's R(s') (deltaedit/toy/evaluate.py)."""

from __future__ import annotations

import math

import pytest
import torch

from deltaedit.pipelines.diffusion_editor import change_rule
from deltaedit.toy.evaluate import EvalReport, _mask_rule, counterfactual_psnrs, counterfactual_rows


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.2 - 0.6


def test_baseline_row_is_the_edit_rendering_plus_the_inputs_residual():
    x, render_source, render_edits = _images(1, 0), _images(1, 1), _images(3, 2)
    edited = _images(3, 3)
    rows = counterfactual_rows(x, render_source, render_edits, edited)
    assert set(rows) == {"backbone", "baseline", "gan", "mask_only"}
    torch.testing.assert_close(rows["baseline"], (render_edits + x - render_source).clamp(-1, 1))
    torch.testing.assert_close(rows["gan"], render_edits)
    torch.testing.assert_close(rows["backbone"], edited)


def test_mask_only_row_moves_the_input_only_where_the_rendering_changes():
    """The no-UNet "mask only" rule: x + (R(s') − R(s)) where |R(s') − R(s)| (max over channels,
    3x3 mean) exceeds the threshold, the input's own pixels elsewhere."""
    x = _images(1, 0)
    render_source = torch.zeros(1, 3, 8, 8)
    render_edits = torch.zeros(2, 3, 8, 8)
    render_edits[0, 1, 2:5, 2:5] = 0.5  # a 3x3 patch changes in one channel: its 3x3 mean > 0.2 inside
    rows = counterfactual_rows(x, render_source, render_edits, render_edits, mask_threshold=0.2)
    out = rows["mask_only"]
    torch.testing.assert_close(out[1], x[0])  # nothing changed: the input itself
    torch.testing.assert_close(out[0, :, 3, 3], (x[0, :, 3, 3] + render_edits[0, :, 3, 3]))
    torch.testing.assert_close(out[0, :, 0, 0], x[0, :, 0, 0])  # far from the patch
    # A threshold above every change keeps the input everywhere; 0 moves every changed pixel.
    none = counterfactual_rows(x, render_source, render_edits, render_edits, mask_threshold=1.0)
    torch.testing.assert_close(none["mask_only"], x.expand(2, -1, -1, -1))


def test_mask_only_row_with_a_ramp_blends_the_baseline_into_the_input():
    """With the soft change mask: x + w·(R(s') − R(s)), w rising from 0 at lo to 1 at hi."""
    x = _images(1, 0)
    render_source = torch.zeros(1, 3, 8, 8)
    render_edits = torch.zeros(3, 3, 8, 8)
    render_edits[0, 0] = 0.05  # uniform changes 0.05, 0.3 and 0.6 (3x3 means equal to them)
    render_edits[1, 0] = 0.3
    render_edits[2, 0] = 0.6
    out = counterfactual_rows(x, render_source, render_edits, render_edits, mask_ramp=(0.1, 0.5))["mask_only"]
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    torch.testing.assert_close(out[1], (x[0] + 0.5 * render_edits[1]).clamp(-1, 1))
    torch.testing.assert_close(out[2], (x[0] + render_edits[2]).clamp(-1, 1))
    # A flat ramp is the hard mask at that threshold.
    flat = counterfactual_rows(x, render_source, render_edits, render_edits, mask_ramp=(0.2, 0.2))
    hard = counterfactual_rows(x, render_source, render_edits, render_edits, mask_threshold=0.2)
    torch.testing.assert_close(flat["mask_only"], hard["mask_only"], atol=0, rtol=0)


class _Config:
    def __init__(self, extra):
        self.extra = extra


class _Editor:
    def __init__(self, extra):
        self.config = _Config(extra)


def test_mask_only_row_follows_the_change_rule_deltaedit_d_applies():
    """The mask-only row is always the shipped D rule without its UNet: the domain's ramp if it sets
    one, else its threshold, else 0.2."""
    assert _mask_rule(_Editor({"diffusion_change_threshold": 0.3})) == {"mask_threshold": 0.3}
    ramp = {"diffusion_change_threshold": 0.2, "diffusion_change_ramp": [0.1, 0.5]}
    assert _mask_rule(_Editor(ramp)) == {"mask_ramp": (0.1, 0.5)}
    assert _mask_rule(_Editor({})) == {"mask_threshold": 0.2}
    # The editor reads the same config the same way; what a caller asks for wins over it.
    assert change_rule(ramp) == {"change_threshold": None, "change_ramp": (0.1, 0.5)}
    assert change_rule(ramp, change_threshold=0.3) == {"change_threshold": 0.3, "change_ramp": None}
    assert change_rule(ramp, change_threshold=-1) == {"change_threshold": None, "change_ramp": None}
    assert change_rule({"diffusion_change_threshold": 0.2}, change_ramp=[0.1, 0.4]) == {
        "change_threshold": None,
        "change_ramp": (0.1, 0.4),
    }


def test_psnr_against_the_truth_is_exact_for_the_truth_and_known_for_an_offset():
    truths = _images(2, 4)
    x = torch.zeros(1, 3, 8, 8)
    render_source = x - 0.2  # the input's residual x − R(s) is +0.2 everywhere
    render_edits = truths - 0.2  # so the baseline R(s') + 0.2 is the truth, and G is 0.2 off
    rows = counterfactual_rows(x, render_source, render_edits, truths)
    scores = counterfactual_psnrs(rows, truths)
    assert all(v > 150 for v in scores["backbone"])  # identical: mse clamped at 1e-20, ~206 dB
    assert all(v > 100 for v in scores["baseline"])
    # 0.2 off in [-1, 1]: mse 0.04, PSNR = 10 log10(2^2 / 0.04) = 20 dB.
    assert scores["gan"] == pytest.approx([20.0, 20.0], abs=1e-4)
    assert all(v > 100 for v in scores["mask_only"])  # the rendering changes everywhere: the baseline


def test_report_averages_every_edit_and_prints_one_line_per_prompt():
    report = EvalReport()
    for row, values in {"backbone": (30.0, 20.0), "baseline": (25.0, 23.0), "gan": (21.0, 19.0)}.items():
        report.counterfactual[row]["face with smile"].append(values[0])
        report.counterfactual[row]["chubby face"].append(values[1])
    report.counterfactual["backbone"]["chubby face"].append(16.0)
    for row in ("baseline", "gan"):
        report.counterfactual[row]["chubby face"].append(10.0)
    overall = report.counterfactual_psnr()
    assert overall["backbone"] == pytest.approx((30 + 20 + 16) / 3)
    assert overall["baseline"] == pytest.approx((25 + 23 + 10) / 3)
    text = report.table().splitlines()
    assert f"counterfactual_psnr (n 3): backbone={(30 + 20 + 16) / 3:.2f}  baseline=19.33  gan=16.67" in text
    chubby = next(line for line in text if line.startswith("chubby face") and "18.00" in line)
    assert chubby.split()[2:] == ["2", "18.00", "16.50", "14.50"]
    # The last lines keep the format other tools parse.
    assert text[-1].startswith("success=")


def test_an_empty_report_prints_no_counterfactual_section():
    report = EvalReport()
    assert report.counterfactual_psnr() == {}
    assert not any("counterfactual" in line for line in report.table().splitlines())
    assert math.isfinite(report.overall()[0])
