"""Issue 22 item 11: the linear probe's decoupled weight decay, checked against torch.optim.AdamW on an
nn.Linear (a second implementation): weights only by default (DINOv2-style), the bias too with
``probe.decay_bias`` (timm's AdamW over model.parameters(), which medmnist-plus sets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmeval.config import ProbeConfig
from fmeval.probes.linear import train_linear_probe


def _reference(x, y, *, lr, wd, epochs, decay_bias):
    head = torch.nn.Linear(x.shape[1], 3)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW([{"params": [head.weight], "weight_decay": wd},
                             {"params": [head.bias], "weight_decay": wd if decay_bias else 0.0}], lr=lr)
    for _ in range(epochs):  # full batch: one step per epoch, order irrelevant
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()
    return head.weight.detach().T, head.bias.detach()


@pytest.mark.parametrize("decay_bias", [False, True])
def test_probe_decay_matches_torch_adamw(decay_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    cfg = ProbeConfig(lrs=(0.05,), weight_decays=(0.5,), epochs=25, batch_size=64, decay_bias=decay_bias)
    probe = train_linear_probe(x, y, None, None, n_outputs=3, multilabel=False, config=cfg, standardize=False)
    w, b = _reference(x, y, lr=0.05, wd=0.5, epochs=25, decay_bias=decay_bias)
    torch.testing.assert_close(probe.weight, w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe.bias, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_reference(x, y, lr=0.05, wd=0.5, epochs=25, decay_bias=not decay_bias)[1], b,
                              atol=1e-4)  # the two rules really differ here


def test_medmnist_plus_decays_the_bias_and_the_default_hash_is_unchanged():
    from fmeval.runner import make_config

    cfg = make_config("linprobe", {"protocol": "medmnist-plus", "model": "vit-b16", "dataset": "pneumoniamnist"})
    assert cfg.probe.decay_bias is True and cfg.deviations == ()
    plain = make_config("linprobe", {"model": "vit-b16", "dataset": "pneumoniamnist"})
    assert plain.probe.decay_bias is False and "decay_bias" not in plain.semantic_dict(("probe",))["probe"]
