"""Zero-shot math on hand-written features: known answers, not just shapes."""

from __future__ import annotations

import math

import pytest
import torch

from fmeval.errors import ConfigError
from fmeval.zeroshot import (
    ENSEMBLES,
    class_logits,
    encode_prompt_pairs,
    encode_prompts,
    pair_logits,
    text_classifier_weights,
    zeroshot_probs,
)

S = 10.0  # logit scale used throughout
R2 = math.sqrt(2.0)


def unit(deg: float) -> list[float]:
    """2-D unit vector at ``deg`` degrees."""
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- #
# Known answers
# --------------------------------------------------------------------------- #
# Images (unnormalised on purpose: normalisation happens inside).
IMAGES = t([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
# Class 0 has two prompts, class 1 one.
TEXTS = [t([[1.0, 0.0], [1.0, 1.0]]), t([[0.0, 5.0]])]

# Cosine similarities by hand: rows = images, cols = prompts (c0p0, c0p1, c1p0).
COS = [
    [1.0, 1 / R2, 0.0],
    [0.0, 1 / R2, 1.0],
    [1 / R2, 1.0, 1 / R2],
]


def test_registry_names():
    assert ENSEMBLES.names() == ["max-logit", "mean-embedding", "mean-logit"]


def test_mean_logit_known_answer():
    expected = t([[S * (c[0] + c[1]) / 2, S * c[2]] for c in COS])
    got = class_logits(IMAGES, TEXTS, logit_scale=S, ensemble="mean-logit")
    torch.testing.assert_close(got, expected)
    assert got.argmax(1).tolist() == [0, 1, 0]


def test_max_logit_known_answer():
    expected = t([[S * max(c[0], c[1]), S * c[2]] for c in COS])
    got = class_logits(IMAGES, TEXTS, logit_scale=S, ensemble="max-logit")
    torch.testing.assert_close(got, expected)
    # image 2 (45 deg) matches class 0's second prompt exactly (cos 1 > 1/sqrt2)
    assert got.argmax(1).tolist() == [0, 1, 0]


def test_mean_embedding_known_answer():
    # class 0 mean of unit prompts (1,0) and (1,1)/sqrt2, renormalised: angle 22.5 deg.
    c0 = unit(22.5)
    c1 = [0.0, 1.0]
    imgs = [[1.0, 0.0], [0.0, 1.0], [1 / R2, 1 / R2]]
    expected = t([[S * (i[0] * c0[0] + i[1] * c0[1]), S * (i[0] * c1[0] + i[1] * c1[1])] for i in imgs])
    got = class_logits(IMAGES, TEXTS, logit_scale=S, ensemble="mean-embedding")
    torch.testing.assert_close(got, expected)
    assert got.argmax(1).tolist() == [0, 1, 0]


def test_mean_embedding_and_mean_logit_disagree():
    """Class A's prompts are spread (+-80 deg), class B's single prompt sits at 60 deg.

    mean-embedding: A's renormalised mean points at 0 deg -> cos 1 beats cos 60 = 0.5.
    mean-logit: A averages cos 80 = 0.174 -> B (0.5) wins. max-logit: B wins too.
    """
    image = t([unit(0)])
    texts = [t([unit(80), unit(-80)]), t([unit(60)])]
    me = class_logits(image, texts, logit_scale=S, ensemble="mean-embedding")
    ml = class_logits(image, texts, logit_scale=S, ensemble="mean-logit")
    mx = class_logits(image, texts, logit_scale=S, ensemble="max-logit")
    c80, c60 = math.cos(math.radians(80)), 0.5
    torch.testing.assert_close(me, t([[S * 1.0, S * c60]]))
    torch.testing.assert_close(ml, t([[S * c80, S * c60]]))
    torch.testing.assert_close(mx, t([[S * c80, S * c60]]))
    assert me.argmax(1).item() == 0
    assert ml.argmax(1).item() == 1
    assert mx.argmax(1).item() == 1


def test_max_differs_from_mean_logit():
    image = t([unit(0)])
    # A: one perfect prompt and one orthogonal -> mean 0.5, max 1. B: two at 40 deg -> 0.766.
    texts = [t([unit(0), unit(90)]), t([unit(40), unit(-40)])]
    ml = class_logits(image, texts, logit_scale=1.0, ensemble="mean-logit")
    mx = class_logits(image, texts, logit_scale=1.0, ensemble="max-logit")
    assert ml.argmax(1).item() == 1
    assert mx.argmax(1).item() == 0


def test_plain_tensor_means_one_prompt_per_class():
    text = t([[1.0, 0.0], [0.0, 1.0]])
    got = class_logits(IMAGES, text, logit_scale=S)
    torch.testing.assert_close(got, class_logits(IMAGES, [text[:1], text[1:]], logit_scale=S))
    torch.testing.assert_close(got[2], t([S / R2, S / R2]))
    torch.testing.assert_close(text_classifier_weights(text), text)


def test_single_label_probs_are_softmax():
    logits = class_logits(IMAGES, TEXTS, logit_scale=S, ensemble="mean-logit")
    probs = zeroshot_probs(IMAGES, TEXTS, logit_scale=S, ensemble="mean-logit")
    a, b = logits[0].tolist()
    assert probs[0, 0].item() == pytest.approx(math.exp(a) / (math.exp(a) + math.exp(b)), rel=1e-5)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_multilabel_pos_neg_softmax_known_answer():
    image = t([[1.0, 0.0], [0.0, 1.0]])
    # label 0: positive prompt at 0 deg, negative at 90 deg
    # label 1: positive at 60 deg, negative at 0 deg
    pairs = [(t([unit(0)]), t([unit(90)])), (t([unit(60)]), t([unit(0)]))]
    probs = zeroshot_probs(image, pairs, logit_scale=S, ensemble="mean-embedding")
    assert probs.shape == (2, 2)

    def p_pos(cp: float, cn: float) -> float:
        return math.exp(S * cp) / (math.exp(S * cp) + math.exp(S * cn))

    c60, s60 = 0.5, math.sin(math.radians(60))
    expected = [
        [p_pos(1.0, 0.0), p_pos(c60, 1.0)],  # image at 0 deg
        [p_pos(0.0, 1.0), p_pos(s60, 0.0)],  # image at 90 deg
    ]
    torch.testing.assert_close(probs, t(expected))
    logits = pair_logits(image, pairs, logit_scale=S, ensemble="mean-embedding")
    assert logits.shape == (2, 2, 2)
    torch.testing.assert_close(logits[0, 1], t([S * c60, S * 1.0]))


def test_multilabel_ensembles_within_each_half():
    image = t([unit(0)])
    pairs = [(t([unit(0), unit(90)]), t([unit(45)]))]
    ml = pair_logits(image, pairs, logit_scale=1.0, ensemble="mean-logit")
    torch.testing.assert_close(ml[0, 0], t([0.5, math.cos(math.radians(45))]))


# --------------------------------------------------------------------------- #
# Vectorised code equals the obvious loops
# --------------------------------------------------------------------------- #
def _reference(image: torch.Tensor, texts: list[torch.Tensor], scale: float, rule: str) -> torch.Tensor:
    out = torch.empty(image.shape[0], len(texts))
    for n in range(image.shape[0]):
        x = image[n] / image[n].norm()
        for c, tc in enumerate(texts):
            tn = tc / tc.norm(dim=1, keepdim=True)
            sims = tn @ x
            if rule == "mean-embedding":
                m = tn.mean(0)
                out[n, c] = scale * (m / m.norm()) @ x
            elif rule == "mean-logit":
                out[n, c] = scale * sims.mean()
            else:
                out[n, c] = scale * sims.max()
    return out


@pytest.mark.parametrize("rule", ["mean-embedding", "mean-logit", "max-logit"])
def test_matches_loop_reference(rule):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(7, 16, generator=g)
    texts = [torch.randn(k, 16, generator=g) for k in (1, 4, 2, 5)]
    got = class_logits(image, texts, logit_scale=42.0, ensemble=rule)
    torch.testing.assert_close(got, _reference(image, texts, 42.0, rule), rtol=1e-5, atol=1e-5)


def test_scale_invariance_and_half_precision():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(5, 8, generator=g)
    texts = [torch.randn(3, 8, generator=g), torch.randn(2, 8, generator=g)]
    a = class_logits(image, texts, logit_scale=5.0)
    b = class_logits(image * 7.0, [x * 0.1 for x in texts], logit_scale=5.0)
    c = class_logits(image.half(), [x.half() for x in texts], logit_scale=5.0)
    torch.testing.assert_close(a, b)
    assert c.dtype == torch.float32
    torch.testing.assert_close(a, c, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- #
# Classifier weights reproduce the zero-shot logits
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("rule", ["mean-embedding", "mean-logit"])
def test_text_classifier_weights_reproduce_logits(rule):
    g = torch.Generator().manual_seed(2)
    image = torch.randn(6, 8, generator=g)
    texts = [torch.randn(k, 8, generator=g) for k in (3, 1, 4)]
    w = text_classifier_weights(texts, ensemble=rule)
    assert w.shape == (3, 8)
    x = image / image.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        9.0 * x @ w.T, class_logits(image, texts, logit_scale=9.0, ensemble=rule)
    )
    if rule == "mean-embedding":
        torch.testing.assert_close(w.norm(dim=1), torch.ones(3))


def test_text_classifier_weights_multilabel_give_sigmoid_of_difference():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(4, 8, generator=g)
    pairs = [(torch.randn(2, 8, generator=g), torch.randn(3, 8, generator=g)) for _ in range(5)]
    w = text_classifier_weights(pairs)
    assert w.shape == (5, 8)
    x = image / image.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        torch.sigmoid(6.0 * x @ w.T), zeroshot_probs(image, pairs, logit_scale=6.0)
    )


def test_max_logit_has_no_linear_weights():
    with pytest.raises(ConfigError, match="not linear"):
        text_classifier_weights([t([[1.0, 0.0]])], ensemble="max-logit")


# --------------------------------------------------------------------------- #
# Prompt encoding helper
# --------------------------------------------------------------------------- #
class FakeTextEncoder:
    """Maps each distinct prompt to a fixed random vector; records call sizes."""

    def __init__(self, dim: int = 4) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def vec(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, text)) * 31 + len(text))
        return torch.randn(self.dim, generator=g)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.vec(x) for x in texts])


