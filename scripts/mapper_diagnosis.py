"""Where does the toy domain lose preservation? `python scripts/mapper_diagnosis.py --codes DIR`

A diagnosis, not part of the method: it uses the renderer's labels, which DeltaEdit must not.
For fresh faces and every applicable standard prompt it builds three CLIP deltas and feeds each
to three maps from CLIP delta to Δs, then decodes, classifies and prints success/preservation:

inputs  true   the face's own image delta: CLIP(render with the attribute changed) - CLIP(face)
        mean   the prompt's mean image delta over other renders (a perfectly aligned text delta)
        text   the text delta of the paper: "face with X" - "face"
        ground the text delta grounded in the face through the domain's feature bank
               (deltaedit.grounding; what the toy domain's editor feeds its mapper)
maps    ridge  one linear map fitted to raw random-pair deltas of the codes folder
        mapper the shipped Delta Mapper, condition as in the method
        context the mapper differenced in context: mean over random-partner deltas e of
               M(i, e + λ|e|·v) - M(i, e), so it only sees deltas like those it was trained on

DIR is a `python -m deltaedit make-codes --domain toy --n 10000 --out DIR` folder (about 3 min).
The README's table ("How we got here") was this script's output with the defaults for the
random-partner mapper shipped before; on the shipped weights it prints the shipped mapper's rows,
which the README quotes below that table.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deltaedit.api import load_editor  # noqa: E402
from deltaedit.nn.stylespace import decode_s  # noqa: E402
from deltaedit.relevance import select_channels  # noqa: E402
from deltaedit.toy.attributes import prompt_targets, standard_prompts  # noqa: E402
from deltaedit.toy.classifier import load_classifier, predict  # noqa: E402
from deltaedit.toy.render import images_to_tensor, render_many, sample_attributes  # noqa: E402
from deltaedit.training.codes import load_codes  # noqa: E402

INPUTS = ("true", "mean", "text", "ground")
MAPS = ("ridge", "mapper", "context")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def fit_ridge(codes_dir: Path, pairs: int, seed: int, lam: float = 1e-3) -> tuple[torch.Tensor, float]:
    """A [D, S] with Δs ≈ Δi A on random pairs of unit CLIP features, and the mean |Δi| of a pair."""
    _, s, c = load_codes(codes_dir)
    s, c = torch.from_numpy(s), unit(torch.from_numpy(c))
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, len(s), (2, pairs), generator=g)
    x, y = c[j] - c[i], s[j] - s[i]
    a = torch.linalg.solve(x.T @ x / pairs + lam * torch.eye(x.shape[1]), x.T @ y / pairs)
    return a, float(x.norm(dim=1).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codes", type=Path, required=True, help="make-codes --domain toy folder")
    p.add_argument("--weights-dir", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "toy")
    p.add_argument("--n", type=int, default=20, help="faces (default 20)")
    p.add_argument("--seed", type=int, default=1000, help="face seed (default 1000, as eval)")
    p.add_argument("--threshold", type=float, default=0.03)
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0])
    p.add_argument("--context", type=int, default=32, help="random partners for the context map")
    p.add_argument("--lam", type=float, default=0.3, help="λ of the context map")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    editor = load_editor("toy", backbone="gan", weights_dir=args.weights_dir)
    classifier = load_classifier(args.weights_dir / "classifier.safetensors")
    ridge, pair_norm = fit_ridge(args.codes, 200_000, 0)

    def encode(attrs):
        return [editor.encode_image(im, align=False) for im in _pil(render_many(attrs))]

    def features(attrs):
        return unit(editor.clip.image_features(images_to_tensor(render_many(attrs))))

    partners = unit(torch.cat([c.clip_feature for c in encode(sample_attributes(args.context, 777))]))
    others = sample_attributes(256, 78)
    other_features = features(others)
    mean_delta = {}
    for prompt in standard_prompts():
        asked = prompt_targets(prompt)
        rows = [k for k, a in enumerate(others) if any(getattr(a, n) != v for n, v in asked.items())]
        changed = features([others[k].replace(**asked) for k in rows])
        mean_delta[prompt] = (changed - other_features[rows]).mean(0)

    def mapped(kind: str, codes, v: torch.Tensor, is_text: bool) -> torch.Tensor:
        if kind == "ridge":  # fitted on raw image deltas; a text delta gets a random pair's length
            return (unit(v) * pair_norm if is_text else v) @ ridge
        if kind == "mapper":
            return editor.mapper(codes.s, editor.clip.condition(codes.clip_feature, v[None]))[0]
        e = partners - unit(codes.clip_feature)
        s = codes.s.expand(len(e), -1)
        i = codes.clip_feature.expand(len(e), -1)
        pushed = e + args.lam * e.norm(dim=1, keepdim=True) * unit(v)
        return (
            editor.mapper(s, editor.clip.condition(i, pushed)) - editor.mapper(s, editor.clip.condition(i, e))
        ).mean(0)

    scores = defaultdict(lambda: [[], []])
    for face in sample_attributes(args.n, args.seed):
        (codes,) = encode([face])
        source = predict(classifier, editor.render(codes))[0]
        own = unit(codes.clip_feature[0])
        for prompt in standard_prompts():
            asked = prompt_targets(prompt)
            if all(getattr(face, n) == v for n, v in asked.items()):
                continue
            (target,) = encode([face.replace(**asked)])
            text = editor.clip.text_delta(prompt).float()
            inputs = {"true": unit(target.clip_feature[0]) - own, "mean": mean_delta[prompt], "text": text}
            if editor.feature_bank is not None:
                inputs["ground"] = editor.feature_bank.ground(text[None], codes.clip_feature)[0]
            keep = select_channels(editor.fs3, text.cpu(), args.threshold).float()
            for (inp, v), kind in ((iv, k) for iv in inputs.items() for k in MAPS):
                delta_s = mapped(kind, codes, v.float(), inp == "text") * keep
                edits = decode_s(
                    editor.generator,
                    editor.layout.split(codes.s + torch.tensor(args.strengths)[:, None] * delta_s),
                    codes.w_plus,
                )
                for strength, pred in zip(args.strengths, predict(classifier, edits)):
                    cell = scores[(inp, kind, strength)]
                    cell[0].append(all(pred[n] == v for n, v in asked.items()))
                    cell[1].append(all(pred[n] == source[n] for n in source if n not in asked))

    print(f"success/preservation, {args.n} faces (seed {args.seed}), threshold {args.threshold}")
    print(f"{'input':6s} {'strength':>8s} " + " ".join(f"{m:>12s}" for m in MAPS))
    for inp in (i for i in INPUTS if any(key[0] == i for key in scores)):
        for strength in args.strengths:
            cells = [scores[(inp, kind, strength)] for kind in MAPS]
            print(
                f"{inp:6s} {strength:8.2f} "
                + " ".join(f"{np.mean(s):>7.2f}/{np.mean(k):.2f}" for s, k in cells)
            )
    return 0


def _pil(images: np.ndarray):
    from PIL import Image

    return [Image.fromarray(im) for im in images]


if __name__ == "__main__":
    raise SystemExit(main())
