"""I/O failures (issue 26): compute first, print the metrics, then write.

A feature cache that cannot be written is one warning and an uncached run; a
report that cannot be written is one error line after the metrics were
printed. A full disk is simulated at the file layer: ``fsync`` of any file
under the "full" folders raises ENOSPC, as a full filesystem does on write-out.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fmeval.data.synthetic import write_synthetic
from helpers import run


def _knn(tmp_path: Path, reports: Path) -> tuple[str, ...]:
    data = tmp_path / "data"
    if not (data / "pneumoniamnist.npz").exists():
        write_synthetic(data, "pneumoniamnist", 28, n=(60, 30, 30))
    return ("knn", "--model", "vit-s16", "--tiny", "--data-root", str(data), "--dataset", "pneumoniamnist",
            "--size", "28", "--reports-dir", str(reports))


def full_disk(monkeypatch, *roots: Path) -> None:
    """Writes under ``roots`` fail with ENOSPC (at fsync, where a full disk reports it)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if any(target.startswith(str(r)) for r in roots):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


@pytest.mark.parametrize("kind", ["FMEVAL_CACHE_DIR is a file", "a file where a cache folder should be",
                                  "cache disk full"])
def test_an_unwritable_cache_is_one_warning_and_an_uncached_run(capsys, tmp_path, monkeypatch, kind):
    cache = tmp_path / "cache"
    if kind == "FMEVAL_CACHE_DIR is a file":
        cache.write_text("not a folder")
    elif kind == "a file where a cache folder should be":
        cache.mkdir()
        (cache / "image").write_text("not a folder")
    else:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc to see which file a write goes to")
        full_disk(monkeypatch, cache)
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(cache))
    code, out, err = run(capsys, *_knn(tmp_path, tmp_path / "reports"))
    assert code == 0, err
    assert "auc" in out and "Traceback" not in err
    warnings = _lines(err, "warning:")
    assert len(warnings) == 1 and "feature cache" in warnings[0] and "uncached" in warnings[0], err
    assert len(list((tmp_path / "reports").glob("*/results.json"))) == 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file a write goes to")
def test_a_full_disk_prints_the_metrics_then_one_error_line(capsys, tmp_path, monkeypatch):
    reports, cache = tmp_path / "full" / "reports", tmp_path / "full" / "cache"
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(cache))
    full_disk(monkeypatch, tmp_path / "full")
    code, out, err = run(capsys, *_knn(tmp_path, reports))
    assert code == 2
    assert "auc" in out and "acc" in out  # the metrics were printed
    assert "Traceback" not in err
    errors = _lines(err, "error:")
    assert len(errors) == 1 and "No space left on device" in errors[0] and "report" in errors[0], err
    assert len(_lines(err, "warning:")) == 1  # the cache said so once
    assert not list(reports.rglob("results.json")) and not list(reports.glob(".*.partial"))  # nothing half-written


def test_predict_out_in_an_unwritable_place_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run(capsys, *_knn(tmp_path, tmp_path / "reports"))
    assert code == 0, err
    (run_dir,) = [p.parent for p in (tmp_path / "reports").glob("*/results.json")]
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "preds.csv", tmp_path / ("x" * 300) / "preds.csv"):
        code, _, err = run(capsys, "predict", "--run", str(run_dir), "--out", str(out))
        assert code == 2 and "Traceback" not in err, err
        assert len(_lines(err, "error:")) == 1 and "--out" in err, err
