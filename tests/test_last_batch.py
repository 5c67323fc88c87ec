"""Issue 22 item 11: a last training batch of one sample joins the batch before it instead of being
dropped, so every image is trained on every epoch. Failed on the code that dropped it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn


class _Seen(nn.Module):
    """Records the image values (= sample indices) of every training batch."""

    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Identity(), nn.Linear(1, 2)
        self.batches: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.batches.append(x[:, 0].round().long().tolist())
        return self.head(x)


class _Prep:
    def prepare(self, images, device, train=False, generator=None):
        return torch.as_tensor(images, dtype=torch.float32)


@pytest.mark.parametrize("n,bs,sizes", [(9, 4, [4, 5]), (8, 4, [4, 4]), (10, 4, [4, 4, 2]), (5, 4, [5])])
def test_every_image_is_trained_on_and_no_batch_has_one_sample(n, bs, sizes, monkeypatch):
    from fmeval.training import loop

    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    model = _Seen()
    data = loop.TrainData(np.arange(n, dtype=np.uint8)[:, None], np.array([[i % 2] for i in range(n)]),
                          None, None, task="binary-class", n_outputs=2)
    method = SimpleNamespace(state_keys=lambda m: list(m.state_dict()), set_train_mode=lambda m: m.train())
    cfg = loop.TrainConfig(epochs=1, patience=0, batch_size=bs, warmup_epochs=0)
    loop.fit(model, data, cfg, method=method, setup=loop.RunSetup(transform=_Prep(), device=torch.device("cpu")),
             seed=0)
    assert [len(b) for b in model.batches] == sizes
    assert sorted(i for b in model.batches for i in b) == list(range(n))
