"""A checkpoint that does not fit never passes for loaded weights: counted, reported, refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fmeval.adapters.base import create_adapter
from fmeval.data.synthetic import write_synthetic
from fmeval.errors import ModelError
from helpers import run


@pytest.fixture
def foreign_ckpt(tmp_path):
    """A tiny ResNet-18's weights: no key matches any transformer's."""
    path = tmp_path / "resnet18.safetensors"
    sd = create_adapter("resnet18", tiny=True).model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_no_strict_with_another_models_checkpoint_fails_in_one_line(capsys, tmp_path, foreign_ckpt):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(60, 10, 10))  # >= the largest default k
    n = len(create_adapter("vit-s16", tiny=True).model.state_dict())
    code, out, err = run(capsys, "knn", "--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist",
                         "--data-root", str(tmp_path), "--weights", str(foreign_ckpt), "--no-strict",
                         "--reports-dir", str(tmp_path / "reports"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"only 0 of {n} tensors" in lines[0] and "--allow-partial" in lines[0]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["vit-s16", "medvit-small", "clip-vit-b32", "medclip"])
def test_every_adapter_refuses_a_foreign_checkpoint_unless_allowed(name, foreign_ckpt):
    with pytest.raises(ModelError, match=r"only 0 of \d+ tensors"):
        create_adapter(name, tiny=True, weights=foreign_ckpt, strict=False)
    with pytest.warns(UserWarning) if name.startswith("medvit") else _nothing():
        a = create_adapter(name, tiny=True, weights=foreign_ckpt, strict=False, allow_partial=True)
    rec = a.describe()["weights_load"]
    assert rec["loaded"] == 0 and rec["total"] > 0 and rec["loaded_fraction"] == 0.0
    assert rec["complete"] is False and rec["unexpected"] > 0 and rec["missing"] == rec["total"]
    assert "+partial:0of" in a.weights_id and a.weights_id.endswith(":seed0")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_allow_partial_runs_and_the_report_says_zero_of_n(tmp_path, foreign_ckpt):
    from fmeval.runner import execute, make_config

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(20, 10, 10))
    cfg = make_config("knn", {"model": "vit-s16", "dataset": "pneumoniamnist", "data_root": str(tmp_path),
                              "tiny": True, "weights": str(foreign_ckpt), "strict": False, "allow_partial": True,
                              "knn.ks": (3,), "n_boot": 0, "reports_dir": str(tmp_path / "reports")})
    res = execute(cfg)
    (path,) = (tmp_path / "reports").glob("*/results.json")
    rec = json.loads(path.read_text())["model"]["weights_load"]
    n = len(create_adapter("vit-s16", tiny=True).model.state_dict())
    assert (rec["loaded"], rec["total"]) == (0, n)
    assert res.model["weights_id"].startswith("file:") and f"partial:0of{n}" in res.model["weights_id"]


def test_weights_id_names_what_was_loaded(tmp_path):
    from fmeval.adapters.base import MIN_LOADED_FRACTION

    src = create_adapter("vit-s16", tiny=True, seed=5)
    sd = src.model.state_dict()
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(full))
    a = create_adapter("vit-s16", tiny=True, weights=full)
    b = create_adapter("vit-s16", tiny=True, weights=full, seed=3)
    assert a.weights_id == b.weights_id and "partial" not in a.weights_id  # the file says it all
    assert a.describe()["weights_load"]["complete"] is True
    assert a.describe()["weights_load"]["loaded_fraction"] == 1.0

    # drop the blocks' MLPs (well over half of the values): a partial load
    part = {k: v for k, v in sd.items() if ".mlp." not in k}
    half = tmp_path / "part.safetensors"
    save_file({k: v.contiguous() for k, v in part.items()}, str(half))
    with pytest.raises(ModelError, match="--allow-partial"):
        create_adapter("vit-s16", tiny=True, weights=half, strict=False)
    p0 = create_adapter("vit-s16", tiny=True, weights=half, strict=False, allow_partial=True)
    p1 = create_adapter("vit-s16", tiny=True, weights=half, strict=False, allow_partial=True, seed=1)
    rep = p0.load_report
    assert rep.fraction < MIN_LOADED_FRACTION and rep.loaded == len(part)
    # the unloaded values are random, so the seed is part of a partial load's identity
    assert len({a.weights_id, p0.weights_id, p1.weights_id}) == 3
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(p0.encode_image(x), p1.encode_image(x))


def test_random_and_extra_key_loads_are_described(tmp_path):
    assert create_adapter("vit-s16", tiny=True).describe()["weights_load"] is None
    sd = dict(create_adapter("vit-s16", tiny=True).model.state_dict(), extra=torch.zeros(2))
    path = tmp_path / "extra.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    a = create_adapter("vit-s16", tiny=True, weights=path, strict=False)
    rec = a.describe()["weights_load"]
    assert rec["complete"] and rec["unexpected"] == 1 and "partial" not in a.weights_id
