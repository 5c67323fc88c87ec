"""open_clip vision-language encoders: OpenAI / LAION CLIP and BiomedCLIP.

Every model here is built by ``open_clip.create_model`` from an open_clip model
config, so a tiny offline build, a full-size random build, a local checkpoint and
a hub download all go through open_clip's own construction code:

* builtin configs (``ViT-B-32`` ...) with a pinned pretrained tag; the tag's
  ``quick_gelu`` flag is forced onto the architecture (open_clip 3.x only warns
  when it differs, and OpenAI's weights run through plain GELU give slightly
  wrong features) and its mean/std become the preprocessing;
* ``hf-hub:`` models (BiomedCLIP) whose config lives on the hub;
* a *folder* holding ``open_clip_config.json`` (a local snapshot of a hub model,
  or the generated tiny BiomedCLIP): its config is registered under a private
  name and its text tower / tokenizer are read from the folder when present.

Weights from ``--weights`` are always loaded by :func:`load_weights` (strict,
every mismatch reported), never by open_clip's silent non-strict paths.
Adding another CLIP is one line: ``register_open_clip(name, arch, tag)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from fmeval.adapters.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Adapter,
    AdapterConfig,
    Preprocess,
    checkpoint_weights_id,
    file_digest,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
)
from fmeval.adapters.openclip_folder import folder_config
from fmeval.adapters.openclip_tiny import (  # noqa: F401  (tiny_biomedclip_folder: public here too)
    TINY_IMAGE_SIZE,
    _ensure_tiny_timm_vit,
    _tiny_builtin_config,
    tiny_biomedclip_folder,
)
from fmeval.adapters.text_offline import scratch_dir
from fmeval.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: peft targets inside ``model.visual``. open_clip's own ViT runs attention through
#: ``nn.MultiheadAttention``, whose forward reads ``out_proj.weight`` directly: a
#: LoRA on ``out_proj`` alone is silently dead (no gradient ever reaches it). peft
#: (>= 0.14) wraps the whole ``nn.MultiheadAttention`` (in-proj qkv and out-proj)
#: when the target is the module itself, named ``attn`` in every resblock.
NATIVE_VIT_LORA = ("attn",)
#: timm ViT trunks (BiomedCLIP): fused qkv and the attention output projection.
TIMM_VIT_LORA = ("attn.qkv", "attn.proj")

BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# Extra keys older checkpoints carry that current towers rebuild as non-persistent
# buffers (transformers >= 4.31 stopped saving BERT's position_ids).
IGNORED_CHECKPOINT_KEYS = ("text.transformer.embeddings.position_ids",)
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
)
FETCH_ERRORS = (RuntimeError, OSError, ValueError)


@dataclass(frozen=True)
class OpenClipSpec:
    """What a registered name means: an open_clip architecture and a pinned tag.

    ``arch`` is a builtin open_clip config name or an ``hf-hub:`` id (whose
    weights are the repo's own; ``tag`` is then None).
    """

    arch: str
    tag: str | None = None

    @property
    def on_hub(self) -> bool:
        return self.arch.startswith("hf-hub:")

    @property
    def pretrained_id(self) -> str:
        return self.arch if self.on_hub else f"open_clip:{self.arch}/{self.tag}"


# --------------------------------------------------------------------------- #
# Lazy imports and scratch space
# --------------------------------------------------------------------------- #
def _open_clip() -> ModuleType:
    """Import open_clip on first use (it costs seconds; `fmeval ls` must not pay)."""
    import open_clip

    return open_clip


_REGISTERED: dict[str, str] = {}  # config digest -> registered open_clip name


def _register_config(model_cfg: dict, prefix: str) -> str:
    """Register ``model_cfg`` with open_clip under a name derived from its content."""
    blob = json.dumps(model_cfg, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    if digest not in _REGISTERED:
        name = f"{prefix}-{digest}"
        path = scratch_dir() / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(blob)
        _open_clip().add_model_config(path)
        _REGISTERED[digest] = name
    return _REGISTERED[digest]


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
class _OpenClipRootLogs(logging.Filter):
    """Demote open_clip's root-logger chatter to this module's debug log.

    open_clip reports through the root logger ("No pretrained weights loaded",
    the download error it then raises anyway); fmeval loads weights itself and
    turns failures into one ModelError line, so those records only mislead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and "open_clip" in record.pathname:
            log.debug("open_clip: %s", record.getMessage())
            return False
        return True


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, flt = logging.getLogger(), _OpenClipRootLogs()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _fetch_error(name: str, exc: BaseException, what: str = "pretrained weights") -> ModelError:
    first = (str(exc).strip().splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:157] + "..."
    return ModelError(
        f"could not fetch {what} for {name} ({type(exc).__name__}: {first}); "
        "pass --weights PATH or use --tiny/--random-init for an offline run"
    )


def _tag_cfg(spec: OpenClipSpec) -> dict:
    if spec.tag is None:
        return {}
    return _open_clip().get_pretrained_cfg(spec.arch, spec.tag) or {}


def _tag_preprocess(tag_cfg: dict) -> dict:
    keys = ("mean", "std", "interpolation", "resize_mode")
    return {k: tag_cfg[k] for k in keys if k in tag_cfg}


def _hub_folder(spec: OpenClipSpec, name: str) -> Path:
    """Fetch only the hub model's ``open_clip_config.json`` into a scratch folder.

    open_clip's own ``hf-hub:`` route downloads the full checkpoint even when
    asked not to load it; a random or ``--weights`` build needs the config only.
    """
    from huggingface_hub import hf_hub_download

    repo = spec.arch.removeprefix("hf-hub:")
    try:
        src = hf_hub_download(repo, "open_clip_config.json")
    except FETCH_ERRORS as exc:
        raise _fetch_error(name, exc, "the open_clip config") from None
    folder = scratch_dir() / "hub" / repo.replace("/", "--")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / "open_clip_config.json")
    return folder


