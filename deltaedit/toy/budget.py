"""How long each toy training stage trains: `ToyBudget`, and the cpu, gpu and smoke presets."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ToyBudget:
    n_images: int = 20000
    clip_steps: int = 1400
    clip_batch: int = 128
    ae_steps: int = 6500
    ae_batch: int = 8
    # Then the CLIP feature phase (`sharpen_autoencoder`): smile and big eyes reconstructed as
    # clearly as CLIP sees them in renders (docs/fast-toy-edits.md).
    ae_clip_steps: int = 1500
    ae_clip_lr: float = 3e-4
    ae_clip_weight: float = 1.0
    n_codes: int = 10000
    mapper_steps: int = 4000
    # Half the mapper's pairs take one of the 16 nearest codes in CLIP space as the partner: the
    # one-attribute deltas that grounded text deltas are (README, "The built-in toy domain").
    mapper_neighbours: int = 16
    mapper_delta_noise: float = 0.0
    # Then the refinement's objective is distilled into the mapper (`train-mapper --distil`;
    # docs/fast-toy-edits.md): one-pass success 0.84 -> 0.94-0.96, preservation 0.87 -> 0.87-0.89,
    # and two refinement steps (the toy default) close the rest at a tenth of twenty steps' cost.
    # Nearest-neighbour partners only: random partners (multi-attribute deltas) made the one-pass
    # edits of text prompts worse, not better.
    mapper_distil_steps: int = 1000
    mapper_distil_batch: int = 32
    mapper_distil_lr: float = 0.3
    mapper_distil_anchor: float = 1.0
    mapper_distil_random_fraction: float = 0.0
    # CLIP image features shipped as the feature bank (`deltaedit.grounding`).
    bank_size: int = 4096
    fs3_samples: int = 8
    classifier_steps: int = 700
    # DeltaEdit-D: run on its own (`--stages diffusion`), after the GAN stages it needs.
    # The residual design (diffused x 8, DIFFUSION_CONFIG), 2000 steps with a cosine schedule on
    # 10000 codes: about 19 minutes on one thread; docs/deltaedit-d.md has every variant measured.
    diffusion_steps: int = 2000
    diffusion_batch: int = 32
    diffusion_lr: float = 5e-4
    diffusion_codes: int = 10000  # encoded renders (x0, s, R(s)) the D stage trains on
    diffusion_lr_schedule: str = "cosine"
    # DeltaEdit-D's image prior (`--stages prior`): a full-image UNet on renders and their codes
    # that redraws each edit inside the change mask (docs/deltaedit-d.md, fourth round).
    prior_steps: int = 6000
    prior_batch: int = 32
    prior_images: int = 6000


FULL = ToyBudget()
# The same stages with more steps, for a GPU (minutes instead of an hour).
GPU = ToyBudget(
    n_images=30000,
    clip_steps=2000,
    clip_batch=256,
    ae_steps=20000,
    ae_batch=16,
    n_codes=20000,
    mapper_steps=10000,
    fs3_samples=16,
    classifier_steps=1500,
    diffusion_steps=3000,
    diffusion_batch=64,
    diffusion_codes=20000,
    prior_steps=10000,
    prior_batch=64,
    prior_images=20000,
)
SMOKE = ToyBudget(
    n_images=256,
    clip_steps=3,
    clip_batch=16,
    ae_steps=3,
    ae_batch=4,
    ae_clip_steps=2,
    n_codes=128,
    mapper_steps=3,
    mapper_distil_steps=2,
    mapper_distil_batch=4,
    fs3_samples=1,
    classifier_steps=3,
    diffusion_steps=2,
    diffusion_batch=4,
    prior_steps=2,
    prior_batch=4,
)


def smoke_budget(**overrides) -> ToyBudget:
    return replace(SMOKE, **overrides)
