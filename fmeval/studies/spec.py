"""The study file format.

A study names a protocol (or none), settings shared by every cell, the axes
to cross, per-axis overrides and exclusions, and how to execute. Everything
is validated before anything runs; errors name the key::

    name: quick
    protocol: null
    settings: {tiny: true, n_boot: 200}
    axes:
      models: [vit-s16, clip-vit-b32]
      datasets: [pneumoniamnist]
      sizes: [28]
      modes: [knn, linprobe, zeroshot, finetune-lora]
      seeds: [0, 1]
      styles: [templates, medical]      # zero-shot prompt styles
    overrides:
      - when: {mode: finetune-lora}
        set: {train.epochs: 2}
    exclude:
      - {model: vit-s16, mode: zeroshot}
    track: [mlflow, tensorboard]        # optional: experiment trackers, grouped by the study's name
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fmeval.errors import ConfigError
from fmeval.yaml_files import first_error, read_mapping

AXIS_KEYS = ("model", "dataset", "size", "input_size", "mode", "seed", "style", "shots")


class StudyError(ConfigError):
    """A study file is malformed or cannot be planned."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axes(_Strict):
    models: list[str] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    sizes: list[int] = [28]
    input_sizes: list[int | None] = [None]  # encoder input resolution (None: the protocol's/encoder's)
    modes: list[str] = Field(min_length=1)
    seeds: list[int] | None = None  # None: the protocol's seeds (or [0])
    styles: list[str | None] = [None]  # zero-shot prompt styles (None: the bank's default)
    shots: list[int | None] = [None]  # few-shot K per class (None: the full training split)


class Override(_Strict):
    when: dict[str, Any]
    set: dict[str, Any]

    @field_validator("when")
    @classmethod
    def _known_axes(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(AXIS_KEYS))
        if unknown:
            raise ValueError(f"unknown axis {', '.join(unknown)} (axes: {', '.join(AXIS_KEYS)})")
        return v


class SlurmSettings(_Strict):
    partition: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 64
    time_min: int = 240
    array_parallelism: int = 32
    cells_per_task: int = 0  # 0: one (model, dataset, size) group per task
    account: str | None = None
    qos: str | None = None


class ExecutorSettings(_Strict):
    kind: str = "local"  # "local" | "slurm"
    jobs: int = Field(1, ge=1)
    slurm: SlurmSettings = SlurmSettings()


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    protocol: str | None = None
    settings: dict[str, Any] = {}
    axes: Axes
    overrides: list[Override] = []
    exclude: list[dict[str, Any]] = []
    summary_datasets: list[str] | None = None
    executor: ExecutorSettings = ExecutorSettings()
    # experiment trackers of every cell, grouped under the study's name (fmeval.tracking); None: the
    # user's setting. Not part of the study's hash: tracking never changes what a cell computes.
    track: list[str] | str | None = None

    @field_validator("exclude")
    @classmethod
    def _exclude_axes(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, rule in enumerate(v):
            unknown = sorted(set(rule) - set(AXIS_KEYS))
            if unknown:
                raise ValueError(f"exclude[{i}]: unknown axis {', '.join(unknown)}")
        return v


def load_study(path: str | Path) -> tuple[StudySpec, str]:
    """Parse and validate a study file; returns (spec, sha256 of its canonical form)."""
    path = Path(path)
    raw = read_mapping(path, "study file", StudyError, "(name, axes, ...)")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise StudyError(f"study {path}: {first_error(err)}") from None
    canonical = spec.model_dump(mode="json", exclude={"track"})
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return spec, digest


def shipped_studies() -> dict[str, Path]:
    """Studies shipped with fmeval (the repository's ``studies/`` folder)."""
    try:
        from fmeval.resources import shipped_files  # packaged data (wheel installs)

        return {p.stem: Path(str(p)) for p in shipped_files("studies") if str(p).endswith(".yaml")}
    except ImportError:
        import fmeval

        folder = Path(fmeval.__file__).resolve().parents[1] / "studies"
        return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_study_path(spec: str | Path) -> Path:
    """A study file as typed (a path that exists wins), else a shipped study by name."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else str(spec)
    shipped = shipped_studies()
    if stem in shipped:
        return shipped[stem]
    raise StudyError(f"study file {spec} not found (shipped studies: {', '.join(shipped) or 'none'}).")
