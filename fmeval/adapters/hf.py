"""``hf:<org>/<repo>[@<revision>]`` and ``hf:<folder>``: any transformers vision model.

Built through the Auto classes only (``AutoConfig``, ``AutoModel``,
``AutoImageProcessor``, ``AutoTokenizer``), so a model that appeared last month
(RAD-DINO, SigLIP 2, MedSigLIP, DINOv3...) needs no code here. What fmeval
must decide, and records:

* **the weights**: a hub revision resolves to its commit hash (what the cache
  key and report name: a branch moves, a commit does not); a local folder is
  named by the SHA-256 of its config and weight files;
* **the feature** (``--pool``): ``embed`` (a dual encoder's image embedding
  after projection, the space its text lives in), ``cls`` (the first token of
  the last hidden state), ``mean`` (the mean of all tokens, or of the feature
  map), ``pooler`` (the model's ``pooler_output``). Only those the model
  produces are offered; the default is the first available of embed, cls,
  pooler, mean;
* **zero-shot scoring**: a model with a learned ``logit_bias`` (SigLIP,
  SigLIP 2, MedSigLIP) scores with a sigmoid, the others with a softmax.

Checks run on the config alone (no weights are fetched): a repo that is not a
vision model fails in one line.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    Preprocess,
    checkpoint_weights_id,
    fetch_error,
    load_state_dict_file,
    load_weights,
    random_weights_id,
)
from fmeval.adapters.lora_targets import find_lora_targets
from fmeval.adapters.specs import HfModelSpec
from fmeval.errors import ConfigError, ModelError

FAMILY = "hf"  # never measured for bf16: the precision policy keeps fp32 on CPU
POOLS = ("embed", "cls", "pooler", "mean")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _source(spec: HfModelSpec) -> str:
    return spec.repo


def load_config(spec: HfModelSpec):
    from transformers import AutoConfig

    if spec.local and not (Path(spec.repo) / "config.json").is_file():
        raise ModelError(f"{spec.text}: {spec.repo} has no config.json (save the model with "
                         "save_pretrained, or give hf:<org>/<repo>).")
    try:
        return AutoConfig.from_pretrained(spec.repo, revision=spec.revision)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read the config of {spec.text} ({first}); offline, fetch it first "
                         f"with `hf download {spec.repo}` or pass hf:<local folder>.") from None


def is_dual(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return config.model_type in MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES


def check_vision(spec: HfModelSpec, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_IMAGE_MAPPING_NAMES and not is_dual(config):
        raise ModelError(f"{spec.text} is a {config.model_type!r} model, not a vision model "
                         "(fmeval takes image encoders and CLIP/SigLIP-style dual encoders).")


def resolved_revision(spec: HfModelSpec) -> str:
    """Commit hash of a hub revision (from the snapshot the config came from), or the
    content digest of a local folder's config and weights."""
    if spec.local:
        h = hashlib.sha256()
        folder = Path(spec.repo)
        for name in ("config.json", *WEIGHT_FILES):
            if (folder / name).is_file():
                h.update(name.encode())
                h.update(bytes.fromhex(_digest(folder / name)))
        return f"sha256:{h.hexdigest()[:16]}"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.repo, "config.json", revision=spec.revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return spec.revision or "main"


def _digest(path: Path) -> str:
    from fmeval.io import file_digest

    return file_digest(path)


def check_spec(spec: HfModelSpec) -> dict[str, str]:
    config = load_config(spec)
    check_vision(spec, config)
    rev = resolved_revision(spec)
    where = spec.repo if spec.local else f"{spec.repo}@{rev}"
    return {"family": FAMILY, "text": "yes" if is_dual(config) else "no", "weights": f"hf:{where}",
            "lazy": "no" if spec.local else "yes"}


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
def _preprocess(spec: HfModelSpec, config, cfg: AdapterConfig) -> Preprocess:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(spec.repo, revision=spec.revision)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(f"{spec.text} has no image processor (preprocessor_config.json): {first}. "
                         "Save one with AutoImageProcessor.save_pretrained.") from None
    size = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    size = size or getattr(proc, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"height": size}
    side = size.get("height") or size.get("shortest_edge") or getattr(
        getattr(config, "vision_config", config), "image_size", 224)
    resample = getattr(proc, "resample", 3)
    resample = getattr(resample, "value", resample)
    return Preprocess(
        input_size=int(cfg.input_size or side),
        mean=tuple(float(v) for v in proc.image_mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in proc.image_std),  # type: ignore[arg-type]
        interpolation=_RESAMPLE.get(int(resample), "bicubic"),
    )


