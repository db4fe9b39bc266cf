"""The toy training stages' common interface (`deltaedit/toy/stages/`): what each one declares is
what it does, and `train_toy` runs them in an order that satisfies what each reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from deltaedit.toy import train as toy_train
from deltaedit.toy.budget import ToyBudget


def test_every_budget_field_is_declared_by_a_stage_and_every_declared_one_exists():
    declared = {name for stage in toy_train.PIPELINE for name in stage.settings}
    fields = {f.name for f in dataclasses.fields(ToyBudget)}
    assert declared <= fields, declared - fields  # no stage names a setting that does not exist
    assert fields - declared == set(), fields - declared  # and no setting is read by nobody


def test_the_stages_run_in_an_order_that_gives_each_what_it_reads():
    order = [stage.name for stage in toy_train.PIPELINE]
    assert order.index("clip") < order.index("autoencoder")  # its second phase needs the CLIP
    assert order.index("relevance") < order.index("mapper")  # the distillation selects with fs3
    assert order[-2:] == ["diffusion", "prior"]  # DeltaEdit-D's two models, trained after the GAN
    assert toy_train.GAN_STAGES == tuple(order[:-2])


def test_a_stage_is_done_only_when_all_its_outputs_are_there(tmp_path):
    stage = next(s for s in toy_train.PIPELINE if s.name == "autoencoder")
    assert len(stage.outputs) == 2 and not stage.done(tmp_path)
    (tmp_path / stage.outputs[0]).write_bytes(b"")
    assert not stage.done(tmp_path)
    (tmp_path / stage.outputs[1]).write_bytes(b"")
    assert stage.done(tmp_path)


def _compare_weights():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_weights.py"
    spec = importlib.util.spec_from_file_location("compare_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_weights_sees_a_changed_tensor_but_not_metadata_order_or_the_save_path(tmp_path, capsys):
    """scripts/compare_weights.py, the bit-identity check of a retrained stage."""
    from safetensors.torch import save_file

    compare = _compare_weights()
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, order, origin in ((old, ("a", "b"), "/x/.run"), (new, ("b", "a"), "/y/.run")):
        (folder / "diffusion").mkdir(parents=True)
        save_file({"w": torch.arange(4.0)}, str(folder / "m.safetensors"), metadata={k: k for k in order})
        (folder / "diffusion" / "config.json").write_text(json.dumps({"_name_or_path": origin, "c": 1}))
        (folder / "fs3.npy").write_bytes(b"abc")
    assert compare.main([str(old), str(new)]) == 0

    save_file({"w": torch.arange(4.0) + 1e-6}, str(new / "m.safetensors"), metadata={"a": "a", "b": "b"})
    (new / "fs3.npy").write_bytes(b"abd")
    assert compare.main([str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert (
        "DIFFERENT m.safetensors" in out
        and "DIFFERENT fs3.npy" in out
        and "same      diffusion/config.json" in out
    )
