"""One typed configuration for every run, whatever its mode.

A run is fully described by a :class:`RunConfig`: the common fields (model,
dataset, geometry, precision, seed, ...) plus one typed section per mode
family (``knn``, ``probe``, ``zeroshot``, ``train``, ``lora``, ``fewshot``,
``robustness``, ``score``).
The CLI, the named protocols and the study planner all produce this one type,
and the mode registry consumes it, so a study cell and a command typed by
hand are the same object and hash to the same key.

Fields are addressed by dotted paths (``geometry``, ``train.epochs``,
``knn.ks``): protocols set them by path, command-line options map to them by
path, and deviations from a protocol are reported by path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from collections.abc import Iterable
from typing import Any

from fmeval.config.paths import _apply, _build, _hints, _plain
from fmeval.config.sections import (
    FewShotSettings,
    KnnSettings,
    LinprobeSettings,
    LoraSettings,
    MultiDomainSettings,
    ProbeConfig,
    RobustnessSettings,
    ScoreSettings,
    TrainConfig,
    ZeroshotSettings,
)
from fmeval.errors import ConfigError, check_choice

# Fields that say where things are or how fast they run, not what is computed:
# left out of the run's hash (a study cell keeps its key when moved).
NON_SEMANTIC = frozenset({
    "data_root", "download", "md5", "device", "use_cache", "reports_dir", "resume", "batch_size",
    "zeroshot.text_batch_size", "deviations", "protocol_hash", "adapter_dir", "strict_leakage", "recipe",
})
# Fields added after runs were recorded: hashed only when set away from these defaults,
# so every earlier run keeps its hash (user-dataset splits; model specs of issue 20).
HASHED_WHEN_SET: dict[str, Any] = {
    "split_ratios": None, "group_by": None, "split_seed": 0,
    "pool": None, "mean": None, "std": None, "lora.targets": None,
    "probe.decay_bias": False, "linprobe.backbone": "eval",  # issue 22: the MedMNIST+ probe rules
}


def _drop_paths(d: dict[str, Any], paths: Iterable[str], only_if: dict[str, Any] | None = None) -> None:
    """Remove dotted ``paths`` (one level deep) from ``d`` in place.

    With ``only_if``, a path is removed only where its value equals ``only_if[path]``.
    """
    for path in paths:
        head, _, tail = path.partition(".")
        node, key = (d.get(head), tail) if tail else (d, head)
        if not isinstance(node, dict) or key not in node:
            continue
        if only_if is None or node[key] == only_if[path]:
            node.pop(key)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (recorded in full in its report)."""

    mode: str
    model: str
    dataset: str
    size: int = 28
    # data
    data_root: str | None = None
    download: bool = False
    md5: str = "warn"
    limit: int | None = None  # cap per split (quick looks; recorded, never default)
    volume_view: str | None = None  # 3D datasets with a 2D encoder, e.g. "tri-planar/mean"
    # user datasets (fmeval.data.sources): how missing splits are drawn, how strict leakage is
    split_ratios: tuple[float, ...] | None = None  # None: 0.7,0.1,0.2
    group_by: str | None = None
    split_seed: int = 0
    strict_leakage: bool = False
    # pixels -> encoder input (see fmeval.data.transforms)
    geometry: str = "resize"
    canvas: int | None = None  # pad canvas; None = 224
    pad_fill: str = "mean"
    interpolation: str | None = None  # None: the encoder's own
    norm: str = "model"
    input_size: int | None = None  # None: the encoder's default (224 for DINOv2)
    # model
    pretrained: bool = True
    tiny: bool = False
    weights: str | None = None
    strict: bool = True
    allow_partial: bool = False
    weights_seed: int | None = None  # seed of random/tiny weights; None: the run's seed
    precision: str = "auto"
    pool: str | None = None  # which pooled output is the feature (hf: models); None: the model's default
    mean: tuple[float, ...] | None = None  # a user-code model's normalisation (--mean/--std); None: its own
    std: tuple[float, ...] | None = None
    # run
    seed: int = 0
    batch_size: int = 256  # extraction / inference batch
    device: str = "auto"
    use_cache: bool = True
    n_boot: int = 1000
    reports_dir: str | None = None
    protocol: str | None = None
    protocol_hash: str | None = None
    protocol_variant: str | None = None  # the protocol's reading of the requested size (MedMNIST v2 "224")
    deviations: tuple[str, ...] = ()
    recipe: str | None = None  # without a protocol: the model's own recipe applied as defaults (MedCLIP's zero-shot)
    resume: str | None = None
    adapter_dir: str | None = None  # fine-tuning: the run folder to use (resumed if it holds a checkpoint)
    # mode sections
    knn: KnnSettings = field(default_factory=KnnSettings)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    linprobe: LinprobeSettings = field(default_factory=LinprobeSettings)
    zeroshot: ZeroshotSettings = field(default_factory=ZeroshotSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    fewshot: FewShotSettings = field(default_factory=FewShotSettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    multidomain: MultiDomainSettings = field(default_factory=MultiDomainSettings)

    def __post_init__(self) -> None:
        if self.tiny and self.pretrained and self.weights is None:
            object.__setattr__(self, "pretrained", False)  # a tiny config has no pretrained weights
        checks = {
            "--batch-size must be >= 1": self.batch_size >= 1,
            "--bootstrap must be >= 0": self.n_boot >= 0,
            "--limit must be >= 1": self.limit is None or self.limit >= 1,
            "--canvas must be >= 8": self.canvas is None or self.canvas >= 8,
            "--input-size must be >= 8": self.input_size is None or self.input_size >= 8,
            "--seed must be >= 0": self.seed >= 0,
        }
        for msg, ok in checks.items():
            if not ok:
                raise ConfigError(msg + ".")
        check_choice(self.md5, ("warn", "strict", "off"), "--md5", "MD5 policy")

    # -- dict round trip ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _build(cls, d, "")

    # -- paths ---------------------------------------------------------------
    def get(self, path: str) -> Any:
        obj: Any = self
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def with_values(self, values: dict[str, Any]) -> "RunConfig":
        """A copy with dotted-path fields replaced (values are coerced to the field types).

        All values of a section are applied in one step, so cross-field
        checks see the final combination, not an intermediate one.
        """
        nested: dict[str, Any] = {}
        for path, value in values.items():
            node = nested
            parts = path.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"setting {path!r} conflicts with another setting.")
            node[parts[-1]] = (path, value)
        return _apply(self, nested)

    @property
    def mode_family(self) -> str:
        return self.mode.split("-")[0]

    def semantic_dict(self, sections: tuple[str, ...]) -> dict[str, Any]:
        """What the run computes: no locations, no speed knobs, only the sections the mode reads."""
        d = self.to_dict()
        for name in SECTIONS:
            if name not in sections:
                d.pop(name, None)
        if self.fewshot.shots is None:  # a full-data run: draw and selection mean nothing (hash unchanged)
            d.pop("fewshot", None)
        elif "linprobe" not in sections and isinstance(d.get("fewshot"), dict):
            d["fewshot"].pop("standardize_min_shots", None)  # a linear-probe rule: other modes keep their hash
        _drop_paths(d, HASHED_WHEN_SET, only_if=HASHED_WHEN_SET)
        _drop_paths(d, NON_SEMANTIC)
        return d

    def digest(self, sections: tuple[str, ...]) -> str:
        text = json.dumps(self.semantic_dict(sections), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


SECTIONS = ("knn", "probe", "linprobe", "zeroshot", "train", "lora", "fewshot", "robustness", "score",
            "multidomain")

#: The sections each mode reads: what its run hash and its variant digest cover. Here, not
#: beside the modes, so the reporter and the study tables can digest a recorded run's
#: config without importing the mode stack (a mode registers under one of these names).
MODE_SECTIONS: dict[str, tuple[str, ...]] = {
    "knn": ("knn", "fewshot"),
    "linprobe": ("probe", "linprobe", "zeroshot", "fewshot"),
    "zeroshot": ("zeroshot",),
    "prompts-compare": ("zeroshot",),
    "robustness": ("robustness", "knn", "probe", "linprobe", "zeroshot"),
    "score": ("score",),
    "finetune-lora": ("train", "lora", "fewshot"),
    "finetune-full": ("train", "fewshot"),
    # one backbone trained on several datasets (issue 24): each dataset's run records the whole set
    "multidomain-lora": ("train", "lora", "multidomain"),
    "multidomain-full": ("train", "multidomain"),
}


def variant_digest(config: dict[str, Any], mode: str, axes: tuple[str, ...]) -> str:
    """8 hex digits of what a recorded run computes beyond ``axes`` (dotted paths).

    Runs that agree on the axes but differ here were configured differently, so the
    few-shot curves and the study tables never pool them. A config this fmeval cannot
    read (another version's) is hashed as recorded, less its non-semantic fields.
    """
    try:
        semantic = RunConfig.from_dict(dict(config)).semantic_dict(MODE_SECTIONS[mode])
    except (ConfigError, KeyError, TypeError, ValueError):
        semantic = {k: v for k, v in dict(config).items() if k not in NON_SEMANTIC}
    _drop_paths(semantic, axes)
    text = json.dumps(semantic, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def field_paths(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted path -> its type annotation."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and is_dataclass(t):
            out.update(field_paths(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = t
    return out
