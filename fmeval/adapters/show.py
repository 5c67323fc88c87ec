"""What fmeval resolved for a model name or spec, before any run (``fmeval models show``).

One place turns a built adapter into the settings a user checks before
spending compute: family, weights id (tag, revision hash or file digest),
input size, interpolation, mean/std, feature width and which output it is,
zero-shot support and scoring, LoRA targets and how they were chosen, and the
parameter count. The same words appear in every report's ``model`` record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fmeval.adapters import base
from fmeval.adapters.base import ADAPTERS, Adapter, check_pool


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    spec: str
    kind: str
    family: str
    weights_id: str
    input_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int
    pooling: str
    pools: tuple[str, ...]
    zero_shot: str
    lora_targets: tuple[str, ...]
    lora_rule: str
    parameters: int
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        d = asdict(self)
        extra = d.pop("extra")
        fmt = {"mean": lambda v: ", ".join(f"{x:.4g}" for x in v), "std": lambda v: ", ".join(f"{x:.4g}" for x in v),
               "pools": lambda v: ", ".join(v) or "-", "lora_targets": _short_list,
               "parameters": lambda v: f"{v:,}"}
        out = [(k.replace("_", " "), fmt.get(k, str)(v)) for k, v in d.items()]
        return out + [(k.replace("_", " "), str(v)) for k, v in extra.items()]


def _short_list(v) -> str:
    return (", ".join(v[:8]) + (f" (+{len(v) - 8} more)" if len(v) > 8 else "")) if v else "-"


def resolve_model(name: str, **build) -> ResolvedModel:
    """Build ``name`` (as ``create_adapter`` would for a run) and describe it."""
    entry = ADAPTERS.entry(name)
    if build.get("pool") is not None:
        check_pool(name, build["pool"])  # before any weights are read
    adapter = base.create_adapter(name, **build)  # looked up at call time (tests patch it)
    return describe_resolved(adapter, entry.tags)


def describe_resolved(adapter: Adapter, tags: dict) -> ResolvedModel:
    pre = adapter.preprocess
    spec_rec = dict(adapter.model_spec or {})
    text = "no"
    if adapter.supports_text:
        text = f"yes ({getattr(adapter, 'zeroshot_scoring', 'softmax')} scoring, " \
               f"logit scale {float(adapter.logit_scale):.4g}, bias {float(getattr(adapter, 'logit_bias', 0.0)):.4g})"
    extra = {k: v for k, v in spec_rec.items() if k not in ("spec", "kind", "pools", "pool")}
    if tags.get("package"):
        extra["package"] = tags["package"]
    if adapter.load_report is not None:
        extra["weights load"] = adapter.load_report.summary()
    return ResolvedModel(
        name=adapter.name, spec=tags.get("spec", adapter.name), kind=tags.get("kind", "registered"),
        family=adapter.family, weights_id=adapter.weights_id, input_size=pre.input_size,
        interpolation=pre.interpolation, mean=tuple(pre.mean), std=tuple(pre.std),
        feature_dim=int(adapter.feature_dim), pooling=adapter.pooling or "-",
        pools=tuple(spec_rec.get("pools", ())), zero_shot=text,
        lora_targets=tuple(adapter.lora_targets), lora_rule=adapter.lora_rule,
        parameters=sum(p.numel() for p in adapter.parameters()), extra=extra,
    )
