"""train_mapper and `train-mapper`: the authors' objective on tiny seeded codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deltaedit import cli, config
from deltaedit.commands.train_mapper import domain_layout
from deltaedit.domain import Domain
from deltaedit.errors import InputError
from deltaedit.nn.mapper import DeltaMapper
from deltaedit.nn.stylegan2 import Generator
from deltaedit.nn.stylespace import StyleLayout, layout_from_generator
from deltaedit.training.codes import make_codes
from deltaedit.training.distil import DistilModels, distil_batch, distil_mapper
from deltaedit.training.mapper import (
    PairSampler,
    load_mapper_weights,
    load_training_state,
    mapper_condition,
    mapper_loss,
    neighbour_table,
    noisy_delta,
    save_mapper_weights,
    split_indices,
    train_mapper,
)

# coarse 3 x 8, medium 4 x 8, fine 8 + 4: the smallest layout with all three mapper levels
LAYOUT = StyleLayout(widths=(8, 8, 8, 8, 8, 8, 8, 8, 4), resolutions=(4, 8, 8, 16, 16, 32, 32, 64, 64))
CLIP_DIM = 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and immune to the contention of a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_codes(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """S and CLIP codes that share a latent factor, so Δs is predictable from the CLIP delta."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4))
    s = z @ rng.standard_normal((4, LAYOUT.total)) + 0.05 * rng.standard_normal((n, LAYOUT.total))
    c = z @ rng.standard_normal((4, CLIP_DIM)) + 3.0
    return s.astype(np.float32), c.astype(np.float32)


def fixed_batch_loss(mapper: DeltaMapper, s, c) -> float:
    s, c = torch.from_numpy(s), torch.from_numpy(c)
    partner = torch.roll(torch.arange(len(s)), 1)
    with torch.no_grad():
        pred = mapper(s, mapper_condition(c, c[partner]))
    return float(mapper_loss(pred, s[partner] - s)[0])


def test_condition_is_unit_source_and_unit_delta():
    c1, c2 = torch.randn(5, CLIP_DIM) * 3, torch.randn(5, CLIP_DIM)
    cond = mapper_condition(c1, c2)
    assert cond.shape == (5, 2 * CLIP_DIM)
    torch.testing.assert_close(cond[:, :CLIP_DIM], c1 / c1.norm(dim=1, keepdim=True))
    delta = c2 / c2.norm(dim=1, keepdim=True) - c1 / c1.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cond[:, CLIP_DIM:], delta / delta.norm(dim=1, keepdim=True))
    # A code paired with itself has no direction: zeros, not NaN.
    same = mapper_condition(c1, c1)
    assert torch.all(same[:, CLIP_DIM:] == 0)


def test_noisy_delta_keeps_the_image_half_and_a_unit_delta_at_the_asked_distance():
    cond = mapper_condition(torch.randn(200, CLIP_DIM) + 3, torch.randn(200, CLIP_DIM) + 3)
    generator = torch.Generator().manual_seed(123)  # not the global seed: noise independent of cond
    noisy = noisy_delta(cond, 1.0, generator)
    torch.testing.assert_close(noisy[:, :CLIP_DIM], cond[:, :CLIP_DIM])
    delta, clean = noisy[:, CLIP_DIM:], cond[:, CLIP_DIM:]
    torch.testing.assert_close(delta.norm(dim=1), torch.ones(200))
    # A unit vector plus a random unit vector: the angle to the clean delta is 0-90 degrees, ~45 on average.
    cos = (delta * clean).sum(dim=1)
    assert (cos > 0).all() and 0.55 < float(cos.mean()) < 0.85
    again = noisy_delta(cond, 1.0, torch.Generator().manual_seed(123))
    assert torch.equal(noisy, again)  # seeded: resumed runs see the same noise
    torch.testing.assert_close(noisy_delta(cond, 0.01, generator)[:, CLIP_DIM:], clean, atol=0.02, rtol=0)


