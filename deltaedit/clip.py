"""CLIP for DeltaEdit: template-averaged text embeddings, text deltas, image features, conditions.

`DomainClip` wraps an open_clip model, its tokenizer and the `DomainConfig`:

- `embed_text(phrase) -> [D]`: each of the 79 templates (`deltaedit.templates`) filled with the
  phrase, encoded, L2-normalised; the mean, L2-normalised (DeltaEdit's `utils/map_tool.py`).
  Results are kept in an LRU cache, so the neutral text is encoded once per process.
  `text_embedding(phrase)` returns the same vector with `.notices` (e.g. "prompt truncated");
  `notices(*phrases)` collects the notices of phrases embedded earlier.
- `text_delta(target, source)`: the raw Δt = emb(target) − emb(source).
- `image_features(images)`: the authors' preprocessing (no CLIP mean/std): nearest upsample
  ×upsample, average pool to CLIP's input size, `encode_image`; not normalised.
- `condition(image_feat, delta_t)`: the mapper's input, concat(i/|i|, Δt/max(|Δt|, 1e-5)).

The text tower runs on a *fast path*: open_clip's text transformer is causal and the feature is
read at the end-of-text token (the argmax of the token ids), so positions after the longest
prompt's end never influence the result. We therefore run the tower over only the first
max(EOT)+1 positions (slicing the positional embedding and the causal mask) instead of the full
context: identical output, several times cheaper for short prompts. `embed_text_naive` keeps the
plain `model.encode_text` route for comparisons and benchmarks.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from .config import DomainConfig
from .errors import InputError, WeightsError
from .fileio import atomic_write
from .templates import TEMPLATES, format_prompts

log = logging.getLogger(__name__)

# open_clip architecture JSONs ship in the package. Not config.CONFIG_DIR: that one is the domains'
# folder (tests point it elsewhere), and importing its value would freeze whatever it was then.
ARCHITECTURES_DIR = Path(__file__).with_name("configs")

DELTA_EPS = 1e-5  # the authors' clamp on |Δt| before normalising it


@dataclass(frozen=True)
class TextEmbedding:
    """A phrase's template-averaged, unit-length CLIP embedding and any notices about it."""

    phrase: str
    vector: torch.Tensor  # [D], float32, on the model's device
    notices: tuple[str, ...] = ()


