"""Applying a protocol to a run: protocol values, then explicit choices, deviations recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmeval.config import RunConfig
from fmeval.protocols.spec import Protocol, ProtocolError

PROTOCOL_DIR = Path(__file__).resolve().parent


def _shipped() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROTOCOL_DIR.glob("*.yaml"))}


def protocol_names() -> list[str]:
    return list(_shipped())


def load_protocol(name: str) -> Protocol:
    """A shipped protocol by name, or a protocol YAML by path."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.exists():
        return Protocol.load(path)
    shipped = _shipped()
    key = name.lower().removesuffix(".yaml")
    if key not in shipped:
        import difflib

        close = difflib.get_close_matches(key, list(shipped), n=2)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ProtocolError(f"unknown protocol {name!r}.{hint} Known: {', '.join(shipped)}.")
    return Protocol.load(shipped[key])


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def apply_protocol(protocol: Protocol, base: RunConfig, explicit: dict[str, Any]) -> RunConfig:
    """``base`` (built-in defaults and user defaults) -> the run under ``protocol``.

    ``explicit``: dotted path -> value the user chose on the command line (or
    a study set). Each one that differs from what the protocol defines is a
    deviation, reported as ``path=value``. The seed must be one of the
    protocol's seeds to count as conforming; without one the first is used.
    A size the protocol maps to a variant (MedMNIST v2's 224) takes the
    variant's settings (not deviations: they are the protocol).
    """
    mode = base.mode
    if not protocol.covers(mode):
        raise ProtocolError(
            f"protocol {protocol.name!r} does not define mode {mode!r} (it defines: "
            f"{', '.join(protocol.spec.modes)})."
        )
    settings = protocol.settings_for(mode)
    values: dict[str, Any] = {k: s.value for k, s in settings.items()}
    size = explicit.get("size", base.size)
    variant = protocol.spec.variants.get(str(size))
    if variant is not None:
        values.update(variant.settings)
    cfg = base.with_values(values)
    deviations: list[str] = []
    for path, value in explicit.items():
        if path == "size" and variant is not None:
            continue  # the requested size names the variant
        if path == "seed":
            if int(value) not in protocol.seeds:
                deviations.append(f"seed={value}")
        elif path in values and not _same(cfg.with_values({path: value}).get(path), cfg.get(path)):
            if variant is not None and path in variant.settings:
                raise ProtocolError(
                    f"{path} is fixed to {_fmt(variant.settings[path])} by protocol {protocol.name!r} at "
                    f"size {size}; drop the option or the protocol."
                )
            deviations.append(f"{path}={_fmt(value)}")
    if variant is None or "size" not in variant.settings:
        explicit = dict(explicit)
    else:
        explicit = {k: v for k, v in explicit.items() if k != "size"}
    cfg = cfg.with_values(explicit)
    if "seed" not in explicit:
        cfg = cfg.with_values({"seed": protocol.seeds[0]})
    return cfg.with_values({"protocol": protocol.name, "protocol_hash": protocol.sha256,
                            "protocol_variant": str(size) if variant is not None else None,
                            "deviations": tuple(deviations)})