def test_delta_noise_changes_training_and_is_rejected_when_negative(tmp_path):
    s, c = synthetic_codes()
    kwargs = dict(steps=5, batch_size=16, val_fraction=0.1, seed=0, progress=False)
    plain = train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "a.safetensors", **kwargs)
    noisy = train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "b.safetensors", delta_noise=1.0, **kwargs)
    assert plain.train_losses[0] != noisy.train_losses[0]  # the same first batch, other conditions
    with pytest.raises(InputError, match="delta_noise"):
        train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "c.safetensors", delta_noise=-1.0, **kwargs)


def test_loss_is_mse_plus_one_minus_cosine():
    target = torch.randn(4, 10)
    total, l2, cos = mapper_loss(target.clone(), target)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    total, l2, cos = mapper_loss(2 * target, target)
    assert float(l2) == pytest.approx(float((target**2).mean()), rel=1e-5)
    assert float(cos) == pytest.approx(0.0, abs=1e-6)
    total, l2, cos = mapper_loss(-target, target, l2_lambda=0.0)
    assert float(total) == pytest.approx(2.0, rel=1e-5)


def test_validation_split_is_disjoint_and_seeded():
    train, val = split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    again_train, again_val = split_indices(100, 0.1, seed=3)
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(100, 0.1, seed=4)[1])
    with pytest.raises(InputError):
        split_indices(2, 0.5, seed=0)


def test_pair_sampler_stays_in_its_split_and_is_a_function_of_step():
    train, _ = split_indices(50, 0.2, seed=0)
    sampler = PairSampler(train, batch_size=16, seed=0)
    first, partner = sampler.batch(7)
    assert set(first) <= set(train) and set(partner) <= set(train)
    fresh = PairSampler(train, batch_size=16, seed=0)
    for a, b in zip(fresh.batch(7), (first, partner)):
        np.testing.assert_array_equal(a, b)
    # Consecutive steps walk through a permutation: one epoch (40 codes) covers each code once.
    seen = np.concatenate([sampler.batch(k)[0] for k in range(5)])[:40]
    assert sorted(seen) == sorted(train)


def test_neighbour_table_skips_itself_and_near_duplicates():
    # Three clusters of near-duplicates (jitter 0.01) at distance >= 1 from each other.
    centres = torch.eye(3)
    features = centres.repeat_interleave(4, dim=0) + 0.01 * torch.randn(
        12, 3, generator=torch.Generator().manual_seed(0)
    )
    table = neighbour_table(features, k=4, min_distance=0.25)
    assert table.shape == (12, 4)
    cluster = np.arange(12) // 4
    for row, partners in enumerate(table):
        assert row not in partners
        assert (cluster[partners] != cluster[row]).all()  # never a duplicate of itself
    plain = neighbour_table(features, k=3, min_distance=0.0)
    assert (cluster[plain] == cluster[:, None]).all()  # without the floor: only the duplicates
    with pytest.raises(InputError, match="neighbours"):
        neighbour_table(features, k=12, min_distance=0.0)


def test_pair_sampler_mixes_neighbours_and_random_partners_per_step():
    train, _ = split_indices(60, 0.0, seed=0)
    table = np.tile(np.array([[1, 2]]), (60, 1))  # every code's neighbours: positions 1 and 2
    near = PairSampler(train, batch_size=64, seed=0, neighbours=table, random_fraction=0.0)
    assert set(near.batch(3)[1]) <= {train[1], train[2]}
    mixed = PairSampler(train, batch_size=64, seed=0, neighbours=table, random_fraction=0.5)
    first, partner = mixed.batch(3)
    from_table = np.isin(partner, train[[1, 2]]).mean()
    assert 0.3 < from_table < 0.8  # about half neighbours, half uniform partners
    again = PairSampler(train, batch_size=64, seed=0, neighbours=table, random_fraction=0.5)
    for a, b in zip(again.batch(3), (first, partner)):
        np.testing.assert_array_equal(a, b)


