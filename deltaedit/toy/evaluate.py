"""Measure the paper's claims on the toy domain: edits succeed and leave everything else alone.

For N random rendered faces, every standard prompt whose attribute value the face does not already
have is applied (source "face"). The attribute classifier then reads the edit:

- success: the classifier reads the asked-for value(s) in the edit;
- preservation: every other attribute reads as it did in the unedited reconstruction;
- similarity: 1 - mean |edit - source| / 2 (1.0 = identical pixels).

Reconstruction: `reconstruction_psnr` is the diffusion backbone's unedited output against its input;
`gan_reconstruction_psnr` is DeltaEdit-G's (the generator's decoding of the encoded face) on the same
faces, printed for both backbones so DeltaEdit-D's gain over the GAN is visible.

Against the truth: on toy faces the true edited image is known. For every standard and
two-attribute prompt (source "face") the renderer draws the same face, same jitter, with only the
asked attribute(s) changed; `counterfactual_psnr` is the PSNR of each edit against that render
(images in [-1, 1]), averaged over edits, for three outputs of the same edit (same Δs, strength and
refinement): the backbone's, DeltaEdit-G's R(s'), the no-UNet baseline R(s') + (x - R(s)) and the
no-UNet "mask only" rule x + M·(R(s') - R(s)) (M: the change mask DeltaEdit-D applies, from the
domain's config as `DiffusionEditor` reads it: the hard mask `changed_pixels` at
`extra.diffusion_change_threshold`, or the soft `change_weights` of `extra.diffusion_change_ramp`;
the input's pixels wherever the edit leaves the rendering alone, the baseline elsewhere: the
shipped D rule without its UNet), where R decodes a style code as DeltaEdit-G does, s' = s + α·Δs and
x is the input. A DeltaEdit-D design earns its UNet only by beating the mask-only row. The
renderer's labels serve only this measurement.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..nn.stylespace import decode_s
from ..pipelines.diffusion import apply_change_rule, psnr
from ..pipelines.diffusion_editor import change_rule
from .attributes import SOURCE_TARGET_PAIRS, TWO_ATTRIBUTE_PROMPTS, prompt_targets, standard_prompts
from .classifier import predict
from .render import images_to_tensor, render_batch, render_many

# The outputs `counterfactual_psnr` compares on each edit (see the module docstring).
COUNTERFACTUAL_ROWS = ("backbone", "baseline", "gan", "mask_only")
# The change mask of the "mask only (no UNet)" row when the editor's domain sets none.
MASK_ONLY_THRESHOLD = 0.2


@dataclass
class PromptScore:
    n: int = 0
    success: float = 0.0
    preservation: float = 0.0
    similarity: float = 0.0

    def add(self, success: bool, preserved: bool, similarity: float) -> None:
        self.n += 1
        self.success += float(success)
        self.preservation += float(preserved)
        self.similarity += similarity

    def means(self) -> tuple[float, float, float]:
        n = max(self.n, 1)
        return self.success / n, self.preservation / n, self.similarity / n


def pooled_means(scores: dict[str, PromptScore]) -> tuple[float, float, float]:
    """(success, preservation, similarity) over every edit of every prompt (not a mean of prompts)."""
    total = PromptScore()
    for s in scores.values():
        total.n += s.n
        total.success += s.success
        total.preservation += s.preservation
        total.similarity += s.similarity
    return total.means()


@dataclass
class EvalReport:
    standard: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    source_pairs: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    two_attribute: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    reconstruction_psnr: float | None = None
    gan_reconstruction_psnr: float | None = None
    # {row in COUNTERFACTUAL_ROWS: {prompt: [PSNR of each edit against its counterfactual render]}}
    counterfactual: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {row: defaultdict(list) for row in COUNTERFACTUAL_ROWS}
    )

    def counterfactual_psnr(self) -> dict[str, float]:
        """{row: mean PSNR over every edit} (empty when nothing was measured)."""
        out = {}
        for row, prompts in self.counterfactual.items():
            values = [v for vs in prompts.values() for v in vs]
            if values:
                out[row] = float(np.mean(values))
        return out

    def counterfactual_table(self) -> list[str]:
        rows = [r for r in COUNTERFACTUAL_ROWS if self.counterfactual.get(r)]
        if not rows:
            return []
        first = self.counterfactual[rows[0]]
        lines = [
            "\ncounterfactual PSNR (dB) against the true edited render (standard and two-attribute prompts)",
            "(baseline: R(s') + (x - R(s)), no UNet; gan: R(s'); mask_only: mask only (no UNet),"
            " x + M·(R(s') - R(s)) with M the change mask)",
            f"{'prompt':44s} {'n':>4s} " + " ".join(f"{r:>9s}" for r in rows),
        ]
        for prompt, values in first.items():
            means = " ".join(f"{np.mean(self.counterfactual[r][prompt]):9.2f}" for r in rows)
            lines.append(f"{prompt:44s} {len(values):4d} {means}")
        overall = self.counterfactual_psnr()
        n = sum(len(v) for v in first.values())
        lines.append(f"counterfactual_psnr (n {n}): " + "  ".join(f"{r}={overall[r]:.2f}" for r in rows))
        return lines

    def overall(self) -> tuple[float, float, float]:
        return pooled_means(self.standard)

    def table(self) -> str:
        lines = []
        for title, scores in (
            ("standard prompts (source 'face')", self.standard),
            ("non-neutral source -> target", self.source_pairs),
            ("two-attribute targets", self.two_attribute),
        ):
            if not scores:
                continue
            lines.append(f"\n{title}")
            lines.append(f"{'prompt':44s} {'n':>4s} {'success':>8s} {'preserve':>9s} {'similar':>8s}")
            for prompt, score in scores.items():
                s, p, sim = score.means()
                lines.append(f"{prompt:44s} {score.n:4d} {s:8.2f} {p:9.2f} {sim:8.3f}")
        s, p, sim = self.overall()
        lines.append(
            f"\noverall (standard prompts): success {s:.2f}  preservation {p:.2f}  similarity {sim:.3f}"
        )
        lines.extend(self.counterfactual_table())
        if self.gan_reconstruction_psnr is not None:
            lines.append(f"gan_reconstruction_psnr={self.gan_reconstruction_psnr:.1f}")
        if self.reconstruction_psnr is not None:
            lines.append(f"reconstruction_psnr={self.reconstruction_psnr:.1f}")
        lines.append(f"success={s:.2f} preservation={p:.2f}")
        return "\n".join(lines)


def _gan_reconstruction_psnr(editor, face: Image.Image) -> float | None:
    """PSNR of DeltaEdit-G's reconstruction of `face` (G's decoding of its encoding) against the
    encoder's input; None for an editor without the GAN's encode/render."""
    gan = getattr(editor, "gan", editor)
    if not (hasattr(gan, "encode_image") and hasattr(gan, "render")):
        return None
    codes = gan.encode_image(face, align=False)  # remembered per image: the edits reuse it
    if codes.input_image is None:
        return None
    rendered = codes.image if codes.image is not None else gan.render(codes)
    target = codes.input_image.float()
    if rendered.shape[-2:] != target.shape[-2:]:
        rendered = F.interpolate(
            rendered.float(), size=target.shape[-2:], mode="bilinear", antialias=True, align_corners=False
        )
    return float(psnr(rendered.float().clamp(-1, 1), target.clamp(-1, 1)).mean())


def counterfactual_rows(
    x: torch.Tensor,
    render_source: torch.Tensor,
    render_edits: torch.Tensor,
    edited: torch.Tensor,
    mask_threshold: float = MASK_ONLY_THRESHOLD,
    mask_ramp: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """The outputs `counterfactual_psnr` compares, each [T, 3, H, W] in [-1, 1]: the backbone's
    `edited`, DeltaEdit-G's R(s') (`render_edits`), the no-UNet baseline R(s') + (x − R(s)) for
    the input x [1, 3, H, W] and its rendering R(s) [1, 3, H, W], and the no-UNet "mask only" rule
    x + M·(R(s') − R(s)), M = `changed_pixels(R(s), R(s'), mask_threshold)`, or with `mask_ramp`
    (lo, hi) instead the soft M = `change_weights(R(s), R(s'), mask_ramp)` (`apply_change_rule`)."""
    x, render_source, render_edits = x.float(), render_source.float(), render_edits.float()
    rule = {"change_ramp": mask_ramp} if mask_ramp is not None else {"change_threshold": mask_threshold}
    mask_only = apply_change_rule(x, x + render_edits - render_source, render_source, render_edits, **rule)
    return {
        "backbone": edited.float().clamp(-1, 1),
        "baseline": (render_edits + (x - render_source)).clamp(-1, 1),
        "gan": render_edits.clamp(-1, 1),
        "mask_only": mask_only.clamp(-1, 1),
    }


def _mask_rule(editor) -> dict:
    """The mask-only row's change mask as `counterfactual_rows` takes it: the rule DeltaEdit-D
    applies for the editor's domain (`change_rule`: its ramp, else its threshold), else the
    threshold `MASK_ONLY_THRESHOLD`."""
    config = getattr(editor, "config", None) or getattr(getattr(editor, "gan", None), "config", None)
    rule = change_rule(getattr(config, "extra", None) or {})
    if rule["change_ramp"] is not None:
        return {"mask_ramp": tuple(float(v) for v in rule["change_ramp"])}
    threshold = rule["change_threshold"]
    return {"mask_threshold": MASK_ONLY_THRESHOLD if threshold is None else float(threshold)}


def counterfactual_psnrs(rows: dict[str, torch.Tensor], truths: torch.Tensor) -> dict[str, list[float]]:
    """{row: PSNR of each edit against its counterfactual render} (`truths` [T, 3, H, W] in [-1, 1])."""
    return {name: psnr(out, truths.to(out)).tolist() for name, out in rows.items()}


def _renders_of(editor, result, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R(s) [1, 3, size, size] and R(s') [T, 3, size, size] of an edit's codes, decoded as DeltaEdit-G
    decodes them (convs from s, ToRGB from the source's W+)."""
    gan = getattr(editor, "gan", editor)
    styles = torch.cat([result.s_source, result.s_edited]).to(result.w_plus.device)
    out = decode_s(gan.generator, gan.layout.split(styles), result.w_plus.expand(styles.shape[0], -1, -1))
    if out.shape[-1] != size:
        out = F.interpolate(
            out.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    out = out.float().clamp(-1, 1)
    return out[:1], out[1:]


def _renders_codes(editor, result) -> bool:
    return hasattr(getattr(editor, "gan", editor), "generator") and hasattr(result, "s_source")


def _score(report_scores, prompt, asked: dict[str, str], src_pred, edit_pred, similarity):
    success = all(edit_pred[a] == v for a, v in asked.items())
    preserved = all(edit_pred[a] == src_pred[a] for a in src_pred if a not in asked)
    report_scores[prompt].add(success, preserved, similarity)


@torch.no_grad()
def evaluate(
    editor,
    classifier,
    n: int = 50,
    seed: int = 1000,
    progress: bool = True,
    save: Path | str | None = None,
    **edit_kwargs,
) -> EvalReport:
    """Edit `n` fresh renders (seed `seed`) with every applicable prompt; see the module docstring.

    `save`: a folder for one PNG per face (`face000.png`, ...): the input, then one column per
    standard / two-attribute edit with rows truth (the counterfactual render), backbone, baseline, G
    and the mask-only rule."""
    images, attrs = render_batch(n, seed)
    if save is not None:
        save = Path(save)
        save.mkdir(parents=True, exist_ok=True)
    report = EvalReport()
    psnrs, gan_psnrs = [], []
    for i in tqdm(range(n), desc="evaluating", disable=not progress):
        truth = attrs[i].labels()
        face = Image.fromarray(images[i])
        jobs = _face_jobs(report, truth)
        gan_psnr = _gan_reconstruction_psnr(editor, face)
        if gan_psnr is not None:
            gan_psnrs.append(gan_psnr)
        by_source = defaultdict(list)
        for job in jobs:
            by_source[job[2]].append(job)
        for source, group in by_source.items():
            result = editor.edit(
                image=face, align=False, targets=[j[3] for j in group], source=source, **edit_kwargs
            )
            src_pred = predict(classifier, result.source_tensor)[0]
            edit_preds = predict(classifier, result.edited_tensor)
            if source is None and getattr(result, "input_tensor", None) is not None:
                psnrs.append(float(psnr(result.source_tensor, result.input_tensor).mean()))
            for (scores, prompt, _, _, asked), edit_pred, edited in zip(
                group, edit_preds, result.edited_tensor
            ):
                similarity = 1.0 - float((edited - result.source_tensor[0]).abs().mean()) / 2
                _score(scores, prompt, asked, src_pred, edit_pred, similarity)
            # Standard and two-attribute prompts are measured against the truth, where the editor
            # can render codes as DeltaEdit-G does (a stand-in editor without a generator cannot).
            if source is None and _renders_codes(editor, result):
                truths = images_to_tensor(render_many([attrs[i].replace(**j[4]) for j in group]))
                x = getattr(result, "input_tensor", None)
                if x is None:
                    x = images_to_tensor(images[i : i + 1])
                x = _resized(x.float().cpu(), truths.shape[-1])
                render_source, render_edits = _renders_of(editor, result, truths.shape[-1])
                edited = _resized(result.edited_tensor.float().cpu(), truths.shape[-1])
                rows = counterfactual_rows(
                    x, render_source.cpu(), render_edits.cpu(), edited, **_mask_rule(editor)
                )
                for name, values in counterfactual_psnrs(rows, truths).items():
                    for job, value in zip(group, values):
                        report.counterfactual[name][job[1]].append(value)
                if save is not None:
                    _save_sheet(save / f"face{i:03d}.png", x, truths, rows)
    if psnrs:
        report.reconstruction_psnr = float(np.mean(psnrs))
    if gan_psnrs:
        report.gan_reconstruction_psnr = float(np.mean(gan_psnrs))
    return report


def _face_jobs(report: EvalReport, truth: dict) -> list[tuple]:
    """One face's edits as (score group, prompt, source text, target text, asked values): every
    standard and two-attribute prompt the face does not already satisfy, and every source-target
    pair whose source it does."""
    jobs = []
    for prompt in standard_prompts():
        asked = prompt_targets(prompt)
        if any(truth[a] != v for a, v in asked.items()):
            jobs.append((report.standard, prompt, None, prompt, asked))
    for source, target in SOURCE_TARGET_PAIRS:
        if all(truth[a] == v for a, v in prompt_targets(source).items()):
            jobs.append((report.source_pairs, f"{source} -> {target}", source, target, prompt_targets(target)))
    for prompt in TWO_ATTRIBUTE_PROMPTS:
        asked = prompt_targets(prompt)
        if all(truth[a] != v for a, v in asked.items()):
            jobs.append((report.two_attribute, prompt, None, prompt, asked))
    return jobs


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` [N, C, h, w] at size x size (antialiased bilinear), or as it is."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _save_sheet(path: Path, x: torch.Tensor, truths: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
    """A PNG grid: column 0 the input (top) and blanks, then one column per edit with rows truth,
    backbone, baseline, gan, mask only; 2x nearest-neighbour upscaled so 64 px details stay visible."""
    grid = [truths, *(rows[r] for r in COUNTERFACTUAL_ROWS)]
    first = torch.cat([x, torch.ones_like(x).expand(len(grid) - 1, -1, -1, -1)])
    cols = [first] + [torch.stack([g[k] for g in grid]) for k in range(truths.shape[0])]
    sheet = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # [3, rows*H, cols*W]
    sheet = F.interpolate(sheet[None], scale_factor=2, mode="nearest")[0]
    pixels = ((sheet.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
