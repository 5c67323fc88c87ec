"""Issue 22 item 11: the fine-tuning (and train-mode probe) head starts from the timm model's own classifier
initialisation, as the MedMNIST+ reference's timm.create_model(num_classes=n) does, not nn.Linear's default.
Expectations from timm's documented inits: ViT trunc_normal(std 0.02) + zero bias; EfficientNet
uniform(+-1/sqrt(n_classes)) + zero bias; ResNet: PyTorch's default (timm leaves its fc alone)."""

from __future__ import annotations

import math

import pytest
import torch

from fmeval.adapters import create_adapter
from fmeval.training.methods import Classifier


def _head(name: str, n: int = 3, tiny: bool = True):
    torch.manual_seed(0)
    a = create_adapter(name, pretrained=False, tiny=tiny)
    return a, Classifier(a, n)


def test_vit_head_is_truncated_normal_002_with_zero_bias():
    a, c = _head("vit-s16", n=5)
    assert c.head_init == "model"
    w, b = c.head.weight.detach(), c.head.bias.detach()
    assert w.shape == (5, a.feature_dim) and torch.count_nonzero(b) == 0
    assert 0.012 < float(w.std()) < 0.028  # nn.Linear's default would be ~1/sqrt(3 * fan_in)
    assert float(w.abs().max()) < 0.1


def test_efficientnet_head_is_uniform_over_sqrt_n_classes_with_zero_bias():
    a, c = _head("timm:tf_efficientnet_lite0", n=4, tiny=False)  # random, full size (4.7 M parameters)
    assert c.head_init == "model"
    w, b = c.head.weight.detach(), c.head.bias.detach()
    bound = 1 / math.sqrt(4)
    assert torch.count_nonzero(b) == 0 and float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.8 * bound  # spread over the whole range (default: 1/sqrt(fan_in), far smaller)


def test_resnet_head_is_pytorch_default_as_timm_leaves_it():
    a, c = _head("resnet18", n=2)
    bound = 1 / math.sqrt(a.feature_dim)
    assert float(c.head.weight.detach().abs().max()) <= bound and torch.count_nonzero(c.head.bias) > 0


def test_medmnist_v2_resnet_keeps_the_pytorch_default_head():
    _, c = _head("resnet18-medmnist", n=2)
    assert c.head_init == "torch-default"


def test_head_init_is_a_setting_in_the_run_hash():
    """The head's init moves fine-tuning numbers, so it is a setting (train.head_init) and in the run's
    hash: runs recorded before the timm init (nn.Linear default) never pool with the new ones."""
    from fmeval.config import MODE_SECTIONS, RunConfig
    from fmeval.errors import ConfigError

    torch.manual_seed(0)
    a = create_adapter("vit-s16", pretrained=False, tiny=True)
    c = Classifier(a, 5, "torch")
    assert c.head_init == "torch-default" and torch.count_nonzero(c.head.bias) > 0  # nn.Linear's own init
    base = dict(mode="finetune-lora", model="vit-s16", dataset="pneumoniamnist")
    model = RunConfig.from_dict(base)
    torch_init = RunConfig.from_dict({**base, "train": {"head_init": "torch"}})
    assert model.train.head_init == "model"
    sections = MODE_SECTIONS["finetune-lora"]
    assert model.digest(sections) != torch_init.digest(sections)
    assert model.digest(MODE_SECTIONS["knn"]) == torch_init.digest(MODE_SECTIONS["knn"])  # frozen modes: unchanged
    with pytest.raises(ConfigError, match="head_init"):
        RunConfig.from_dict({**base, "train": {"head_init": "xavier"}}).train.validate()
