"""Dotted paths into nested config dataclasses: coercion of YAML/JSON/CLI values to field types.
"""

from __future__ import annotations

import functools
from dataclasses import fields, is_dataclass, replace
from typing import Any, get_type_hints

from fmeval.errors import ConfigError


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """YAML/JSON values -> the field's type (lists -> tuples, ints -> floats)."""
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where} cannot be empty.")
    try:
        if "tuple" in text:
            items = value if isinstance(value, (list, tuple)) else [value]
            inner = float if "float" in text else int if "int" in text else str
            return tuple(inner(x) for x in items)
        if annotation is bool or text.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if annotation is int or text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if annotation is float or text.startswith("float"):
            return float(value)
        if annotation is str or text.startswith("str"):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not valid ({exc}).") from None
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass (resolving them per call dominated study planning)."""
    return get_type_hints(cls)


def _apply(obj: Any, nested: dict[str, Any]) -> Any:
    names = {f.name for f in fields(obj)}
    hints = _hints(type(obj))
    changes = {}
    for name, item in nested.items():
        if name not in names:
            import difflib

            path = item[0] if isinstance(item, tuple) else name
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {path!r}{hint}")
        if isinstance(item, dict):
            sub = getattr(obj, name)
            if not is_dataclass(sub):
                raise ConfigError(f"setting {name!r} has no sub-settings.")
            changes[name] = _apply(sub, item)
        else:
            path, value = item
            if is_dataclass(getattr(obj, name)):
                raise ConfigError(f"{path!r} is a section; set its fields, e.g. {path}.<name>.")
            changes[name] = _coerce(value, hints[name], path)
    return replace(obj, **changes)


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping.")
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)} (written by a newer fmeval?)."
        )
    kwargs = {}
    for name, value in d.items():
        t = hints[name]
        if isinstance(t, type) and is_dataclass(t):
            kwargs[name] = _build(t, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, t, prefix + name)
    return cls(**kwargs)
