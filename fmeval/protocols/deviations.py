"""What makes a run differ from a protocol's recipe: every setting that moves numbers.

A protocol names the settings its source defines; fmeval's defaults fill in
the rest, and that filled-in config *is* the recipe the protocol's numbers come
from. So a run deviates wherever its semantic config (what its hash covers:
no paths, devices or speed knobs) differs from that recipe config - a setting
the protocol names (``train.epochs=3``) as much as one it leaves at the default
(a balanced sampler, layer decay, a step cap, random or tiny weights) - and
wherever it leaves the protocol's lists of models, datasets, sizes and modes.
A user default from ``fmeval.toml`` that moves numbers is a deviation too:
the protocol's numbers were not made with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fmeval.config import RunConfig
from fmeval.config.run import MODE_SECTIONS, field_paths

if TYPE_CHECKING:
    from fmeval.protocols.spec import Protocol

# Compared separately (model/dataset/size/mode against the protocol's lists, the seed
# against its seeds), or bookkeeping of the protocol itself, or reporting only (the
# bootstrap's resample count moves CIs, never a metric the protocol defines).
_NOT_RECIPE = frozenset({"mode", "model", "dataset", "size", "seed", "protocol", "protocol_variant", "n_boot"})
_WARNED: set[str] = set()


def same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _outside(kind: str, value: Any, listed: Any) -> str | None:
    if listed is None or value in [str(x) for x in listed.value] or value in listed.value:
        return None
    return f"{kind}={value} (outside the protocol's {kind}s)"


def recipe_deviations(protocol: "Protocol", cfg: RunConfig, recipe: RunConfig, *, requested_size: int,
                      recipe_mode: str, variant: bool) -> list[str]:
    """``path=value`` for each way ``cfg`` differs from ``recipe`` (the protocol's own config for the
    same mode, model and dataset), list memberships first, then settings in field order."""
    spec = protocol.spec
    out: list[str] = []
    if cfg.mode != recipe_mode:
        out.append(f"mode={cfg.mode} (the protocol's {cfg.mode_family} is {recipe_mode})")
    out += [d for d in (_outside("model", cfg.model, spec.models),
                        _outside("dataset", cfg.dataset, spec.datasets)) if d]
    if not variant and spec.sizes is not None and requested_size not in [int(s) for s in spec.sizes.value]:
        out.append(f"size={requested_size} (outside the protocol's sizes)")
        _warn_size(protocol, cfg, requested_size)
    if int(cfg.seed) not in protocol.seeds:
        out.append(f"seed={cfg.seed}")
    sections = MODE_SECTIONS.get(cfg.mode, ())
    got, want = _flat(cfg.semantic_dict(sections)), _flat(recipe.semantic_dict(sections))
    for path in field_paths():
        if path in _NOT_RECIPE or path.split(".")[0] in _NOT_RECIPE:
            continue
        if (path in got or path in want) and not same(got.get(path), want.get(path)):
            out.append(f"{path}={fmt(cfg.get(path))}")
    return out


def _warn_size(protocol: "Protocol", cfg: RunConfig, size: int) -> None:
    """One warning line per process and message: the images of an off-protocol size are
    resampled to the protocol's input (MedMNIST v2 at 64 px shrinks to 28), which no
    published number was made from."""
    from fmeval.progress import warn

    sizes = ", ".join(str(s) for s in protocol.spec.sizes.value)
    into = f"resampled to the {cfg.input_size} px input" if cfg.input_size else "fed to the encoder"
    msg = (f"protocol {protocol.name} defines sizes {sizes}; the {size} px images are {into} "
           f"(recorded as the deviation size={size}).")
    if msg not in _WARNED:
        _WARNED.add(msg)
        warn(msg)
