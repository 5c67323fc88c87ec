"""Data errors name the real problem: an empty split, a file that is not an npz archive."""

from __future__ import annotations

import numpy as np
import pytest

from fmeval.data import load_dataset
from fmeval.data.synthetic import synthetic_arrays
from fmeval.errors import DataError
from helpers import run


def _knn(root) -> tuple[str, ...]:
    return ("knn", "--model", "resnet18", "--tiny", "--dataset", "pneumoniamnist",
            "--data-root", str(root), "--bootstrap", "0")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_empty_split_is_one_line_before_any_model(capsys, tmp_path, monkeypatch, split):
    arrays = synthetic_arrays("pneumoniamnist", 28, (8, 4, 4))
    arrays[f"{split}_images"] = arrays[f"{split}_images"][:0]
    arrays[f"{split}_labels"] = arrays[f"{split}_labels"][:0]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)

    def no_model(*a, **k):
        raise AssertionError("a model was built for an empty split")

    from fmeval.adapters.base import ADAPTERS

    monkeypatch.setattr(ADAPTERS, "get", no_model)  # every model is built through the registry
    code, out, err = run(capsys, *_knn(tmp_path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err
    assert f"pneumoniamnist.npz [{split}]: the {split} split has no samples" in lines[0]
    assert not (tmp_path / "cache" / "image").exists()  # nothing (empty) was cached


@pytest.mark.parametrize("content,what", [
    (b"flag,label\n1,2\n", "a text file"),
    (b"", "empty"),
    (b"\x00\x01\x02\x03\xff\xfe\xfd\xfc", "not a zip archive"),
])
def test_non_npz_file_never_suggests_pickle(capsys, tmp_path, content, what):
    (tmp_path / "pneumoniamnist.npz").write_bytes(content)
    code, out, err = run(capsys, *_knn(tmp_path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err
    assert f"is not an npz archive ({what})" in lines[0]
    assert "pickle" not in err.lower()


def test_npy_instead_of_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").rename(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(DataError, match=r"not an npz archive \(a single \.npy array\)"):
        load_dataset("pneumoniamnist", 28, tmp_path)


def test_object_array_inside_npz_never_suggests_pickle(tmp_path):
    arrays = synthetic_arrays("pneumoniamnist", 28, (8, 4, 4))
    arrays["test_labels"] = np.array([{"a": 1}] * 4, dtype=object)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_dataset("pneumoniamnist", 28, tmp_path).split("test")
    msg = str(err.value)
    assert "Python objects" in msg and "allow_pickle" not in msg
