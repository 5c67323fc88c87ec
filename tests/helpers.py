"""Helpers shared by the test modules (pytest puts tests/ on sys.path: ``from helpers import run``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process, as typed: (exit code, stdout, stderr). Every command ends in SystemExit."""
    from fmeval.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def only_report(root: Path) -> dict:
    """The results.json of the single run under ``root`` (fails when there are zero or several)."""
    (path,) = list(root.glob("*/results.json"))
    return json.loads(path.read_text())


def image_batch(adapter, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded random batch at the adapter's own input size."""
    s = adapter.preprocess.input_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def encode(adapter: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return adapter(x)
