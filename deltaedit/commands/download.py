"""`python -m deltaedit download --domain ffhq [--weights-dir DIR]`: fetch a domain's weights."""

from __future__ import annotations

from pathlib import Path

NAME = "download"
HELP = "download every weight file of a domain (into --weights-dir, else the cache) and list them"


def add_arguments(p) -> None:
    p.add_argument("--domain", default="ffhq", help="domain id (ffhq, toy)")
    p.add_argument(
        "--weights-dir", type=Path, default=None, help="folder to download into (official file names)"
    )
    p.add_argument(
        "--include-optional", action="store_true", help="also fetch optional weights (DeltaEdit-D)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide download progress bars")


def run(args) -> int:
    from .. import weights
    from ..domain import Domain
    from ..errors import WeightsError

    domain = Domain.open(args.domain, args.weights_dir)
    rows, failures = [], []
    for tag in domain.config.weights.values():
        src = weights.get_source(tag)
        # With --weights-dir the point is to fill that folder, so only look there.
        if args.weights_dir:
            path = weights.find_in_dir(tag, args.weights_dir)
            found = (path, "weights dir") if path else None
        else:
            found = weights.find_local(tag)
        if found:
            rows.append((tag, str(found[0]), f"present ({found[1]})"))
            continue
        if src.optional and not args.include_optional:
            rows.append((tag, src.filename, "skipped (optional; --include-optional)"))
            continue
        try:
            path = weights.fetch(tag, target_dir=args.weights_dir, progress=not args.no_progress)
            rows.append((tag, str(path), "downloaded"))
        except WeightsError as exc:
            rows.append((tag, src.filename, "MISSING (see below)"))
            failures.append(f"{exc}\n{domain.missing_listing(src)}")
    widths = [max(len(r[i]) for r in rows + [("tag", "file", "status")]) for i in range(2)]
    print(f"{'tag':<{widths[0]}}  {'file':<{widths[1]}}  status")
    for tag, file, status in rows:
        print(f"{tag:<{widths[0]}}  {file:<{widths[1]}}  {status}")
    if failures:
        print("\n" + failures[-1])
        return 1
    return 0
