"""Do two weight folders hold the same weights? `python scripts/compare_weights.py OLD NEW [FILE ...]`

For refactors that must not change training (issue 29: "the shipped toy weights retrain
bit-identical, stage by stage"): retrain a stage into a copy, then compare it with the shipped
folder. Compared by content, not bytes, where bytes carry noise: .safetensors by tensors (values
and dtypes) and metadata as a dict (safetensors writes its metadata map in a random order), .json
without diffusers' `_name_or_path` (the folder it was saved from); every other file byte for byte.
Hidden files and train_log.json (timings) are skipped. Exit code 0 when every file is the same.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path


def safetensors_metadata(path: Path) -> dict | None:
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(size)).get("__metadata__")


def same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()):  # missing on one side
        return False
    if a.suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        return (
            ta.keys() == tb.keys()
            and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
            and safetensors_metadata(a) == safetensors_metadata(b)
        )
    if a.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        for data in (ja, jb):
            if isinstance(data, dict):
                data.pop("_name_or_path", None)
        return ja == jb
    return a.read_bytes() == b.read_bytes()


def compared_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != "train_log.json"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("files", nargs="*", help="only these files (paths inside the folders)")
    args = parser.parse_args(argv)
    names = args.files or sorted(set(compared_files(args.old)) | set(compared_files(args.new)))
    different = [name for name in names if not same_file(args.old / name, args.new / name)]
    for name in names:
        print(("DIFFERENT " if name in different else "same      ") + name)
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
