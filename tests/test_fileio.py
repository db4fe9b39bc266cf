"""Atomic writes: an interrupted write leaves the old file or folder whole and no stray temp files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from deltaedit.fileio import atomic_dir, atomic_write, write_json
from deltaedit.pipelines.diffusion import DiffusionBackbone
from deltaedit.training import diffusion as diffusion_training
from deltaedit.training import loop as training_loop


class Interrupted(Exception):
    pass


def test_atomic_write_replaces_the_file_only_when_the_write_finishes(tmp_path):
    path = tmp_path / "sub" / "weights.npy"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npy" and tmp != path
        tmp.write_bytes(b"first")
    assert path.read_bytes() == b"first"

    with pytest.raises(Interrupted), atomic_write(path) as tmp:
        tmp.write_bytes(b"half of the sec")
        raise Interrupted
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.npy"]


def test_written_files_and_folders_get_the_permissions_of_a_plain_write(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    write_json(tmp_path / "atomic.json", {})
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "atomic.json").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "folder").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_weights_written_through_safetensors_get_the_permissions_of_a_plain_write(tmp_path):
    """safetensors creates its file 0600; the weights folder is shared and the Space serves files."""
    (tmp_path / "plain.txt").write_text("x")
    with atomic_write(tmp_path / "weights.safetensors") as tmp:
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp))
    assert (tmp_path / "weights.safetensors").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
    with atomic_dir(tmp_path / "model") as tmp:  # save_pretrained writes its safetensors the same way
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))
    assert (tmp_path / "model" / "w.safetensors").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_write_json_round_trips(tmp_path):
    path = write_json(tmp_path / "meta.json", {"n": 3})
    assert json.loads(path.read_text()) == {"n": 3}


def test_atomic_dir_swaps_whole_folders(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")  # the new folder has no b.txt: nothing of the old one stays
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "2"

    with pytest.raises(Interrupted), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("3")
        raise Interrupted
    assert (target / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_an_interrupted_diffusion_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    pairs = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 16, generator=g))
    fast = dict(batch_size=4, seed=0, progress=False, sample_every=0, lr=1e-3)
    out = diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=1, checkpoint_every=1, **fast)
    before = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith("ema.pt"):  # the model and optimizer of step 2 are already written
            raise Interrupted
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(diffusion_training.torch, "save", failing_save)
    with pytest.raises(Interrupted):
        diffusion_training.train_diffusion(
            pairs, "tiny", tmp_path, steps=2, checkpoint_every=1, resume="latest", **fast
        )
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}
    assert after == before  # step 1's files, all of them, untouched
    assert not [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")]
    diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=2, resume="latest", **fast)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2


def test_interrupted_final_diffusion_weights_never_appear_half_written(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    pairs = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 16, generator=g))
    fast = dict(batch_size=4, seed=0, progress=False, sample_every=0, lr=1e-3)
    real_save = safetensors.torch.save_file

    def failing_save(tensors, filename, *args, **kwargs):
        if not Path(filename).name.startswith("diffusion_pytorch_model"):  # the checkpoint's save
            return real_save(tensors, filename, *args, **kwargs)
        Path(filename).write_bytes(b"half")  # a torn write of the final weights
        raise Interrupted

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(Interrupted):
        diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=1, **fast)
    out = tmp_path
    assert not list(out.glob("diffusion_pytorch_model*")) and not (out / "config.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".final")]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=1, **fast)
    assert DiffusionBackbone.from_pretrained(out).style_dim == 16  # whole once it finishes


def test_final_weights_of_a_rerun_never_pair_with_the_previous_config(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    pairs = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 16, generator=g))
    fast = dict(batch_size=4, seed=0, progress=False, sample_every=0, lr=1e-3)
    diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=1, **fast)
    assert (tmp_path / "config.json").is_file()
    real_replace = training_loop.os.replace

    def dies_before_the_config(src, dst):
        if Path(dst).name == "config.json":  # the new weights are in place, the config is not
            raise Interrupted
        return real_replace(src, dst)

    monkeypatch.setattr(training_loop.os, "replace", dies_before_the_config)
    with pytest.raises(Interrupted):
        diffusion_training.train_diffusion(pairs, "tiny", tmp_path, steps=2, resume="latest", **fast)
    # No config beside weights it was not written with: loading says so instead of mixing them.
    assert not (tmp_path / "config.json").exists()
