"""Issue 22 item 11: a last training batch of one sample joins the batch before it instead of being
dropped, so every image is trained on every epoch. Failed on the code that dropped it."""

from __future__ import annotations

import pytest

from helpers import BatchRecorder, fit_on_indices


@pytest.mark.parametrize("n,bs,sizes", [(9, 4, [4, 5]), (8, 4, [4, 4]), (10, 4, [4, 4, 2]), (5, 4, [5])])
def test_every_image_is_trained_on_and_no_batch_has_one_sample(n, bs, sizes, monkeypatch):
    from fmeval.training import loop

    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    model = BatchRecorder()
    fit_on_indices(model, [i % 2 for i in range(n)], loop.TrainConfig(epochs=1, patience=0, batch_size=bs,
                                                                      warmup_epochs=0))
    assert [len(b) for b in model.batches] == sizes
    assert sorted(i for b in model.batches for i in b) == list(range(n))
