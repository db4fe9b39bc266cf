"""Measure the paper's claims on the toy domain: edits succeed and leave everything else alone.

For N random rendered faces, every standard prompt whose attribute value the face does not already
have is applied (source "face"). The attribute classifier then reads the edit:

- success: the classifier reads the asked-for value(s) in the edit;
- preservation: every other attribute reads as it did in the unedited reconstruction;
- similarity: 1 - mean |edit - source| / 2 (1.0 = identical pixels).

Reconstruction: `reconstruction_psnr` is the diffusion backbone's unedited output against its input;
`gan_reconstruction_psnr` is DeltaEdit-G's (the generator's decoding of the encoded face) on the same
faces, printed for both backbones so DeltaEdit-D's gain over the GAN is visible.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..pipelines.diffusion import psnr
from .attributes import SOURCE_TARGET_PAIRS, TWO_ATTRIBUTE_PROMPTS, prompt_targets, standard_prompts
from .classifier import predict
from .render import render_batch


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


@dataclass
class EvalReport:
    standard: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    source_pairs: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    two_attribute: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    reconstruction_psnr: float | None = None
    gan_reconstruction_psnr: float | None = None

    def overall(self) -> tuple[float, float, float]:
        total = PromptScore()
        for s in self.standard.values():
            total.n += s.n
            total.success += s.success
            total.preservation += s.preservation
            total.similarity += s.similarity
        return total.means()

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


def _score(report_scores, prompt, asked: dict[str, str], src_pred, edit_pred, similarity):
    success = all(edit_pred[a] == v for a, v in asked.items())
    preserved = all(edit_pred[a] == src_pred[a] for a in src_pred if a not in asked)
    report_scores[prompt].add(success, preserved, similarity)


@torch.no_grad()
def evaluate(
    editor, classifier, n: int = 50, seed: int = 1000, progress: bool = True, **edit_kwargs
) -> EvalReport:
    """Edit `n` fresh renders (seed `seed`) with every applicable prompt; see the module docstring."""
    images, attrs = render_batch(n, seed)
    report = EvalReport()
    psnrs, gan_psnrs = [], []
    for i in tqdm(range(n), desc="evaluating", disable=not progress):
        truth = attrs[i].labels()
        face = Image.fromarray(images[i])
        jobs = []  # (group, prompt, source text, target text, asked values)
        for prompt in standard_prompts():
            asked = prompt_targets(prompt)
            if any(truth[a] != v for a, v in asked.items()):
                jobs.append((report.standard, prompt, None, prompt, asked))
        for source, target in SOURCE_TARGET_PAIRS:
            if all(truth[a] == v for a, v in prompt_targets(source).items()):
                jobs.append(
                    (report.source_pairs, f"{source} -> {target}", source, target, prompt_targets(target))
                )
        for prompt in TWO_ATTRIBUTE_PROMPTS:
            asked = prompt_targets(prompt)
            if all(truth[a] != v for a, v in asked.items()):
                jobs.append((report.two_attribute, prompt, None, prompt, asked))
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
    if psnrs:
        report.reconstruction_psnr = float(np.mean(psnrs))
    if gan_psnrs:
        report.gan_reconstruction_psnr = float(np.mean(gan_psnrs))
    return report
