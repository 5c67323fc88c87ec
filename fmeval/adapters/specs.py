"""Model specs: any encoder named by its hub name or by the user's own code.

``--model`` takes a registered short name (``vit-b16``) or a *spec*, a string
whose prefix names the family that builds it:

=============================  ====================================================
``timm:<arch>[.<tag>]``        any timm model; the tag is pinned when omitted
``open_clip:<arch>/<tag>``     any open_clip model (also ``open_clip:hf-hub:<org>/<repo>``)
``hf:<org>/<repo>[@<rev>]``    any transformers vision model (also ``hf:<local folder>``)
``torchvision:<name>[:<W>]``   any torchvision classifier, head removed (``W``: weights enum)
``<file>.py:<factory>``        the user's own factory in a Python file
``<module.path>:<factory>``    the user's own factory in an importable module
=============================  ====================================================

plus the names installed packages register in the entry-point group
``fmeval.adapters``. This module only *parses* a spec into a typed dataclass;
each family module registers a :class:`SpecKind` (how to check the spec cheaply
and which factory builds it) in :data:`SPEC_KINDS`. :class:`ModelRegistry` is the
one model registry: a short name is an entry (tagged with the spec it stands
for), and anything else is parsed, checked and turned into an entry on lookup,
so ``ADAPTERS.entry(name)`` and ``create_adapter(name)`` work alike for both and
nothing above ``fmeval.adapters`` ever parses a model string.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fmeval.errors import ModelError
from fmeval.registry import Entry, Registry


# --------------------------------------------------------------------------- #
# Typed specs
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec; ``text`` is what the user typed (the adapter name and report key)."""

    text: str

    kind: str = ""  # set by subclasses (the SPEC_KINDS key)


@dataclass(frozen=True)
class TimmModelSpec(ModelSpec):
    arch: str = ""
    tag: str | None = None
    kind: str = "timm"


@dataclass(frozen=True)
class OpenClipModelSpec(ModelSpec):
    arch: str = ""  # builtin config name, or hf-hub:<org>/<repo>
    pretrained: str | None = None
    kind: str = "open_clip"


@dataclass(frozen=True)
class HfModelSpec(ModelSpec):
    repo: str = ""  # <org>/<repo>, or a local folder
    revision: str | None = None
    local: bool = False
    kind: str = "hf"


@dataclass(frozen=True)
class TorchvisionModelSpec(ModelSpec):
    arch: str = ""
    weights: str | None = None  # enum member name, e.g. IMAGENET1K_V2
    kind: str = "torchvision"


@dataclass(frozen=True)
class CodeModelSpec(ModelSpec):
    """``file.py:factory`` (``path`` set) or ``module.path:factory`` (``module`` set)."""

    factory: str = ""
    path: Path | None = None
    module: str | None = None
    kind: str = "code"


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _bad(text: str, why: str) -> ModelError:
    return ModelError(f"bad model spec {text!r}: {why}")


def _parse_timm(text: str, rest: str) -> ModelSpec:
    arch, _, tag = rest.partition(".")
    if not arch:
        raise _bad(text, "expected timm:<arch>[.<tag>], e.g. timm:resnet18.a1_in1k")
    return TimmModelSpec(text, arch=arch, tag=tag or None)


def _parse_open_clip(text: str, rest: str) -> ModelSpec:
    if rest.startswith("hf-hub:"):
        if not _HF_REPO.match(rest.removeprefix("hf-hub:")):
            raise _bad(text, "expected open_clip:hf-hub:<org>/<repo>")
        return OpenClipModelSpec(text, arch=rest, pretrained=None)
    arch, sep, tag = rest.partition("/")
    if not arch or not sep or not tag:
        raise _bad(text, "expected open_clip:<arch>/<pretrained>, e.g. open_clip:ViT-B-32/openai "
                         "(see open_clip.list_pretrained()), or open_clip:hf-hub:<org>/<repo>")
    return OpenClipModelSpec(text, arch=arch, pretrained=tag)


def _parse_hf(text: str, rest: str) -> ModelSpec:
    folder = Path(rest).expanduser()
    if rest.startswith((".", "/", "~")) or folder.is_dir():
        return HfModelSpec(text, repo=str(folder), local=True)
    repo, _, rev = rest.partition("@")
    if not _HF_REPO.match(repo):
        raise _bad(text, "expected hf:<org>/<repo>[@<revision>] or hf:<local folder> "
                         f"({rest!r} is neither a repo id nor an existing folder)")
    return HfModelSpec(text, repo=repo, revision=rev or None)


