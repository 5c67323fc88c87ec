"""What a tracker is given, read from the run's own records.

The final metrics come from the very dict the reporter writes as
``results.json`` (``RunResult.to_dict()``), so a tracker can only ever show the
numbers of the report: ``test/<metric>`` with ``test/<metric>_ci_low`` and
``_ci_high``, ``val/<metric>`` of the selected model, and the numeric
selection choices as ``selection/<name>``. Non-finite values (a metric
undefined on the split: ``null`` in results.json) are left out.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``results.json`` (as a dict) -> flat ``{name: value}`` of the run's final numbers."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        report = results.get(split) or {}
        for metric, m in (report.get("metrics") or {}).items():
            for field, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                if split == "val" and suffix:
                    continue  # CIs are a test-split fact
                v = _number((m or {}).get(field))
                if v is not None:
                    out[f"{split}/{metric}{suffix}"] = v
        if split == "test":
            for metric, v in (report.get("baseline") or {}).items():
                if _number(v) is not None:
                    out[f"baseline/{metric}"] = float(v)
    for key, v in (results.get("selection") or {}).items():
        if _number(v) is not None:
            out[f"selection/{key}"] = float(v)
    return out


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"train.lr": "0.0001", ...}`` (lists joined by commas), for trackers
    whose parameters are flat strings (MLflow)."""
    out: dict[str, str] = {}
    for key, v in params.items():
        name = f"{prefix}{key}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = ",".join(str(x) for x in v)
        else:
            out[name] = "" if v is None else str(v)
    return out


def run_params(config: Mapping[str, Any], protocol: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's parameters: the resolved config, and the protocol with its deviations (when one applies)."""
    params: dict[str, Any] = {"config": dict(config)}
    if protocol:
        params["protocol"] = dict(protocol)
    params["deviations"] = list((protocol or {}).get("deviations") or config.get("deviations") or [])
    return params
