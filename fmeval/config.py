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
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, get_type_hints

from fmeval.errors import ConfigError
from fmeval.probes.linear import ProbeConfig
from fmeval.training.lora import LoraSettings
from fmeval.training.loop import TrainConfig
from fmeval.validation import check_choice


@dataclass(frozen=True)
class KnnSettings:
    ks: tuple[int, ...] = (1, 5, 11, 20, 50)
    rule: str = "cosine"  # a key of probes.knn.KNN_RULES
    temperature: float = 0.07  # cosine vote weights exp(sim / T) (DINOv2)
    select_metric: str = "auc"  # validation metric that picks k

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError("--k values must be >= 1.")
        if not self.temperature > 0:
            raise ConfigError("--temperature must be > 0.")


@dataclass(frozen=True)
class ZeroshotSettings:
    prompts: str | None = None  # bank path or shipped name; None: the dataset's bank
    style: str | None = None  # None: the bank's default style
    ensemble: str = "mean-embedding"  # a key of zeroshot.ENSEMBLES
    text_batch_size: int = 256
    styles: tuple[str, ...] | None = None  # prompts-compare: None = every style
    per_template: bool = False  # prompts-compare: also each single template
    test_all: bool = False  # prompts-compare: test metrics of every style (paired CIs)

    def __post_init__(self) -> None:
        if self.text_batch_size < 1:
            raise ConfigError("--text-batch-size must be >= 1.")


@dataclass(frozen=True)
class LinprobeSettings:
    init: str = "zeros"  # "zeros" | "zeroshot" (start from the prompt bank's classifier)
    feature_norm: str = "standardize"  # "standardize" | "l2" | "none"

    def __post_init__(self) -> None:
        check_choice(self.init, ("zeros", "zeroshot"), "--init", "probe initialisation")
        check_choice(self.feature_norm, ("standardize", "l2", "none"), "--feature-norm", "feature normalisation")
        if self.init == "zeroshot" and self.feature_norm != "l2":
            raise ConfigError(
                "--init zeroshot needs --feature-norm l2: the zero-shot classifier is linear in "
                "L2-normalised image features (use --feature-norm l2 for the zeros baseline too)."
            )


@dataclass(frozen=True)
class FewShotSettings:
    shots: int | None = None  # K training samples per class; None = the full training split
    draw: int = 0  # which seeded episode
    selection: str = "fixed"  # "fixed" hyper-parameters | "kshot-val" | "full-val"

    def __post_init__(self) -> None:
        if self.shots is not None and self.shots < 1:
            raise ConfigError("--shots must be >= 1.")
        if self.draw < 0:
            raise ConfigError("--draws must be >= 1.")
        if self.selection not in ("fixed", "kshot-val", "full-val"):
            raise ConfigError(f"few-shot selection must be fixed, kshot-val or full-val, not {self.selection!r}.")


@dataclass(frozen=True)
class RobustnessSettings:
    """``fmeval robustness``: which MedMNIST-C corruptions, at which severities, through which head."""

    corruptions: tuple[str, ...] | None = None  # None: every MedMNIST-C corruption of the dataset
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    head: str = "linprobe"  # a robustness head (fmeval.modes.robustness): knn | linprobe | zeroshot
    adapter: str | None = None  # a fine-tuned run folder (adapters/<run>) instead of a frozen head

    def __post_init__(self) -> None:
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ConfigError(f"--severities must be values in 1..5, got {list(self.severities)}.")
        if len(set(self.severities)) != len(self.severities):
            raise ConfigError(f"--severities lists a value twice: {list(self.severities)}.")
        if self.corruptions is not None and len(set(self.corruptions)) != len(self.corruptions):
            raise ConfigError(f"--corruptions lists a name twice: {', '.join(self.corruptions)}.")


@dataclass(frozen=True)
class ScoreSettings:
    """``fmeval score``: an external model's predictions file and the split it scores."""

    predictions: str | None = None  # CSV of per-sample class probabilities (fmeval.predictions)
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ConfigError(f"--split must be test or val, not {self.split!r}.")


# Fields that say where things are or how fast they run, not what is computed:
# left out of the run's hash (a study cell keeps its key when moved).
NON_SEMANTIC = frozenset({
    "data_root", "download", "md5", "device", "use_cache", "reports_dir", "resume", "batch_size",
    "zeroshot.text_batch_size", "deviations", "protocol_hash", "adapter_dir", "strict_leakage",
})
# User-dataset split settings: hashed only when set, so every MedMNIST run keeps its hash.
_SPLIT_DEFAULTS = {"split_ratios": None, "group_by": None, "split_seed": 0}


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
        for name, default in _SPLIT_DEFAULTS.items():
            if d.get(name) == default:
                d.pop(name, None)
        for path in NON_SEMANTIC:
            head, _, tail = path.partition(".")
            if tail and isinstance(d.get(head), dict):
                d[head].pop(tail, None)
            elif not tail:
                d.pop(head, None)
        return d

    def digest(self, sections: tuple[str, ...]) -> str:
        text = json.dumps(self.semantic_dict(sections), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


SECTIONS = ("knn", "probe", "linprobe", "zeroshot", "train", "lora", "fewshot", "robustness", "score")


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


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """YAML/JSON values -> the field's type (lists -> tuples, ints -> floats)."""
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where} cannot be empty.")
    try:
        if "tuple" in text:
            items = value if isinstance(value, (list, tuple)) else [value]
            inner = float if "float" in text else int if "int" in text else str
            return tuple(inner(x) for x in items)
        if annotation is bool or text.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if annotation is int or text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if annotation is float or text.startswith("float"):
            return float(value)
        if annotation is str or text.startswith("str"):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not valid ({exc}).") from None
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass (resolving them per call dominated study planning)."""
    return get_type_hints(cls)


def _apply(obj: Any, nested: dict[str, Any]) -> Any:
    names = {f.name for f in fields(obj)}
    hints = _hints(type(obj))
    changes = {}
    for name, item in nested.items():
        if name not in names:
            import difflib

            path = item[0] if isinstance(item, tuple) else name
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {path!r}{hint}")
        if isinstance(item, dict):
            sub = getattr(obj, name)
            if not is_dataclass(sub):
                raise ConfigError(f"setting {name!r} has no sub-settings.")
            changes[name] = _apply(sub, item)
        else:
            path, value = item
            if is_dataclass(getattr(obj, name)):
                raise ConfigError(f"{path!r} is a section; set its fields, e.g. {path}.<name>.")
            changes[name] = _coerce(value, hints[name], path)
    return replace(obj, **changes)


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping.")
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)} (written by a newer fmeval?)."
        )
    kwargs = {}
    for name, value in d.items():
        t = hints[name]
        if isinstance(t, type) and is_dataclass(t):
            kwargs[name] = _build(t, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, t, prefix + name)
    return cls(**kwargs)
