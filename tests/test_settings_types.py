"""fmeval.toml / [tool.fmeval] values are type-checked; malformed files are one line (issue 26)."""

from __future__ import annotations

import pytest

from helpers import run


@pytest.mark.parametrize("name,content,message", [
    ("fmeval.toml", "reports_dir = {a = 1}\n", "reports_dir must be a non-empty string"),
    ("fmeval.toml", "cache_dir = true\n", "cache_dir must be a non-empty string"),
    ("fmeval.toml", "device = 3\n", "device must be a non-empty string"),
    ("fmeval.toml", "data_root = \"\"\n", "data_root must be a non-empty string"),
    ("fmeval.toml", b"reports_dir = \"\xff\xfe\"\n", "not UTF-8"),
    ("pyproject.toml", "tool = 1\n", "[tool] must be a table"),
    ("pyproject.toml", "[tool]\nfmeval = 3\n", "[tool.fmeval] must be a table"),
    ("pyproject.toml", "[tool.fmeval]\nadapters_dir = [1, 2]\n", "adapters_dir must be a non-empty string"),
])
def test_bad_settings_files_are_one_line(capsys, tmp_path, monkeypatch, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(tmp_path)
    for var in ("FMEVAL_REPORTS_DIR", "FMEVAL_CACHE_DIR", "FMEVAL_DATA_ROOT", "FMEVAL_ADAPTERS_DIR",
                "FMEVAL_DEVICE", "FMEVAL_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = run(capsys, "config")
    assert code == 2, out + err
    assert "Traceback" not in err and message in " ".join(err.split()) and str(path) in " ".join(err.split())
    assert not list(tmp_path.glob("{*")) and not (tmp_path / "True").exists()  # no folder named after garbage


def test_good_settings_still_apply(capsys, tmp_path, monkeypatch):
    (tmp_path / "fmeval.toml").write_text('reports_dir = "my-reports"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMEVAL_REPORTS_DIR", raising=False)
    code, out, err = run(capsys, "config")
    assert code == 0, err
    assert "my-reports" in out
