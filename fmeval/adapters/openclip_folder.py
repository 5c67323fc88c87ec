"""The open_clip model a folder describes: its ``open_clip_config.json``, read and checked.

The folder comes from the user (a local snapshot of a hub model, maybe hand-edited or cut
short) or is the generated tiny BiomedCLIP; whatever open_clip could not build from is one
ModelError line here, before open_clip sees it. Used by :mod:`fmeval.adapters.openclip`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fmeval.errors import ModelError

#: What open_clip needs of a model config before it will register it.
REQUIRED_MODEL_CFG = ("embed_dim", "vision_cfg", "text_cfg")


def read_folder_config(folder: Path) -> tuple[dict, dict]:
    """The raw (model_cfg, preprocess_cfg) of ``open_clip_config.json``, checked for shape.

    The file comes from the user (a hub snapshot, maybe hand-edited or cut
    short); anything open_clip could not build from is one ModelError line.
    """
    path = folder / "open_clip_config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}).") from None
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else None
    pp = raw.get("preprocess_cfg", {}) if isinstance(raw, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(pp, dict):
        raise ModelError(f"{path} is not an open_clip config (expected an object with model_cfg).")
    missing = [k for k in REQUIRED_MODEL_CFG if k not in model_cfg]
    if missing:
        raise ModelError(f"{path} is incomplete: model_cfg has no {', '.join(missing)}.")
    for k in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg[k], dict):
            raise ModelError(f"{path}: model_cfg.{k} must be an object.")
    return model_cfg, pp


def folder_config(folder: Path) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of a folder, text tower localised where possible.

    A folder that carries a transformers ``config.json`` / tokenizer files holds
    its own text tower; pointing the config there keeps the build offline.
    """
    model_cfg, pp = read_folder_config(folder)
    model_cfg = copy.deepcopy(model_cfg)
    text = model_cfg.get("text_cfg", {})
    if "hf_model_name" in text and (folder / "config.json").exists():
        text["hf_model_name"] = str(folder)
    if "hf_tokenizer_name" in text and any(
        (folder / f).exists() for f in ("vocab.txt", "tokenizer.json")
    ):
        text["hf_tokenizer_name"] = str(folder)
    return model_cfg, pp
