"""DeltaSpace alignment report: do CLIP image and text features line up better as differences?

The paper's Figure 1: raw CLIP image and text features of the same picture sit far apart (the
"modality gap"), but the *difference* of two images' features points the same way as the
difference of their captions' features. This module measures that on any paired features:

- paired cosine: mean cos(image_i, text_i), raw and delta;
- image-to-text retrieval among all n: for each image feature rank all n text features by
  cosine; top-k is the fraction of images whose own text is among the first k;
- t-SNE pictures of the normalised image and text points together.

Only NumPy here for the numbers; scikit-learn and matplotlib are imported when a picture is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write, write_json

MIN_PAIRS = 6  # fewer pairs make top-5 retrieval and t-SNE meaningless
TOP_K = (1, 5)
DEFAULT_TSNE_POINTS = 1000
# Rows of the similarity matrix computed at once: bounds memory at n x chunk float64 values.
_CHUNK = 1024
# t-SNE spends its first 250 iterations in early exaggeration; a few more are needed for a layout.
_MIN_TSNE_ITER = 300
_EXACT_TSNE_POINTS = 200


# ---------------------------------------------------------------- validation and loading


def clip_features(clip, images, captions: list[str], image_size: int, batch_size: int):
    """Image features of `images` (a callable `images(start, stop)` giving a batch) and text features
    of the captions, through a `DomainClip`: ([N, D], [N, D]) float arrays."""
    import torch
    from tqdm.auto import tqdm

    n = len(captions)
    image_feats = []
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc="image features", unit="batch"):
            batch = images(start, min(n, start + batch_size))
            image_feats.append(clip.image_features(batch, image_size).float().cpu())
        text_feats = [
            clip.embed_text(c).float().cpu() for c in tqdm(captions, desc="text features", unit="caption")
        ]
    return torch.cat(image_feats).numpy(), torch.stack(text_feats).numpy()


def toy_features(count: int, render_seed: int = 0, device: str = "cpu", weights_dir=None, batch_size: int = 64):
    """`count` rendered toy faces and their captions through the toy CLIP: (image, text) features."""
    try:
        from .domain import Domain
        from .models import load_clip
        from .toy.attributes import captions
        from .toy.render import render_batch
    except ImportError as exc:
        raise InputError(
            f"the toy domain is not available in this install ({exc}); pass --image-features and"
            " --text-features, or --images and --captions"
        ) from exc
    if count < MIN_PAIRS:
        raise InputError(f"--count must be at least {MIN_PAIRS}")
    clip = load_clip(Domain.open("toy", weights_dir), device)
    images, attrs = render_batch(count, render_seed, as_tensor=True)
    texts = captions(attrs, render_seed)
    return clip_features(clip, lambda a, b: images[a:b], texts, images.shape[-1], batch_size)


def check_features(name: str, array) -> np.ndarray:
    """Return `array` as float64 [n, d], or raise InputError saying what is wrong with it."""
    array = np.asarray(array)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InputError(
            f"{name} must hold numbers, got dtype {array.dtype}; save a float array with np.save"
        )
    if array.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D array [n, dim] (one feature per row), got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise InputError(f"{name} has NaN or Inf values in {bad} row(s); remove or recompute those features")
    if array.shape[0] < MIN_PAIRS:
        raise InputError(f"{name} has {array.shape[0]} rows; the analysis needs at least {MIN_PAIRS} pairs")
    return array.astype(np.float64, copy=False)


def check_pair(image_name: str, image, text_name: str, text) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired feature arrays: same shape, row i of one belongs to row i of the other."""
    image = check_features(image_name, image)
    text = check_features(text_name, text)
    if image.shape != text.shape:
        raise InputError(
            f"{image_name} has shape {image.shape} but {text_name} has {text.shape}; they must be paired"
            " row by row and come from the same CLIP model (same dim)"
        )
    return image, text


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Load a `.npy` feature file without unpickling (object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"feature file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # np.load raises ValueError for pickled object arrays and for files that are not .npy.
        raise InputError(
            f"could not read {path} as a numeric .npy array ({exc}); save features with"
            " np.save(path, float_array)"
        ) from exc
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise InputError(f"{path} is an .npz archive; pass a single .npy array per features file")
    return check_features(path.name, array)


# ---------------------------------------------------------------- the numbers


def pair_deltas(image, text, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Differences over random pairs: for each i a seeded partner j != i, delta = f[i] - f[j].

    Image and text use the same partner, so delta_image[i] and delta_text[i] describe the same
    change between the same two pictures.
    """
    image, text = check_pair("image features", image, "text features", text)
    n = image.shape[0]
    rng = np.random.default_rng(seed)
    # Draw from the n-1 others, then skip over i itself: uniform over j != i.
    partner = rng.integers(0, n - 1, size=n)
    partner += partner >= np.arange(n)
    return image - image[partner], text - text[partner]


def _normalise(x: np.ndarray) -> np.ndarray:
    # A zero row (e.g. the delta of two identical features) stays zero: cosine 0 with everything.
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between row i of `a` and row i of `b`."""
    return float(np.mean(np.sum(_normalise(a) * _normalise(b), axis=1)))


def _cross_similarity(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, float]:
    """(0-based rank of key i among all keys for query i by cosine, mean cosine of unpaired i != j).

    Ties count in the pair's favour. The matrix is built in row chunks to bound memory.
    """
    q, k = _normalise(queries), _normalise(keys)
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    unpaired_sum = 0.0
    for start in range(0, n, _CHUNK):
        sims = q[start : start + _CHUNK] @ k.T
        rows = np.arange(sims.shape[0])
        own = sims[rows, start + rows]
        ranks[start : start + sims.shape[0]] = (sims > own[:, None]).sum(axis=1)
        unpaired_sum += float(sims.sum() - own.sum())
    return ranks, unpaired_sum / (n * (n - 1))


def retrieval_ranks(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """0-based rank of key i among all keys for query i, by cosine (ties count in its favour)."""
    return _cross_similarity(queries, keys)[0]


def alignment_report(image, text, delta_image=None, delta_text=None, seed: int = 0) -> dict:
    """Numbers of the DeltaSpace figure for paired features (rows of image and text belong together).

    Without `delta_image`/`delta_text` the deltas come from `pair_deltas(image, text, seed)`.
    Returns a JSON-ready dict: n, n_delta, dim; for kind in raw/delta: {kind}_cosine (mean paired
    cosine), {kind}_cosine_unpaired (mean cosine of image i with text j != i), {kind}_top1,
    {kind}_top5; the chance levels chance_top1/5; delta_source and pairs_seed.
    """
    image, text = check_pair("image features", image, "text features", text)
    if (delta_image is None) != (delta_text is None):
        raise InputError("give both delta image and delta text features, or neither (random pairs)")
    if delta_image is None:
        delta_image, delta_text = pair_deltas(image, text, seed)
        delta_source = "random_pairs"
    else:
        delta_image, delta_text = check_pair(
            "delta image features", delta_image, "delta text features", delta_text
        )
        if delta_image.shape[1] != image.shape[1]:
            raise InputError(
                f"delta features have dim {delta_image.shape[1]} but raw features have dim"
                f" {image.shape[1]}; they must come from the same CLIP model"
            )
        delta_source = "given"

    report = {"n": int(image.shape[0]), "n_delta": int(delta_image.shape[0]), "dim": int(image.shape[1])}
    for kind, (a, b) in (("raw", (image, text)), ("delta", (delta_image, delta_text))):
        report[f"{kind}_cosine"] = paired_cosine(a, b)
        ranks, unpaired = _cross_similarity(a, b)
        # The unpaired baseline separates "pairs agree" from "everything is similar" (modality gap).
        report[f"{kind}_cosine_unpaired"] = unpaired
        for k in TOP_K:
            report[f"{kind}_top{k}"] = float(np.mean(ranks < k))
    for k in TOP_K:
        report[f"chance_top{k}"] = min(k, report["n"]) / report["n"]
    report["delta_source"] = delta_source
    report["pairs_seed"] = int(seed) if delta_source == "random_pairs" else None
    return report


def format_table(report: dict) -> str:
    """The report's numbers as a small text table."""
    lines = [
        f"DeltaSpace alignment: n={report['n']} pairs, dim={report['dim']}, deltas: {report['delta_source']}"
        + (f" (seed {report['pairs_seed']})" if report.get("pairs_seed") is not None else ""),
        f"{'features':<10}{'paired cos':>12}{'unpaired cos':>14}{'top-1':>9}{'top-5':>9}",
    ]
    for kind in ("raw", "delta"):
        lines.append(
            f"{kind:<10}{report[f'{kind}_cosine']:>12.4f}{report[f'{kind}_cosine_unpaired']:>14.4f}"
            f"{report[f'{kind}_top1']:>9.4f}{report[f'{kind}_top5']:>9.4f}"
        )
    lines.append(f"{'chance':<10}{'':>26}{report['chance_top1']:>9.4f}{report['chance_top5']:>9.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- pictures and files


def plot_tsne(
    image,
    text,
    path: str | os.PathLike,
    title: str = "",
    max_points: int = DEFAULT_TSNE_POINTS,
    seed: int = 0,
    max_iter: int = 500,
) -> Path:
    """t-SNE of the L2-normalised image and text points together, saved as a PNG at `path`.

    At most `max_points` points are embedded (half image, half text, the same seeded subset of
    pairs) to keep t-SNE fast; the numbers in the report always use all pairs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    image, text = check_pair("image features", image, "text features", text)
    n = image.shape[0]
    n_pairs = max(MIN_PAIRS // 2, min(n, max_points // 2))
    if n_pairs < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=n_pairs, replace=False))
        image, text = image[keep], text[keep]
    points = np.concatenate([_normalise(image), _normalise(text)]).astype(np.float32)
    m = points.shape[0]
    tsne = TSNE(
        n_components=2,
        perplexity=min(30.0, (m - 1) / 3),
        init="pca",
        learning_rate="auto",
        max_iter=max(_MIN_TSNE_ITER, max_iter),
        # Barnes-Hut pays a start-up cost that dominates for a few points; exact is O(m^2).
        method="exact" if m <= _EXACT_TSNE_POINTS else "barnes_hut",
        random_state=seed,
    )
    xy = tsne.fit_transform(points)

    # A bare Figure with the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    half = image.shape[0]
    ax.scatter(xy[:half, 0], xy[:half, 1], s=6, c="tab:blue", alpha=0.7, label="image")
    ax.scatter(xy[half:, 0], xy[half:, 1], s=6, c="tab:orange", alpha=0.7, label="text")
    ax.legend(loc="best", markerscale=3)
    ax.set_title(title + (f"\n(t-SNE of {half} of {n} pairs)" if half < n else ""), fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()

    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _title(report: dict, kind: str) -> str:
    label = "raw CLIP features" if kind == "raw" else "CLIP feature differences (DeltaSpace)"
    return (
        f"{label}\npaired cos {report[f'{kind}_cosine']:.3f} (unpaired {report[f'{kind}_cosine_unpaired']:.3f}), "
        f"top-1 {report[f'{kind}_top1']:.3f}, top-5 {report[f'{kind}_top5']:.3f}"
    )


def write_report(
    report: dict,
    out_dir: str | os.PathLike,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
    delta: tuple[np.ndarray, np.ndarray] | None = None,
    max_points: int = DEFAULT_TSNE_POINTS,
    seed: int = 0,
    tsne_iter: int = 500,
) -> dict[str, Path]:
    """Write `out_dir/report.json` and, for the (image, text) features given as `raw` / `delta`,
    `raw_tsne.png` / `delta_tsne.png`. Creates `out_dir`; every file is written atomically.
    Returns {name: path} of the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, pair in (("raw", raw), ("delta", delta)):
        if pair is not None:
            written[f"{kind}_tsne"] = plot_tsne(
                *pair, out / f"{kind}_tsne.png", _title(report, kind), max_points, seed, tsne_iter
            )
    written["report"] = write_json(out / "report.json", report)
    return written


def save_features(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save computed features as `.npy` atomically, so a later analysis can skip the model."""
    path = Path(path)
    with atomic_write(path) as tmp:
        np.save(tmp, np.asarray(array, dtype=np.float32))
    return path


__all__ = [
    "alignment_report",
    "check_features",
    "check_pair",
    "format_table",
    "load_features",
    "pair_deltas",
    "paired_cosine",
    "plot_tsne",
    "retrieval_ranks",
    "save_features",
    "write_report",
]