class DomainClip:
    """A domain's CLIP model with DeltaEdit's text and image conventions (see module docstring)."""

    def __init__(self, model, tokenizer, config: DomainConfig, cache_size: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.templates = TEMPLATES
        self.cache_size = cache_size
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self._pool_matrices: dict[tuple, torch.Tensor] = {}

    # ---- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)

    @staticmethod
    def _clean(phrase: str) -> str:
        if not isinstance(phrase, str) or not phrase.strip():
            raise InputError("the prompt is empty; type a description such as 'face with a smile'")
        return " ".join(phrase.split())

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Token ids [N, context]; a notice when any prompt is longer than the context."""
        if self._is_plain_bpe():
            return self._pack([self.tokenizer.encode(p) for p in prompts])
        tokens, notices = self.tokenizer(prompts).to(self.device), ()
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:  # e.g. a reduction_fn tokenizer: its own ids, our length notice
            notices = self._length_notice(max(len(encode(p)) for p in prompts) + 2)
        return tokens, notices

    def _tokenize_phrase(self, phrase: str) -> tuple[torch.Tensor, tuple[str, ...]]:
        """`_tokenize` of the templates filled with a (cleaned) phrase, BPE-encoding the phrase once.

        open_clip's tokenizer splits text into words before BPE, so when a template's text meets the
        phrase at a word boundary the prompt's ids are the template's ids around the phrase's ids.
        That holds when the template has a space before "{}" and no letter or digit right after it
        (checked once per template) and the cleaning leaves the phrase alone and ends it in a letter
        or digit: printable ASCII (no ftfy repairs), no "&" (HTML unescaping). Any other phrase takes
        the prompt-by-prompt route.
        """
        parts = self._template_ids
        plain = phrase.isascii() and phrase.isprintable() and "&" not in phrase and phrase[-1].isalnum()
        if parts is None or not plain:
            return self._tokenize(format_prompts(phrase, self.templates))
        ids = self.tokenizer.encode(phrase)
        return self._pack([before + ids + after for before, after in parts])

    def _is_plain_bpe(self) -> bool:
        tok = self.tokenizer
        return isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok.reduction_fn is None

    @functools.cached_property
    def _template_ids(self) -> list[tuple[list[int], list[int]]] | None:
        """Each template's ids before and after "{}", or None where splicing would not be exact."""
        if not self._is_plain_bpe():
            return None
        parts = []
        for template in self.templates:
            before, _, after = template.partition("{}")
            if (before and not before[-1].isspace()) or after[:1].isalnum():
                return None
            parts.append((self.tokenizer.encode(before), self.tokenizer.encode(after)))
        return parts

    def _pack(self, rows: list[list[int]]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """BPE ids per prompt -> [N, context] with start/end tokens, truncated like open_clip's
        tokenizer (the end token kept); a notice when any prompt was cut."""
        tok, context = self.tokenizer, self.context_length
        notices = self._length_notice(max(len(row) for row in rows) + 2)  # + start and end tokens
        padded = []
        for row in rows:
            ids = [tok.sot_token_id, *row[: context - 2], tok.eot_token_id]
            padded.append(ids + [0] * (context - len(ids)))
        return torch.tensor(padded, dtype=torch.long, device=self.device), notices

    def _length_notice(self, longest: int) -> tuple[str, ...]:
        if longest <= self.context_length:
            return ()
        return (
            f"prompt too long for CLIP ({longest} tokens with the template, limit"
            f" {self.context_length}); the end was cut off",
        )

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`model.encode_text(tokens)` computed over only the positions up to the last EOT."""
        m = self.model
        fast = getattr(m, "text_pool_type", None) == "argmax" and hasattr(m, "token_embedding")
        if not fast:  # e.g. CustomTextCLIP: no causal-prefix shortcut
            return m.encode_text(tokens)
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest id in the vocabulary
        length = int(eot.max()) + 1
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens[:, :length]).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.ln_final(m.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if m.text_projection is None:
            return x
        if isinstance(m.text_projection, torch.nn.Linear):
            return m.text_projection(x)
        return x @ m.text_projection

    @staticmethod
    def _average(features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True)
        mean = features.mean(dim=0)
        return mean / mean.norm()

    # ---- text ----------------------------------------------------------------------------
    def text_embedding(self, phrase: str) -> TextEmbedding:
        """The cached `TextEmbedding` of `phrase` (InputError when it is empty)."""
        return self.text_embeddings([phrase])[0]

    def text_embeddings(self, phrases: list[str]) -> list[TextEmbedding]:
        """`text_embedding` of each phrase; the ones not cached are encoded together in one batch
        (on a GPU one call of 8 x 79 prompts costs about what one of 79 does)."""
        keys = [self._clean(phrase) for phrase in phrases]
        found: dict[str, TextEmbedding] = {}
        with self._lock:
            for key in keys:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    found[key] = hit
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            tokenized = [self._tokenize_phrase(key) for key in missing]
            with torch.no_grad():
                features = self._encode_tokens(torch.cat([tokens for tokens, _ in tokenized]))
            per_phrase = features.split([tokens.shape[0] for tokens, _ in tokenized])
            for key, (_, notices), feats in zip(missing, tokenized, per_phrase):
                for notice in notices:
                    log.warning("%s: %s", key, notice)
                found[key] = TextEmbedding(key, self._average(feats), notices)
            with self._lock:
                for key in missing:
                    # First writer wins: a phrase encoded beside other phrases can differ in the last
                    # float bits, and every caller must see one vector per phrase.
                    found[key] = self._cache.setdefault(key, found[key])
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [found[key] for key in keys]

    def embed_text(self, phrase: str) -> torch.Tensor:
        """Unit-length [D] embedding of `phrase` averaged over the 79 templates (cached; a copy)."""
        return self.text_embedding(phrase).vector.clone()

    def embed_text_naive(self, phrase: str) -> torch.Tensor:
        """`embed_text` through full-context `model.encode_text` calls; uncached (for benchmarks)."""
        tokens = self.tokenizer(format_prompts(self._clean(phrase), self.templates)).to(self.device)
        with torch.no_grad():
            return self._average(self.model.encode_text(tokens))

    def notices(self, *phrases: str) -> list[str]:
        """Notices recorded for the given (already embedded) phrases, prefixed by the phrase."""
        out = []
        for phrase in phrases:
            emb = self._cache.get(self._clean(phrase))
            if emb is not None:
                out.extend(f"{emb.phrase!r}: {n}" for n in emb.notices)
        return out

    def text_delta(self, target: str, source: str | None = None) -> torch.Tensor:
        """Raw Δt = emb(target) − emb(source) [D]; `source` defaults to the domain's neutral text."""
        source = self.config.neutral_text if source is None else source
        if self._clean(target) == self._clean(source):  # exactly zero: "nothing to edit"
            return torch.zeros_like(self.embed_text(source))
        return self.embed_text(target) - self.embed_text(source)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ---- images --------------------------------------------------------------------------
    def _pool_matrix(self, size: int, pool: int, device, dtype) -> torch.Tensor:
        """[clip_size, size] linear map equal to nearest-upsample ×upsample then avg-pool `pool`.

        Applying it along both image axes gives exactly the authors' Upsample + AvgPool2d result
        without materialising the ×7 image (7168² pixels per channel at 1024).
        """
        key = (size, pool, str(device), dtype)
        if key not in self._pool_matrices:
            eye = torch.eye(size, dtype=torch.float64)[:, None, :]  # size signals of length size
            up = F.interpolate(eye, scale_factor=self.config.clip.upsample, mode="nearest")
            self._pool_matrices[key] = F.avg_pool1d(up, pool)[:, 0, :].T.to(device=device, dtype=dtype)
        return self._pool_matrices[key]

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, H] in [-1, 1] -> [B, 3, clip_size, clip_size], the authors' way (no mean/std)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise InputError(f"expected square RGB images [B, 3, H, H], got {tuple(images.shape)}")
        size = images.shape[-1]
        try:
            pool = self.config.clip_pool(size)
        except ValueError as exc:
            raise InputError(f"{exc}; resize the images to the generator's size first") from exc
        A = self._pool_matrix(size, pool, images.device, images.dtype)
        return A @ images @ A.T

    def image_features(self, images: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        """CLIP image features [B, D] of images in [-1, 1] (authors' preprocessing; not normalised)."""
        if image_size is not None and images.shape[-1] != image_size:
            raise InputError(f"images are {images.shape[-1]} px, expected {image_size} px")
        x = self.preprocess_images(images.to(self.device))
        return self.model.encode_image(x.to(next(self.model.visual.parameters()).dtype)).float()

    # ---- mapper condition ------------------------------------------------------------------
    @staticmethod
    def condition(image_feat: torch.Tensor, delta_t: torch.Tensor) -> torch.Tensor:
        """concat(i/|i|, Δt/max(|Δt|, 1e-5)) [B, 2D]; Δt = 0 gives a zero half, never NaN."""
        image_feat = image_feat.float()
        delta_t = delta_t.float().to(image_feat.device)
        if delta_t.ndim == 1:
            delta_t = delta_t.expand(image_feat.shape[0], -1)
        i = image_feat / image_feat.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        t = delta_t / delta_t.norm(dim=-1, keepdim=True).clamp(min=DELTA_EPS)
        return torch.cat([i, t], dim=-1)


# ---- building and loading ------------------------------------------------------------------
def clip_model_config(name_or_json: str | Path) -> dict:
    """An open_clip model config: a JSON path, a file name in deltaedit/configs/, or a built-in name."""
    path = Path(name_or_json)
    for candidate in (path, ARCHITECTURES_DIR / path.name):
        if candidate.suffix == ".json" and candidate.is_file():
            return json.loads(candidate.read_text())
    cfg = open_clip.get_model_config(str(name_or_json))
    if cfg is None:
        raise InputError(
            f"unknown CLIP architecture {name_or_json!r}: not a JSON file nor an open_clip model"
        )
    return copy.deepcopy(cfg)


def build_clip_from_config(name_or_json: str | Path) -> open_clip.CLIP:
    """An untrained (random) open_clip CLIP built from `clip_model_config(name_or_json)`."""
    cfg = clip_model_config(name_or_json)
    if cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise InputError("only open_clip's plain CLIP text tower is supported")
    return open_clip.CLIP(**cfg).eval()


class BoundedWordCache(dict):
    """open_clip's tokenizer keeps every word it has BPE-encoded in `tokenizer.cache`, forever: a
    public server fed unique words would grow without bound. This dict starts over from its first
    entries (the special tokens) once it holds `max_words`."""

    def __init__(self, initial: dict, max_words: int = 20_000):
        super().__init__(initial)
        self.initial = dict(initial)
        self.max_words = max_words

    def __setitem__(self, key, value):
        if len(self) >= self.max_words:
            self.clear()
            self.update(self.initial)
        super().__setitem__(key, value)


def build_tokenizer(name_or_json: str | Path):
    """open_clip's BPE tokenizer with the architecture's context length (and a bounded word cache)."""
    cfg = clip_model_config(name_or_json)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
    tokenizer.cache = BoundedWordCache(tokenizer.cache)
    return tokenizer


def _architecture(config: DomainConfig) -> str | Path:
    return (
        ARCHITECTURES_DIR / config.clip.model_config_file
        if config.clip.model_config_file
        else config.clip.model_name
    )


def _read_clip_state(path: Path) -> dict:
    from .weights import load_torch_file

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({exc}); delete it and retry"
            ) from exc
    state = load_torch_file(path)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_clip_model(config: DomainConfig, weights_path: Path | None, device="cpu"):
    """(model, tokenizer) for a domain. `weights_path` must be a local file (nothing is downloaded
    here; `deltaedit.weights.resolve` finds it); None builds an untrained model (tests only)."""
    arch = _architecture(config)
    if config.clip.model_config_file:
        model = build_clip_from_config(arch)
        if weights_path is not None:
            from .weights import check_state_dict

            state = _read_clip_state(Path(weights_path))
            check_state_dict(state, model, weights_path)
            model.load_state_dict(state, strict=True)
    elif weights_path is None:
        log.warning("building an untrained %s (no weights file given)", arch)
        model = open_clip.create_model(str(arch), pretrained=None)
    else:
        if not Path(weights_path).is_file():
            raise WeightsError(f"CLIP weights {weights_path} do not exist")
        try:
            model = open_clip.create_model(str(arch), pretrained=str(weights_path))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise WeightsError(
                f"could not load CLIP weights {weights_path} into {arch} ({exc}); delete the file to"
                " download it again"
            ) from exc
    model = model.to(device).eval().requires_grad_(False)
    return model, build_tokenizer(arch)


def save_clip_weights(model: torch.nn.Module, path: Path) -> None:
    """Save a CLIP state dict as safetensors (contiguous copies; buffers like attn_mask excluded)."""
    from safetensors.torch import save_file

    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
