"""Record what every registered short name builds to in tiny mode: adapter name, weights id,
code version, describe() and a digest of its features on a seeded input.

tests/test_model_aliases.py compares today's builds with this snapshot, so that turning the
short names into aliases of model specs can never change a cache key or a feature (the cache
would silently miss, or worse, serve another encoder's vectors). Regenerate only on purpose:
    .venv/bin/python scripts/snapshot_adapter_identity.py > tests/fixtures/adapter_identity.json
"""

from __future__ import annotations

import json
import sys

import torch


def identity(name: str) -> dict:
    from fmeval.adapters import ADAPTERS, create_adapter

    adapter = create_adapter(name, tiny=True, seed=0)
    rec = {"name": adapter.name, "weights_id": adapter.weights_id,
           "code_version": adapter.code_version, "describe": adapter.describe(),
           "tags": dict(ADAPTERS.entry(name).tags)}
    if getattr(adapter, "ndim", 2) == 2:
        s = adapter.preprocess.input_size
        x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            f = adapter(x).float()
        rec["features_head"] = [round(float(v), 6) for v in f.flatten()[:8]]
        rec["features_norm"] = round(float(f.norm()), 5)
    return rec


def main() -> None:
    from fmeval.adapters import ADAPTERS

    out = {e.name: identity(e.name) for e in ADAPTERS if ":" not in e.name}
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