def _parse_torchvision(text: str, rest: str) -> ModelSpec:
    arch, _, weights = rest.partition(":")
    if not arch:
        raise _bad(text, "expected torchvision:<name>[:<weights enum>], e.g. torchvision:resnet50:IMAGENET1K_V2")
    return TorchvisionModelSpec(text, arch=arch, weights=weights or None)


#: prefix -> parser of what follows it
PREFIXES: dict[str, Callable[[str, str], ModelSpec]] = {
    "timm": _parse_timm,
    "open_clip": _parse_open_clip,
    "hf": _parse_hf,
    "torchvision": _parse_torchvision,
}


def looks_like_spec(text: str) -> bool:
    """A string fmeval reads as a spec rather than a short name (it has a ``:``)."""
    return ":" in text


def parse_spec(text: str) -> ModelSpec:
    """The typed spec of ``text``; one ModelError line when it fits no grammar.

    Parsing reads no file and imports nothing: checks that need a library
    (does timm know this arch?) are the family's :class:`SpecKind` ``check``.
    """
    text = text.strip()
    prefix, _, rest = text.partition(":")
    if prefix in PREFIXES:
        return PREFIXES[prefix](text, rest)
    source, _, factory = text.rpartition(":")
    if not _IDENT.match(factory or ""):
        raise _bad(text, f"{factory!r} after the last ':' is not a Python function name "
                         f"(known prefixes: {', '.join(f'{p}:' for p in PREFIXES)})")
    if source.endswith(".py"):
        return CodeModelSpec(text, factory=factory, path=Path(source).expanduser())
    if _MODULE.match(source):
        return CodeModelSpec(text, factory=factory, module=source)
    raise _bad(text, f"expected one of {', '.join(f'{p}:' for p in PREFIXES)}, "
                     "<file>.py:<factory> or <module.path>:<factory>")


# --------------------------------------------------------------------------- #
# Families and the one model registry
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SpecKind:
    """How one spec family is checked and built.

    ``check(spec) -> tags`` validates without downloading weights (an unknown
    name fails here with close matches) and returns the registry tags
    (``family``, ``text``, ``weights``: the pinned tag or revision). ``build``
    is the adapter factory ``(spec, AdapterConfig) -> Adapter``.
    """

    check: Callable[[Any], dict[str, str]]
    build: Callable[[Any, Any], Any]
    description: str
    module: str  # imported on first use (its imports cost seconds)


SPEC_KINDS: Registry[SpecKind] = Registry("model spec kind", ModelError)


def register_spec_kind(kind: str, module: str, description: str) -> None:
    """Name the module that implements ``kind`` (it defines ``check_spec`` and ``build_spec``)."""

    def lazy(attr: str) -> Callable:
        def call(*args):
            return getattr(importlib.import_module(module), attr)(*args)

        return call

    SPEC_KINDS.add(kind, SpecKind(lazy("check_spec"), lazy("build_spec"), description, module))


register_spec_kind("timm", "fmeval.adapters.any_timm", "any timm model")
register_spec_kind("open_clip", "fmeval.adapters.any_openclip", "any open_clip model with its text tower")
register_spec_kind("hf", "fmeval.adapters.hf", "any transformers vision model (Auto classes)")
register_spec_kind("torchvision", "fmeval.adapters.any_torchvision", "any torchvision classifier")
register_spec_kind("code", "fmeval.adapters.user_code", "the user's own factory")


class ModelRegistry(Registry):
    """Short names and plugins (registered) plus specs (parsed on lookup).

    A spec's entry keeps the user's spelling (hub ids and timm tags are case
    sensitive) and is memoised, so its check runs once per process.
    """

    def __init__(self, kind: str, error: type = ModelError) -> None:
        super().__init__(kind, error)
        self._specs: dict[str, Entry] = {}

    def entry(self, name: str) -> Entry:
        if name.lower() in self._entries or not looks_like_spec(name):
            return super().entry(name)
        key = name.strip()
        if key not in self._specs:
            spec = parse_spec(key)
            kind = SPEC_KINDS.get(spec.kind)
            tags = {"spec": spec.text, "kind": spec.kind, "ndim": "2", **kind.check(spec)}

            def factory(cfg, spec=spec, kind=kind):
                return kind.build(spec, cfg)

            self._specs[key] = Entry(key, factory, kind.description, tags)
        return self._specs[key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if super().__contains__(name):
            return True
        try:
            self.entry(name)
        except ModelError:
            return False
        return True

    def registered(self) -> Iterator[Entry]:
        return iter(self)