def _build_model(spec: HfModelSpec, config, cfg: AdapterConfig) -> tuple[nn.Module, Any]:
    """(model, load report or None): hub/folder weights, a local file, or random."""
    from transformers import AutoModel

    if cfg.weights is not None or not cfg.pretrained:
        model = AutoModel.from_config(config)
        if cfg.weights is None:
            return model, None
        report = load_weights(model, load_state_dict_file(cfg.weights), strict=cfg.strict,
                              source=str(cfg.weights), allow_partial=cfg.allow_partial)
        return model, report
    try:
        model, info = AutoModel.from_pretrained(spec.repo, revision=spec.revision, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise fetch_error(spec.text, spec.repo, exc) from None
    model.fmeval_missing = sorted(info.get("missing_keys", []))  # newly initialised: never a feature
    return model, None


class HfAdapter(Adapter):
    """A transformers model; features are the recorded ``pool`` of its output."""

    code_version = "1"
    family = FAMILY

    def __init__(self, spec: HfModelSpec, cfg: AdapterConfig) -> None:
        super().__init__()
        config = load_config(spec)
        check_vision(spec, config)
        self.dual = is_dual(config)
        self.model, self.load_report = _build_model(spec, config, cfg)
        self.model.eval()
        self.preprocess = _preprocess(spec, config, cfg)
        vision = getattr(self.model, "vision_model", self.model)
        self._interp = "interpolate_pos_encoding" in inspect.signature(vision.forward).parameters
        self.pools = self._available_pools()
        self.pool = cfg.pool or self.pools[0]
        if self.pool not in self.pools:
            raise ConfigError(f"--pool {self.pool} is not offered by {spec.text}; "
                              f"choose one of {', '.join(self.pools)}.")
        with torch.no_grad():
            self.feature_dim = int(self.encode_image(self._probe()).shape[-1])
        rev = resolved_revision(spec)
        if self.load_report is not None:
            self.weights_id = checkpoint_weights_id(cfg.weights, self.load_report, cfg)
        elif cfg.pretrained:
            self.weights_id = f"hf:{spec.repo if not spec.local else 'local'}@{rev}"
        else:
            self.weights_id = random_weights_id(cfg, f"hf:{config.model_type}@{rev}")
        if self.pool != self.pools[0]:
            self.weights_id += f"#pool={self.pool}"  # another output: another feature
        choice = find_lora_targets(self.backbone)
        self.lora_targets, self.lora_rule = choice.targets, choice.rule  # type: ignore[misc]
        self.pooling = {"embed": "image embedding after projection (get_image_features)",
                        "cls": "CLS token of the last hidden state", "pooler": "pooler_output",
                        "mean": "mean of the last hidden state's tokens"}[self.pool]
        self.model_spec = {"spec": spec.text, "kind": "hf", "resolved": f"{spec.repo}@{rev}",
                           "model_type": config.model_type, "class": type(self.model).__name__,
                           "pool": self.pool, "pools": list(self.pools),
                           "missing_keys": list(getattr(self.model, "fmeval_missing", []))}
        if self.dual:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(spec.repo, revision=spec.revision)
            self.text_id = f"{self.weights_id}|tok:{type(self.tokenizer).__name__}:{len(self.tokenizer)}"
            self.zeroshot_scoring = "sigmoid" if hasattr(self.model, "logit_bias") else "softmax"
            self.model_spec["zeroshot_scoring"] = self.zeroshot_scoring

    def _probe(self) -> torch.Tensor:
        s = self.preprocess.input_size
        return torch.zeros(1, 3, s, s)

    def _vision_out(self, x: torch.Tensor):
        vision = getattr(self.model, "vision_model", self.model)
        kw = {"interpolate_pos_encoding": True} if self._interp else {}
        return vision(pixel_values=x, **kw)

    def _available_pools(self) -> tuple[str, ...]:
        with torch.no_grad():
            out = self._vision_out(self._probe())
        pools = ["embed"] if self.dual else []
        hidden = getattr(out, "last_hidden_state", None)
        emb = getattr(getattr(self.model, "vision_model", self.model), "embeddings", None)
        if hidden is not None and hidden.ndim == 3 and getattr(emb, "cls_token", None) is not None:
            pools.append("cls")
        random_pooler = any(k.startswith("pooler.") for k in getattr(self.model, "fmeval_missing", []))
        if getattr(out, "pooler_output", None) is not None and not random_pooler:
            pools.append("pooler")  # left out when the checkpoint has no pooler (random values)
        if hidden is not None and hidden.ndim in (3, 4):
            pools.append("mean")
        if not pools:
            raise ModelError(f"{type(self.model).__name__} gives no pooled output fmeval can use.")
        return tuple(pools)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "embed":
            kw = {"interpolate_pos_encoding": True} if self._interp else {}
            out = self.model.get_image_features(pixel_values=x, **kw)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self._vision_out(x)
        if self.pool == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if self.pool == "cls":
            return hidden[:, 0]
        return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)

    # -- dual encoders ------------------------------------------------------------
    @property
    def supports_text(self) -> bool:
        return self.dual

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.dual:
            return super().encode_text(texts)
        sigmoid = self.zeroshot_scoring == "sigmoid"
        # SigLIP was trained on max-length padding without an attention mask (its model card).
        context = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(list(texts), truncation=True, max_length=context, return_tensors="pt",
                             padding="max_length" if sigmoid else True)
        device = next(self.model.parameters()).device
        args = {"input_ids": tok["input_ids"].to(device)}
        if not sigmoid and "attention_mask" in tok:
            args["attention_mask"] = tok["attention_mask"].to(device)
        out = self.model.get_text_features(**args)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return 100.0
        # CLIP clamps its temperature at 100 in training; SigLIP's (~117 trained) is never clamped.
        cap = None if getattr(self, "zeroshot_scoring", "softmax") == "sigmoid" else 100.0
        value = float(scale.detach().exp())
        return value if cap is None else min(value, cap)

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])


def build_spec(spec: HfModelSpec, cfg: AdapterConfig) -> Adapter:
    if cfg.tiny:
        raise ConfigError(f"--tiny has no recipe for {spec.text}: save a small model with "
                          "save_pretrained and pass hf:<that folder>, or use --random-init.")
    return HfAdapter(spec, cfg)
