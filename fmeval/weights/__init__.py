"""Weights the model hubs cannot give, fetched with one command.

``registry`` says what can be downloaded (and how each file is checked),
``download`` moves one file over HTTP (resumable, verified), ``store`` keeps
the weights cache (atomic installs, a lock per asset, ``--weights NAME``
lookups). ``fmeval weights fetch|ls`` is the command line on top.
"""

from fmeval.weights.registry import ASSETS, MIRROR_ENV, Asset, AssetFile, register_asset
from fmeval.weights.store import (
    OFFLINE_ENV,
    WEIGHTS_DIR_ENV,
    AssetStatus,
    FetchResult,
    WeightStore,
    auto_download_blocker,
    resolve_weights,
    weights_root,
)

__all__ = [
    "ASSETS",
    "Asset",
    "AssetFile",
    "AssetStatus",
    "FetchResult",
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "WEIGHTS_DIR_ENV",
    "WeightStore",
    "auto_download_blocker",
    "register_asset",
    "resolve_weights",
    "weights_root",
]
