"""Few-shot episodes at the edge K = a class's size (issue 22 item 12), expectations by hand: a class with
exactly K images gives all of them and is NOT reported short; one with K - 1 is; a K equal to the largest
class is allowed and one more is refused."""

from __future__ import annotations

import numpy as np
import pytest

from fmeval.data.episodes import _keys, check_shots_fit, make_episode, shortfall_warnings
from fmeval.errors import ConfigError

NAMES = ["a", "b", "c"]
LABELS = np.array([[0]] * 5 + [[1]] * 3 + [[2]] * 2)  # a: 0-4, b: 5-7, c: 8-9


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_a_class_with_exactly_k_images_gives_all_and_is_not_short(draw):
    ep = make_episode(LABELS, "multi-class", 3, draw, 11, NAMES)
    keys = _keys(10, draw, 11, "train")
    want_a = sorted(np.arange(5)[np.argsort(keys[:5], kind="stable")[:3]].tolist())  # the 3 smallest keys of a
    assert ep.indices.tolist() == want_a + [5, 6, 7, 8, 9]
    assert ep.counts == {"a": 3, "b": 3, "c": 2}
    assert ep.short == ("c",)  # b has exactly K = 3: not short
    assert shortfall_warnings([ep]) == ["train 3-shot episodes: fewer than 3 images for c; all of them were used"]


def test_k_equal_to_the_largest_class_is_allowed_one_more_is_refused():
    check_shots_fit(LABELS, "multi-class", 5, NAMES)  # a has exactly 5
    with pytest.raises(ConfigError, match="more than any class has"):
        check_shots_fit(LABELS, "multi-class", 6, NAMES)
    ep = make_episode(LABELS, "multi-class", 5, 0, 0, NAMES)
    assert ep.indices.tolist() == list(range(10)) and ep.short == ("b", "c")


def test_multilabel_label_with_exactly_k_positives():
    # label x: positives at 0, 1 (exactly K = 2); label y: positives at 2, 3, 4; 5, 6: no finding
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 0], [0, 0]])
    ep = make_episode(y, "multi-label, binary-class", 2, 0, 3, ["x", "y"])
    assert {0, 1} <= set(ep.indices.tolist())  # both positives of x
    assert ep.counts["x"] == 2 and ep.counts["y"] == 2 and ep.counts["none"] == 2
    assert ep.short == ()
