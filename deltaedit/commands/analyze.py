"""`python -m deltaedit analyze`: the DeltaSpace alignment report (the paper's Figure 1).

Three ways to get paired image/text features, then the same report (`deltaedit.analysis`):

1. Precomputed features: `--image-features I.npy --text-features T.npy` (row i of both belong to
   the same picture), optionally with `--delta-image DI.npy --delta-text DT.npy`; without them
   the deltas come from random pairs (`--pairs-seed`).
2. Pictures and captions: `--images DIR --captions FILE [--domain ffhq|toy]`. The captions file
   has one line per image, `filename<TAB>caption` (UTF-8; blank lines and lines starting with `#`
   are skipped); `filename` is a file name inside DIR. Image features go through the domain's
   CLIP preprocessing, text features through the template-averaged text embedding.
3. `--domain toy` alone: render `--count` toy faces with their captions and analyse those.

Writes DIR/report.json, DIR/raw_tsne.png, DIR/delta_tsne.png (and, for 2 and 3, the computed
features as image_features.npy / text_features.npy so a re-run can use path 1).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from .. import analysis
from ..errors import InputError

NAME = "analyze"
HELP = "measure how CLIP image/text feature differences align (DeltaSpace, the paper's Figure 1)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    feats = parser.add_argument_group("precomputed features (.npy, [n, dim], row i of each paired)")
    feats.add_argument("--image-features", type=Path, metavar="I.npy", help="CLIP image features")
    feats.add_argument("--text-features", type=Path, metavar="T.npy", help="CLIP text features")
    feats.add_argument("--delta-image", type=Path, metavar="DI.npy", help="image feature differences")
    feats.add_argument("--delta-text", type=Path, metavar="DT.npy", help="text feature differences")

    pics = parser.add_argument_group("pictures and captions (features computed with the domain's CLIP)")
    pics.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    pics.add_argument(
        "--captions", type=Path, metavar="FILE", help="text file, one line per image: filename<TAB>caption"
    )
    pics.add_argument(
        "--domain",
        choices=("ffhq", "toy"),
        help="whose CLIP computes the features (default ffhq); `--domain toy` alone renders toy faces",
    )
    pics.add_argument("--weights-dir", type=Path, help="folder with local weight files")
    pics.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    pics.add_argument("--batch-size", type=int, default=32, help="images per CLIP batch (default 32)")
    pics.add_argument("--count", type=int, default=500, help="toy faces to render (default 500)")
    pics.add_argument("--render-seed", type=int, default=0, help="seed of the rendered toy faces")

    parser.add_argument("--pairs-seed", type=int, default=0, help="seed of the random pairs (default 0)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument(
        "--tsne-points",
        type=int,
        default=analysis.DEFAULT_TSNE_POINTS,
        help="at most this many points in each t-SNE picture (seeded subsample; default %(default)s)",
    )
    parser.add_argument(
        "--tsne-iter", type=int, default=500, help="t-SNE iterations (at least 300; default %(default)s)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")


# ---------------------------------------------------------------- feature sources


def read_captions(path: Path, image_dir: Path) -> list[tuple[Path, str]]:
    """Parse a `filename<TAB>caption` file into (image path, caption) pairs, checking every file."""
    if not path.is_file():
        raise InputError(f"captions file {path} does not exist")
    if not image_dir.is_dir():
        raise InputError(f"image folder {image_dir} does not exist")
    pairs: list[tuple[Path, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, caption = line.partition("\t")
        name, caption = name.strip(), caption.strip()
        if not sep or not name or not caption:
            raise InputError(f"{path} line {number}: expected `filename<TAB>caption`, got {line[:80]!r}")
        if name in seen:
            raise InputError(f"{path} line {number}: {name} already captioned on line {seen[name]}")
        seen[name] = number
        image = image_dir / name
        if not image.is_file():
            raise InputError(f"{path} line {number}: image {image} does not exist")
        pairs.append((image, caption))
    if not pairs:
        raise InputError(f"{path} has no `filename<TAB>caption` lines")
    return pairs


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def features_from_images(args) -> tuple[np.ndarray, np.ndarray]:
    """Features of user pictures and their captions through the domain's CLIP."""
    import torch

    from ..domain import Domain
    from ..imageio import load_image, to_tensor
    from ..models import load_clip

    pairs = read_captions(args.captions, args.images)
    if len(pairs) < analysis.MIN_PAIRS:
        raise InputError(
            f"{args.captions} lists {len(pairs)} images; the analysis needs {analysis.MIN_PAIRS}"
        )
    domain = Domain.open(args.domain or "ffhq", args.weights_dir)
    # The size the domain's editors feed CLIP (256 for FFHQ, 64 for toy): the authors' pooling fits it.
    size = domain.config.encoder.input_size
    clip = load_clip(domain, _device(args.device))

    def load(start: int, stop: int):
        return torch.cat([to_tensor(load_image(path), size) for path, _ in pairs[start:stop]])

    return analysis.clip_features(clip, load, [c for _, c in pairs], size, args.batch_size)