def test_neighbour_training_records_its_pairing_and_resume_refuses_another(tmp_path):
    s, c = synthetic_codes()
    kwargs = dict(batch_size=8, val_fraction=0.1, seed=0, progress=False, save_every=2)
    plain = train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "a.safetensors", steps=2, **kwargs)
    near = train_mapper(
        (s, c),
        LAYOUT,
        CLIP_DIM,
        tmp_path / "b.safetensors",
        steps=2,
        neighbours=4,
        min_distance=0.0,
        **kwargs,
    )
    assert plain.train_losses[0] != near.train_losses[0]  # the same first codes, other partners
    assert load_training_state(near.state_path)["settings"]["neighbours"] == 4
    with pytest.raises(InputError, match="neighbours"):
        train_mapper(
            (s, c), LAYOUT, CLIP_DIM, tmp_path / "b.safetensors", steps=4, resume=near.state_path, **kwargs
        )
    with pytest.raises(InputError, match="random_fraction"):
        train_mapper(
            (s, c),
            LAYOUT,
            CLIP_DIM,
            tmp_path / "c.safetensors",
            steps=1,
            neighbours=2,
            random_fraction=2.0,
            **kwargs,
        )


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    s, c = synthetic_codes()
    torch.manual_seed(0)
    initial = fixed_batch_loss(DeltaMapper(LAYOUT, CLIP_DIM), s, c)  # train_mapper's init for seed 0
    result = train_mapper(
        (s, c),
        LAYOUT,
        CLIP_DIM,
        tmp_path / "m.safetensors",
        steps=60,
        batch_size=16,
        val_fraction=0.1,
        seed=0,
        progress=False,
        log_every=20,
        val_every=20,
    )
    trained = load_mapper_weights(result.path)
    assert fixed_batch_loss(trained, s, c) < 0.7 * initial
    assert len(result.train_losses) == 60
    assert [step for step, _ in result.val_losses] == [20, 40, 60]
    assert result.val_losses[-1][1] < result.val_losses[0][1]
    info = json.loads((tmp_path / "m.json").read_text())
    assert info == {
        "widths": list(LAYOUT.widths),
        "resolutions": list(LAYOUT.resolutions),
        "clip_dim": CLIP_DIM,
    }


def test_resume_continues_from_the_saved_step(tmp_path):
    s, c = synthetic_codes()
    kwargs = dict(batch_size=8, val_fraction=0.1, seed=1, progress=False, log_every=2, val_every=2)
    straight = train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "a.safetensors", steps=6, **kwargs)
    first = train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "b.safetensors", steps=3, **kwargs)
    assert load_training_state(first.state_path)["step"] == 3
    resumed = train_mapper(
        (s, c), LAYOUT, CLIP_DIM, tmp_path / "b.safetensors", steps=6, resume=first.state_path, **kwargs
    )
    assert resumed.steps == 6 and len(resumed.train_losses) == 6
    np.testing.assert_allclose(resumed.train_losses, straight.train_losses, rtol=1e-5, atol=1e-6)
    a = load_mapper_weights(straight.path).state_dict()
    b = load_mapper_weights(resumed.path).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # The split is part of the state: resuming with another seed is refused.
    with pytest.raises(InputError, match="seed"):
        train_mapper(
            (s, c),
            LAYOUT,
            CLIP_DIM,
            tmp_path / "c.safetensors",
            steps=8,
            resume=first.state_path,
            **{**kwargs, "seed": 2},
        )


def test_periodic_state_holds_the_step(tmp_path):
    s, c = synthetic_codes()
    seen = []
    import deltaedit.training.mapper as mapper_mod

    real = mapper_mod._torch_save_atomic

    def spy(obj, path):
        if isinstance(obj, dict) and "step" in obj:
            seen.append(obj["step"])
        real(obj, path)

    mp = pytest.MonkeyPatch()
    mp.setattr(mapper_mod, "_torch_save_atomic", spy)
    try:
        train_mapper(
            (s, c), LAYOUT, CLIP_DIM, tmp_path / "m.pth", steps=5, batch_size=8, save_every=2, progress=False
        )
    finally:
        mp.undo()
    assert seen == [2, 4, 5]
    # A .pth output is a bare state dict, loadable without unpickling code.
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    assert set(state) == set(DeltaMapper(LAYOUT, CLIP_DIM).state_dict())


