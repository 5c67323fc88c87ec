"""``torchvision:<name>[:<weights enum>]``: any torchvision classifier, its head removed.

Built by :class:`~fmeval.adapters.torchvision_models.TorchvisionAdapter`, the
class behind the ``tv-*`` short names, from a :class:`TvSpec` made here: the
weights enum is pinned (``DEFAULT`` moves between versions, so an omitted enum
is resolved now and recorded), and the 1000-class head is found as the last
``nn.Linear`` of the architecture, built on the meta device (no allocation).
"""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from fmeval.adapters.base import Adapter, AdapterConfig
from fmeval.adapters.lora_targets import find_lora_targets
from fmeval.adapters.specs import TorchvisionModelSpec
from fmeval.errors import ConfigError, ModelError

UNKNOWN_FAMILY = "torchvision"


def _classifiers() -> list[str]:
    import torchvision.models as tm

    return tm.list_models(module=tm)


def resolve_weights(spec: TorchvisionModelSpec) -> str:
    """The pinned weights enum member name, or one line with close matches."""
    from torchvision.models import get_model_weights

    names = _classifiers()
    if spec.arch not in names:
        close = difflib.get_close_matches(spec.arch, names, n=4, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelError(f"unknown torchvision classifier {spec.arch!r} in {spec.text!r}.{hint}")
    enum = get_model_weights(spec.arch)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    if spec.weights is None:
        return enum.DEFAULT.name
    if spec.weights not in enum.__members__:
        raise ModelError(f"torchvision {spec.arch} has no weights {spec.weights!r}; "
                         f"its weights: {', '.join(members)}.")
    return enum[spec.weights].name


def find_head(arch: str) -> str:
    """Dotted path of the classifier: the last ``nn.Linear`` (auxiliary heads aside)."""
    from torchvision.models import get_model

    with torch.device("meta"):
        model = get_model(arch, weights=None)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "aux" not in n]
    if not linears:
        raise ModelError(f"torchvision {arch} has no linear classifier to remove (a convolutional head); "
                         "wrap it in your own factory (--model file.py:factory).")
    return linears[-1]


def known_family(arch: str) -> str:
    from fmeval.adapters.torchvision_models import SPECS

    return next((s.family for s in SPECS if s.arch == arch), UNKNOWN_FAMILY)


def check_spec(spec: TorchvisionModelSpec) -> dict[str, str]:
    weights = resolve_weights(spec)
    return {"family": known_family(spec.arch), "text": "no",
            "weights": f"torchvision:{spec.arch}.{weights}"}


def _no_tiny(size: int) -> nn.Module:
    raise ConfigError("--tiny has no recipe for a torchvision spec: use --random-init.")


def build_spec(spec: TorchvisionModelSpec, cfg: AdapterConfig) -> Adapter:
    from fmeval.adapters.torchvision_models import TorchvisionAdapter, TvSpec

    if cfg.tiny:
        _no_tiny(0)
    weights = resolve_weights(spec)
    from torchvision.models import get_model_weights

    meta = get_model_weights(spec.arch)[weights].meta
    top1 = float(meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1", 0.0)) / 100
    patch = re.search(r"_(\d+)$", spec.arch) if spec.arch.startswith("vit_") else None
    tv = TvSpec(spec.text, spec.arch, weights, top1, known_family(spec.arch), f"torchvision {spec.arch}",
                find_head(spec.arch), _no_tiny, fixed_size=patch is not None,
                patch=int(patch.group(1)) if patch else 1)
    adapter = TorchvisionAdapter(tv, cfg)
    choice = find_lora_targets(adapter.model)
    adapter.lora_targets, adapter.lora_rule = choice.targets, choice.rule  # type: ignore[misc]
    adapter.pooling = f"penultimate activations ({tv.head} replaced by Identity)"
    adapter.model_spec = {"spec": spec.text, "kind": "torchvision", "resolved": tv.weights_tag,
                          "tag_pinned_by": "user" if spec.weights else "torchvision DEFAULT"}
    return adapter
