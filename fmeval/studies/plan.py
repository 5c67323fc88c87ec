"""Planning a study: the cells of the grid, their keys, their order and their state.

Each cell is an ordinary run: a resolved :class:`~fmeval.config.RunConfig`
keyed by the hash of what it computes (``RunConfig.digest``), so a finished
cell is recognised whatever the order, the executor or the machine. Cells are
ordered so that each (model, weights, dataset, size) group is contiguous with
its frozen modes first: the encoder loads once and features are extracted
once for all frozen modes and seeds of the group.

State lives on the filesystem next to the study's reports
(``<reports>/studies/<name>/cells/<id>.json``), written atomically once a cell
has finished or failed, so a killed run leaves nothing half-done: a cell
without a state file simply runs again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmeval.config import RunConfig
from fmeval.errors import FmevalError
from fmeval.studies.spec import StudyError, StudySpec
from fmeval.studies.state import read_state, state_path, write_state  # noqa: F401
from fmeval.tracking import TrackRequest, resolve_request

STYLE_MODES = ("zeroshot",)  # modes whose cells differ by prompt style


@dataclass(frozen=True)
class Cell:
    key: str  # sha256 of the resolved config (what it computes)
    axes: dict[str, Any]
    config: RunConfig
    frozen: bool
    track: TrackRequest = TrackRequest()  # experiment trackers (not part of the key)

    @property
    def id(self) -> str:
        return self.key[:16]

    @property
    def group(self) -> tuple:
        """Cells that share an encoder and its features."""
        c = self.config
        # multi-domain cells (issue 24): one group per shared model (its folder), whatever the dataset
        data = c.adapter_dir if c.mode.startswith("multidomain-") else c.dataset
        return (c.model, c.pretrained, c.tiny, c.weights, c.weights_seed, c.input_size, data, c.size)

    def label(self) -> str:
        a = self.axes
        extra = "".join(f" {k}={a[k]}" for k in ("input_size", "style", "shots") if a.get(k) is not None)
        return f"{a['model']} {a['mode']} {a['dataset']}@{a['size']} seed {a['seed']}{extra}"


@dataclass
class Plan:
    spec: StudySpec
    spec_hash: str
    root: Path  # reports/studies/<name>
    cells: list[Cell]
    skipped: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: cell id -> why its record does not stand (a missing run folder, a damaged file); one line each
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def state_dir(self) -> Path:
        return self.root / "cells"

    def state(self, cell: Cell) -> dict | None:
        return read_state(self.state_dir, cell, self.notes)

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "failed": 0, "left": 0}
        for c in self.cells:
            st = self.state(c)
            out["done" if st and st["status"] == "done" else "failed" if st else "left"] += 1
        return out

    def groups(self) -> list[list[Cell]]:
        """Contiguous cells sharing an encoder and its features (one worker task each)."""
        return [list(g) for _, g in itertools.groupby(self.cells, key=lambda c: c.group)]


def _matches(rule: dict[str, Any], axes: dict[str, Any]) -> bool:
    return all(axes.get(k) == v or (isinstance(v, list) and axes.get(k) in v) for k, v in rule.items())


def _needs_text(mode: str) -> bool:
    from fmeval.modes import MODES

    return MODES.get(mode).needs_text


def _has_text(model: str) -> bool:
    from fmeval.adapters import ADAPTERS

    return ADAPTERS.entry(model).tags.get("text") == "yes"


def _validate_axes(spec: StudySpec) -> None:
    from fmeval.adapters import ADAPTERS
    from fmeval.data import all_flags, dataset_info
    from fmeval.data.sources import check_spec
    from fmeval.modes import MODES

    try:
        for m in spec.axes.models:
            ADAPTERS.entry(m)
        for d in spec.axes.datasets:
            check_spec(d)  # a MedMNIST name or a path to the user's data
            if d.lower() in all_flags():  # a MedMNIST size the dataset lacks would only fail when its cells run
                info = dataset_info(d)
                bad = [s for s in spec.axes.sizes if s not in info.sizes]
                if bad:
                    raise StudyError(f"study {spec.name}: axes.sizes: size {', '.join(map(str, bad))} is not "
                                     f"available for {info.flag} (sizes: {', '.join(map(str, info.sizes))}).")
        for m in spec.axes.modes:
            MODES.entry(m)
    except FmevalError as exc:
        raise StudyError(f"study {spec.name}: axes: {exc}") from None


def plan_study(spec: StudySpec, spec_hash: str, *, reports_root: Path,
               user: dict[str, Any] | None = None) -> Plan:
    """Every cell of the grid as a resolved config, ordered for reuse; invalid
    settings fail here, naming the cell, before anything runs."""
    from fmeval.modes import MODES
    from fmeval.data.fewshot import FEWSHOT_MODES  # modes whose cells differ by K
    from fmeval.runner import make_config

    _validate_axes(spec)
    root = Path(reports_root) / "studies" / spec.name
    try:  # every cell's trackers, checked (names, installed extras) before anything runs
        track = resolve_request(spec.track, group=spec.name, root=str(root / "tracking"))
    except FmevalError as exc:
        raise StudyError(f"study {spec.name}: {exc}") from None
    seeds = spec.axes.seeds
    if seeds is None:
        if spec.protocol:
            from fmeval.protocols import load_protocol

            seeds = load_protocol(spec.protocol).seeds
        else:
            seeds = [0]
    cells: dict[str, Cell] = {}
    skipped: list[tuple[dict[str, Any], str]] = []
    a = spec.axes
    for model, dataset, size, input_size, mode, seed, style, shots in itertools.product(
            a.models, a.datasets, a.sizes, a.input_sizes, a.modes, seeds, a.styles, a.shots):
        axes = {"model": model, "dataset": dataset, "size": size, "input_size": input_size, "mode": mode,
                "seed": seed,
                "style": style if mode in STYLE_MODES else None,
                "shots": shots if mode in FEWSHOT_MODES else None}
        if any(_matches(rule, axes) for rule in spec.exclude):
            continue
        if _needs_text(mode) and not _has_text(model):
            skipped.append((axes, f"{model} has no text encoder"))
            continue
        explicit: dict[str, Any] = dict(spec.settings)
        explicit.update(model=model, dataset=dataset, size=size, seed=seed)
        if input_size is not None:
            explicit["input_size"] = input_size
        if axes["style"] is not None:
            explicit["zeroshot.style"] = axes["style"]
        if axes["shots"] is not None:
            explicit["fewshot.shots"] = axes["shots"]
        for ov in spec.overrides:
            if _matches(ov.when, axes):
                explicit.update(ov.set)
        if spec.protocol:
            explicit["protocol"] = spec.protocol
        if mode.startswith("multidomain-"):  # issue 24: the study's datasets are the set trained together
            explicit.setdefault("multidomain.datasets", tuple(a.datasets))
        try:
            cfg = make_config(mode, explicit, user=user)
        except FmevalError as exc:
            raise StudyError(f"study {spec.name}, cell {model} {mode} {dataset}@{size} seed {seed}: {exc}") from None
        key = cfg.digest(MODES.get(mode).sections)
        cfg = cfg.with_values({"reports_dir": str(root / "runs")})
        if mode.startswith("finetune-"):
            cfg = cfg.with_values({"adapter_dir": str(root / "adapters" / key[:16])})
        elif mode.startswith("multidomain-"):  # one shared model: the set's cells share its folder
            shared = cfg.with_values({"dataset": cfg.multidomain.datasets[0]}).digest(MODES.get(mode).sections)
            cfg = cfg.with_values({"adapter_dir": str(root / "adapters" / f"md-{shared[:16]}")})
        cells.setdefault(key, Cell(key, axes, cfg, MODES.get(mode).frozen, track))
    ordered = sorted(cells.values(), key=lambda c: (repr(c.group), not c.frozen, c.axes["mode"],
                                                    c.axes["seed"], str(c.axes["style"]), str(c.axes["shots"])))
    return Plan(spec, spec_hash, root, ordered, skipped)


# -- cell state: fmeval.studies.state (re-exported: one home, the old names keep working) --


def estimate_left(plan: Plan) -> str:
    """Work left, from the wall times of finished cells of the same mode (and model when known)."""
    done: dict[tuple[str, str], list[float]] = {}
    for c in plan.cells:
        st = plan.state(c)
        if st and st.get("status") == "done" and st.get("wall_time_s") is not None:
            done.setdefault((c.axes["mode"], c.axes["model"]), []).append(float(st["wall_time_s"]))
    by_mode: dict[str, list[float]] = {}
    for (mode, _), v in done.items():
        by_mode.setdefault(mode, []).extend(v)
    total, unknown = 0.0, 0
    for c in plan.cells:
        st = plan.state(c)
        if st and st.get("status") == "done":
            continue
        times = done.get((c.axes["mode"], c.axes["model"])) or by_mode.get(c.axes["mode"])
        if times:
            total += sum(times) / len(times)
        else:
            unknown += 1
    if not done:
        return "no estimate yet (no finished cell to time)"
    text = f"~{total / 60:.1f} min of compute"
    return text + (f" + {unknown} cell(s) of modes not timed yet" if unknown else "")
