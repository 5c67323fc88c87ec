"""Built-in adapters. Importing this package registers them all."""

from fmeval.adapters.base import (  # noqa: F401
    ADAPTERS,
    Adapter,
    AdapterConfig,
    Preprocess,
    create_adapter,
    register_adapter,
)

# One import per adapter module; each registers its models on import.
from fmeval.adapters import timm_models  # noqa: F401,E402
from fmeval.adapters import torchvision_models  # noqa: F401,E402
from fmeval.adapters import medvit  # noqa: F401,E402
from fmeval.adapters import openclip  # noqa: F401,E402
from fmeval.adapters import medclip  # noqa: F401,E402
from fmeval.adapters import volumetric  # noqa: F401,E402
from fmeval.adapters.user_code import register_plugins  # noqa: E402

#: Installed plugins (entry-point group ``fmeval.adapters``) whose name a built-in
#: model already has: skipped, and listed by ``fmeval ls models``.
SKIPPED_PLUGINS: list[str] = register_plugins(ADAPTERS)

MEDMNIST_PLUS_MODELS: tuple[str, ...] = (
    "vgg16", "tv-alexnet", "resnet18", "densenet121-ra", "efficientnet-b4",
    "vit-b16", "vit-b16-clip-ft", "eva02-b16-clip", "dino-vitb16", "sam-vitb",
)
"""The 10 encoders of the MedMNIST+ benchmark, in the paper's order, as fmeval names.

Source: Doerrich et al., "Rethinking model prototyping through the MedMNIST+
dataset collection", Sci. Rep. 15, 7669 (2025); code
github.com/sdoerrich97/rethinking-model-prototyping-MedMNISTPlus (``config.yaml``,
``train.py``). Their models come from ``timm.create_model(<name>, pretrained=True)``
with timm's *default* tag (their environment does not pin timm), except AlexNet
(torchvision ``alexnet(weights=AlexNet_Weights.DEFAULT)``). fmeval pins the tags
those defaults resolved to under timm 1.0.31: ``vgg16.tv_in1k``,
``resnet18.a1_in1k``, ``densenet121.ra_in1k`` (not ``densenet121``, which is the
torchvision-ported ``tv_in1k``), ``efficientnet_b4.ra2_in1k``,
``vit_base_patch16_224.augreg2_in21k_ft_in1k``,
``vit_base_patch16_clip_224.laion2b_ft_in12k_in1k``,
``eva02_base_patch16_clip_224.merged2b``, ``vit_base_patch16_224.dino``,
``samvit_base_patch16.sa1b``, and AlexNet ``IMAGENET1K_V1``. A different timm
version may have resolved a different tag for the paper's runs.
"""
