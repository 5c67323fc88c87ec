"""``fmeval predict``: a finished run's test predictions as the CSV ``fmeval score`` reads.

Every run folder already holds ``predictions.csv`` (written by the reporter);
:func:`export_run` re-exports it, re-validated, to a path the user names. A
fine-tuned adapter is reloaded and its test split predicted again by the fine-tune
mode (:func:`fmeval.modes.finetune.export_adapter`; the reporter never runs a model). Either way the
file round-trips: ``fmeval score`` on it, with the run's seed and bootstrap
count, reproduces the run's test metrics and CIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmeval.predictions import read_run_predictions, write_predictions
from fmeval.report.schema import RESULTS_FILE, ReportError, RunResult
from fmeval.report.writer import PREDICTIONS_FILE


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    n: int  # rows written
    n_split: int | None  # test images in the split (rows < this: a --limit run)
    dataset: str  # the --dataset argument(s) that open the run's data again (see dataset_argument)
    size: int | None
    seed: int
    n_boot: int

    def score_command(self) -> str:
        """The ``fmeval score`` call that reproduces the run's metrics from this file."""
        size = f" --size {self.size}" if self.size else ""
        return (f"fmeval score {self.path} --dataset {self.dataset}{size} --seed {self.seed} "
                f"--bootstrap {self.n_boot}")


def dataset_argument(record: dict) -> str:
    """The ``--dataset`` (and split options) that reopen a run's data, for the score command:
    a MedMNIST name, or a user dataset as :func:`fmeval.data.sources.reopen` finds it."""
    import shlex

    from fmeval.data.sources import reopen

    found = reopen(record)
    if found is None:
        return str(record.get("flag", ""))
    spec, opts = found
    args = [shlex.quote(spec)]
    if opts.split_ratios is not None or opts.split_seed:
        args += ["--split-seed", str(opts.split_seed)]
    if opts.split_ratios is not None:
        args += ["--split-ratios", ",".join(map(str, opts.split_ratios))]
    if opts.group_by:
        args += ["--group-by", shlex.quote(opts.group_by)]
    return " ".join(args)


def export_run(run_dir: str | Path, out: str | Path, *, header: bool = True) -> Exported:
    """Re-export ``run_dir/predictions.csv`` to ``out`` (validated, atomically)."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / RESULTS_FILE).is_file():
        raise ReportError(f"{run_dir} is not a run folder (no {RESULTS_FILE}); pass reports/<run_id>.")
    r = RunResult.load(run_dir / RESULTS_FILE)
    src = run_dir / PREDICTIONS_FILE
    if not src.is_file():
        raise ReportError(f"{run_dir} has no {PREDICTIONS_FILE} (a run written before fmeval kept predictions, "
                          "or a fine-tuning run: use --adapter); re-run it.")
    classes = list(r.test.class_names)
    idx, scores = read_run_predictions(src, classes)
    if len(idx) != r.test.n:
        raise ReportError(f"{src} has {len(idx)} rows but the run scored {r.test.n} test images.")
    sha = write_predictions(out, scores, classes, idx, header=header)
    return Exported(Path(out), sha, len(idx), r.dataset.get("n_test"), dataset_argument(r.dataset), r.dataset.get("size"),
                    r.seed, r.test.n_boot)