def test_bad_codes_and_outputs_raise_input_error(tmp_path):
    s, c = synthetic_codes()
    with pytest.raises(InputError, match="style values"):
        train_mapper((s[:, :-1], c), LAYOUT, CLIP_DIM, tmp_path / "m.pth", steps=1, progress=False)
    with pytest.raises(InputError, match="CLIP"):
        train_mapper((s, c[:, :-1]), LAYOUT, CLIP_DIM, tmp_path / "m.pth", steps=1, progress=False)
    with pytest.raises(InputError, match=".safetensors"):
        train_mapper((s, c), LAYOUT, CLIP_DIM, tmp_path / "m.bin", steps=1, progress=False)


def test_ffhq_layout_checkpoint_has_the_net_face_keys(checkpoint_formats, tmp_path):
    from official_formats import read_listing

    layout, clip_dim = domain_layout("ffhq")
    assert layout.total == 6048 and clip_dim == 512
    mapper = DeltaMapper(layout, clip_dim)
    path = save_mapper_weights(mapper, tmp_path / "net_face.pth")
    del mapper
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert type(state) is dict
    expected = {key: shape for key, shape, _ in read_listing(checkpoint_formats / "net_face.pth.keys.txt")}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert all(v.dtype == torch.float32 for v in state.values())


TINY_DOMAIN = {
    "id": "tinytrain",
    "label": "Tiny (tests)",
    "neutral_text": "face",
    "generator": {
        "size": 64,
        "style_dim": 16,
        "n_mlp": 2,
        "channel_multiplier": 1,
        "channels": {"4": 8, "8": 8, "16": 8, "32": 8, "64": 4},
    },
    "clip": {"model_name": "none", "pretrained": None, "embed_dim": CLIP_DIM, "image_size": 64},
    "weights": {},
}


