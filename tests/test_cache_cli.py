"""``fmeval cache clear`` leaves nothing behind and never tracebacks; ``cache verify`` finds damage."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from fmeval.cache import FeatureCache
from fmeval.data.synthetic import write_synthetic
from fmeval.io import file_lock
from helpers import run


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def filled(tmp_path, capsys) -> Path:
    """A cache with 3 entries from a real `features` run, plus the debris of killed runs."""
    write_synthetic(tmp_path, "dermamnist", 28, n=(24, 8, 8))
    code, _, err = run(capsys, "features", "--model", "resnet18", "--tiny", "--dataset", "dermamnist",
                       "--data-root", str(tmp_path))
    assert code == 0, err
    cache = tmp_path / "cache"
    entry = next(cache.glob("image/*/*.safetensors"))
    (entry.parent / f".{entry.stem}.safetensors.k1ll3d.tmp").write_bytes(b"half")  # killed write
    orphan = cache / "image" / "ff" / ("ff" * 32)
    orphan.parent.mkdir()
    orphan.with_suffix(".safetensors").write_bytes(entry.read_bytes())  # tensor, no manifest
    orphan.with_suffix(".lock").touch()
    return cache


def test_clear_yes_leaves_nothing(capsys, filled):
    assert any(f.suffix == ".lock" for f in filled.rglob("*"))
    code, out, err = run(capsys, "cache", "clear", "--yes")
    assert code == 0 and "removed 3 entries" in out, err
    assert not filled.exists() or not list(filled.rglob("*"))


def test_clear_without_terminal_is_one_line_exit_2(capsys, filled, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    before = sorted(filled.rglob("*"))
    code, out, err = run(capsys, "cache", "clear")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "--yes" in lines[0] and "3 entries" in lines[0]
    assert sorted(filled.rglob("*")) == before


@pytest.mark.parametrize("answer", ["n\n", ""])  # "n", or end of input (Ctrl-D)
def test_clear_answering_no_aborts_without_traceback(capsys, filled, monkeypatch, answer):
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    before = sorted(filled.rglob("*"))
    code, out, err = run(capsys, "cache", "clear")
    assert code == 1 and err.strip() == "aborted" and "Traceback" not in out + err
    assert sorted(filled.rglob("*")) == before


def test_clear_answering_yes_on_a_terminal(capsys, filled, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    code, out, _ = run(capsys, "cache", "clear")
    assert code == 0 and "removed 3 entries" in out


def test_verify_reports_and_removes_bad_entries(capsys, filled):
    tensors = sorted(p for p in filled.glob("image/*/*.safetensors") if not p.name.startswith("ff"))
    raw = bytearray(tensors[0].read_bytes())
    raw[-40:] = bytes(b ^ 0xFF for b in raw[-40:])  # bit-rot in the data
    tensors[0].write_bytes(bytes(raw))
    tensors[1].write_bytes(tensors[1].read_bytes()[:100])  # truncated

    code, out, _ = run(capsys, "cache", "verify", "--keep")
    bad = [ln for ln in out.splitlines() if ln.startswith("bad: ")]
    assert code == 1 and len(bad) == 4, out
    text = "\n".join(bad)
    for reason in ("content hash mismatch", "tensor unreadable", "tensor without manifest",
                   "1 temporary file(s) of an interrupted write"):
        assert reason in text
    assert "1 entries verified" in out and "4 bad (kept)" in out
    assert tensors[0].exists() and len(list(filled.rglob("*.tmp"))) == 1

    code, out, _ = run(capsys, "cache", "verify")
    assert code == 1 and "4 bad (removed)" in out and not tensors[0].exists()
    assert not list(filled.rglob("*.tmp"))
    code, out, _ = run(capsys, "cache", "verify")
    assert code == 0 and "1 entries verified" in out and "none bad" in out


def test_clear_keeps_entries_a_running_fmeval_holds(tmp_path):
    cache = FeatureCache(tmp_path / "c", notify=None)
    cache.save("image", {"a": 1}, torch.ones(2, 2))
    cache.save("image", {"a": 2}, torch.ones(2, 2))
    held = next((tmp_path / "c").glob("image/*/*.json")).with_suffix(".lock")
    locked, release = threading.Event(), threading.Event()

    def writer():
        with file_lock(held):
            locked.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    locked.wait(10)
    try:
        rep = cache.clear_all()
    finally:
        release.set()
        t.join()
    assert rep.entries == 1 and rep.busy == [held.stem]
    assert held.with_suffix(".safetensors").exists()
    assert cache.clear_all().entries == 1 and not (tmp_path / "c").exists()


def test_clear_keeps_files_fmeval_did_not_write(tmp_path):
    root = tmp_path / "c"
    FeatureCache(root).save("image", {"a": 1}, torch.ones(2, 2))
    (root / "notes.txt").write_text("mine")
    rep = FeatureCache(root).clear_all()
    assert rep.entries == 1 and rep.foreign == [root / "notes.txt"]
    assert sorted(os.listdir(root)) == ["notes.txt"]


def test_clear_never_follows_symlinks_nor_deletes_files_it_did_not_name(capsys, filled, tmp_path):
    """A symlinked subfolder (someone else's files) and files outside the cache's layout survive."""
    victim = tmp_path / "someone-else"
    (victim / "ab").mkdir(parents=True)
    names = ["a.safetensors", "b.json", "c.lock", "ab/" + "ab" * 32 + ".json", "ab/" + "ab" * 32 + ".lock"]
    for name in names:
        (victim / name).write_text("precious")
    (filled / "image" / "cd").symlink_to(victim, target_is_directory=True)  # <kind>/<hh> level
    (filled / "evil").symlink_to(victim, target_is_directory=True)  # <kind> level
    stray = filled / "image" / "ee" / "notes.json"  # in the cache's folders, but not a name it writes
    stray.parent.mkdir()
    stray.write_text("mine")
    code, out, err = run(capsys, "cache", "clear", "--yes")
    assert code == 0 and "removed 3 entries" in out, err
    assert all((victim / name).read_text() == "precious" for name in names)
    assert stray.read_text() == "mine"
    code, out, err = run(capsys, "cache", "clear", "--model", "resnet18", "--yes")
    assert code == 0 and all((victim / name).exists() for name in names)
