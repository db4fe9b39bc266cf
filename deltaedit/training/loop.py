"""The training loop the trainers share: processes, steps, checkpoints, the time limit, log rows.

A trainer (`train_mapper`, `distil_mapper`, `train_diffusion`) brings its data, its loss and its
model as a few callables: one optimiser step, a writer of its resumable state and a writer of its
final weights. `TrainingLoop` runs them: steps from the resumed step to `steps`, periodic hooks
(log lines, validation, sample grids), the state every `save_every` steps, a stop at a checkpoint
with `TrainingPaused` once the time limit is past, log rows in a `log.jsonl`, and at the end the
state and the weights, written by the main process only.

Resumed runs equal unbroken ones bit for bit: each step's random draws are either a function of
(seed, step) or come from torch's generator, whose state a checkpoint keeps (`rng_state`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import TrainingPaused
from ..fileio import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Processes:
    """Where a run trains: accelerate's processes, or one process on one device."""

    device: torch.device
    rank: int = 0
    world: int = 1
    is_main: bool = True
    accelerator: Any = None

    @classmethod
    def of(cls, accelerator=None, device: str | torch.device | None = None) -> Processes:
        if accelerator is None:
            return cls(torch.device(device or "cpu"))
        return cls(
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.is_main_process,
            accelerator,
        )

    def prepare(self, *objects):
        """accelerate's `prepare`; on one device: models and optimizer moments moved to it."""
        if self.accelerator is not None:
            return self.accelerator.prepare(*objects)
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                obj.to(self.device)
            elif isinstance(obj, torch.optim.Optimizer):
                _optimizer_to(obj, self.device)
        return objects[0] if len(objects) == 1 else objects

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on one (they must stop at the same step)."""
        if self.accelerator is None:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        return bool(self.accelerator.gather(value).max() > 0)


def _optimizer_to(optimizer: torch.optim.Optimizer, device) -> None:
    """Move loaded optimizer moments to the model's device (they load on the CPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


@dataclass
class Every:
    """`action(step)` after every `period`-th step (never when 0), and after the last one if `at_end`."""

    period: int
    action: Callable[[int], None]
    at_end: bool = True

    def due(self, done: int, steps: int) -> bool:
        return bool(self.period) and (done % self.period == 0 or (self.at_end and done == steps))


class TrainingLoop:
    """Runs a trainer's steps; owns the progress bar, checkpoints, the time limit and log rows.

    `save_state(step)` writes the trainer's resumable state (main process only). `time_limit`
    (seconds from `started`): once a step ends past it the state is saved and `TrainingPaused`
    raised. `log_path`: each step's row (what `train_step` returns) goes there as a JSON line.
    """

    def __init__(
        self,
        steps: int,
        processes: Processes,
        save_state: Callable[[int], None],
        *,
        save_every: int = 0,
        time_limit: float | None = None,
        started: float | None = None,
        log_path: Path | None = None,
        checkpoint: Path | None = None,
        progress: bool = True,
        desc: str = "train",
    ):
        self.steps = steps
        self.processes = processes
        self.save_state = save_state
        self.save_every = save_every
        self.time_limit = time_limit
        self.started = time.perf_counter() if started is None else started
        self.log_path = log_path
        self.checkpoint = checkpoint
        self.progress = progress and processes.is_main
        self.desc = desc
        self.bar = None

    def show(self, **values) -> None:
        """Values beside the progress bar (e.g. the loss)."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def run(self, start: int, train_step: Callable[[int], dict | None], hooks: tuple[Every, ...] = ()) -> int:
        """Steps `start` .. `steps` - 1 (`train_step(step)` each), then the hooks due; returns the
        step reached."""
        self.bar = tqdm(total=self.steps, initial=min(start, self.steps), desc=self.desc, disable=not self.progress)
        rows = open(self.log_path, "a") if self.log_path is not None and self.processes.is_main else None
        try:
            for step in range(start, self.steps):
                row = train_step(step)
                done = step + 1
                self.bar.update(1)
                if rows is not None and row is not None:
                    rows.write(json.dumps({"step": done, **row, "time": round(time.time(), 4)}) + "\n")
                for hook in hooks:
                    if hook.due(done, self.steps):
                        hook.action(done)
                if self.save_every and done % self.save_every == 0 and done != self.steps:
                    self._save(done)
                if done < self.steps and self._out_of_time():
                    self._pause(done)
        finally:
            self.bar.close()
            if rows is not None:
                rows.close()
        return max(start, self.steps)

    def finish(self, step: int, write_weights: Callable[[], None]) -> None:
        """The end of a run: its state and final weights, written by the main process."""
        self.processes.wait()
        if self.processes.is_main:
            self.save_state(step)
            write_weights()

    def _save(self, step: int) -> None:
        if self.processes.is_main:
            self.save_state(step)

    def _out_of_time(self) -> bool:
        if self.time_limit is None:
            return False
        return self.processes.any(time.perf_counter() - self.started >= self.time_limit)

    def _pause(self, step: int) -> None:
        self._save(step)
        self.processes.wait()
        where = f" the checkpoint is in {self.checkpoint}:" if self.checkpoint is not None else ""
        raise TrainingPaused(
            f"stopped at step {step} of {self.steps} after the time limit of {self.time_limit:.0f} s;"
            f"{where} run the same command again to continue",
            step,
            self.steps,
        )


# ---- random state and log rows of a checkpoint --------------------------------------------------


def rng_state() -> dict:
    """torch's random state (CPU and CUDA): a resumed run draws what the unbroken one would."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def drop_log_rows_after(log_jsonl: Path, step: int) -> None:
    """A run killed between checkpoints logged steps the resumed run repeats: keep rows up to `step`."""
    if not log_jsonl.is_file():
        return
    lines = log_jsonl.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        with atomic_write(log_jsonl) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))


# ---- the final write ----------------------------------------------------------------------------


def write_files_into(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Files that `write(folder)` makes, moved into `out_dir` file by file, each whole.

    They are written aside first (a temporary folder in `out_dir`, the same filesystem) because
    `out_dir` also holds the run's checkpoint and logs, so it cannot be swapped as a whole.
    """
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".final-") as tmp:
        write(Path(tmp))
        _move_files_into(Path(tmp), out_dir)


def _move_files_into(folder: Path, out_dir: Path) -> None:
    """Each file of `folder` into the same place under `out_dir` (os.replace); config.json last,
    so a folder that has one has the matching weights."""
    files = sorted((f for f in folder.rglob("*") if f.is_file()), key=lambda f: f.name == "config.json")
    (out_dir / "config.json").unlink(missing_ok=True)  # an earlier run's: it must not pair with new weights
    for f in files:
        dest = out_dir / f.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