def _is_timm_tower(model_cfg: dict | None) -> bool:
    return bool(model_cfg and model_cfg.get("vision_cfg", {}).get("timm_model_name"))


@dataclass
class _Built:
    model: nn.Module
    tokenizer: Any
    model_cfg: dict | None  # None only for hub-pretrained (config fetched inside open_clip)
    arch_label: str  # what random_weights_id names


def _create(name: str, cfg: AdapterConfig, model_cfg: dict | None, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model`` with the input-size policy applied.

    Native ViTs are built at the requested size (checkpoints get their position
    grid resampled on load); timm trunks are resized after loading instead.
    """
    size = None if _is_timm_tower(model_cfg) else cfg.input_size
    with _quiet_open_clip():
        return _open_clip().create_model(
            name, force_image_size=size, pretrained_text=False, **kwargs
        )


def _build_from_config(
    name: str, cfg: AdapterConfig, model_cfg: dict, label: str, **kwargs: Any
) -> _Built:
    try:
        model = _create(name, cfg, model_cfg, **kwargs)
        tokenizer = _open_clip().get_tokenizer(name)
    except OSError as exc:  # transformers: a hub text tower config missing offline
        raise _fetch_error(cfg.name, exc, "the text tower config") from None
    return _Built(model, tokenizer, model_cfg, label)


def _build_folder(folder: Path, cfg: AdapterConfig, label: str) -> _Built:
    model_cfg, pp = folder_config(folder)
    try:
        name = _register_config(model_cfg, "fmeval-local")
        return _build_from_config(name, cfg, model_cfg, label, force_preprocess_cfg=pp)
    except ModelError:
        raise
    except Exception as exc:  # a config open_clip cannot build: any error, from any layer
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(
            f"cannot build an open_clip model from {folder / 'open_clip_config.json'} "
            f"({type(exc).__name__}: {first})."
        ) from None


def _build_architecture(spec: OpenClipSpec, cfg: AdapterConfig) -> _Built:
    """The model without pretrained weights (tiny or full size)."""
    oc = _open_clip()
    if spec.on_hub:
        folder = tiny_biomedclip_folder() if cfg.tiny else _hub_folder(spec, cfg.name)
        if cfg.tiny:
            _ensure_tiny_timm_vit()
        return _build_folder(folder, cfg, spec.arch)
    tag_cfg = _tag_cfg(spec)
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    label = f"open_clip:{spec.arch}" + ("-quickgelu" if quick_gelu else "")
    if cfg.tiny:
        model_cfg = _tiny_builtin_config(spec.arch)
        name = _register_config(model_cfg, "fmeval-tiny")
    else:
        model_cfg, name = oc.get_model_config(spec.arch), spec.arch
    return _build_from_config(
        name, cfg, model_cfg, label, force_quick_gelu=quick_gelu,
        force_preprocess_cfg=_tag_preprocess(tag_cfg),
    )


def _build_pretrained(spec: OpenClipSpec, cfg: AdapterConfig) -> _Built:
    """Hub / tag download through open_clip (its strict loader, its resizing)."""
    oc = _open_clip()
    model_cfg = None if spec.on_hub else oc.get_model_config(spec.arch)
    quick_gelu = bool(_tag_cfg(spec).get("quick_gelu", False))
    try:
        with _quiet_open_clip():
            model = oc.create_model(
                spec.arch, pretrained=spec.tag, force_quick_gelu=quick_gelu,
                force_image_size=cfg.input_size, require_pretrained=True,
            )
            tokenizer = oc.get_tokenizer(spec.arch)
    except FETCH_ERRORS as exc:
        raise _fetch_error(cfg.name, exc) from None
    return _Built(model, tokenizer, model_cfg, spec.arch)


def _find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    for fname in CHECKPOINT_NAMES:
        if (path / fname).is_file():
            return path / fname
    raise ModelError(f"no open_clip checkpoint ({', '.join(CHECKPOINT_NAMES)}) in {path}.")


def _load_file(built: _Built, path: Path, cfg: AdapterConfig) -> Any:
    """Strictly load a local open_clip state dict, resampling the position grid."""
    oc = _open_clip()
    sd = load_state_dict_file(path)
    if cfg.input_size is not None and not _is_timm_tower(built.model_cfg):
        oc.model.resize_pos_embed(sd, built.model)  # no-op when the grid matches
    ignore = [k for k in IGNORED_CHECKPOINT_KEYS if k not in built.model.state_dict()]
    return load_weights(built.model, sd, strict=cfg.strict, source=str(path), ignore=ignore,
                        allow_partial=cfg.allow_partial)


def _apply_input_size(built: _Built, cfg: AdapterConfig) -> None:
    """Resize after loading where the tower needs it; refuse towers that cannot."""
    if cfg.input_size is None:
        return
    visual = built.model.visual
    oc = _open_clip()
    if isinstance(visual, oc.timm_model.TimmModel):
        if not hasattr(visual.trunk, "set_input_size"):
            raise ConfigError(f"{cfg.name}: its timm trunk cannot change input size.")
        if tuple(visual.trunk.patch_embed.img_size) != (cfg.input_size, cfg.input_size):
            visual.set_input_size(cfg.input_size)
    elif not isinstance(visual, oc.transformer.VisionTransformer):
        raise ConfigError(f"{cfg.name}: {type(visual).__name__} tower has a fixed input size.")


# --------------------------------------------------------------------------- #
# Adapter
# --------------------------------------------------------------------------- #
def _preprocess(model: nn.Module, cfg: AdapterConfig) -> Preprocess:
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = pp.get("size", TINY_IMAGE_SIZE if cfg.tiny else 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    interp = pp.get("interpolation", "bicubic")
    return Preprocess(
        input_size=int(cfg.input_size or size),
        mean=tuple(float(v) for v in pp.get("mean", OPENAI_CLIP_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in pp.get("std", OPENAI_CLIP_STD)),  # type: ignore[arg-type]
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
    )


def _output_dim(visual: nn.Module) -> int:
    """Joint-space width: the native ViT stores it, a timm tower's head ends in it."""
    dim = getattr(visual, "output_dim", None)
    if dim:
        return int(dim)
    linears = [m for m in getattr(visual, "head", nn.Sequential()).modules()
               if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"cannot tell the embedding width of {type(visual).__name__}.")
    return int(linears[-1].out_features)


def _tokenizer_id(tokenizer: Any) -> str:
    """Stable name of a tokenizer: its kind, its vocabulary and its context length."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:  # open_clip HFTokenizer
        src = Path(str(getattr(inner, "name_or_path", "")))
        files = [src / f for f in ("tokenizer.json", "vocab.txt") if (src / f).is_file()]
        name = f"local:{file_digest(files[0])[:16]}" if files else f"hf:{src}"
    else:
        name = type(tokenizer).__name__
    return f"{name}/ctx{tokenizer.context_length}"


class OpenClipAdapter(Adapter):
    """An open_clip CLIP model; ``encode_image`` is the projected joint embedding."""

    code_version = "1"
    family = "open_clip"
    lora_targets = NATIVE_VIT_LORA

    def __init__(self, built: _Built, *, weights_id: str, cfg: AdapterConfig) -> None:
        super().__init__()
        self.model = built.model
        self.tokenizer = built.tokenizer
        oc = _open_clip()
        if isinstance(self.model.visual, oc.timm_model.TimmModel):
            self.lora_targets = TIMM_VIT_LORA  # type: ignore[misc]
        self.weights_id = weights_id
        self.text_id = f"{weights_id}|{_tokenizer_id(self.tokenizer)}"
        self.preprocess = _preprocess(self.model, cfg)
        self.feature_dim = _output_dim(self.model.visual)
        self.load_report = None
        self.pooling = "image embedding after projection (encode_image)"
        # SigLIP towers carry a learned bias and were trained with a per-pair sigmoid.
        self.zeroshot_scoring = "softmax" if getattr(self.model, "logit_bias", None) is None else "sigmoid"

    @property
    def backbone(self) -> nn.Module:
        return self.model.visual

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    @property
    def supports_text(self) -> bool:
        return True

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        device = self.model.logit_scale.device
        return self.model.encode_text(tokens.to(device))

    @property
    def logit_scale(self) -> float:
        scale = float(self.model.logit_scale.detach().exp())
        return scale if self.zeroshot_scoring == "sigmoid" else min(scale, 100.0)

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])


def build_open_clip(spec: OpenClipSpec, cfg: AdapterConfig) -> OpenClipAdapter:
    """Resolve tiny / local file or folder / hub / random into one adapter."""
    if cfg.weights is not None and cfg.weights.is_dir() \
            and (cfg.weights / "open_clip_config.json").exists():
        built = _build_folder(cfg.weights, cfg, spec.arch)  # a local hub snapshot
    elif cfg.pretrained and cfg.weights is None:
        built = _build_pretrained(spec, cfg)
    else:
        built = _build_architecture(spec, cfg)
    report = None
    suffix = f"@{cfg.input_size}" if cfg.input_size else ""
    if cfg.weights is not None:
        ckpt = _find_checkpoint(cfg.weights)
        report = _load_file(built, ckpt, cfg)
        weights_id = checkpoint_weights_id(ckpt, report, cfg, suffix)
    elif cfg.pretrained:
        weights_id = f"{spec.pretrained_id}{suffix}"
    else:
        weights_id = random_weights_id(cfg, built.arch_label)
    if not (cfg.pretrained and cfg.weights is None):
        _apply_input_size(built, cfg)  # hub/tag builds were resized by open_clip
    adapter = OpenClipAdapter(built, weights_id=weights_id, cfg=cfg)
    if report is not None and not report.clean:
        log.warning("%s: %s", cfg.name, report.summary())
    adapter.load_report = report
    return adapter


def register_open_clip(name: str, arch: str, tag: str | None, description: str) -> None:
    """Register an open_clip architecture + pretrained tag (or ``hf-hub:`` id) as ``name``."""
    spec = OpenClipSpec(arch, tag)

    def factory(cfg: AdapterConfig) -> Adapter:
        if cfg.input_size is not None and cfg.input_size < 8:
            raise ConfigError(f"input size {cfg.input_size} is too small.")
        return build_open_clip(spec, cfg)

    register_adapter(name, description, family="open_clip", text="yes",
                     weights=spec.pretrained_id,
                     spec=f"open_clip:{arch}" + (f"/{tag}" if tag else ""))(factory)


register_open_clip("clip-vit-b32", "ViT-B-32", "openai",
                   "OpenAI CLIP ViT-B/32 (open_clip, QuickGELU as trained)")
register_open_clip("clip-vit-b16", "ViT-B-16", "laion2b_s34b_b88k",
                   "LAION-2B CLIP ViT-B/16 (open_clip)")
register_open_clip("biomedclip", BIOMEDCLIP_HUB, None,
                   "BiomedCLIP: ViT-B/16 + PubMedBERT (context 256), PMC-15M")
