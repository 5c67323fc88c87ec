"""Helpers shared by the test modules (pytest puts tests/ on sys.path: ``from helpers import run``)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process, as typed: (exit code, stdout, stderr). Every command ends in SystemExit."""
    from fmeval.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def show_protocol(capsys, name: str, mode: str) -> tuple[object, str, str]:
    """``fmeval protocols show name``, checked to print every setting of the protocol and of its
    ``mode`` with the start of its source sentence: (the protocol, the output, the output with
    white space folded)."""
    from fmeval.protocols import load_protocol

    code, out, _ = run(capsys, "protocols", "show", name)
    assert code == 0
    p = load_protocol(name)
    flat = " ".join(out.split())
    for key, setting in {**p.spec.settings, **p.spec.mode_settings[mode]}.items():
        assert key in flat
        assert " ".join(setting.source.split())[:20] in flat  # the source sentence is printed
    return p, out, flat


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


def count_encodes(monkeypatch) -> dict[str, int]:
    """Count TimmAdapter.encode_image calls (one per batch): ``calls["n"]``, live."""
    from fmeval.adapters.timm_models import TimmAdapter

    calls = {"n": 0}
    original = TimmAdapter.encode_image

    def counted(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(TimmAdapter, "encode_image", counted)
    return calls


def checkpoint_roundtrip(name: str, head: str, tmp_path: Path):
    """A tiny model saved as a released checkpoint (with a 1000-class ``head``, which
    loading must drop) and loaded back: (source adapter, its state dict, loaded adapter)."""
    from safetensors.torch import save_file

    from fmeval.adapters import create_adapter

    src = create_adapter(name, tiny=True, seed=7)
    sd = dict(src.model.state_dict())
    sd[f"{head}.weight"] = torch.zeros(1000, src.feature_dim)
    sd[f"{head}.bias"] = torch.zeros(1000)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    loaded = create_adapter(name, tiny=True, seed=0, weights=tmp_path / "w.safetensors")
    x = image_batch(src)
    assert torch.equal(encode(src, x), encode(loaded, x))
    assert loaded.weights_id.startswith("file:") and loaded.load_report.clean
    return src, sd, loaded


def make_zip(files: dict[str, bytes]) -> bytes:
    """A deflated zip archive of ``files`` (member name -> bytes), in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return buf.getvalue()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def extra_missing(module: str) -> str | None:
    """Why ``module`` (a package an optional extra brings) cannot be imported, or None."""
    try:
        __import__(module)
    except (ImportError, OSError) as exc:  # OSError: Wand without ImageMagick's library
        return str(exc)
    return None


def require_extra(module: str, extra: str, install: str) -> None:
    """A test that needs an optional extra: outside CI it skips with the reason when the extra
    is missing (the README's test command passes on a bare machine); under CI=true it FAILS,
    as CI installs every extra and must never go green without these tests."""
    why = extra_missing(module)
    if why is None:
        return
    msg = f"the {extra} extra is not installed ({module}: {why}); install it with {install}"
    if in_ci():
        pytest.fail(msg + "; CI=true requires it")
    pytest.skip(msg)


ROBUSTNESS_INSTALL = "scripts/install-robustness.sh"


# -- the training loop on toy data: each image is one value, its sample index ---------------------
class BatchRecorder(nn.Module):
    """Identity backbone + Linear(1, 2) head; records the sample indices of every training batch.

    ``head_value``: a constant head weight (bias 0), for tests that compute gradients by hand;
    None keeps torch's random initialisation."""

    def __init__(self, head_value: float | None = None):
        super().__init__()
        self.backbone, self.head = nn.Identity(), nn.Linear(1, 2)
        if head_value is not None:
            torch.nn.init.constant_(self.head.weight, head_value)
            torch.nn.init.constant_(self.head.bias, 0.0)
        self.batches: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.batches.append(x[:, 0].round().long().tolist())
        return self.head(x)


class FloatPrep:
    """The loop's transform, reduced to a float tensor of the images as they are."""

    def prepare(self, images, device, train=False, generator=None):
        return torch.as_tensor(images, dtype=torch.float32)


def plain_method() -> SimpleNamespace:
    """A training method that trains every weight (the loop's ``method`` argument)."""
    return SimpleNamespace(state_keys=lambda m: list(m.state_dict()), set_train_mode=lambda m: m.train())


def fit_on_indices(model: nn.Module, labels, config) -> None:
    """``loop.fit`` of ``model`` on images whose one value is their sample index (binary labels, no
    validation split), on the CPU with seed 0."""
    from fmeval.training import loop

    n = len(labels)
    data = loop.TrainData(np.arange(n, dtype=np.uint8)[:, None], np.asarray(labels)[:, None], None, None,
                          task="binary-class", n_outputs=2)
    loop.fit(model, data, config, method=plain_method(),
             setup=loop.RunSetup(transform=FloatPrep(), device=torch.device("cpu")), seed=0)