def features_from_toy(args) -> tuple[np.ndarray, np.ndarray]:
    """Render toy faces with captions and compute their features with the toy CLIP."""
    return analysis.toy_features(args.count, args.render_seed, _device(args.device), args.weights_dir, args.batch_size)


def _source(args) -> str:
    """Which of the three inputs the arguments name; refuses mixtures and half-given pairs."""
    given = {
        "features": args.image_features is not None or args.text_features is not None,
        "images": args.images is not None or args.captions is not None,
    }
    if all(given.values()):
        raise InputError("give either --image-features/--text-features or --images/--captions, not both")
    if (args.delta_image is None) != (args.delta_text is None):
        raise InputError("give both --delta-image and --delta-text, or neither (deltas from random pairs)")
    if given["features"]:
        if args.image_features is None or args.text_features is None:
            raise InputError("give both --image-features and --text-features")
        return "features"
    if args.delta_image is not None:
        raise InputError("--delta-image/--delta-text need --image-features and --text-features")
    if given["images"]:
        if args.images is None or args.captions is None:
            raise InputError(
                "give both --images DIR and --captions FILE (one `filename<TAB>caption` per line)"
            )
        return "images"
    if args.domain == "toy":
        return "toy"
    raise InputError(
        "nothing to analyse: give --image-features and --text-features, or --images and --captions,"
        " or --domain toy to render toy faces"
    )


def run(args) -> int:
    source = _source(args)
    if args.tsne_points < analysis.MIN_PAIRS:
        raise InputError(f"--tsne-points must be at least {analysis.MIN_PAIRS}")
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    delta_image = delta_text = None
    if source == "features":
        image = analysis.load_features(args.image_features)
        text = analysis.load_features(args.text_features)
        if args.delta_image is not None:
            delta_image = analysis.load_features(args.delta_image)
            delta_text = analysis.load_features(args.delta_text)
    else:
        image, text = features_from_images(args) if source == "images" else features_from_toy(args)
        args.out.mkdir(parents=True, exist_ok=True)
        analysis.save_features(image, args.out / "image_features.npy")
        analysis.save_features(text, args.out / "text_features.npy")

    report = analysis.alignment_report(image, text, delta_image, delta_text, seed=args.pairs_seed)
    if delta_image is None:
        delta_image, delta_text = analysis.pair_deltas(image, text, args.pairs_seed)
    plots = {} if args.no_plots else {"raw": (image, text), "delta": (delta_image, delta_text)}
    written = analysis.write_report(
        report, args.out, max_points=args.tsne_points, seed=args.pairs_seed, tsne_iter=args.tsne_iter, **plots
    )
    print(analysis.format_table(report))
    for path in written.values():
        print(f"wrote {path}")
    return 0
