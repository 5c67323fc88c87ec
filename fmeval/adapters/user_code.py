"""The user's own encoder: ``file.py:factory``, ``module.path:factory`` and plugins.

A factory (called with no argument, or with the :class:`AdapterConfig` when it
takes one) returns either an fmeval :class:`Adapter` or any ``nn.Module``
mapping normalised images ``[N, 3, H, W]`` to features ``[N, D]``. A plain
module is wrapped in :class:`ModuleAdapter`: its input size, mean and std come
from its ``input_size``, ``mean`` and ``std`` attributes (``--input-size``
overrides the size), and its weights id is the SHA-256 of the source file plus
its state dict, so the cache misses whenever the code or the weights change.

Installed packages add models through the entry-point group
``fmeval.adapters`` (``name = module:factory``); they are registered by name,
with the package they come from, and imported only when used, so a broken
plugin fails in one line naming its package and never breaks fmeval itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fmeval.adapters.base import Adapter, AdapterConfig, Preprocess, load_state_dict_file, load_weights
from fmeval.adapters.lora_targets import find_lora_targets
from fmeval.adapters.specs import CodeModelSpec
from fmeval.errors import ConfigError, ModelError

FAMILY = "user"  # never measured for bf16: fp32 on CPU unless --precision bf16
ENTRY_POINT_GROUP = "fmeval.adapters"


def _load_file_module(path: Path):
    path = path.resolve()
    # keyed by path AND content: an edited file is imported afresh, never served stale
    name = "fmeval_user_" + hashlib.sha256(str(path).encode() + path.read_bytes()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # the user's code: any error, one line
        raise ModelError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    sys.modules[name] = module
    return module


def _module_of(spec: CodeModelSpec):
    if spec.path is not None:
        if not spec.path.is_file():
            raise ModelError(f"model spec {spec.text!r}: no file {spec.path}.")
        return _load_file_module(spec.path)
    try:
        return importlib.import_module(spec.module)  # type: ignore[arg-type]
    except Exception as exc:
        raise ModelError(f"model spec {spec.text!r}: cannot import {spec.module} "
                         f"({type(exc).__name__}: {exc}).") from None


def factory_of(spec: CodeModelSpec) -> Callable:
    module = _module_of(spec)
    fn = getattr(module, spec.factory, None)
    if not callable(fn):
        where = spec.path or spec.module
        defined = sorted(n for n, v in vars(module).items()
                         if inspect.isfunction(v) and not n.startswith("_") and v.__module__ == module.__name__)
        raise ModelError(f"{where} has no function {spec.factory!r}"
                         + (f"; it defines: {', '.join(defined)}." if defined else "."))
    return fn


def source_file(spec: CodeModelSpec, fn: Callable) -> Path | None:
    if spec.path is not None:
        return spec.path
    try:
        return Path(inspect.getfile(fn))
    except TypeError:
        return None


def check_spec(spec: CodeModelSpec) -> dict[str, str]:
    factory_of(spec)
    return {"family": FAMILY, "text": "no", "weights": "code", "lazy": "no"}


def build_spec(spec: CodeModelSpec, cfg: AdapterConfig) -> Adapter:
    fn = factory_of(spec)
    return build_from_factory(fn, cfg, text=spec.text, source=source_file(spec, fn), kind="code")


# --------------------------------------------------------------------------- #
# Wrapping whatever a factory returns
# --------------------------------------------------------------------------- #
def state_digest(module: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, values), in key order."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ModuleAdapter(Adapter):
    """A plain ``nn.Module`` from the user's factory, with the preprocessing it declares."""

    code_version = "1"
    family = FAMILY

    def __init__(self, module: nn.Module, cfg: AdapterConfig, where: str) -> None:
        super().__init__()
        self.model = module
        missing = [a for a in ("mean", "std") if getattr(module, a, None) is None and getattr(cfg, a) is None]
        if getattr(module, "input_size", None) is None and cfg.input_size is None:
            missing.insert(0, "input_size")
        if missing:
            raise ModelError(f"{where} returned a {type(module).__name__} without {', '.join(missing)}: "
                             "set them as attributes of the module (or pass --input-size, --mean, --std).")
        self.preprocess = Preprocess(
            input_size=int(cfg.input_size or module.input_size),
            mean=tuple(float(v) for v in (cfg.mean or module.mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in (cfg.std or module.std)),  # type: ignore[arg-type]
            interpolation=str(getattr(module, "interpolation", "bilinear")),
        )
        s = self.preprocess.input_size
        module.eval()
        with torch.no_grad():
            out = module(torch.zeros(2, 3, s, s))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{where} returned a module whose output for [2, 3, {s}, {s}] is {shape}, "
                             "not features [N, D].")
        self.feature_dim = int(out.shape[1])
        self.pooling = "the module's own output"

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _call(fn: Callable, cfg: AdapterConfig) -> Any:
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    try:
        return fn(cfg) if required else fn()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"the factory {getattr(fn, '__qualname__', fn)} failed: "
                         f"{type(exc).__name__}: {exc}") from None


