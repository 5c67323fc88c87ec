"""Short model names are aliases of model specs, and that must not change what they build.

The snapshot (tests/fixtures/adapter_identity.json, written by
scripts/snapshot_adapter_identity.py before model specs existed) holds every registered
name's tiny build: adapter name, weights id and code version (the cache key's model part),
describe() (the report's model record) and its features on a seeded input. Existing caches
stay valid only while all of these are unchanged; describe() may gain keys, never lose or
change one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SNAPSHOT = json.loads((Path(__file__).parent / "fixtures" / "adapter_identity.json").read_text())


def _subset_mismatches(old: dict, new: dict, path: str = "") -> list[str]:
    bad = []
    for k, v in old.items():
        if k not in new:
            bad.append(f"{path}{k}: missing")
        elif isinstance(v, dict) and isinstance(new[k], dict):
            bad += _subset_mismatches(v, new[k], f"{path}{k}.")
        elif v != new[k]:
            bad.append(f"{path}{k}: {v!r} -> {new[k]!r}")
    return bad


def test_snapshot_covers_every_registered_short_name():
    from fmeval.adapters import ADAPTERS

    assert sorted(SNAPSHOT) == sorted(e.name for e in ADAPTERS if ":" not in e.name and
                                      "plugin" not in e.tags)


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_short_name_builds_what_it_built_before(name):
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    from snapshot_adapter_identity import identity

    old, new = SNAPSHOT[name], json.loads(json.dumps(identity(name), sort_keys=True, default=str))
    for key in ("name", "weights_id", "code_version"):
        assert new[key] == old[key], key
    assert _subset_mismatches(old["describe"], new["describe"]) == []
    assert _subset_mismatches(old["tags"], new["tags"]) == []
    if "features_head" in old:
        assert new["features_head"] == pytest.approx(old["features_head"], abs=2e-5)
        assert new["features_norm"] == pytest.approx(old["features_norm"], rel=1e-4)