@pytest.fixture
def tiny_domain(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tinytrain.json").write_text(json.dumps(TINY_DOMAIN))
    monkeypatch.setattr(config, "CONFIG_DIR", folder)
    config.load_domain_config.cache_clear()
    yield "tinytrain"
    config.load_domain_config.cache_clear()


def test_cli_train_mapper_end_to_end(tiny_domain, tmp_path):
    cfg = config.load_domain_config(tiny_domain)
    torch.manual_seed(0)
    G = Generator.from_config(cfg.generator).eval()
    assert layout_from_generator(G) == domain_layout(tiny_domain)[0]
    weight = torch.randn(3 * 4 * 4, CLIP_DIM)
    features = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ weight  # noqa: E731
    codes = make_codes(G, features, tmp_path / "codes", n=24, batch_size=8, shard_size=12, progress=False)

    out = tmp_path / "mapper.safetensors"
    common = [
        "--codes",
        str(codes),
        "--domain",
        tiny_domain,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
        "--log-every",
        "1",
        "--val-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli.main(["train-mapper", *common, "--steps", "2", "--delta-noise", "0.5"]) == 0
    state_path = tmp_path / "mapper.train_state.pt"
    assert load_training_state(state_path)["step"] == 2
    assert cli.main(["train-mapper", *common, "--steps", "4", "--resume", str(state_path)]) == 0
    state = load_training_state(state_path)
    assert state["step"] == 4 and len(state["train_losses"]) == 4 and len(state["val_losses"]) == 2
    mapper = load_mapper_weights(out)
    assert mapper.layout == layout_from_generator(G) and mapper.clip_dim == CLIP_DIM

    # Codes of another generator are refused with exit code 2.
    other = make_codes(
        Generator(size=16, style_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 8}),
        features,
        tmp_path / "other",
        n=4,
        progress=False,
    )
    assert (
        cli.main(
            [
                "train-mapper",
                "--codes",
                str(other),
                "--domain",
                tiny_domain,
                "--out",
                str(out),
                "--steps",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 2
    )


# ---- distillation of the refinement (train-mapper --distil), on the shipped toy weights ----------

TOY_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toy"
needs_toy = pytest.mark.skipif(
    not (TOY_ASSETS / "mapper.safetensors").is_file(), reason="the toy weights are not in assets/toy"
)


@pytest.fixture(scope="module")
def toy_distil():
    """(DistilModels, the shipped mapper, (W+, S, CLIP) codes of 32 encoded renders) of the toy domain."""
    from deltaedit import models
    from deltaedit.nn.e4e import encode
    from deltaedit.toy.render import images_to_tensor, render_batch
    from deltaedit.training.codes import codes_from_w_plus

    if not (TOY_ASSETS / "mapper.safetensors").is_file():
        pytest.skip("the toy weights are not in assets/toy")
    G, clip = models.load_generator(Domain.open("toy")), models.load_clip(Domain.open("toy"))
    parts = DistilModels(G, clip, models.load_relevance(Domain.open("toy")), models.load_feature_bank(Domain.open("toy")))
    encoder, latent_avg = models.load_encoder(Domain.open("toy"))
    images, _ = render_batch(32, seed=31)
    with torch.no_grad():
        w = encode(encoder, latent_avg, images_to_tensor(images))
        codes = codes_from_w_plus(G, w, lambda x: clip.image_features(x, image_size=G.size))
    return parts, models.load_mapper(Domain.open("toy")), tuple(x.detach() for x in codes)


def _pair_loss(mapper, parts, codes, first, partner) -> torch.Tensor:
    """The refinement loss per batch of the mapper's one-pass edit on fixed pairs (no anchor)."""
    w, s, c = codes
    with torch.no_grad():
        _, refine, _ = distil_batch(
            mapper,
            None,
            parts,
            w[first],
            s[first],
            c[first],
            c[partner],
            strength=0.85,
            threshold=0.1,
            anchor=0.0,
        )
    return refine


@needs_toy
def test_distillation_lowers_the_refinement_loss_and_moves_toward_the_refined_delta(toy_distil, tmp_path):
    from deltaedit.refine import refine_style_deltas

    parts, shipped, codes = toy_distil
    w, s, c = codes
    G_state = {k: v.clone() for k, v in parts.generator.state_dict().items()}
    # Each training code paired with its nearest code (as the toy recipe, with K = 1): fixed pairs.
    result = distil_mapper(
        codes, parts, shipped, tmp_path / "m.safetensors", steps=8, batch_size=16, lr=0.5, anchor=0.0,
        val_fraction=0.25, neighbours=1, random_fraction=0.0, seed=0, progress=False, log_every=4,
        val_every=4, save_every=100,
    )  # fmt: skip
    distilled = load_mapper_weights(result.path)
    train_idx, _ = split_indices(len(s), 0.25, 0)
    first = torch.from_numpy(train_idx)
    partner = first[torch.from_numpy(neighbour_table(c[first], 1, 0.25))[:, 0]]
    before = _pair_loss(shipped, parts, codes, first, partner)
    after = _pair_loss(distilled, parts, codes, first, partner)
    assert after < 0.8 * before, (before, after)
    assert [step for step, _ in result.val_losses] == [0, 4, 8]  # step 0: the starting mapper
    # Only the mapper learnt: the generator's (and CLIP's) weights never get gradients.
    assert all(torch.equal(v, G_state[k]) for k, v in parts.generator.state_dict().items())
    assert all(p.grad is None for p in parts.generator.parameters())
    assert all(p.grad is None for p in parts.clip.model.parameters())

    # The distilled one-pass Δs moves the way the refinement moves the shipped mapper's Δs.
    clip = parts.clip
    agree = []
    for i, j in zip(first[:6].tolist(), partner[:6].tolist()):
        c1 = torch.nn.functional.normalize(c[i : i + 1], dim=-1)
        delta = torch.nn.functional.normalize(c[j : j + 1], dim=-1) - c1
        cond = clip.condition(c1, parts.feature_bank.ground(delta, c1))
        keep = ((delta @ parts.fs3.T).abs() >= 0.1).float()
        with torch.no_grad():
            start, moved = shipped(s[i : i + 1], cond) * keep, distilled(s[i : i + 1], cond) * keep
        refined = refine_style_deltas(
            parts.generator, clip, layout_from_generator(parts.generator), s[i : i + 1], w[i : i + 1],
            start, delta, 0.85, steps=20, feature_bank=parts.feature_bank,
        )  # fmt: skip
        agree.append(float(torch.nn.functional.cosine_similarity(moved - start, refined - start)))
    # Positive for every pair (a no-op gives 0; random directions in ~350 kept channels ±0.05).
    assert min(agree) > 0 and np.mean(agree) > 0.05, agree


@needs_toy
def test_grounding_a_batch_of_pairs_row_by_row_or_at_once_agrees(toy_distil):
    parts, _, (_, _, c) = toy_distil
    bank = parts.feature_bank
    unit = torch.nn.functional.normalize(c, dim=-1)
    delta = unit.roll(3, dims=0) - unit
    together = bank.ground(delta, unit)
    one_by_one = torch.cat([bank.ground(delta[i : i + 1], unit[i]) for i in range(len(unit))])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
    shared = bank.ground(delta[:4], unit[0])  # one image for every row, as an edit grounds its targets
    torch.testing.assert_close(shared, bank.ground(delta[:4], unit[:1].expand(4, -1)))
    with pytest.raises(InputError, match="image features"):
        bank.ground(delta[:4], unit[:3])


@needs_toy
def test_distillation_refuses_bad_settings(toy_distil, tmp_path):
    parts, shipped, codes = toy_distil
    out = tmp_path / "m.safetensors"
    with pytest.raises(InputError, match="strength"):
        distil_mapper(codes, parts, shipped, out, steps=1, strength=0.0, progress=False)
    with pytest.raises(InputError, match="W\\+"):
        distil_mapper(codes[1:], parts, shipped, out, steps=1, progress=False)
    with pytest.raises(InputError, match=r"\.pth"):
        distil_mapper(codes, parts, shipped, tmp_path / "m.bin", steps=1, progress=False)


@needs_toy
def test_cli_train_mapper_distil_resumes_and_checks_its_arguments(toy_distil, tmp_path):
    from deltaedit import models

    parts = toy_distil[0]
    G, clip = parts.generator, parts.clip
    codes = make_codes(
        G, lambda x: clip.image_features(x, image_size=G.size), tmp_path / "codes", n=24, batch_size=8,
        shard_size=12, progress=False, domain="toy",
    )  # fmt: skip
    out = tmp_path / "distilled.safetensors"
    common = ["train-mapper", "--codes", str(codes), "--domain", "toy", "--out", str(out), "--device", "cpu"]
    common += ["--batch-size", "4", "--val-fraction", "0.25", "--val-every", "1", "--no-progress"]
    shipped = str(TOY_ASSETS / "mapper.safetensors")
    assert cli.main([*common, "--distil", "--resume", shipped, "--steps", "2", "--neighbours", "4"]) == 0
    state_path = tmp_path / "distilled.train_state.pt"
    state = load_training_state(state_path)
    assert state["step"] == 2 and state["settings"]["distil"] and state["settings"]["strength"] == 0.85
    torch.testing.assert_close(state["reference"], dict(models.load_mapper(Domain.open("toy")).state_dict()))
    assert (
        cli.main([*common, "--distil", "--resume", str(state_path), "--steps", "3", "--neighbours", "4"]) == 0
    )
    state = load_training_state(state_path)
    assert state["step"] == 3 and len(state["train_losses"]) == 3
    assert [v[0] for v in state["val_losses"]] == [0, 1, 2, 3]
    # Another threshold than the state's is refused; so are a missing start and --distil's options alone.
    assert cli.main([*common, "--distil", "--resume", str(state_path), "--steps", "4", "--neighbours", "4",
                     "--threshold", "0.2"]) == 2  # fmt: skip
    assert cli.main([*common, "--distil", "--steps", "1"]) == 2
    assert cli.main([*common, "--steps", "1", "--strength", "0.5"]) == 2