def build_from_factory(fn: Callable, cfg: AdapterConfig, *, text: str, source: Path | None,
                       kind: str, extra: dict | None = None) -> Adapter:
    """Call ``fn`` and make an adapter of its result; ``weights_id`` digests the code
    (``source``) and the weights, so an edit of either misses the cache."""
    if cfg.tiny or not cfg.pretrained:
        raise ConfigError(f"{text}: the factory decides its own weights; --tiny and --random-init "
                          "do not apply (pass --weights PATH to load a checkpoint into it).")
    where = f"the factory {text}"
    built = _call(fn, cfg)
    if isinstance(built, Adapter):
        adapter = built
        module = adapter.backbone
    elif isinstance(built, nn.Module):
        adapter, module = None, built
    else:
        raise ModelError(f"{where} returned {type(built).__name__}, not an fmeval Adapter or a "
                         "torch.nn.Module mapping images [N, 3, H, W] to features [N, D].")
    report = None
    if cfg.weights is not None:
        report = load_weights(module, load_state_dict_file(cfg.weights), strict=cfg.strict,
                              source=str(cfg.weights), allow_partial=cfg.allow_partial)
    if adapter is None:
        adapter = ModuleAdapter(module, cfg, where)
    adapter.load_report = report
    code = hashlib.sha256(source.read_bytes()).hexdigest() if source and source.is_file() else "unknown"
    digest = hashlib.sha256(f"{code}|{state_digest(adapter)}".encode()).hexdigest()
    adapter.weights_id = f"{kind}:{digest[:16]}"  # never the factory's own claim: the code may change
    if not adapter.lora_targets:
        choice = find_lora_targets(adapter.backbone)
        adapter.lora_targets, adapter.lora_rule = choice.targets, choice.rule  # type: ignore[misc]
    adapter.model_spec = {"spec": text, "kind": kind, "resolved": f"sha256:{digest[:16]}",
                          "source": str(source) if source else None, "source_sha256": code, **(extra or {})}
    return adapter


# --------------------------------------------------------------------------- #
# Plugins
# --------------------------------------------------------------------------- #
def register_plugins(registry) -> list[str]:
    """Register every ``fmeval.adapters`` entry point by name (not imported yet).

    A plugin whose name a built-in model already has is skipped (the built-in
    name must keep meaning what it meant); returns the names skipped.
    """
    from importlib.metadata import entry_points

    skipped = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else "?"
        if ep.name in registry:
            skipped.append(f"{ep.name} ({package})")
            continue
        registry.add(ep.name, _plugin_factory(ep, package), f"plugin from {package} ({ep.value})",
                     family=FAMILY, text="no", weights="plugin", plugin="yes", package=package,
                     spec=ep.value, lazy="no")
    return skipped


def _plugin_factory(ep, package: str) -> Callable[[AdapterConfig], Adapter]:
    def factory(cfg: AdapterConfig) -> Adapter:
        try:
            fn = ep.load()
        except Exception as exc:
            raise ModelError(f"plugin model {ep.name!r} from package {package} failed to import "
                             f"({ep.value}): {type(exc).__name__}: {exc}") from None
        return build_from_factory(fn, cfg, text=ep.name, source=source_file_of(fn), kind="plugin",
                                  extra={"package": package, "entry_point": ep.value})

    return factory


def source_file_of(fn: Callable) -> Path | None:
    try:
        return Path(inspect.getfile(fn))
    except TypeError:
        return None
