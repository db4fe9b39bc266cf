"""Edits by example, measured on toy faces: `python -m deltaedit eval --by-example`.

For N fresh renders (as `evaluate` draws them) and every standard prompt the face does not already
satisfy, the same edit is asked two ways:

- text: the prompt, as `evaluate` asks it (source "face");
- analogy: two example pictures A and B of *another* face (the face at the same index of a partner
  seed, never the evaluated one) that differ only in the asked attribute: A has the evaluated
  face's value, B the asked one. The edit does to the face what changes A into B.

Both are scored exactly as `evaluate` scores (`_score`: success = the classifier reads the asked
value; preservation = every other attribute reads as in the unedited reconstruction). The renderer
draws A and B: labels pick the example pair (what a user does when they choose two pictures), they
never enter the edit itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from .attributes import prompt_targets, standard_prompts
from .classifier import predict
from .evaluate import PromptScore, _score, pooled_means
from .render import render_batch, render_many

PARTNER_SEED_OFFSET = 7919  # the example faces come from another seed than the evaluated ones


@dataclass
class ExampleReport:
    text: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))
    analogy: dict[str, PromptScore] = field(default_factory=lambda: defaultdict(PromptScore))

    @staticmethod
    def overall(scores: dict[str, PromptScore]) -> tuple[float, float, float]:
        return pooled_means(scores)

    def table(self) -> str:
        lines = [f"{'prompt':28s} {'n':>4s} {'text success':>13s} {'preserve':>9s} {'example success':>16s} {'preserve':>9s}"]
        for prompt, text in self.text.items():
            example = self.analogy[prompt]
            ts, tp, _ = text.means()
            es, ep, _ = example.means()
            lines.append(f"{prompt:28s} {text.n:4d} {ts:13.2f} {tp:9.2f} {es:16.2f} {ep:9.2f}")
        ts, tp, _ = self.overall(self.text)
        es, ep, _ = self.overall(self.analogy)
        lines.append(f"\noverall: text success {ts:.2f} preservation {tp:.2f}; by example success {es:.2f} preservation {ep:.2f}")
        lines.append(f"example_success={es:.2f} example_preservation={ep:.2f} text_success={ts:.2f} text_preservation={tp:.2f}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_by_example(
    editor, classifier, n: int = 50, seed: int = 1000, progress: bool = True, **edit_kwargs
) -> ExampleReport:
    """Edit `n` fresh renders (seed `seed`) by text and by example pairs; see the module docstring."""
    images, attrs = render_batch(n, seed)
    _, partners = render_batch(n, seed + PARTNER_SEED_OFFSET)
    report = ExampleReport()
    for i in tqdm(range(n), desc="evaluating by example", disable=not progress):
        truth = attrs[i].labels()
        face = Image.fromarray(images[i])
        prompts = [p for p in standard_prompts() if any(truth[a] != v for a, v in prompt_targets(p).items())]
        if not prompts:
            continue
        text = editor.edit(image=face, align=False, targets=prompts, **edit_kwargs)
        source_pred = predict(classifier, text.source_tensor)[0]
        for prompt, edit_pred, edited in zip(prompts, predict(classifier, text.edited_tensor), text.edited_tensor):
            _score(report.text, prompt, prompt_targets(prompt), source_pred, edit_pred, _similarity(edited, text))
        for prompt in prompts:
            asked = prompt_targets(prompt)
            before = partners[i].replace(**{a: truth[a] for a in asked})
            pair = [Image.fromarray(x) for x in render_many([before, partners[i].replace(**asked)])]
            result = editor.edit(image=face, align=False, example=tuple(pair), **edit_kwargs)
            edit_pred = predict(classifier, result.edited_tensor)[0]
            _score(report.analogy, prompt, asked, source_pred, edit_pred, _similarity(result.edited_tensor[0], result))
    return report


def _similarity(edited: torch.Tensor, result) -> float:
    return 1.0 - float((edited - result.source_tensor[0]).abs().mean()) / 2
