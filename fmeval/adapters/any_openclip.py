"""``open_clip:<arch>/<pretrained>`` and ``open_clip:hf-hub:<org>/<repo>``: any open_clip model.

Built by :func:`fmeval.adapters.openclip.build_open_clip`, the path of the
``clip-*`` and ``biomedclip`` short names (text tower, tokenizer, QuickGELU
forced from the tag, strict local loading), so zero-shot, prompt comparison and
``--init zeroshot`` work as for them. SigLIP models of open_clip carry a
learned ``logit_bias`` and score with a sigmoid (see fmeval.zeroshot.SCORINGS).
A pair open_clip does not list fails before anything is built, with the close
matches of ``open_clip.list_pretrained()``.
"""

from __future__ import annotations

import difflib

from fmeval.adapters.base import Adapter, AdapterConfig
from fmeval.adapters.specs import OpenClipModelSpec
from fmeval.errors import ConfigError, ModelError

FAMILY = "open_clip"


def check_pair(spec: OpenClipModelSpec) -> None:
    import open_clip

    if spec.arch.startswith("hf-hub:"):
        return  # its config lives on the hub; fetched (or reported missing) when built
    pairs = open_clip.list_pretrained()
    if (spec.arch, spec.pretrained) in pairs:
        return
    archs = sorted({a for a, _ in pairs} | set(open_clip.list_models()))
    if spec.arch not in archs:
        close = difflib.get_close_matches(spec.arch, archs, n=4, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelError(f"unknown open_clip model {spec.arch!r} in {spec.text!r}.{hint}")
    tags = [t for a, t in pairs if a == spec.arch]
    close = difflib.get_close_matches(str(spec.pretrained), tags, n=4, cutoff=0.3) or tags[:6]
    raise ModelError(f"open_clip {spec.arch} has no pretrained {spec.pretrained!r}; "
                     f"its tags: {', '.join(close) or 'none (random init only)'}.")


def check_spec(spec: OpenClipModelSpec) -> dict[str, str]:
    check_pair(spec)
    weights = spec.arch if spec.arch.startswith("hf-hub:") else f"open_clip:{spec.arch}/{spec.pretrained}"
    return {"family": FAMILY, "text": "yes", "weights": weights}


def build_spec(spec: OpenClipModelSpec, cfg: AdapterConfig) -> Adapter:
    from fmeval.adapters.openclip import OpenClipSpec, build_open_clip

    check_pair(spec)
    if cfg.input_size is not None and cfg.input_size < 8:
        raise ConfigError(f"input size {cfg.input_size} is too small.")
    adapter = build_open_clip(OpenClipSpec(spec.arch, spec.pretrained), cfg)
    adapter.model_spec = {"spec": spec.text, "kind": "open_clip",
                          "resolved": OpenClipSpec(spec.arch, spec.pretrained).pretrained_id,
                          "zeroshot_scoring": adapter.zeroshot_scoring}
    return adapter
