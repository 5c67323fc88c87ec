"""The adapter protocol every encoder implements, and its registry.

An adapter wraps one pretrained encoder behind a deliberately small surface:
how its inputs must be prepared (:class:`Preprocess`), ``encode_image`` returning
one vector per image, optionally ``encode_text``, and a stable ``weights_id``
that names exactly which weights produced a feature (it is part of every cache
key and every report). Modes never look at model names; they only use this
surface, so any registered encoder works in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from fmeval.data.transforms import (  # noqa: F401  (re-exported: adapters build these)
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Preprocess,
    with_input_size,
)
from fmeval.errors import ConfigError, ModelError
from fmeval.io import file_digest  # noqa: F401  (re-exported)
from fmeval.adapters.specs import ModelRegistry
from fmeval.registry import Registry

@dataclass(frozen=True)
class AdapterConfig:
    """What the user asked for when creating an encoder.

    ``pretrained=False`` gives random weights at full size, ``tiny=True`` a
    random tiny config of the same architecture (the offline test path).
    ``weights`` is a local checkpoint that replaces any hub download.
    ``allow_partial`` accepts a non-strict load that leaves more than half of
    the model at random values (see :data:`MIN_LOADED_FRACTION`).
    """

    name: str
    pretrained: bool = True
    tiny: bool = False
    weights: Path | None = None
    strict: bool = True
    seed: int = 0
    input_size: int | None = None  # override the encoder's native input size
    allow_partial: bool = False
    # Which pooled output becomes the feature, for models that offer several
    # (transformers models: cls, mean, pooler, embed); None: the family's default.
    pool: str | None = None
    # --mean/--std: the normalisation of a model from the user's own code (factories, plugins)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.tiny and self.pretrained and self.weights is None:
            object.__setattr__(self, "pretrained", False)


class Adapter(nn.Module):
    """Base class of all encoders.

    Subclasses set ``weights_id``, ``feature_dim`` and ``preprocess`` in their
    constructor and implement :meth:`encode_image`. ``code_version`` must be
    bumped whenever a change alters the features an adapter produces, so the
    feature cache misses instead of serving stale vectors.
    """

    code_version: ClassVar[str] = "1"
    family: ClassVar[str] = "generic"
    # 2: encode_image takes images [N, 3, S, S]; 3: volumes [N, C, D, H, W]
    # (fmeval.adapters.volumetric). Modes branch on this, never on names.
    ndim: ClassVar[int] = 2
    # Module-name patterns peft's LoRA should target inside ``backbone``.
    lora_targets: ClassVar[tuple[str, ...]] = ()

    name: str
    weights_id: str
    feature_dim: int
    preprocess: Preprocess
    # What load_weights did with a checkpoint file (None: random weights, or
    # hub weights loaded by timm / open_clip's own strict loaders).
    load_report: "LoadReport | None" = None
    # Which output of the network becomes the feature (recorded in every report).
    pooling: str = ""
    # A model given by spec: {"spec", "kind", "resolved", ...} (see fmeval.adapters.specs).
    model_spec: dict | None = None
    # How lora_targets were chosen (family default, found by module type, --lora-targets).
    lora_rule: str = "family default"

    @property
    def backbone(self) -> nn.Module:
        """The module whose parameters fine-tuning trains (and LoRA wraps)."""
        return self

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images [N, 3, S, S] -> features [N, feature_dim]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)

    def classifier_init(self, n_outputs: int) -> nn.Linear | None:
        """A freshly initialised ``feature_dim -> n_outputs`` head as the model's own library builds
        it (timm: the model's init of its classifier), for the fine-tuning head; None: nn.Linear's
        PyTorch default."""
        return None

    # -- vision-language adapters override these ------------------------------
    @property
    def supports_text(self) -> bool:
        return False

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> text embeddings [len(texts), D] in the image space."""
        raise ConfigError(
            f"model {self.name!r} has no text encoder; zero-shot needs a vision-language "
            "model (see `fmeval ls models`)."
        )

    @property
    def logit_scale(self) -> float:
        """Temperature applied to cosine similarities in zero-shot."""
        return 100.0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "weights_id": self.weights_id,
            "feature_dim": self.feature_dim,
            "code_version": self.code_version,
            "preprocess": self.preprocess.as_dict(),
            "weights_load": self.load_report.as_dict() if self.load_report is not None else None,
            **({"pooling": self.pooling} if self.pooling else {}),
            **({"model_spec": self.model_spec} if self.model_spec else {}),
            **({"lora_targets": list(self.lora_targets), "lora_rule": self.lora_rule}
               if self.lora_targets else {}),
        }


AdapterFactory = Callable[[AdapterConfig], Adapter]

#: The one model registry: short names and plugins are entries; model specs
#: (``timm:...``, ``hf:...``, ``file.py:factory`` ...) become entries on lookup
#: (:class:`fmeval.adapters.specs.ModelRegistry`).
ADAPTERS: Registry[AdapterFactory] = ModelRegistry("model", ModelError)


