"""The classifier stage: the toy attribute classifier that scores edits (`eval`), and nothing else:
no other stage trains on it. Writes classifier.safetensors."""

from __future__ import annotations

import time

from .common import Stage, StageContext


def run(ctx: StageContext) -> dict:
    from ..classifier import save_classifier, train_classifier

    t = time.perf_counter()
    clf = train_classifier(
        n_images=min(6000, ctx.budget.n_images), steps=ctx.budget.classifier_steps, seed=ctx.seed + 7,
        device=ctx.device,
    )  # fmt: skip
    save_classifier(clf.cpu(), ctx.out_dir / "classifier.safetensors")
    return {"timings": {"classifier": time.perf_counter() - t}}


STAGE = Stage(
    "classifier", outputs=("classifier.safetensors",), settings=("n_images", "classifier_steps"), run=run
)
