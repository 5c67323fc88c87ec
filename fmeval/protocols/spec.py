"""The protocol file format: a published recipe as versioned, validated data.

A protocol YAML names every setting the source defines, each with the
sentence of the source it follows, so ``fmeval protocols show`` can print a
recipe the way a methods section would. What the source leaves open is listed
under ``silent`` together with the value fmeval uses. Unknown keys, unknown
setting paths and values of the wrong type are errors, found before any model
loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fmeval.errors import ConfigError
from fmeval.yaml_files import first_error, read_mapping


class ProtocolError(ConfigError):
    """A protocol file is malformed, or a protocol cannot apply to a run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Setting(_Strict):
    """One setting and where it comes from."""

    value: Any
    source: str


class Variant(_Strict):
    """What a requested ``--size`` means under the protocol (MedMNIST v2's "224":
    the 28 px images NEAREST-upsampled, with the standard ResNet stem)."""

    settings: dict[str, Any]
    source: str


class Caveat(_Strict):
    """A known difference from the source that applies to some runs only: recorded in each of
    their reports (not only listed under ``silent``)."""

    modes: list[str]
    models: list[str]
    text: str


class ProtocolSpec(_Strict):
    name: str
    version: int
    title: str
    citation: str
    url: str | None = None
    description: str = ""
    modes: list[str]
    seeds: Setting
    models: Setting | None = None
    datasets: Setting | None = None
    sizes: Setting | None = None
    settings: dict[str, Setting] = {}
    mode_settings: dict[str, dict[str, Setting]] = {}
    variants: dict[str, Variant] = {}
    # Settings that differ per model (the resolution study feeds EfficientNetV2-S at its own 384 px).
    model_settings: dict[str, dict[str, Setting]] = {}
    silent: list[str] = []
    caveats: list[Caveat] = []
    # Models whose own recipe this is: without --protocol, a run of one of them in one of the
    # protocol's modes takes these settings as its defaults (recorded as the run's ``recipe``).
    default_for: list[str] = []

    @field_validator("variants", mode="before")
    @classmethod
    def _str_keys(cls, v: Any) -> Any:
        return {str(k): x for k, x in v.items()} if isinstance(v, dict) else v


_LOADED: dict[tuple, "Protocol"] = {}  # (path, size, mtime_ns) -> the checked protocol


class Protocol:
    """A loaded, checked protocol with its content hash (treated as read-only once loaded)."""

    def __init__(self, spec: ProtocolSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self._check()

    @classmethod
    def load(cls, path: str | Path) -> "Protocol":
        """Parse and check the file once per (path, size, mtime): a study of 4,320 cells makes a
        config per cell, and parsing the YAML each time cost 0.1 s per cell."""
        path = Path(path)
        try:
            st = path.stat()
            key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key in _LOADED:
            return _LOADED[key]
        try:
            spec = ProtocolSpec.model_validate(read_mapping(path, "protocol", ProtocolError, "of settings"))
        except ValidationError as err:
            raise ProtocolError(f"protocol {path}: {first_error(err)}") from None
        loaded = cls(spec, str(path))
        if key is not None:
            _LOADED[key] = loaded
        return loaded

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.spec.seeds.value]

    def recipe_mode(self, mode: str) -> str | None:
        """The protocol's own mode for a run of ``mode``: the mode itself when listed (or its
        family is, e.g. ``finetune``); else a listed mode of the same family (LoRA under a
        full fine-tuning recipe: covered, recorded as a deviation); else None (not covered)."""
        family = mode.split("-")[0]
        if mode in self.spec.modes or family in self.spec.modes:
            return mode
        return next((m for m in self.spec.modes if m.split("-")[0] == family), None)

    def covers(self, mode: str) -> bool:
        return self.recipe_mode(mode) is not None

    def settings_for(self, mode: str, model: str | None = None) -> dict[str, Setting]:
        """Every setting that applies to ``mode`` (common ones, then the mode's or its group's,
        then ``model``'s own)."""
        out = dict(self.spec.settings)
        group = mode.split("-")[0]
        for key in (group, mode):
            out.update(self.spec.mode_settings.get(key, {}))
        if model is not None:
            out.update(self.spec.model_settings.get(model, {}))
        return out

    def caveats_for(self, mode: str, model: str) -> list[str]:
        return [c.text for c in self.spec.caveats if model in c.models
                and (mode in c.modes or mode.split("-")[0] in c.modes)]

    def describe(self, deviations: list[str] | tuple[str, ...] = (), *, mode: str = "",
                 model: str = "") -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "sha256": self.sha256, "title": self.spec.title,
               "citation": self.spec.citation, "deviations": list(deviations)}
        caveats = self.caveats_for(mode, model)
        if caveats:
            out["caveats"] = caveats
        return out

    def _check(self) -> None:
        """Every path must be a real config field and every value must fit it."""
        from fmeval.config import RunConfig

        probe = RunConfig(mode="knn", model="x", dataset="x")
        blocks = [("settings", self.spec.settings)] + [
            (f"mode_settings.{m}", s) for m, s in self.spec.mode_settings.items()] + [
            (f"model_settings.{m}", s) for m, s in self.spec.model_settings.items()]
        try:
            for where, block in blocks:
                probe.with_values({k: v.value for k, v in block.items()})
            for size, var in self.spec.variants.items():
                probe.with_values(var.settings)
        except ConfigError as exc:
            raise ProtocolError(f"protocol {self.source} ({where}): {exc}") from None
