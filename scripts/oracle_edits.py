"""How well could any toy mapper do under the relevance selection? `python scripts/oracle_edits.py`

A diagnosis, not part of the method: it uses the renderer's labels, which DeltaEdit must not.
For `--n` fresh faces (`--seed`, as `eval` draws them) and every standard prompt the face does not
already satisfy, the renderer draws the same face (same jitter) with only the asked attribute
changed. Both renders are encoded; the true code difference Δs = s2 − s1 is applied at strength 1
to the first, once on every channel and once per `--thresholds` value with the paper's relevance
selection (|fs3 · Δt| ≥ threshold, Δt the prompt's text delta, as an edit selects). The toy
classifier scores success and preservation exactly as `eval` does (preservation against the
unedited reconstruction). docs/fast-toy-edits.md quotes its output for seeds 1000, 7, 2024 and 3.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deltaedit import weights  # noqa: E402
from deltaedit.api import load_editor  # noqa: E402
from deltaedit.nn.e4e import encode  # noqa: E402
from deltaedit.nn.stylespace import decode_s, w_plus_to_s  # noqa: E402
from deltaedit.relevance import select_channels_batch  # noqa: E402
from deltaedit.toy.attributes import prompt_targets, standard_prompts  # noqa: E402
from deltaedit.toy.classifier import load_classifier, predict  # noqa: E402
from deltaedit.toy.render import images_to_tensor, render_batch, render_many  # noqa: E402


@torch.no_grad()
def oracle_scores(n: int, seed: int, thresholds: list[float]) -> dict[str, tuple[float, float]]:
    """{'all channels' | 'selection at T': (success, preservation)} over every (face, prompt)."""
    editor = load_editor("toy", backbone="gan")
    classifier = load_classifier(weights.resolve(editor.config.weights["classifier"], None))
    generator, layout = editor.generator, editor.layout
    encoder, latent_avg = editor.encoder
    fs3 = editor._fs3_on_device

    def codes(x):
        w = encode(encoder, latent_avg, x)
        return w, layout.join(w_plus_to_s(generator, w))

    images, attrs = render_batch(n, seed)
    tally = defaultdict(lambda: np.zeros(3))  # edits, successes, preserved
    for face, face_attrs in zip(images, attrs):
        truth = face_attrs.labels()
        prompts = [p for p in standard_prompts() if any(truth[a] != v for a, v in prompt_targets(p).items())]
        targets = render_many([face_attrs.replace(**prompt_targets(p)) for p in prompts])
        w1, s1 = codes(images_to_tensor(face[None]))
        _, s2 = codes(images_to_tensor(targets))
        source = predict(classifier, decode_s(generator, layout.split(s1), w1))[0]
        delta_t = torch.stack([editor.clip.text_delta(p, editor.config.neutral_text) for p in prompts])
        variants = {"all channels": s2 - s1}
        for threshold in thresholds:
            keep = select_channels_batch(fs3, delta_t.float(), threshold).to(s1.dtype)
            variants[f"selection at {threshold:g}"] = (s2 - s1) * keep
        for name, delta_s in variants.items():
            edited = decode_s(generator, layout.split(s1 + delta_s), w1.expand(len(prompts), -1, -1))
            for prompt, read in zip(prompts, predict(classifier, edited)):
                asked = prompt_targets(prompt)
                tally[name] += (
                    1,
                    all(read[a] == v for a, v in asked.items()),
                    all(read[a] == source[a] for a in source if a not in asked),
                )
    return {name: (t[1] / t[0], t[2] / t[0]) for name, t in tally.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.02, 0.05, 0.1])
    args = p.parse_args()
    for name, (success, preservation) in oracle_scores(args.n, args.seed, args.thresholds).items():
        print(
            f"oracle Δs, {name:20s} seed {args.seed}: success {success:.3f}  preservation {preservation:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
