"""Applying a protocol to a run: protocol values, then explicit choices, deviations recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmeval.config import RunConfig
from fmeval.protocols.deviations import fmt as _fmt
from fmeval.protocols.deviations import recipe_deviations
from fmeval.protocols.deviations import same as _same
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


def protocol_reference(protocol: Protocol) -> str:
    """What a run records to reload ``protocol``: a shipped protocol's name, else its file's absolute path
    (a user file's ``name:`` may be unknown here, or a shipped protocol's name on a different file)."""
    shipped = _shipped().get(protocol.name)
    if shipped is not None and shipped.resolve() == Path(protocol.source).resolve():
        return protocol.name
    return str(Path(protocol.source).resolve())


def apply_protocol(protocol: Protocol, base: RunConfig, explicit: dict[str, Any]) -> RunConfig:
    """``base`` (built-in defaults and user defaults) -> the run under ``protocol``.

    ``explicit``: dotted path -> value the user chose on the command line (or
    a study set). The protocol's values replace the defaults, then the explicit
    choices replace those. Every setting that moves numbers and ends up
    different from the protocol's recipe is a deviation (:func:`recipe_deviations`),
    whether the protocol names it or leaves it at fmeval's default (a sampler,
    layer decay, a step cap, random weights), and whether it came from the
    command line or from user defaults. The seed must be one of the protocol's
    seeds to count as conforming; without one the first is used. Without a size
    the protocol's first listed size is used (resolution-study: 224). A size the
    protocol maps to a variant (MedMNIST v2's 224) takes the variant's settings
    (not deviations: they are the protocol).
    """
    mode = base.mode
    recipe_mode = protocol.recipe_mode(mode)
    if recipe_mode is None:
        raise ProtocolError(
            f"protocol {protocol.name!r} does not define mode {mode!r} (it defines: "
            f"{', '.join(protocol.spec.modes)})."
        )
    values: dict[str, Any] = {k: s.value for k, s in protocol.settings_for(mode, base.model).items()}
    sizes = [int(s) for s in protocol.spec.sizes.value] if protocol.spec.sizes else []
    if "size" not in explicit and sizes and int(base.size) not in sizes:
        explicit = {**explicit, "size": sizes[0]}  # no size asked for: the protocol's first, never a resample
    size = explicit.get("size", base.size)
    variant = protocol.spec.variants.get(str(size))
    if variant is not None:
        values.update(variant.settings)
    cfg = base.with_values(values)
    for path, value in explicit.items():
        if (variant is not None and path != "size" and path in variant.settings
                and not _same(cfg.with_values({path: value}).get(path), cfg.get(path))):
            raise ProtocolError(
                f"{path} is fixed to {_fmt(variant.settings[path])} by protocol {protocol.name!r} at "
                f"size {size}; drop the option or the protocol."
            )
    if variant is not None and "size" in variant.settings:
        explicit = {k: v for k, v in explicit.items() if k != "size"}
    cfg = cfg.with_values(explicit)
    if "seed" not in explicit:
        cfg = cfg.with_values({"seed": protocol.seeds[0]})
    recipe = RunConfig(mode=mode, model=cfg.model, dataset=cfg.dataset).with_values(values)
    deviations = recipe_deviations(protocol, cfg, recipe, requested_size=int(size), recipe_mode=recipe_mode,
                                   variant=variant is not None)
    return cfg.with_values({"protocol": protocol_reference(protocol), "protocol_hash": protocol.sha256,
                            "protocol_variant": str(size) if variant is not None else None,
                            "deviations": tuple(deviations)})


def model_recipe(model: str, mode: str) -> Protocol | None:
    """The shipped protocol that is ``model``'s own recipe for ``mode`` (its ``default_for``), or None.

    MedCLIP's zero-shot numbers come from its own processor and prompt ensembling (black 224
    canvas, mean of logits), not CLIP's; a run that names no protocol gets them by default.
    """
    for path in _shipped().values():
        p = Protocol.load(path)
        if model in p.spec.default_for and p.recipe_mode(mode) == mode:
            return p
    return None


def recipe_defaults(model: str, mode: str) -> dict[str, Any]:
    """Dotted path -> value of the model's own recipe for ``mode`` plus ``recipe`` (its name); {} if none."""
    p = model_recipe(model, mode)
    if p is None:
        return {}
    return {**{k: s.value for k, s in p.settings_for(mode).items() if k != "limit"}, "recipe": p.name}
