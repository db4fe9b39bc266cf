"""Kept edits (`GanEditor.plan`, `DiffusionEditor.plan`) moved between devices.

A plan is kept between requests (the app's live strength slider). On ZeroGPU the GPU exists only
inside a call, so a plan leaves it on the CPU and goes back to the editor's device to be decoded.
"""

from __future__ import annotations

import dataclasses

import torch


def moved_to(value, device):
    """A copy of `value` with every tensor in it on `device`: tensors inside dataclasses, named
    tuples, lists, tuples and dicts are moved; anything else is shared as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: moved_to(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(moved_to(v, device) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(moved_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved_to(v, device) for k, v in value.items()}
    return value
