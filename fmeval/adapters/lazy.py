"""An encoder known by its recorded identity until its weights are needed.

A re-run whose features are all cached needs only what names the features
(model name, weights id, code version, preprocessing, family) and what the
report says of the model. Building the encoder first costs a ViT-B/16 one to
two seconds (a random init or a checkpoint read), about half of a cached
re-run, for nothing. So the first build of a configuration records that
identity in the cache folder (``adapters.json``), and later runs of the same
configuration get a :class:`LazyAdapter` that answers from the record and
builds the real encoder only when something needs its weights (a cache miss,
text features, fine-tuning).

The record is keyed by everything that decides the identity: the model and its
build arguments, the weights file's (path, size, mtime) like the data layer's
MD5 memo, and the versions of fmeval, torch, timm and open_clip. Weights that
are named rather than given as a file (a weights-store asset) are never
recorded: their file is only known after resolving them.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from fmeval.adapters.base import ADAPTERS, Adapter
from fmeval.data.transforms import Preprocess
from fmeval.io import file_identity, read_memo, write_memo


#: The cache folder's memo of built encoders' identities (removed by ``fmeval cache clear``).
ADAPTER_MEMO = "adapters.json"
_PACKAGES = ("fmeval", "torch", "timm", "open_clip_torch")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def identity_key(model: str, kwargs: dict[str, Any]) -> str | None:
    """Digest of what decides an adapter's identity, or None when it cannot be known
    without building (weights named as an asset, or fetched into the weights store)."""
    import fmeval.adapters  # noqa: F401  (registers the built-in adapters)

    entry = ADAPTERS.entry(model)
    if entry.tags.get("lazy") == "no":
        return None  # user code or a local folder: its content may change under the same name
    weights = kwargs.get("weights")
    stat = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            return None
        stat = list(file_identity(path))
    elif entry.tags.get("asset") and kwargs.get("pretrained") and not kwargs.get("tiny"):
        return None
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if k not in ("device", "weights")}
    blob = {"model": entry.name, "args": args, "weights_file": stat,
            "versions": {p: _version(p) for p in _PACKAGES}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def identity_of(adapter: Adapter) -> dict | None:
    """What a LazyAdapter answers without weights; None for encoders it cannot stand in
    for (3D encoders carry their own volume transform object)."""
    if getattr(adapter, "ndim", 2) != 2:
        return None
    return {
        "name": adapter.name, "family": adapter.family, "weights_id": adapter.weights_id,
        "code_version": adapter.code_version, "feature_dim": adapter.feature_dim,
        "supports_text": bool(adapter.supports_text),
        "native_input": bool(getattr(adapter, "native_input", False)),
        "preprocess": adapter.preprocess.as_dict(), "describe": adapter.describe(),
    }


def recall(root: Path, key: str | None) -> dict | None:
    return read_memo(root / ADAPTER_MEMO, key) if key else None


def remember(root: Path, key: str | None, adapter: Adapter) -> None:
    ident = identity_of(adapter) if key else None
    if ident is not None:
        write_memo(root / ADAPTER_MEMO, key, ident)


class LazyAdapter:
    """Stands in for an :class:`Adapter` whose identity is recorded; builds it on first
    use of anything else (attribute access and calls are forwarded to the built one)."""

    def __init__(self, identity: dict, build: Callable[[], Adapter]) -> None:
        self.__dict__["_identity"] = identity
        self.__dict__["_build"] = build
        self.__dict__["_real"] = None
        for k in ("name", "family", "weights_id", "code_version", "feature_dim", "supports_text",
                  "native_input"):
            self.__dict__[k] = identity[k]
        pre = dict(identity["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        self.__dict__["preprocess"] = Preprocess(**pre)
        self.__dict__["ndim"] = 2

    @property
    def built(self) -> bool:
        return self._real is not None

    def real(self) -> Adapter:
        if self._real is None:
            self.__dict__["_real"] = self._build()
        return self._real

    def describe(self) -> dict:
        d = json.loads(json.dumps(self._identity["describe"]))  # a copy the report may change
        d["preprocess"] = self.preprocess.as_dict()  # tuples, as the built adapter gives them
        return d

    def __getattr__(self, attr: str) -> Any:  # only for names not answered above
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.real(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self.real(), attr, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.real()(*args, **kwargs)
