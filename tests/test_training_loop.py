"""The shared training loop (deltaedit.training.loop) with a tiny trainer of its own."""

from __future__ import annotations

import json

import pytest
import torch

from deltaedit.errors import TrainingPaused
from deltaedit.training.loop import (
    Every,
    Processes,
    TrainingLoop,
    drop_log_rows_after,
    rng_state,
    set_rng_state,
    write_files_into,
)


class Interrupted(Exception):
    pass


class TinyTrainer:
    """A linear model fitted to noisy targets drawn from torch's generator at every step."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.saved: dict[int, dict] = {}

    def step(self, step: int) -> dict:
        x = torch.randn(8, 4)
        loss = (self.model(x) - x.sum(1, keepdim=True) - 0.1 * torch.randn(8, 1)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def save(self, step: int) -> None:
        self.saved[step] = {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
        }

    def resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])


def run(trainer: TinyTrainer, steps: int, start: int = 0, **kwargs) -> int:
    loop = TrainingLoop(steps, Processes.of(), trainer.save, progress=False, **kwargs)
    done = loop.run(start, trainer.step)
    loop.finish(done, lambda: None)
    return done


def test_hooks_and_saves_come_at_their_steps_and_the_end_saves_once():
    trainer, seen = TinyTrainer(), []
    loop = TrainingLoop(7, Processes.of(), trainer.save, save_every=3, progress=False)
    hooks = (Every(2, lambda s: seen.append(("log", s))), Every(3, lambda s: seen.append(("grid", s)), at_end=False))
    done = loop.run(0, trainer.step, hooks)
    assert done == 7
    assert seen == [("log", 2), ("grid", 3), ("log", 4), ("log", 6), ("grid", 6), ("log", 7)]  # in the order given
    assert sorted(trainer.saved) == [3, 6]  # not at the last step: finish saves it
    written = []
    loop.finish(done, lambda: written.append(True))
    assert sorted(trainer.saved) == [3, 6, 7] and written == [True]


def test_a_run_paused_at_every_step_and_resumed_equals_an_unbroken_one_bit_for_bit():
    unbroken = TinyTrainer()
    run(unbroken, 6)

    paused, start, pauses = TinyTrainer(), 0, 0
    while True:
        try:
            run(paused, 6, start, time_limit=0.0)  # out of time after every step
            break
        except TrainingPaused as exc:
            assert exc.step == start + 1 and exc.steps == 6
            fresh = TinyTrainer()
            fresh.resume(paused.saved[exc.step])
            fresh.saved, paused, start, pauses = paused.saved, fresh, exc.step, pauses + 1
    assert pauses == 5
    for key, value in unbroken.model.state_dict().items():
        assert torch.equal(value, paused.model.state_dict()[key])


def test_a_resumed_run_past_its_steps_trains_nothing_and_keeps_its_step():
    trainer = TinyTrainer()
    assert run(trainer, 3, start=5) == 5
    assert sorted(trainer.saved) == [5]


def test_log_rows_are_one_per_step_and_a_resume_drops_the_rows_it_repeats(tmp_path):
    trainer, log_path = TinyTrainer(), tmp_path / "log.jsonl"
    run(trainer, 4, log_path=log_path)
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) == {"step", "loss", "time"} for r in rows)
    drop_log_rows_after(log_path, 2)
    assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()] == [1, 2]


def test_the_final_write_leaves_no_half_written_file_and_moves_the_config_last(tmp_path):
    (tmp_path / "config.json").write_text("old")
    (tmp_path / "weights.bin").write_text("old")

    def torn(folder):
        (folder / "weights.bin").write_text("half")
        raise Interrupted

    with pytest.raises(Interrupted):
        write_files_into(tmp_path, torn)
    assert (tmp_path / "weights.bin").read_text() == "old"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".final")]

    moved = []

    def whole(folder):
        (folder / "config.json").write_text("new")
        (folder / "weights.bin").write_text("new")
        (folder / "sub").mkdir()
        (folder / "sub" / "a.json").write_text("new")

    import deltaedit.training.loop as loop_module

    real_replace = loop_module.os.replace
    mp = pytest.MonkeyPatch()
    mp.setattr(loop_module.os, "replace", lambda src, dst: (moved.append(str(dst)), real_replace(src, dst)))
    try:
        write_files_into(tmp_path, whole)
    finally:
        mp.undo()
    assert moved[-1].endswith("config.json")
    assert all((tmp_path / p).read_text() == "new" for p in ("config.json", "weights.bin", "sub/a.json"))


def test_one_process_prepares_models_and_optimizer_moments_on_its_device():
    procs = Processes.of(device="cpu")
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    same_model, same_optimizer = procs.prepare(model, optimizer)
    assert same_model is model and same_optimizer is optimizer
    assert procs.unwrap(model) is model and procs.any(True) and not procs.any(False)