def register_adapter(
    name: str, description: str = "", **tags: str
) -> Callable[[AdapterFactory], AdapterFactory]:
    """Register a factory ``(AdapterConfig) -> Adapter`` under ``name``.

    Tags shown by ``fmeval ls models``: ``family``, ``text`` ("yes"/"no"),
    ``weights`` (the pretrained tag fetched by default). ``asset`` names the
    entry of :mod:`fmeval.weights` that holds the pretrained weights when no
    hub has them (MedCLIP, MedViT).
    """
    return ADAPTERS.register(name, description, **tags)


def create_adapter(
    name: str,
    *,
    pretrained: bool = True,
    tiny: bool = False,
    weights: str | Path | None = None,
    strict: bool = True,
    seed: int = 0,
    input_size: int | None = None,
    allow_partial: bool = False,
    pool: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    device: str | torch.device = "cpu",
) -> Adapter:
    """Build a registered adapter or a model spec in eval mode on ``device``.

    Random weights are drawn under a fixed seed in a forked RNG so that the
    same ``weights_id`` always means the same weights (the cache relies on it).
    """
    import fmeval.adapters  # noqa: F401  (registers the built-in adapters)

    entry = ADAPTERS.entry(name)
    if pool is not None:
        check_pool(name, pool)
    if mean is not None or std is not None:
        check_norm(name, mean, std)
    wpath = _resolve_weights(entry, weights, pretrained=pretrained, tiny=tiny)
    cfg = AdapterConfig(
        name=entry.name, pretrained=pretrained, tiny=tiny, weights=wpath,
        strict=strict, seed=seed, input_size=input_size, allow_partial=allow_partial, pool=pool,
        mean=mean, std=std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = entry.obj(cfg)
    adapter.name = cfg.name
    return adapter.to(device).eval()


#: spec kinds whose feature pooling ``--pool`` chooses, and the names each knows (hf: see
#: fmeval.adapters.hf; timm: its ``global_pool`` values). Which of them a given model
#: offers is only known once it is built; an unknown name fails before anything runs.
POOLED_KINDS = {"hf": ("embed", "cls", "pooler", "mean"),
                "timm": ("avg", "max", "avgmax", "catavgmax", "token", "map", "fast")}


def check_pool(model: str, pool: str) -> None:
    """``--pool`` names a pooling the model's kind has (before any data or model work)."""
    entry = ADAPTERS.entry(model)
    kind = entry.tags.get("kind")
    if kind not in POOLED_KINDS:
        raise ConfigError(f"--pool applies to {', '.join(k + ':' for k in POOLED_KINDS)} specs; "
                          f"{model} has one fixed feature ({entry.tags.get('family', '?')}).")
    if pool not in POOLED_KINDS[kind]:
        raise ConfigError(f"--pool {pool!r} is not a {kind}: pooling; choose one of "
                          f"{', '.join(POOLED_KINDS[kind])}.")


def check_norm(model: str, mean, std) -> None:
    """``--mean/--std`` apply to models from the user's code (the other families bring
    their own normalisation), three values each, every std > 0."""
    entry = ADAPTERS.entry(model)
    if entry.tags.get("kind") != "code" and entry.tags.get("family") != "user":
        raise ConfigError(f"--mean/--std apply to models from your own code (file.py:factory, module:factory, "
                          f"plugins); {model} has its own normalisation ({entry.tags.get('family', '?')}).")
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != 3:
            raise ConfigError(f"{flag} takes 3 comma-separated values (R,G,B), got {len(values)}.")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError("--std values must be > 0.")


def _resolve_weights(
    entry, weights: str | Path | None, *, pretrained: bool, tiny: bool
) -> Path | None:
    """The local weights a model gets: ``weights`` as a path or asset name, or,
    for a pretrained model whose weights only fmeval can download (tag
    ``asset``), that asset from the weights cache (fetched on first use when a
    network is allowed; offline, one error line naming `fmeval weights fetch`).
    """
    from fmeval.weights import WeightStore, resolve_weights

    if weights is not None:
        return resolve_weights(weights)
    asset = entry.tags.get("asset")
    if asset and pretrained and not tiny:
        return WeightStore().ensure(asset, purpose=f"pretrained {entry.name}")
    return None


def fetch_error(name: str, source: str, exc: BaseException, *, where: str = "",
                checkpoint: str = "a local checkpoint") -> ModelError:
    """One line for pretrained weights that could not be fetched: which, why (the
    first line of the cause), and the two ways to go on offline. ``where`` names the
    cache a file may be put into by hand."""
    detail = (str(exc).strip().splitlines() or [""])[0][:160]
    return ModelError(
        f"could not fetch pretrained weights for {name} ({source}): {type(exc).__name__}: {detail}. "
        f"{where}{'pass' if where else 'Pass'} --weights PATH for {checkpoint}, "
        "or --random-init/--tiny for an offline run."
    )


def ungrouped_conv_names(model: nn.Module) -> tuple[str, ...]:
    """Full names of every ``groups == 1`` Conv2d, the LoRA targets of CNNs whose
    layer names vary (VGG's ``features.<i>``; EfficientNet's ``block.1.0`` is a
    projection in Fused-MBConv but depthwise in MBConv). Depthwise convs are
    left out: peft's conv LoRA needs the rank to divide ``groups``."""
    return tuple(n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups == 1)


def random_weights_id(cfg: AdapterConfig, arch: str) -> str:
    """Identifier of seeded random weights (tiny or full size)."""
    size = "tiny" if cfg.tiny else "full"
    extra = f"@{cfg.input_size}" if cfg.input_size else ""
    return f"random:{arch}:{size}{extra}:seed{cfg.seed}"


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint (.safetensors, .pt/.pth/.bin), unwrapping common nestings."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say so in one line
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelError(f"checkpoint {path} does not hold a state dict.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


#: A non-strict load must fill at least this fraction of the model's parameter
#: elements, or it fails (unless ``allow_partial``). Legitimate non-strict loads
#: (a checkpoint with another head, an extra buffer, a resized position grid)
#: fill well over 90%; another model's checkpoint fills ~0%. Below one half, most
#: of the encoder would be random while the report named the checkpoint.
MIN_LOADED_FRACTION = 0.5


@dataclass
class LoadReport:
    """What loading one checkpoint into a model did, key by key.

    ``loaded``/``total`` count the model's state-dict tensors, the
    ``*_elements`` fields their numbers of values; every report carries this
    (``model.weights_load``) so a partial load can never pass for a full one.
    """

    source: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    loaded: int = 0
    total: int = 0
    loaded_elements: int = 0
    total_elements: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    @property
    def complete(self) -> bool:
        """Every tensor of the model came from the checkpoint (extras do not matter)."""
        return self.loaded == self.total

    @property
    def fraction(self) -> float:
        return self.loaded_elements / self.total_elements if self.total_elements else 1.0

    def summary(self, limit: int = 5) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.shape_mismatch),
        ):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts) or "all keys matched"

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "total": self.total,
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "shape_mismatch": len(self.shape_mismatch),
            "loaded_fraction": round(self.fraction, 6),
            "complete": self.complete,
        }


