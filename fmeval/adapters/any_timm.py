"""``timm:<arch>[.<tag>]``: any timm model, through the same adapter as the short names.

The spec becomes a :class:`~fmeval.adapters.timm_models.TimmSpec` and is built
by :class:`~fmeval.adapters.timm_models.TimmAdapter`, so features are timm's
pre-logits (``num_classes=0``) and preprocessing is timm's own
``resolve_model_data_config`` for that model and tag, exactly as for
``vit-b16``. A tag the user leaves out is resolved now, from timm's registry,
and pinned in the weights id and the report: timm's default tag moves between
versions (``vit_base_patch16_clip_224`` resolves to an ImageNet-fine-tuned tower).
"""

from __future__ import annotations

import difflib

from fmeval.adapters.base import Adapter, AdapterConfig
from fmeval.adapters.lora_targets import find_lora_targets
from fmeval.adapters.specs import TimmModelSpec
from fmeval.errors import ConfigError, ModelError

#: family of a timm spec whose architecture no short name covers: never measured,
#: so the precision policy keeps its conservative default (fp32 on CPU).
UNKNOWN_FAMILY = "timm"


def resolve_arch(spec: TimmModelSpec) -> str:
    """``arch.tag`` with the tag pinned, or one line with timm's close matches."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(spec.arch):
        close = difflib.get_close_matches(spec.arch, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelError(f"unknown timm model {spec.arch!r} in {spec.text!r}.{hint} "
                         "(timm.list_models() lists them all)")
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{spec.arch}.*")]
    if spec.tag is not None:
        if spec.tag not in tags:
            close = difflib.get_close_matches(spec.tag, tags, n=4, cutoff=0.3) or tags[:6]
            raise ModelError(f"timm model {spec.arch!r} has no pretrained tag {spec.tag!r}. "
                             f"Its tags: {', '.join(close) or 'none'}.")
        return f"{spec.arch}.{spec.tag}"
    pcfg = get_pretrained_cfg(spec.arch)
    tag = getattr(pcfg, "tag", None)
    return f"{spec.arch}.{tag}" if tag else spec.arch


def known_family(arch: str) -> str:
    """The family of a registered short name built from the same architecture (its
    measured precision policy applies), else :data:`UNKNOWN_FAMILY`."""
    from fmeval.adapters.timm_models import SPECS

    base = arch.partition(".")[0]
    for s in SPECS:
        if s.arch.partition(".")[0] == base and not s.medmnist_stem:
            return s.family
    return UNKNOWN_FAMILY


def check_spec(spec: TimmModelSpec) -> dict[str, str]:
    arch = resolve_arch(spec)
    return {"family": known_family(arch), "text": "no", "weights": f"timm:{arch}"}


def build_spec(spec: TimmModelSpec, cfg: AdapterConfig) -> Adapter:
    from fmeval.adapters.timm_models import TimmAdapter, TimmSpec

    if cfg.tiny:
        raise ConfigError(f"--tiny has no recipe for {spec.text} (any timm model): use --random-init, "
                          "with --input-size N for a small input.")
    if cfg.input_size is not None and cfg.input_size < 8:
        raise ConfigError(f"input size {cfg.input_size} is too small.")
    arch = resolve_arch(spec)
    tspec = TimmSpec(spec.text, arch, known_family(arch), f"timm {arch}", lora_targets=(),
                     build_kwargs={"global_pool": cfg.pool} if cfg.pool else {})
    try:
        adapter = TimmAdapter(tspec, cfg)
    except ModelError as exc:
        # CNNs take any input size without being told; ViT-likes need img_size at build.
        if cfg.input_size is None or "img_size" not in str(exc):
            raise
        adapter = TimmAdapter(_replace(tspec, resizable=False), cfg)
    if cfg.pool:
        adapter.weights_id += f"#pool={cfg.pool}"  # another output: another cache entry
    choice = find_lora_targets(adapter.model)
    adapter.lora_targets, adapter.lora_rule = choice.targets, choice.rule  # type: ignore[misc]
    adapter.model_spec = {"spec": spec.text, "kind": "timm", "resolved": arch,
                          "tag_pinned_by": "user" if spec.tag else f"timm {_timm_version()} default"}
    return adapter


def _replace(tspec, **changes):
    import dataclasses

    return dataclasses.replace(tspec, **changes)


def _timm_version() -> str:
    import timm

    return timm.__version__
