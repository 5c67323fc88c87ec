"""``fmeval submit STUDY``: a study's finished runs -> one prediction CSV per dataset, ready to pack.

A leaderboard submission is one model's predictions on every dataset at one
resolution; a study holds a grid of runs (models x modes x seeds x input
sizes ...). The study is resolved exactly as ``fmeval study run`` resolves it
(a shipped name or a YAML path, the same reports folder), its done cells are
narrowed by ``--size`` and ``--select AXIS=VALUE``, and each dataset must then
be left with one run; otherwise the refusal lists the values that still differ.

Each run's CSV is produced by ``fmeval predict``'s own functions:
:func:`fmeval.report.export.export_run` re-exports (and re-validates) a run's
``predictions.csv``; a fine-tuned cell whose run folder has none (a run from
before fmeval kept predictions) is predicted again from its adapter with
:func:`fmeval.modes.finetune.export_adapter`, as ``fmeval predict --adapter`` does.
Only fmeval's core is needed (no server extra).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fmeval.errors import ConfigError, FmevalError

#: the cell axes a --select may narrow (dataset is what a submission spans; size has --size)
AXES = ("model", "mode", "seed", "input_size", "style", "shots")


def parse_selects(selects: list[str]) -> dict[str, str]:
    """``["mode=knn", "seed=0"]`` -> ``{"mode": "knn", "seed": "0"}`` (one-line errors)."""
    out: dict[str, str] = {}
    for item in selects:
        axis, sep, value = item.partition("=")
        axis, value = axis.strip().replace("-", "_"), value.strip()
        if not sep or not value:
            raise ConfigError(f"--select {item!r}: expected AXIS=VALUE, e.g. mode=knn ({', '.join(AXES)}).")
        if axis not in AXES:
            raise ConfigError(f"--select {item!r}: {axis!r} is not a study axis; choose from {', '.join(AXES)}.")
        if axis in out:
            raise ConfigError(f"--select names {axis} twice.")
        out[axis] = value
    return out


def _fits(axes: dict[str, Any], picks: dict[str, str]) -> bool:
    return all(str(axes.get(a)) == v for a, v in picks.items())


def choose_cells(plan, size: int | None, picks: dict[str, str]) -> tuple[dict[str, Any], int]:
    """dataset -> the one done cell to submit, and the size; ConfigError (one line) otherwise."""
    name = plan.spec.name
    done = [c for c in plan.cells if (st := plan.state(c)) is not None and st["status"] == "done"]
    if not done:
        raise ConfigError(f"study {name} has no finished runs under {plan.root} (run `fmeval study run {name}` "
                          "first, or pass the --reports-dir it ran with).")
    for axis, value in picks.items():
        seen = sorted({str(c.axes.get(axis)) for c in done})
        if value not in seen:
            raise ConfigError(f"--select {axis}={value}: the study's finished runs have {axis} "
                              f"{', '.join(seen)}.")
    chosen = [c for c in done if _fits(c.axes, picks) and (size is None or c.axes["size"] == size)]
    if not chosen:
        sizes = sorted({c.axes["size"] for c in done if _fits(c.axes, picks)})
        raise ConfigError(f"study {name} has no finished run at {size} px with that selection "
                          f"(sizes: {', '.join(map(str, sizes))}).")
    sizes = sorted({c.axes["size"] for c in chosen})
    if len(sizes) > 1:
        raise ConfigError(f"study {name} has runs at several sizes ({', '.join(map(str, sizes))}); pass --size.")
    by_flag: dict[str, list] = defaultdict(list)
    for c in chosen:
        by_flag[c.axes["dataset"]].append(c)
    for flag, cells in sorted(by_flag.items()):
        if len(cells) > 1:
            differ = {a: sorted({str(c.axes.get(a)) for c in cells}) for a in AXES}
            hint = " ".join(f"--select {a}={'|'.join(v)}" for a, v in differ.items() if len(v) > 1)
            raise ConfigError(f"study {name} has {len(cells)} finished runs of {flag} at {sizes[0]} px; "
                              f"submit one model's runs: pick with {hint}.")
    return {flag: cells[0] for flag, cells in by_flag.items()}, sizes[0]


def study_predictions(plan, size: int | None, picks: dict[str, str], out_dir: Path,
                      data_root: str | None = None) -> tuple[dict[str, Path], int, list[str]]:
    """Write ``out_dir/<dataset>.csv`` for the chosen cells; (files, size, one line per file made)."""
    from fmeval.report.export import export_run
    from fmeval.report.writer import PREDICTIONS_FILE

    cells, size = choose_cells(plan, size, picks)
    files: dict[str, Path] = {}
    said: list[str] = []
    for flag, cell in sorted(cells.items()):
        run_dir = Path(plan.state(cell)["run_dir"])
        out = out_dir / f"{flag}.csv"
        try:
            if (run_dir / PREDICTIONS_FILE).is_file():
                exp = export_run(run_dir, out)
                said.append(f"{flag}: {run_dir.name}/{PREDICTIONS_FILE} ({cell.label()})")
            elif cell.config.adapter_dir and (Path(cell.config.adapter_dir) / "run.json").is_file():
                exp = _predict_adapter(Path(cell.config.adapter_dir), out, data_root)
                said.append(f"{flag}: predicted again from the adapter {Path(cell.config.adapter_dir).name} "
                            f"({cell.label()}; its run folder has no {PREDICTIONS_FILE})")
            else:
                raise ConfigError(f"{run_dir} has no {PREDICTIONS_FILE} and no fine-tuned adapter to predict "
                                  f"again; re-run the cell ({cell.label()}).")
        except ConfigError:
            raise
        except FmevalError as exc:
            raise ConfigError(f"study {plan.spec.name}, {cell.label()}: {exc}") from None
        if exp.n_split is not None and exp.n != exp.n_split:
            raise ConfigError(f"{cell.label()} scored {exp.n} of {exp.n_split} test images (--limit); a "
                              "submission needs every test image.")
        files[flag] = out
    return files, size, said


def _predict_adapter(adapter: Path, out: Path, data_root: str | None):
    """What ``fmeval predict --adapter`` does: reload the run's config, predict its test split."""
    from fmeval.modes.finetune import export_adapter, reload_config
    from fmeval.runner import make_config

    saved, changes = reload_config(adapter, data_root=data_root)
    return export_adapter(adapter, out, header=True, cfg=make_config(saved.mode, changes, base=saved))