def load_weights(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    ignore: Sequence[str] = (),
    allow_partial: bool = False,
) -> LoadReport:
    """Load ``state_dict`` and report every mismatch and what was loaded.

    Keys in ``ignore`` (known-harmless extras such as BERT's ``position_ids``)
    are dropped explicitly; anything else that does not match fails when
    ``strict`` — silent non-strict loading is how users got wrong outputs.
    Non-strict, fewer than :data:`MIN_LOADED_FRACTION` of the model's values
    loaded fails too, unless ``allow_partial``.
    """
    sd = {k: v for k, v in state_dict.items() if k not in set(ignore)}
    own = module.state_dict()
    report = LoadReport(source=source)
    report.unexpected = sorted(k for k in sd if k not in own)
    report.missing = sorted(k for k in own if k not in sd)
    report.shape_mismatch = sorted(
        f"{k} {tuple(sd[k].shape)}!={tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    )
    ok = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    report.loaded, report.total = len(ok), len(own)
    report.loaded_elements = sum(v.numel() for v in ok.values())
    report.total_elements = sum(v.numel() for v in own.values())
    if not report.clean and strict:
        raise ModelError(
            f"weights {source} do not match the model ({report.summary()}); "
            "pass --no-strict to load the matching keys anyway."
        )
    if report.fraction < MIN_LOADED_FRACTION and not allow_partial:
        raise ModelError(
            f"weights {source} filled only {report.loaded} of {report.total} tensors "
            f"({report.fraction:.0%} of the model's values; {report.summary(limit=2)}): "
            "probably another model's checkpoint. Pass --allow-partial to run with the "
            "rest at random values."
        )
    module.load_state_dict(ok, strict=False)
    return report


def checkpoint_weights_id(path: Path, report: LoadReport, cfg: AdapterConfig,
                          suffix: str = "") -> str:
    """``weights_id`` of a checkpoint file: what was actually loaded.

    A complete load is ``file:<sha16>``. A partial one also depends on the
    random values of what was not loaded (architecture size and seed), so it
    names its counts and those: partial and complete loads of one file never
    share cache entries, and neither do partial loads under different seeds.
    """
    base = f"file:{file_digest(path)[:16]}"
    if report.complete:
        return f"{base}{suffix}"
    size = "tiny" if cfg.tiny else "full"
    return f"{base}+partial:{report.loaded}of{report.total}:{size}:seed{cfg.seed}{suffix}"

