"""Zero-shot classification from image and prompt embeddings: the math only.

Nothing here loads a dataset or a model; callers pass features (already
computed, possibly cached) and get logits or probabilities back, which keeps the
rules testable on hand-written vectors.

How a class's several prompts are combined is a named, registered choice
(:data:`ENSEMBLES`) because the published recipes differ and give different
numbers:

* ``mean-embedding`` - CLIP / CLIP_benchmark: average the L2-normalised prompt
  embeddings of a class, renormalise, then take cosine similarity.
* ``mean-logit`` - MedCLIP ``PromptClassifier(ensemble=True)``: average the
  image-prompt similarities of a class.
* ``max-logit`` - MedCLIP with ensembling off: the best-matching prompt wins.

Multi-label datasets follow CheXzero: for every label, a softmax over its
positive and negative prompt logits gives P(finding present).

How logits become probabilities is the model's own rule (:data:`SCORINGS`):
``softmax`` for CLIP-style models trained with a softmax contrastive loss, and
``sigmoid`` for SigLIP-style models trained with a per-pair sigmoid and a
learned bias: each class gets its own σ(scale·cos + bias), and the class
probabilities every metric reads are those sigmoids divided by their sum
(computed as a softmax of log σ, which cannot underflow). The argmax is the
sigmoid's own, and rows sum to one as the multi-class metrics require.

All rules work on one concatenated prompt matrix and a prompt -> class index,
so the cost is one matmul plus an index reduction whatever the number of
samples or prompts.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fmeval.errors import ConfigError
from fmeval.registry import Registry

#: ``(image [N,D] normalised, prompts [P,D] normalised, class_of_prompt [P],
#: num_classes) -> cosine scores [N,C]``; the logit scale is applied afterwards
#: (every rule commutes with a positive scale).
EnsembleFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]

ENSEMBLES: Registry[EnsembleFn] = Registry("prompt ensemble", ConfigError)

DEFAULT_ENSEMBLE = "mean-embedding"

PairFeats = tuple[Tensor, Tensor]
TextFeats = Union[Sequence[Tensor], Sequence[PairFeats]]


# --------------------------------------------------------------------------- #
# Segment reductions (prompts grouped by class, no Python loop over classes)
# --------------------------------------------------------------------------- #
def _segment_mean_rows(x: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of the rows of ``x`` [P,D] per segment -> [S,D]."""
    sums = x.new_zeros(num_segments, x.shape[1]).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=num_segments).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def _segment_mean_cols(x: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of the columns of ``x`` [N,P] per segment -> [N,S]."""
    sums = x.new_zeros(x.shape[0], num_segments).index_add_(1, index, x)
    counts = torch.bincount(index, minlength=num_segments).clamp_min(1).to(x.dtype)
    return sums / counts[None, :]


def _segment_max_cols(x: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Max of the columns of ``x`` [N,P] per segment -> [N,S]."""
    out = x.new_full((x.shape[0], num_segments), float("-inf"))
    return out.scatter_reduce_(1, index.expand_as(x), x, reduce="amax", include_self=False)


# --------------------------------------------------------------------------- #
# Ensembling rules
# --------------------------------------------------------------------------- #
@ENSEMBLES.register(
    "mean-embedding",
    "average of L2-normalised prompt embeddings per class, renormalised (CLIP)",
)
def mean_embedding(image: Tensor, text: Tensor, index: Tensor, num_classes: int) -> Tensor:
    return image @ _class_embeddings(text, index, num_classes, renormalise=True).T


@ENSEMBLES.register(
    "mean-logit",
    "average of image-prompt logits per class (MedCLIP ensemble=True)",
)
def mean_logit(image: Tensor, text: Tensor, index: Tensor, num_classes: int) -> Tensor:
    return _segment_mean_cols(image @ text.T, index, num_classes)


@ENSEMBLES.register(
    "max-logit",
    "maximum image-prompt logit per class (best-matching prompt wins)",
)
def max_logit(image: Tensor, text: Tensor, index: Tensor, num_classes: int) -> Tensor:
    return _segment_max_cols(image @ text.T, index, num_classes)


def _class_embeddings(text: Tensor, index: Tensor, num_classes: int, renormalise: bool) -> Tensor:
    mean = _segment_mean_rows(text, index, num_classes)
    return F.normalize(mean, dim=-1) if renormalise else mean


# --------------------------------------------------------------------------- #
# Input handling
# --------------------------------------------------------------------------- #
def _as_float(x: Tensor, like: Tensor | None = None) -> Tensor:
    """float32 on ``like``'s device: cached features are often float16, and
    cosine similarities of near-identical prompts need the precision."""
    device = like.device if like is not None else x.device
    return x.detach().to(device=device, dtype=torch.float32)


def _check_image(image_feats: Tensor) -> Tensor:
    if not isinstance(image_feats, Tensor) or image_feats.ndim != 2:
        shape = tuple(image_feats.shape) if isinstance(image_feats, Tensor) else type(image_feats)
        raise ConfigError(f"image features must be a [N, D] tensor, got {shape}")
    return F.normalize(_as_float(image_feats), dim=-1)


def _per_class(text_feats: Sequence[Tensor] | Tensor) -> Sequence[Tensor]:
    """A plain [C, D] tensor means one prompt per class."""
    if isinstance(text_feats, Tensor):
        if text_feats.ndim != 2:
            raise ConfigError(
                "text features must be [C, D] or a list of [P_c, D], "
                f"got {tuple(text_feats.shape)}"
            )
        return list(text_feats.unsqueeze(1))
    return text_feats


def _flatten(text_feats: Sequence[Tensor], dim: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class [P_c, D] tensors -> normalised [P, D] and class index [P]."""
    if len(text_feats) == 0:
        raise ConfigError("no classes: text features are empty")
    counts = []
    for c, t in enumerate(text_feats):
        if t.ndim != 2 or t.shape[0] == 0:
            raise ConfigError(f"class {c}: prompt features must be a non-empty [P, D] tensor")
        if t.shape[1] != dim:
            raise ConfigError(
                f"class {c}: prompt features have dimension {t.shape[1]}, images {dim}; "
                "image and text must come from the same model"
            )
        counts.append(t.shape[0])
    text = F.normalize(torch.cat([_as_float(t, like) for t in text_feats]), dim=-1)
    index = torch.repeat_interleave(
        torch.arange(len(counts), device=like.device), torch.tensor(counts, device=like.device)
    )
    return text, index


def _is_pairs(text_feats: TextFeats | Tensor) -> bool:
    if isinstance(text_feats, Tensor) or len(text_feats) == 0:
        return False
    return isinstance(text_feats[0], (tuple, list))


def _interleave_pairs(pair_feats: Sequence[PairFeats]) -> list[Tensor]:
    """[(pos_0, neg_0), (pos_1, neg_1), ...] -> [pos_0, neg_0, pos_1, neg_1, ...]."""
    out: list[Tensor] = []
    for i, pair in enumerate(pair_feats):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"label {i}: expected a (positive, negative) pair of prompt features")
        out.extend(pair)
    return out


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def class_logits(
    image_feats: Tensor,
    text_feats: Sequence[Tensor] | Tensor,
    *,
    logit_scale: float,
    ensemble: str = DEFAULT_ENSEMBLE,
) -> Tensor:
    """Zero-shot logits [N, C]: ``logit_scale`` x ensembled cosine similarity.

    ``text_feats[c]`` holds the embeddings [P_c, D] of class ``c``'s prompts
    (a plain [C, D] tensor means one prompt per class). Both sides are
    L2-normalised here, so raw encoder outputs can be passed.
    """
    rule = ENSEMBLES.get(ensemble)
    text_feats = _per_class(text_feats)
    image = _check_image(image_feats)
    text, index = _flatten(text_feats, image.shape[1], image)
    return float(logit_scale) * rule(image, text, index, len(text_feats))


def pair_logits(
    image_feats: Tensor,
    pair_feats: Sequence[PairFeats],
    *,
    logit_scale: float,
    ensemble: str = DEFAULT_ENSEMBLE,
) -> Tensor:
    """Multi-label logits [N, L, 2]: (positive, negative) per label.

    Positive and negative prompt sets are ensembled like two classes each, all
    2L of them in one :func:`class_logits` call.
    """
    flat = _interleave_pairs(pair_feats)
    logits = class_logits(image_feats, flat, logit_scale=logit_scale, ensemble=ensemble)
    return logits.view(logits.shape[0], len(pair_feats), 2)


ScoreFn = Callable[[Tensor, float], Tensor]
SCORINGS: Registry[ScoreFn] = Registry("zero-shot scoring", ConfigError)


@SCORINGS.register("softmax", "softmax over classes (CLIP, BiomedCLIP, MedCLIP)")
def softmax_scores(logits: Tensor, bias: float) -> Tensor:
    """Logits [..., K] -> probabilities over the last axis (a bias cancels)."""
    return logits.softmax(dim=-1)


@SCORINGS.register("sigmoid", "per-class sigmoid with the learned bias, normalised to sum 1 (SigLIP)")
def sigmoid_scores(logits: Tensor, bias: float) -> Tensor:
    """σ(z + b) per class, divided by the row sum: softmax(log σ(z + b))."""
    return F.logsigmoid(logits + float(bias)).softmax(dim=-1)


def zeroshot_probs(
    image_feats: Tensor,
    text_feats: TextFeats | Tensor,
    *,
    logit_scale: float,
    ensemble: str = DEFAULT_ENSEMBLE,
    pool_logits: Callable[[Tensor], Tensor] | None = None,
    scoring: str = "softmax",
    logit_bias: float = 0.0,
) -> Tensor:
    """Scores medmnist's metrics expect.

    Single-label (``text_feats`` = list of [P_c, D]): softmax over classes, [N, C]
    (for binary tasks column 1 is the positive score). Multi-label (``text_feats``
    = list of (positive [P, D], negative [Q, D]) pairs): per label, softmax over
    its positive and negative logits, returning P(positive) [N, L] (CheXzero).
    ``scoring`` (:data:`SCORINGS`) replaces the softmax by the model's own rule.
    """
    score = SCORINGS.get(scoring)
    kw = {"logit_scale": logit_scale, "ensemble": ensemble}
    if _is_pairs(text_feats):
        pair = pair_logits(image_feats, text_feats, **kw)  # type: ignore[arg-type]
        if pool_logits is not None:  # several rows per sample (volume slices) -> one
            n_labels = pair.shape[1]
            pair = pool_logits(pair.reshape(pair.shape[0], -1)).view(-1, n_labels, 2)
        return score(pair, logit_bias)[..., 0]
    logits = class_logits(image_feats, text_feats, **kw)  # type: ignore[arg-type]
    if pool_logits is not None:
        logits = pool_logits(logits)
    return score(logits, logit_bias)


def text_classifier_weights(
    text_feats: TextFeats | Tensor,
    *,
    ensemble: str = DEFAULT_ENSEMBLE,
) -> Tensor:
    """Prompt embeddings -> linear-classifier weights [C, D] (or [L, D]).

    With L2-normalised image features ``x``, ``logit_scale * x @ W.T`` equals
    :func:`class_logits` exactly, so a linear probe initialised from ``W`` (and
    scaled) starts at the zero-shot solution. ``mean-embedding`` gives the
    renormalised class means; ``mean-logit`` the plain means (averaging dot
    products is a dot product with the average). ``max-logit`` is not linear.
    For multi-label pairs the rows are ``w_pos - w_neg``, so
    ``sigmoid(logit_scale * x @ W.T)`` equals :func:`zeroshot_probs`.
    """
    ENSEMBLES.get(ensemble)  # unknown names fail with the registry's hint
    if ensemble.lower() not in ("mean-embedding", "mean-logit"):
        raise ConfigError(
            f"prompt ensemble {ensemble!r} is not linear in the image features, so it has "
            "no classifier weights; use mean-embedding or mean-logit"
        )
    renormalise = ensemble.lower() == "mean-embedding"
    pairs = _is_pairs(text_feats)
    flat = (
        _interleave_pairs(text_feats)  # type: ignore[arg-type]
        if pairs
        else list(_per_class(text_feats))  # type: ignore[arg-type]
    )
    if not flat:
        raise ConfigError("no classes: text features are empty")
    text, index = _flatten(flat, flat[0].shape[-1], flat[0])
    weights = _class_embeddings(text, index, len(flat), renormalise=renormalise)
    return weights[0::2] - weights[1::2] if pairs else weights


@torch.no_grad()
def encode_prompts(
    encode_text_fn: Callable[[list[str]], Tensor],
    prompts_per_class: Sequence[Sequence[str]],
    batch_size: int = 256,
    *,
    per_class: bool = False,
) -> list[Tensor]:
    """Encode every prompt of every class in batches; return [P_c, D] per class.

    Batching across classes keeps the number of text-tower calls minimal.
    ``per_class=True`` instead encodes each class's prompts in their own calls:
    MedCLIP's text pooling averages over padding tokens, so its embeddings
    depend on which prompts are padded together, and its published numbers
    batch per class.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    counts = [len(p) for p in prompts_per_class]
    for c, n in enumerate(counts):
        if n == 0:
            raise ConfigError(f"class {c} has no prompts")
    groups = [list(p) for p in prompts_per_class] if per_class else [
        [t for p in prompts_per_class for t in p]
    ]
    encoded = [
        _encode_batched(encode_text_fn, texts, batch_size) for texts in groups
    ]
    feats = torch.cat(encoded) if len(encoded) > 1 else encoded[0]
    return list(torch.split(feats, counts))


def encode_prompt_pairs(
    encode_text_fn: Callable[[list[str]], Tensor],
    pairs: Sequence[tuple[Sequence[str], Sequence[str]]],
    batch_size: int = 256,
    *,
    per_class: bool = False,
) -> list[PairFeats]:
    """:func:`encode_prompts` for multi-label (positive, negative) prompt pairs."""
    flat = [half for pair in pairs for half in pair]
    feats = encode_prompts(encode_text_fn, flat, batch_size, per_class=per_class)
    return [(feats[2 * i], feats[2 * i + 1]) for i in range(len(pairs))]


def _encode_batched(fn: Callable[[list[str]], Tensor], texts: list[str], batch_size: int) -> Tensor:
    outs = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        out = fn(chunk)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(chunk):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"encode_text returned {shape} for {len(chunk)} prompts; expected [{len(chunk)}, D]"
            )
        outs.append(out)
    return torch.cat(outs)


__all__ = [
    "DEFAULT_ENSEMBLE",
    "ENSEMBLES",
    "class_logits",
    "encode_prompt_pairs",
    "encode_prompts",
    "pair_logits",
    "text_classifier_weights",
    "zeroshot_probs",
]
