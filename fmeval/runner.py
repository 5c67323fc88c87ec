"""One path for every run: options -> RunConfig -> mode -> the one reporter.

The CLI and the study executors both call :func:`make_config` and
:func:`execute`, so a cell of a study and a command typed by hand are the
same run with the same hash and the same report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fmeval.config import RunConfig
from fmeval.errors import ConfigError
from fmeval.validation import check_inputs, check_required, validate_config

if TYPE_CHECKING:
    from fmeval.tracking import TrackRequest


def make_config(mode: str, explicit: dict[str, Any], *, user: dict[str, Any] | None = None,
                base: RunConfig | None = None) -> RunConfig:
    """Built-in defaults < user defaults (file/env) < protocol < explicit choices.

    ``base``: a recorded run's own config (``finetune --resume``, ``evaluate``) takes
    the place of the defaults, user settings and protocol; ``explicit`` then changes it.

    ``explicit``: dotted path -> value given on the command line (or by a study
    cell). ``user``: dotted path -> value from ``fmeval.toml``/environment;
    those are not deviations from a protocol. Missing required settings are
    named together in one message; every named choice is checked against its
    registry (:func:`fmeval.validation.validate_config`).
    """
    from fmeval.modes import MODES

    MODES.get(mode)
    if base is not None:
        cfg = base.with_values(explicit)
        validate_config(cfg)
        return cfg
    merged = {**(user or {}), **explicit}
    check_required(mode, merged)
    base = RunConfig(mode=mode, model=str(merged["model"]), dataset=str(merged["dataset"]))
    protocol = explicit.get("protocol")
    if not protocol:  # a model's own recipe (MedCLIP's zero-shot) is its default, recorded as ``recipe``
        from fmeval.protocols import recipe_defaults

        base = base.with_values(recipe_defaults(base.model, mode))
    base = base.with_values({k: v for k, v in (user or {}).items() if k not in ("model", "dataset")})
    if protocol:
        from fmeval.protocols import apply_protocol, load_protocol

        rest = {k: v for k, v in explicit.items() if k != "protocol"}
        cfg = apply_protocol(load_protocol(str(protocol)), base, rest)
    else:
        cfg = base.with_values(explicit)
    validate_config(cfg)  # every named choice, before any data is opened or model built
    return cfg


def execute(cfg: RunConfig, *, write: bool = True, run: Callable[[RunConfig], Any] | None = None,
            track: "TrackRequest | None" = None):
    """Run one config through its mode and finish it with the reporter.

    ``run``: what computes the result instead of the mode's own ``run`` (``fmeval
    evaluate`` scores a saved adapter under the run's fine-tuning config).
    ``track``: the trackers that mirror the run (None: ``--track`` or the user's
    setting, :func:`fmeval.tracking.resolve_request`); they never change the result.
    """
    from fmeval.modes import MODES
    from fmeval.report import check_writable, finish

    mode = MODES.get(cfg.mode)
    check_inputs(cfg)
    if write:
        check_writable(cfg.reports_dir)
    # -- experiment tracking (fmeval.tracking): opened before the run, fed by its training loops --
    with _tracking(cfg, track) as tracker:
        result = finish((run or mode.run)(cfg), cfg.reports_dir, write=write)
        if tracker is not None:
            from fmeval.tracking import final_metrics

            files = sorted(p for p in Path(result.report_dir).iterdir() if p.is_file()) if result.report_dir else []
            tracker.finish(final_metrics(result.to_dict()), files, run_id=result.run_id)
    return result


def _tracking(cfg: RunConfig, track: "TrackRequest | None"):
    """The run's trackers (a no-op context when none is requested)."""
    from fmeval.io import new_run_id
    from fmeval.settings import reports_root
    from fmeval.tracking import TrackerContext, resolve_request, run_params, tracked_run

    request = track if track is not None else resolve_request()
    if not request:
        return tracked_run((), None, {})  # type: ignore[arg-type]
    from fmeval.modes.base import protocol_record

    from fmeval.config import MODE_SECTIONS, SECTIONS

    root = Path(request.root) if request.root else Path(cfg.reports_dir or reports_root()) / "tracking"
    ctx = TrackerContext(root, request.group, new_run_id(cfg.mode, cfg.model, cfg.dataset, cfg.size))
    read = MODE_SECTIONS.get(cfg.mode, SECTIONS)  # the sections this mode reads, as in its hash
    config = {k: v for k, v in cfg.to_dict().items() if k not in SECTIONS or k in read}
    return tracked_run(request.names, ctx, run_params(config, protocol_record(cfg)))


def fewshot_configs(mode: str, explicit: dict[str, Any], shots: tuple[int, ...], draws: int, *,
                    user: dict[str, Any] | None = None) -> list[RunConfig]:
    """One ordinary config per (K, draw), K-major: a few-shot sweep is these runs, nothing more.

    Every config is resolved before any runs, so a bad option fails before
    the first model loads.
    """
    from fmeval.data.fewshot import FEWSHOT_MODES

    if mode not in FEWSHOT_MODES:
        raise ConfigError(f"--shots applies to {', '.join(FEWSHOT_MODES)}, not {mode}.")
    if len(set(shots)) != len(shots):
        raise ConfigError(f"--shots lists a value twice: {','.join(map(str, shots))}.")
    if draws < 1:
        raise ConfigError("--draws must be >= 1.")
    return [make_config(mode, {**explicit, "fewshot.shots": k, "fewshot.draw": d}, user=user)
            for k in sorted(shots) for d in range(draws)]
