"""The one result schema every mode returns and every view reads.

``results.json`` is the source of truth for a run (versioned by
``schema_version``); Markdown, plots, ``runs.csv``, leaderboards and study
pages are views of it and can be regenerated. A field is never renamed or
removed without bumping :data:`SCHEMA_VERSION` and teaching
:meth:`RunResult.from_dict` to read the older version (tests hold a golden
version-1 file).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmeval.io import new_run_id, slug  # noqa: F401  (re-exported)
from fmeval.errors import FmevalError
from fmeval.metrics import MetricsReport

SCHEMA_VERSION = 2
RESULTS_FILE = "results.json"

#: Top-level keys of ``results.json`` per schema version (a test pins them).
SCHEMA_KEYS = {
    1: ("schema_version", "run_id", "mode", "created", "wall_time_s", "model", "dataset", "geometry",
        "seed", "config", "test", "val", "extras", "provenance", "warnings"),
    2: ("schema_version", "run_id", "mode", "created", "wall_time_s", "model", "dataset", "geometry",
        "seed", "config", "config_hash", "protocol", "transform", "precision", "selection", "test", "val",
        "extras", "provenance", "warnings"),
}


class ReportError(FmevalError):
    """A results file cannot be read or written."""


def utc_now_iso() -> str:
    """Creation time to the millisecond: runs.csv is rebuilt in this order, and
    two runs of the same second must keep the order they ran in."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def jsonable(obj: Any) -> Any:
    """Plain JSON types only: modes put numpy scalars, arrays, Paths and NaN into
    config/extras, and a report must never fail to save (or save invalid JSON,
    as NaN is) because of that."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


@dataclass
class RunResult:
    """The outcome of one run, in the same shape for every mode.

    ``model``: adapter description (name, family, weights_id, feature_dim,
    load report, ...). ``dataset``: flag, size, task, md5, md5_verified, n_*.
    ``transform``: the exact pixel pipeline (input size, mean/std,
    interpolation, geometry, canvas, pad fill). ``precision``: the numeric
    precision actually used. ``protocol``: name, version, sha256 and the
    deviations from it. ``selection``: every choice made on validation (k, head,
    epoch, prompt style) - never on test. ``extras``: mode-specific facts
    (sweeps, curves, parameter counts, ...), rendered by the registered
    report sections.
    """

    run_id: str
    mode: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    geometry: str
    seed: int
    config: dict[str, Any]
    test: MetricsReport
    val: MetricsReport | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=utc_now_iso)
    wall_time_s: float = 0.0
    config_hash: str = ""
    protocol: dict[str, Any] | None = None
    transform: dict[str, Any] = field(default_factory=dict)
    precision: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    report_dir: str | None = None  # set by the reporter; not part of results.json
    # Per-sample test scores [N, C] and their test-split indices (None: all, in order).
    # Not part of results.json: the reporter writes them to predictions.csv (the
    # MedMNIST+ submission format), which `fmeval score` reads back exactly.
    test_scores: Any = field(default=None, repr=False)
    test_indices: Any = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "?"))

    @property
    def dataset_flag(self) -> str:
        return str(self.dataset.get("flag", "?"))

    @property
    def deviations(self) -> list[str]:
        return list((self.protocol or {}).get("deviations") or [])

    def all_warnings(self) -> list[str]:
        """Run-level warnings first, then the test split's, then the validation split's."""
        out = list(self.warnings) + [w for w in self.test.warnings if w not in self.warnings]
        if self.val is not None:
            out += [f"val: {w}" for w in self.val.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "mode": self.mode,
            "created": self.created,
            "wall_time_s": jsonable(float(self.wall_time_s)),
            "model": jsonable(self.model),
            "dataset": jsonable(self.dataset),
            "geometry": self.geometry,
            "seed": int(self.seed),
            "config": jsonable(self.config),
            "config_hash": self.config_hash,
            "protocol": jsonable(self.protocol),
            "transform": jsonable(self.transform),
            "precision": self.precision,
            "selection": jsonable(self.selection),
            "test": self.test.to_dict(),
            "val": None if self.val is None else self.val.to_dict(),
            "extras": jsonable(self.extras),
            "provenance": jsonable(self.provenance),
            "warnings": list(self.warnings),
        }
        assert tuple(d) == SCHEMA_KEYS[SCHEMA_VERSION]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunResult":
        if not isinstance(d, Mapping):
            raise ReportError("results must be a JSON object")
        try:
            version = int(d.get("schema_version", 0))
        except (TypeError, ValueError):
            raise ReportError(f"schema_version {d.get('schema_version')!r} is not a number") from None
        if version > SCHEMA_VERSION:
            raise ReportError(
                f"results schema_version {version} is newer than this fmeval understands "
                f"({SCHEMA_VERSION}); upgrade fmeval"
            )
        try:
            v1 = version < 2
            model = dict(d.get("model") or {})
            return cls(
                run_id=str(d["run_id"]),
                mode=str(d["mode"]),
                model=model,
                dataset=dict(d.get("dataset") or {}),
                geometry=str(d.get("geometry", "")),
                seed=int(d.get("seed", 0)),
                config=dict(d.get("config") or {}),
                test=MetricsReport.from_dict(d["test"]),
                val=None if d.get("val") is None else MetricsReport.from_dict(d["val"]),
                extras=dict(d.get("extras") or {}),
                provenance=dict(d.get("provenance") or {}),
                warnings=[str(w) for w in (d.get("warnings") or [])],
                created=str(d.get("created", "")),
                wall_time_s=float(d.get("wall_time_s") or 0.0),
                # version 1 had no such fields: derive what can be derived
                config_hash="" if v1 else str(d.get("config_hash") or ""),
                protocol=None if v1 else (dict(d["protocol"]) if d.get("protocol") else None),
                transform=dict(model.get("preprocess") or {}) if v1 else dict(d.get("transform") or {}),
                precision="" if v1 else str(d.get("precision") or ""),
                selection={} if v1 else dict(d.get("selection") or {}),
                schema_version=version,
            )
        except KeyError as e:
            raise ReportError(f"malformed results: missing key {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ReportError(f"malformed results: {type(e).__name__}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"cannot read {path}: {e}") from None
        if not isinstance(data, Mapping):
            raise ReportError(f"{path} does not hold a JSON object")
        r = cls.from_dict(data)
        r.report_dir = str(path.parent)
        return r


def run_files(root: str | Path, pattern: str = f"*/{RESULTS_FILE}") -> list[Path]:
    """The ``results.json`` files of the run folders under ``root``, sorted; hidden folders
    (a report being written, or one a killed run left: ``.<run_id>....partial``) are not runs."""
    root = Path(root)
    return sorted(p for p in root.glob(pattern)
                  if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def reports_dir() -> Path:
    from fmeval.settings import reports_root

    return reports_root()
