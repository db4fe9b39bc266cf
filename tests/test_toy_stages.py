"""The toy training stages' common interface (`deltaedit/toy/stages/`): what each one declares is
what it does, and `train_toy` runs them in an order that satisfies what each reads."""

from __future__ import annotations

import dataclasses

from deltaedit.toy import train as toy_train
from deltaedit.toy.budget import ToyBudget


def test_every_budget_field_is_read_by_a_stage_that_declares_it():
    declared = {name for stage in toy_train.PIPELINE for name in stage.settings}
    fields = {f.name for f in dataclasses.fields(ToyBudget)}
    assert declared <= fields, declared - fields  # no stage names a setting that does not exist
    assert fields - declared == set(), fields - declared  # and no setting is read by nobody


def test_the_stages_run_in_an_order_that_gives_each_what_it_reads():
    order = [stage.name for stage in toy_train.PIPELINE]
    assert order.index("clip") < order.index("autoencoder")  # its second phase needs the CLIP
    assert order.index("relevance") < order.index("mapper")  # the distillation selects with fs3
    assert order[-1] == "diffusion" and toy_train.GAN_STAGES == tuple(order[:-1])


def test_a_stage_is_done_only_when_all_its_outputs_are_there(tmp_path):
    stage = next(s for s in toy_train.PIPELINE if s.name == "autoencoder")
    assert len(stage.outputs) == 2 and not stage.done(tmp_path)
    (tmp_path / stage.outputs[0]).write_bytes(b"")
    assert not stage.done(tmp_path)
    (tmp_path / stage.outputs[1]).write_bytes(b"")
    assert stage.done(tmp_path)
