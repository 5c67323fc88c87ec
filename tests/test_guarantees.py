"""A write killed with SIGKILL never leaves a half-written file (README: What fmeval guarantees)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Writes half of the new content through fmeval.io.atomic_path, says so, then waits to be killed.
WRITER = textwrap.dedent("""
    import sys, time
    from fmeval.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"NEW" * 100_000)
            f.flush()
            print("half-written", flush=True)
            time.sleep(60)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_during_a_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half-written"
        temps = [p for p in tmp_path.iterdir() if p != target]
        assert len(temps) == 1 and temps[0].name.startswith(".results.json.")  # hidden, beside it
        assert temps[0].stat().st_size == 300_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert target.read_text() == '{"old": true}\n'  # the old file, whole: never half of the new one
    leftover = [p.name for p in tmp_path.iterdir() if p != target]
    assert all(n.startswith(".results.json.") and n.endswith(".tmp") for n in leftover)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_writers_temporary_file_is_swept_and_a_live_ones_is_not(tmp_path):
    from fmeval.io import sweep_leftovers

    target = tmp_path / "sub" / "results.json"
    target.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half-written"
        assert sweep_leftovers(tmp_path) == []  # its writer is alive: the file is being written
        (temp,) = target.parent.iterdir()
        assert f".w{proc.pid}@" in temp.name
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert sweep_leftovers(tmp_path, recursive=False) == []  # not in the top folder
    assert sweep_leftovers(tmp_path) == [temp] and not list(target.parent.iterdir())
