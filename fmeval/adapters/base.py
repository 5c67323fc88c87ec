"""The adapter protocol every encoder implements, and its registry.

An adapter wraps one pretrained encoder behind a deliberately small surface:
how its inputs must be prepared (:class:`Preprocess`), ``encode_image`` returning
one vector per image, optionally ``encode_text``, and a stable ``weights_id``
that names exactly which weights produced a feature (it is part of every cache
key and every report). Modes never look at model names; they only use this
surface, so any registered encoder works in every mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from fmeval.errors import ConfigError, ModelError
from fmeval.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 images must be turned into encoder input.

    Taken from the encoder's own config (never a global default) because
    normalisation and input size are part of what makes a feature comparable.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "nearest"
    grayscale: bool = False  # collapse RGB to gray (MedCLIP was trained that way)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AdapterConfig:
    """What the user asked for when creating an encoder.

    ``pretrained=False`` gives random weights at full size, ``tiny=True`` a
    random tiny config of the same architecture (the offline test path).
    ``weights`` is a local checkpoint that replaces any hub download.
    """

    name: str
    pretrained: bool = True
    tiny: bool = False
    weights: Path | None = None
    strict: bool = True
    seed: int = 0
    input_size: int | None = None  # override the encoder's native input size

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

    @property
    def backbone(self) -> nn.Module:
        """The module whose parameters fine-tuning trains (and LoRA wraps)."""
        return self

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images [N, 3, S, S] -> features [N, feature_dim]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)

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
        }


AdapterFactory = Callable[[AdapterConfig], Adapter]

ADAPTERS: Registry[AdapterFactory] = Registry("model", ModelError)


def register_adapter(
    name: str, description: str = "", **tags: str
) -> Callable[[AdapterFactory], AdapterFactory]:
    """Register a factory ``(AdapterConfig) -> Adapter`` under ``name``.

    Tags shown by ``fmeval ls models``: ``family``, ``text`` ("yes"/"no"),
    ``weights`` (the pretrained tag fetched by default).
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
    device: str | torch.device = "cpu",
) -> Adapter:
    """Build a registered adapter in eval mode on ``device``.

    Random weights are drawn under a fixed seed in a forked RNG so that the
    same ``weights_id`` always means the same weights (the cache relies on it).
    """
    import fmeval.adapters  # noqa: F401  (registers the built-in adapters)

    factory = ADAPTERS.get(name)
    wpath = Path(weights).expanduser() if weights is not None else None
    if wpath is not None and not wpath.exists():
        raise ModelError(f"weights file {wpath} does not exist.")
    cfg = AdapterConfig(
        name=name.lower(), pretrained=pretrained, tiny=tiny, weights=wpath,
        strict=strict, seed=seed, input_size=input_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = factory(cfg)
    adapter.name = cfg.name
    return adapter.to(device).eval()


def random_weights_id(cfg: AdapterConfig, arch: str) -> str:
    """Identifier of seeded random weights (tiny or full size)."""
    size = "tiny" if cfg.tiny else "full"
    extra = f"@{cfg.input_size}" if cfg.input_size else ""
    return f"random:{arch}:{size}{extra}:seed{cfg.seed}"


def file_digest(path: Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, streamed (checkpoints and npz files can be GBs)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

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


def load_weights(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    ignore: Sequence[str] = (),
) -> LoadReport:
    """Load ``state_dict`` and report every mismatch.

    Keys in ``ignore`` (known-harmless extras such as BERT's ``position_ids``)
    are dropped explicitly; anything else that does not match fails when
    ``strict`` — silent non-strict loading is how users got wrong outputs.
    """
    sd = {k: v for k, v in state_dict.items() if k not in set(ignore)}
    own = module.state_dict()
    report = LoadReport()
    report.unexpected = sorted(k for k in sd if k not in own)
    report.missing = sorted(k for k in own if k not in sd)
    report.shape_mismatch = sorted(
        f"{k} {tuple(sd[k].shape)}!={tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    )
    if not report.clean and strict:
        raise ModelError(
            f"weights {source} do not match the model ({report.summary()}); "
            "pass --no-strict to load the matching keys anyway."
        )
    ok = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(ok, strict=False)
    return report


def with_input_size(pre: Preprocess, size: int | None) -> Preprocess:
    return pre if size is None else replace(pre, input_size=size)
