"""A domain resolved once: its config and where each of its weights comes from.

An editor or a command turns a domain's name (and an optional weights folder) into a `Domain`
when it starts, with `Domain.open`, and passes that object down: the model loaders
(`deltaedit.models`) take it, never a name, and nothing below looks the config up again.
`config.py` and `weights.py` sit below this module and know nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import weights
from .config import DomainConfig, list_domains, load_domain_config
from .errors import WeightsError
from .weight_registry import PACKAGED_DIR, WeightSource, get_source


@dataclass(frozen=True)
class Domain:
    """`config` and the folder its weights are looked for first (`weights_dir`; then
    $DELTAEDIT_WEIGHTS_DIR, the packaged files, the cache, a download: see `deltaedit.weights`).
    Equal (and hashed) by id and folder, so model caches can be keyed by it."""

    config: DomainConfig = field(compare=False, hash=False)
    weights_dir: str | None
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.config.id)

    @classmethod
    def open(cls, domain: str | Domain, weights_dir=None) -> Domain:
        """The domain named `domain` (ffhq, toy) with weights looked for in `weights_dir` first. A
        `Domain` is returned as it is when no other folder is asked for."""
        if isinstance(domain, Domain):
            return domain if weights_dir is None else cls(domain.config, _folder(weights_dir))
        return cls(load_domain_config(domain), _folder(weights_dir))

    @property
    def label(self) -> str:
        return self.config.label

    def tag(self, role: str) -> str:
        """The registry tag of `role`'s weights (generator, e4e, mapper, fs3, clip, ...)."""
        try:
            return self.config.weights[role]
        except KeyError:
            raise WeightsError(f"domain {self.id!r} has no {role} weights") from None

    def weight(self, role: str, download: bool = True) -> Path:
        """The path of `role`'s weights, downloaded when needed. When they cannot be had, the error
        lists every file of this domain that is missing, and where each comes from."""
        tag = self.tag(role)
        try:
            return weights.resolve(tag, self.weights_dir, download=download)
        except WeightsError as exc:
            raise WeightsError(f"{exc}\n{self.missing_listing(get_source(tag))}".rstrip()) from exc

    def generator_weight(self, download: bool = True) -> tuple[Path, str | None]:
        """(path, prefix) of the generator: where the official generator file is not here but the
        domain's e4e checkpoint is, its `decoder.` copy of the same generator (prefix "decoder.");
        prefix None otherwise."""
        source = get_source(self.tag("generator"))
        if "e4e" in self.config.weights and not source.packaged:
            try:
                return weights.resolve_generator(
                    self.weights_dir, download, generator_tag=source.tag, e4e_tag=self.tag("e4e")
                )
            except WeightsError as exc:
                raise WeightsError(f"{exc}\n{self.missing_listing(source)}".rstrip()) from exc
        return self.weight("generator", download), None

    def find(self, role: str) -> Path | None:
        """`role`'s weights if a local copy exists (no network access), else None."""
        found = weights.find_local(self.tag(role), self.weights_dir)
        return None if found is None else found[0]

    def missing(self, include_optional: bool = False) -> list[WeightSource]:
        """The domain's weight sources with no local copy (no network access): optional ones
        (DeltaEdit-D) only when asked, and not the generator where the e4e file holds it."""
        missing = []
        e4e_tag = self.config.weights.get("e4e")
        for role, tag in self.config.weights.items():
            src = get_source(tag)
            if (src.optional and not include_optional) or weights.find_local(tag, self.weights_dir) is not None:
                continue
            if role == "generator" and e4e_tag and not src.packaged and weights.find_local(e4e_tag, self.weights_dir):
                continue  # the e4e file holds the generator
            missing.append(src)
        return missing

    def missing_listing(self, wanted: WeightSource) -> str:
        """Every missing file of this domain (with `wanted` among them), each with its source, and
        where to put them."""
        missing = self.missing(include_optional=wanted.optional)
        if wanted not in missing:
            missing.append(wanted)
        where = f" under {PACKAGED_DIR}" if wanted.packaged else ""
        lines = [f"Missing files of domain {self.id!r}{where}:"]
        lines += [f"  {m.filename}  <- {m.origin()}" for m in missing]
        if not wanted.packaged:
            lines.append(
                "Put them, with these file names, in a folder and pass --weights-dir DIR or set"
                f" DELTAEDIT_WEIGHTS_DIR=DIR; on a machine with internet access `python -m deltaedit"
                f" download --domain {self.id} --weights-dir DIR` fetches them."
            )
        return "\n".join(lines)


def all_domains() -> list[Domain]:
    """Every configured domain, with the default weight places."""
    return [Domain.open(name) for name in list_domains()]


def _folder(weights_dir) -> str | None:
    return str(Path(weights_dir).expanduser().resolve()) if weights_dir else None