def test_encode_prompts_batches_across_classes_and_splits_back():
    enc = FakeTextEncoder()
    prompts = [[f"c{c} p{i}" for i in range(n)] for c, n in enumerate([3, 1, 4, 2])]
    feats = encode_prompts(enc, prompts, batch_size=4)
    assert [len(c) for c in enc.calls] == [4, 4, 2]  # 10 prompts in ceil(10/4) calls
    assert [f.shape[0] for f in feats] == [3, 1, 4, 2]
    for c, plist in enumerate(prompts):
        for i, p in enumerate(plist):
            torch.testing.assert_close(feats[c][i], enc.vec(p))


def test_encode_prompts_per_class_never_mixes_classes():
    enc = FakeTextEncoder()
    prompts = [["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]
    feats = encode_prompts(enc, prompts, batch_size=2, per_class=True)
    assert enc.calls == [["a1", "a2"], ["a3"], ["b1"], ["c1", "c2"]]
    torch.testing.assert_close(feats[2][1], enc.vec("c2"))


def test_encode_prompt_pairs():
    enc = FakeTextEncoder()
    pairs = [(["x", "x2"], ["no x"]), (["y"], ["no y", "not y"])]
    feats = encode_prompt_pairs(enc, pairs, batch_size=256)
    assert len(enc.calls) == 1
    assert [(p.shape[0], n.shape[0]) for p, n in feats] == [(2, 1), (1, 2)]
    torch.testing.assert_close(feats[1][1][1], enc.vec("not y"))


def test_encode_prompts_rejects_bad_encoder_output():
    with pytest.raises(ConfigError, match="expected"):
        encode_prompts(lambda xs: torch.zeros(len(xs) + 1, 3), [["a"], ["b"]])


# --------------------------------------------------------------------------- #
# Errors a caller can make
# --------------------------------------------------------------------------- #
def test_unknown_ensemble_suggests_names():
    with pytest.raises(ConfigError, match="mean-logit"):
        class_logits(IMAGES, TEXTS, logit_scale=1.0, ensemble="mean-logits")


def test_dimension_mismatch_is_explained():
    with pytest.raises(ConfigError, match="dimension 3"):
        class_logits(IMAGES, [t([[1.0, 0.0, 0.0]])], logit_scale=1.0)


def test_empty_class_is_rejected():
    with pytest.raises(ConfigError, match="class 1"):
        class_logits(IMAGES, [t([[1.0, 0.0]]), torch.zeros(0, 2)], logit_scale=1.0)
    with pytest.raises(ConfigError, match="class 0 has no prompts"):
        encode_prompts(FakeTextEncoder(), [[], ["a"]])
