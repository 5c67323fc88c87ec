"""Issue 22 item 3: the MedMNIST v2 ResNets start from PyTorch's default initialisation (as the
reference models.py does), not timm's (zero last BatchNorm weight per block, kaiming-normal convs).
Expectations from PyTorch's documented defaults; failed on the code that kept timm's init."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn

from fmeval.adapters import create_adapter


@pytest.mark.parametrize("name,size", [("resnet18-medmnist", 28), ("resnet18-medmnist", 224),
                                       ("resnet50-medmnist", 28)])
def test_medmnist_resnets_have_pytorch_default_init(name, size):
    a = create_adapter(name, pretrained=False, input_size=size)
    bns = [m for m in a.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in bns)
    for m in a.model.modules():
        if isinstance(m, nn.Conv2d):  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.abs().max().item() <= 1 / math.sqrt(fan_in) + 1e-7
    assert a.weights_id.startswith("random:") and "-torchinit" in a.weights_id  # a new cache key


def test_other_timm_resnets_keep_timms_init():
    a = create_adapter("resnet18", pretrained=False)
    assert any(bool((m.weight == 0).all()) for m in a.model.modules() if isinstance(m, nn.BatchNorm2d))
