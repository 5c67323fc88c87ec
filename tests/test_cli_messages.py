"""What the CLI prints when things go wrong (issue 11 items 5-7 and 9, issue 8 defaults).

- user text (paths, templates, split names in brackets) is printed verbatim,
  never read as Rich markup;
- Ctrl-C and Typer's abort/exit paths end in one line, never a traceback
  (the confirmation prompt of ``cache clear``: tests/test_cache_cli.py);
  an interrupted fine-tuning names its folder and the command that resumes
  it, and that command works as printed;
- a reports (or adapters, study, leaderboard) folder that cannot be written
  is found before any work;
- ``fmeval report`` skips a damaged results.json with one line naming it;
- ``fmeval config`` shows each user default and where it came from, and those
  defaults reach a run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer

from fmeval.cli.app import console
from fmeval.data.synthetic import synthetic_arrays, write_synthetic
from helpers import run

FROZEN = ("--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist")
QUICK = ("--bootstrap", "10")


class ModelBuilt(BaseException):
    pass


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A working directory with synthetic PneumoniaMNIST under ./data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMEVAL_DATA_ROOT", raising=False)
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(60, 20, 20))
    return tmp_path


def one_error_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def no_model_builds(monkeypatch) -> None:
    def boom(*a, **k):
        raise ModelBuilt

    import fmeval.adapters.base as adapters_base
    import fmeval.pipeline as pipeline

    monkeypatch.setattr(pipeline, "create_adapter", boom)
    monkeypatch.setattr(adapters_base, "create_adapter", boom)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- item 7: never Rich markup ------------------------------------------------------------
def test_data_root_with_markup_is_printed_verbatim(work, capsys, monkeypatch):
    monkeypatch.setenv("FMEVAL_DATA_ROOT", "dir[/x]")
    code, _, err = run(capsys, "knn", *FROZEN)
    assert "dir[/x]/pneumoniamnist.npz not found" in one_error_line(code, err)

    monkeypatch.setattr(console, "width", 300)
    code, out, err = run(capsys, "config")
    assert code == 0 and "dir[/x]" in out and "environment (FMEVAL_DATA_ROOT)" in out, out + err
    code, out, err = run(capsys, "ls", "datasets", "--data-root", "d[/x][bold]")
    assert code == 0 and "local root: d[/x][bold]" in out, out + err


def test_reports_dir_with_markup_runs_and_reports(work, capsys, monkeypatch):
    code, out, err = run(capsys, "knn", *FROZEN, *QUICK, "--data-root", "data", "--reports-dir", "rb[/x]")
    assert code == 0, err
    assert "report: rb[/x]/" in out
    assert list((work / "rb[").glob("x]/*/results.json"))
    monkeypatch.setattr(console, "width", 300)
    code, out, err = run(capsys, "report", "--reports-dir", "rb[/x]", "--all")
    assert code == 0 and "written: rb[/x]/leaderboard.md" in out, out + err
    assert "vit-s16" in out


def _bank(work: Path, name: str, template: str) -> Path:
    src = Path(__file__).resolve().parents[1] / "prompts" / "pneumoniamnist.yaml"
    path = work / name
    path.write_text(src.read_text().replace('"an X-ray image of {class}"', json.dumps(template)))
    return path


def test_prompt_template_with_markup(work, capsys):
    good = _bank(work, "b[x].yaml", "an X-ray [/x] of [test] {class}")
    code, out, err = run(capsys, "prompts", "validate", str(good))
    assert code == 0 and f"ok {good}" in out, err
    bad = _bank(work, "bad[b].yaml", "an X-ray [/x] of [test] {clas}")
    code, _, err = run(capsys, "prompts", "validate", str(bad))
    line = one_error_line(code, err)
    assert "bad[b].yaml" in line and "'an X-ray [/x] of [test] {clas}'" in line
    # the bank's templates reach the text encoder, never the terminal as markup
    code, out, err = run(capsys, "zeroshot", "--model", "clip-vit-b16", "--tiny", "--prompts", str(good),
                         "--data-root", "data", *QUICK)
    assert code == 0, err


def test_label_error_keeps_its_split_name(work, capsys):
    arrays = synthetic_arrays("pneumoniamnist", 28, (60, 20, 20), 0)
    arrays["test_labels"] = np.full_like(arrays["test_labels"], 7)
    bad = work / "bad"
    bad.mkdir()
    np.savez_compressed(bad / "pneumoniamnist.npz", **arrays)
    code, _, err = run(capsys, "knn", *FROZEN, "--data-root", str(bad))
    assert "pneumoniamnist.npz [test]: labels span [7, 7]" in one_error_line(code, err)


# -- item 9: Ctrl-C, Abort, Exit ------------------------------------------------------------------
@pytest.mark.parametrize("raised,code,line", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (typer.Abort(), 1, "aborted"),
    (typer.Exit(3), 3, None),
])
def test_interrupt_abort_and_exit_never_print_a_traceback(work, capsys, monkeypatch, raised, code, line):
    import fmeval.cli.fewshot as dispatch  # knn/linprobe/finetune run through run_with_shots

    def stop(*a, **k):
        raise raised

    monkeypatch.setattr(dispatch, "run_mode", stop)
    got, out, err = run(capsys, "knn", *FROZEN)
    assert got == code and "Traceback" not in out + err
    assert [ln for ln in err.splitlines() if ln.strip()] == ([line] if line else [])


def test_finetune_interrupt_names_the_folder_and_the_printed_command_resumes(work, capsys, monkeypatch):
    import fmeval.modes.finetune as ft

    calls = []

    def hook_factory():
        def hook(epoch, state):
            calls.append(epoch)
            raise KeyboardInterrupt

        return hook

    monkeypatch.setattr(ft, "_stop_hook", hook_factory)
    argv = ("finetune", "--lora", *FROZEN, "--data-root", "data", "--epochs", "2", "--patience", "0",
            "--warmup-epochs", "0", *QUICK)
    code, out, err = run(capsys, *argv)
    assert code == 130 and calls == [calls[0]] and "Traceback" not in out + err
    (run_dir,) = (work / "adapters").iterdir()
    start = re.search(r"run folder: (\S+)\s+\(if interrupted: (fmeval finetune --resume \S+)\)", err)
    assert start and Path(start.group(1)) == run_dir, err
    resume = f"fmeval finetune --resume {run_dir}"
    assert start.group(2) == resume
    assert f"interrupted; continue with: {resume}" in err
    assert err.rstrip().endswith("interrupted")

    monkeypatch.setattr(ft, "_stop_hook", lambda: None)
    code, out, err = run(capsys, *resume.split()[1:])  # exactly as printed
    assert code == 0, err
    (res,) = (work / "reports").glob("*/results.json")
    training = json.loads(res.read_text())["extras"]["training"]
    assert training["resumed_at_epoch"] >= 1 and training["epochs_run"] == 2


def test_resume_with_other_options_is_refused(work, capsys, monkeypatch):
    import fmeval.modes.finetune as ft

    monkeypatch.setenv(ft.STOP_ENV, "1")
    code, _, err = run(capsys, "finetune", "--lora", *FROZEN, "--data-root", "data", "--epochs", "2", *QUICK)
    assert code == 2, err
    (run_dir,) = (work / "adapters").iterdir()
    monkeypatch.delenv(ft.STOP_ENV)
    code, _, err = run(capsys, "finetune", "--resume", str(run_dir), "--lr", "0.5")
    assert "train.lr: run has 0.0001, now 0.5" in one_error_line(code, err)
    code, _, err = run(capsys, "finetune", "--resume", str(run_dir), "--full")
    assert "the run is finetune-lora" in one_error_line(code, err)


# -- item 5: a bad output folder is found before any work --------------------------------------------
UNCREATABLE = "/proc/fmeval-cannot/create"  # the kernel refuses new folders in /proc, even to root

WRITERS = [
    ("knn", *FROZEN, "--data-root", "data", "--reports-dir", "{bad}"),
    ("linprobe", *FROZEN, "--data-root", "data", "--reports-dir", "{bad}"),
    ("zeroshot", "--model", "clip-vit-b16", "--tiny", "--dataset", "pneumoniamnist", "--data-root", "data",
     "--reports-dir", "{bad}"),
    ("prompts", "compare", "--model", "clip-vit-b16", "--tiny", "--dataset", "pneumoniamnist",
     "--data-root", "data", "--reports-dir", "{bad}"),
    ("finetune", "--lora", *FROZEN, "--data-root", "data", "--reports-dir", "{bad}"),
    ("evaluate", "--adapter", "data", "--reports-dir", "{bad}"),
    ("study", "run", "quick", "--reports-dir", "{bad}"),
    ("study", "report", "quick", "--reports-dir", "{bad}"),
    ("study", "plan", "quick", "--reports-dir", "{bad}"),
    ("report", "--out", "{bad}"),
]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
@pytest.mark.parametrize("bad", ["a-file", "a-file/sub", UNCREATABLE])
@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: " ".join(a[:2]))
def test_unwritable_output_folder_fails_before_any_work(work, capsys, monkeypatch, argv, bad):
    (work / "a-file").write_text("x")
    (work / "reports").mkdir()  # `fmeval report` needs one to read
    no_model_builds(monkeypatch)
    before = tree(work)
    code, _, err = run(capsys, *(a.replace("{bad}", bad) for a in argv))
    line = one_error_line(code, err)
    assert bad in line or "a-file" in line, line
    assert tree(work) == before


def test_unwritable_adapters_folder_fails_before_any_work(work, capsys, monkeypatch):
    (work / "a-file").write_text("x")
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(work / "a-file"))
    no_model_builds(monkeypatch)
    code, _, err = run(capsys, "finetune", "--lora", *FROZEN, "--data-root", "data")
    assert "adapters folder" in one_error_line(code, err)


# -- item 6: one damaged results.json ----------------------------------------------------------------
def test_report_skips_each_damaged_results_file_in_one_line(work, capsys, monkeypatch):
    code, _, err = run(capsys, "knn", *FROZEN, "--data-root", "data", *QUICK)
    assert code == 0, err
    reports = work / "reports"
    (good,) = reports.glob("*/results.json")
    data = json.loads(good.read_text())
    damaged = {
        "not-json": "{ this is not json",
        "a-list": "[1, 2, 3]",
        "missing-keys": json.dumps({"run_id": "x", "schema_version": data["schema_version"]}),
        "wrong-type": json.dumps({**data, "test": {**data["test"], "metrics": {"auc": "high"}}}),
        "test-not-object": json.dumps({**data, "test": "oops"}),
        "not-utf8": b"\xff\xfe{".decode("latin-1"),
    }
    for name, text in damaged.items():
        (reports / name).mkdir()
        (reports / name / "results.json").write_text(text, encoding="latin-1")
    monkeypatch.setattr(console, "width", 200)
    code, out, err = run(capsys, "report", "--all")
    assert code == 0 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == len(damaged), err
    for name in damaged:
        assert sum(f"warning: skipped {reports / name / 'results.json'}: " in ln for ln in lines) == 1, err
    assert "vit-s16" in out and len((reports / "leaderboard.csv").read_text().splitlines()) == 2


# -- issue 8: user defaults ----------------------------------------------------------------------------------
def _settings_table(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for ln in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", ln) if c.strip()]
        if len(cells) >= 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


@pytest.mark.parametrize("where", ["fmeval.toml", "pyproject.toml"])
def test_config_shows_each_default_and_its_source_and_a_run_uses_them(work, capsys, monkeypatch, where):
    for var in ("FMEVAL_REPORTS_DIR", "FMEVAL_DEVICE", "FMEVAL_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    body = 'data_root = "data"\nreports_dir = "file-reports"\nmodel = "vit-s16"\ndataset = "pneumoniamnist"\n'
    (work / where).write_text(body if where == "fmeval.toml" else f'[project]\nname = "x"\n\n[tool.fmeval]\n{body}')
    monkeypatch.setenv("FMEVAL_PRECISION", "fp32")
    monkeypatch.setattr(console, "width", 300)
    code, out, err = run(capsys, "config")
    assert code == 0, err
    rows = _settings_table(out)
    src = f"file ({work / where})"
    assert rows["data_root"] == ("data", src) and rows["reports_dir"] == ("file-reports", src)
    assert rows["model"] == ("vit-s16", src) and rows["dataset"] == ("pneumoniamnist", src)
    assert rows["precision"] == ("fp32", "environment (FMEVAL_PRECISION)")
    assert rows["device"] == ("auto", "built-in")

    # the file's defaults reach a run: no other option needed
    code, out, err = run(capsys, "knn", "--tiny", *QUICK)
    assert code == 0, err
    (res,) = (work / "file-reports").glob("*/results.json")
    assert json.loads(res.read_text())["config"]["model"] == "vit-s16"
    # environment beats the file, an option beats both
    monkeypatch.setenv("FMEVAL_REPORTS_DIR", str(work / "env-reports"))
    assert run(capsys, "knn", "--tiny", *QUICK)[0] == 0 and list((work / "env-reports").glob("*/results.json"))
    assert run(capsys, "knn", "--tiny", *QUICK, "--reports-dir", "opt-reports")[0] == 0
    assert list((work / "opt-reports").glob("*/results.json"))


def test_unknown_key_in_the_settings_file_is_one_line(work, capsys):
    (work / "fmeval.toml").write_text('reports_dir = "r"\ncolour = "red"\n')
    for argv in (("config",), ("knn", *FROZEN)):
        code, _, err = run(capsys, *argv)
        line = one_error_line(code, err)
        assert "fmeval.toml" in line and "unknown setting(s) colour" in line


def test_help_shows_bracketed_defaults_verbatim():
    """Rich markup must not eat '[env FMEVAL_REPORTS_DIR; ...]' or '[default: ...]' from help."""
    from typer.testing import CliRunner

    from fmeval.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["study", "run", "--help"], env={"COLUMNS": "200"}).output
    assert "[env FMEVAL_REPORTS_DIR; default ./reports]" in out
    assert "[default: the study file's]" in out
    out = runner.invoke(app, ["knn", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: the encoder's]" in out
