"""Your own data: folders, manifests and npz files with a card, checked, split and cached.

The real PneumoniaMNIST is exported at test time (never committed) to PNG folders
and a CSV manifest; a run on either must give the npz run's numbers exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run

CLASSES = ("normal", "pneumonia")
CARD = "name: {name}\ntask: binary\nclasses: [normal, pneumonia]\nmodality: chest X-ray\nlicense: CC BY 4.0\n"


def export_folder(npz: Path, out: Path, per_split: int | None = None, name: str = "pneumo-png") -> Path:
    """``out/{train,val,test}/<class>/<index>.png`` (index zero-padded: the npz order)."""
    z = np.load(npz)
    for s in ("train", "val", "test"):
        images, labels = z[f"{s}_images"], z[f"{s}_labels"][:, 0]
        n = len(images) if per_split is None else per_split
        for c in CLASSES:
            (out / s / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(images[i]).save(out / s / CLASSES[labels[i]] / f"{i:05d}.png")
    (out / "fmeval.yaml").write_text(CARD.format(name=name))
    return out


def export_manifest(folder: Path, out: Path, name: str = "pneumo-csv") -> Path:
    """A CSV of the same PNGs (paths relative to the CSV), rows in npz order, labels by name."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in ("train", "val", "test"):
        files = sorted((folder / s).glob("*/*.png"), key=lambda p: p.name)
        rows += [(str(Path("..") / folder.name / p.relative_to(folder)), p.parent.name, s) for p in files]
    path = out / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    (out / "fmeval.yaml").write_text(CARD.format(name=name))
    return path


def export_parquet(csv_path: Path, out: Path, name: str = "pneumo-parquet") -> Path:
    """The CSV manifest as Parquet beside its own card: labels as integer indices (typed column),
    paths relative to the Parquet file; same rows, same order."""
    pa = require_extra("pyarrow", "data")
    import pyarrow.parquet as pq

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out.mkdir(parents=True, exist_ok=True)
    rel = Path("..") / csv_path.parent.name
    table = pa.table({"path": [str(rel / r["path"]) for r in rows],
                      "label": pa.array([CLASSES.index(r["label"]) for r in rows], pa.int64()),
                      "split": [r["split"] for r in rows]})
    path = out / "labels.parquet"
    pq.write_table(table, path)
    (out / "fmeval.yaml").write_text(CARD.format(name=name))
    return path


def require_extra(module: str, extra: str):
    """An optional extra's package: under CI=true its absence FAILS the test, elsewhere it skips."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError:
        msg = f"{module} is not installed (pip install 'fmeval[{extra}]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)


def export_hf(npz: Path, out: Path, name: str = "pneumo-hf") -> Path:
    """A ``datasets.save_to_disk`` folder: train/validation/test, an Image and a ClassLabel column."""
    datasets = require_extra("datasets", "data")
    z = np.load(npz)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    parts = {}
    for s, hf_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        parts[hf_name] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(a) for a in z[f"{s}_images"]], "label": z[f"{s}_labels"][:, 0].tolist()},
            features=features)
    datasets.DatasetDict(parts).save_to_disk(str(out))
    (out / "fmeval.yaml").write_text(CARD.format(name=name))
    return out


@pytest.fixture(scope="module")
def exported(pneumonia_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("userdata")
    folder = export_folder(pneumonia_root / "pneumoniamnist.npz", base / "pneumo-png")
    manifest = export_manifest(folder, base / "pneumo-csv")
    return folder, manifest


@pytest.mark.slow
def test_hf_saved_dataset_runs_equal_the_npz_run(capsys, pneumonia_root, tmp_path):
    """A datasets.save_to_disk export: kNN gives the npz run's numbers exactly."""
    saved = export_hf(pneumonia_root / "pneumoniamnist.npz", tmp_path / "pneumo-hf")
    reports = tmp_path / "reports"
    common = ("--model", "vit-s16", "--tiny", "--bootstrap", "200", "--k", "5,11", "--limit", "400",
              "--reports-dir", str(reports))
    for ds in ("pneumoniamnist", str(saved)):
        code, out, err = run(capsys, "knn", "--dataset", ds, "--data-root", str(pneumonia_root), *common)
        assert code == 0, err
    res = _results(reports)
    ref, r = res[("pneumoniamnist", "knn")], res[("pneumo-hf", "knn")]
    assert r["test"]["metrics"] == ref["test"]["metrics"] and r["selection"] == ref["selection"]
    assert r["dataset"]["source"] == "hf-dataset" and r["dataset"]["split"]["given"] == ["train", "val", "test"]


def _results(reports: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for p in reports.glob("*/results.json"):
        r = json.loads(p.read_text())
        out[(r["dataset"]["flag"], r["mode"])] = r
    return out


@pytest.mark.slow
def test_folder_and_manifest_runs_equal_the_npz_run(capsys, exported, pneumonia_root, tmp_path):
    """kNN and linear probe on the PNG folder and on the CSV give the npz run's numbers exactly."""
    folder, manifest = exported
    parquet = export_parquet(manifest, manifest.parent.parent / "pneumo-parquet")
    reports = tmp_path / "reports"
    common = ("--model", "vit-s16", "--tiny", "--bootstrap", "200", "--reports-dir", str(reports))
    for ds in ("pneumoniamnist", str(folder), str(manifest), str(parquet)):
        for mode in ("knn", "linprobe"):  # the second reuses the first's cached features
            code, out, err = run(capsys, mode, "--dataset", ds, "--data-root", str(pneumonia_root), *common)
            assert code == 0, err
    res = _results(reports)
    assert {flag for flag, _ in res} == {"pneumoniamnist", "pneumo-png", "pneumo-csv", "pneumo-parquet"}
    for mode in ("knn", "linprobe"):
        ref = res[("pneumoniamnist", mode)]
        for name in ("pneumo-png", "pneumo-csv", "pneumo-parquet"):
            r = res[(name, mode)]
            assert r["test"]["metrics"] == ref["test"]["metrics"]  # every value and CI, to the last digit
            assert r["selection"] == ref["selection"]
            assert r["dataset"]["n_test"] == 624 and r["dataset"]["classes"] == list(CLASSES)
            assert r["dataset"]["source"] in ("folder", "manifest")
            assert len(r["dataset"]["content_hash"]) == 64 and r["dataset"]["md5_verified"] is None
            split = r["dataset"]["split"]
            assert split["drawn"] == [] and Path(split["file"]).exists()
            assert hashlib.sha256(Path(split["file"]).read_bytes()).hexdigest() == split["sha256"]
    # same pixels, same labels: one content hash for both exports
    hashes = {res[(name, "knn")]["dataset"]["content_hash"] for name in ("pneumo-png", "pneumo-csv", "pneumo-parquet")}
    assert len(hashes) == 1
    assert res[("pneumo-png", "linprobe")]["extras"]["cache_hits"] == {"train": True, "val": True, "test": True}
    code, out, err = run(capsys, "report", "--reports-dir", str(reports), "--all")
    assert code == 0, err
    board = (reports / "leaderboard.md").read_text()
    for name in ("pneumoniamnist", "pneumo-png", "pneumo-csv", "pneumo-parquet"):
        assert name in board


def test_npz_with_a_card_is_a_dataset(pneumonia_root, tmp_path):
    from fmeval.data.sources import open_dataset
    from fmeval.io import file_digest

    private = tmp_path / "private.npz"
    shutil.copy(pneumonia_root / "pneumoniamnist.npz", private)
    from fmeval.errors import DataError

    with pytest.raises(DataError, match="dataset card"):
        open_dataset(str(private))
    (tmp_path / "private.yaml").write_text(CARD.format(name="private-xray"))
    data = open_dataset(str(private))
    assert data.flag == "private-xray" and data.info.labels == CLASSES and data.md5_verified is None
    assert data.md5 == file_digest(private, "md5")
    assert data.split("test").images.shape == (624, 28, 28)


# -- checks -------------------------------------------------------------------------
def _png(path: Path, value: int = 0, shape=(28, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _small_folder(root: Path, n: int = 6) -> Path:
    k = 0
    for s in ("train", "val", "test"):
        for c in CLASSES:
            for _ in range(n):
                k += 1
                _png(root / s / c / f"{k:04d}.png", k)
    return root


def test_data_check_names_each_broken_file_in_one_line(capsys, tmp_path):
    root = _small_folder(tmp_path / "broken")
    good = (root / "train/normal/0001.png").read_bytes()
    (root / "train/normal/trunc.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(root / "train/pneumonia/photo.png", format="JPEG")
    Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(root / "test/normal/deep.tif")
    shutil.rmtree(root / "val/pneumonia")
    (root / "val/pneumonia").mkdir()
    code, out, err = run(capsys, "data", "check", str(root))
    assert code == 2
    text = " ".join((out + err).split())
    assert "train/normal/trunc.png: unreadable image" in text
    assert "val/pneumonia: class folder has no images" in text
    assert "nothing was cached or run" in text
    assert not (tmp_path / "cache" / "decoded").exists()  # nothing written on a failed check
    # the warnings appear once the errors are fixed
    (root / "train/normal/trunc.png").unlink()
    _png(root / "val/pneumonia/9999.png", 9999)
    code, out, err = run(capsys, "data", "check", str(root))
    text = " ".join((out + err).split())
    assert code == 0, text
    assert "train/pneumonia/photo.png: a JPEG file named .png" in text
    assert "1 16-bit image(s) converted to 8 bits by round(x/257)" in text and "test/normal/deep.tif" in text
    assert "mixed channel counts: 32 grey and 1 colour image(s) (e.g. train/pneumonia/photo.png)" in text
    assert text.count("photo.png: a JPEG") == 1
    assert not (tmp_path / "cache" / "decoded").exists()  # data check writes nothing


def test_16_bit_rule_is_round_x_over_257(tmp_path):
    from fmeval.data.decode import decode_file

    a = np.array([[0, 257, 65535, 1000]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(a).save(tmp_path / "a.tif")
    d = decode_file(str(tmp_path / "a.tif"), 4)
    assert d.bits == 16 and d.array[0].tolist() == [0, 1, 255, 4]  # round(x / 257)


def test_manifest_label_typo_is_one_line_naming_the_row(capsys, tmp_path):
    root = _small_folder(tmp_path / "imgs", n=3)
    rows = [("imgs/" + str(p.relative_to(root)), p.parent.name, p.parent.parent.name)
            for p in sorted(root.glob("*/*/*.png"))]
    rows[4] = (rows[4][0], "pneumonai", rows[4][2])
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    (tmp_path / "fmeval.yaml").write_text(CARD.format(name="typo"))
    code, out, err = run(capsys, "data", "check", str(tmp_path / "labels.csv"))
    text = " ".join((out + err).split())
    assert code == 2
    assert "labels.csv row 6: label 'pneumonai' is not one of the classes (normal, pneumonia) (did you mean 'pneumonia'?)" in text
    assert text.count("is not one of the classes") == 1


def test_class_in_train_absent_in_test_is_reported(capsys, tmp_path):
    root = _small_folder(tmp_path / "d")
    for p in (root / "test/pneumonia").iterdir():
        p.unlink()
    (root / "test/pneumonia").rmdir()
    code, out, err = run(capsys, "data", "check", str(root))
    assert code == 0
    assert "class 'pneumonia' is in train but absent in test" in " ".join((out + err).split())


def test_planted_duplicates_are_counted_and_strict_leakage_refuses(capsys, pneumonia_root, tmp_path):
    root = export_folder(pneumonia_root / "pneumoniamnist.npz", tmp_path / "leak", per_split=150, name="leak")

    def duplicates(*extra):
        code, out, err = run(capsys, "data", "check", str(root), *extra)
        text = " ".join((out + err).split())
        import re

        m = re.search(r"leakage: (\d+) image", text)
        return code, (int(m.group(1)) if m else 0), text

    code, before, _ = duplicates()
    assert code == 0
    tests = sorted((root / "test").glob("*/*.png"))[:5]
    for i, p in enumerate(tests):
        shutil.copy(p, root / "train" / p.parent.name / f"copy{i}.png")
    code, after, text = duplicates()
    assert code == 0 and after == before + 5
    assert "5 in test" in text
    code, _, text = duplicates("--strict-leakage")
    assert code == 2 and "(--strict-leakage)" in text


# -- splits ---------------------------------------------------------------------------
def test_drawn_splits_are_seeded_stratified_and_grouped():
    from fmeval.data.splits import SplitPlan, assign_splits

    rng = np.random.default_rng(0)
    y = rng.choice(3, size=1000, p=[0.6, 0.3, 0.1])[:, None]
    given = [None] * 1000
    a, rec = assign_splits(given, y, False, SplitPlan(seed=1))
    b, rec_b = assign_splits(given, y, False, SplitPlan(seed=1))
    c, rec_c = assign_splits(given, y, False, SplitPlan(seed=2))
    assert all((a[s] == b[s]).all() for s in a) and rec["sha256"] == rec_b["sha256"] != rec_c["sha256"]
    for s, share in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        for k in range(3):
            n_k = int((y[:, 0] == k).sum())
            assert abs(int((y[a[s], 0] == k).sum()) - share * n_k) <= 1  # class ratios held per split
    groups = [f"patient{i // 4}" for i in range(1000)]  # 4 images per patient
    g, rec_g = assign_splits(given, y, False, SplitPlan(seed=1, group_by="patient"), groups)
    where = {}
    for s, idx in g.items():
        for i in idx:
            assert where.setdefault(groups[i], s) == s  # no patient in two splits
    assert abs(len(g["test"]) - 200) <= 8 and rec_g["group_by"] == "patient"
    # train and test given: only val is drawn, from train
    given2 = ["test" if i % 5 == 0 else "train" for i in range(1000)]
    d, rec_d = assign_splits(given2, y, False, SplitPlan(seed=0))
    assert rec_d["drawn"] == ["val"] and set(d["test"]) == {i for i in range(1000) if i % 5 == 0}


def test_iterative_stratification_holds_label_ratios():
    from fmeval.data.splits import SplitPlan, assign_splits

    rng = np.random.default_rng(3)
    y = (rng.random((2000, 5)) < np.array([0.5, 0.2, 0.1, 0.05, 0.02])).astype(np.int64)
    a, rec = assign_splits([None] * 2000, y, True, SplitPlan(seed=0))
    assert rec["method"] == "iterative stratification"
    for s, share in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        got = y[a[s]].sum(axis=0)
        want = share * y.sum(axis=0)
        assert np.all(np.abs(got - want) <= np.maximum(2, 0.02 * y.sum(axis=0)))


def test_drawn_split_run_records_the_same_split_twice(capsys, tmp_path):
    root = tmp_path / "flat"
    for k in range(60):
        _png(root / CLASSES[k % 2] / f"{k:03d}.png", k)
    args = ("knn", "--model", "vit-s16", "--tiny", "--dataset", str(root), "--bootstrap", "0", "--k", "1,3",
            "--reports-dir", str(tmp_path / "reports"), "--split-ratios", "0.5,0.25,0.25", "--split-seed", "7")
    for _ in range(2):
        code, out, err = run(capsys, *args)
        assert code == 0, err
    recs = [json.loads(p.read_text())["dataset"] for p in (tmp_path / "reports").glob("*/results.json")]
    assert len(recs) == 2 and recs[0]["split"] == recs[1]["split"]
    assert recs[0]["split"]["drawn"] == ["train", "val", "test"] and recs[0]["split"]["seed"] == 7
    assert recs[0]["n_train"] == 30 and abs(recs[0]["n_val"] - 15) <= 1 and recs[0]["n_val"] + recs[0]["n_test"] == 30
    idx = json.loads(Path(recs[0]["split"]["file"]).read_text())
    assert sorted(idx["train"] + idx["val"] + idx["test"]) == list(range(60))


def test_bad_split_ratios_and_unknown_paths_are_one_line(capsys, tmp_path):
    root = _small_folder(tmp_path / "d")
    code, out, err = run(capsys, "knn", "--model", "vit-s16", "--tiny", "--dataset", str(tmp_path / "nothere"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, out, err = run(capsys, "data", "check", str(root), "--split-ratios", "0.5,0.6,0.1")
    assert code == 2 and "--split-ratios" in err


# -- the decoded-array cache ----------------------------------------------------------
def test_second_open_of_10000_pngs_reads_no_image_file(tmp_path, monkeypatch):
    """First open decodes every file (worker processes); the second opens none."""
    import PIL.Image

    from fmeval.data.sources import open_dataset

    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10_000, 8, 8), dtype=np.uint8)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
    for i in range(10_000):
        PIL.Image.fromarray(pixels[i]).save(root / CLASSES[i % 2] / f"{i:05d}.png", compress_level=0)
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    first = open_dataset(str(root), size=8)
    assert first.decoded_now and sum(len(first.labels(s)) for s in ("train", "val", "test")) == 10_000

    opened = {"n": 0}
    real_open = PIL.Image.open

    def counting_open(*a, **kw):
        opened["n"] += 1
        return real_open(*a, **kw)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    second = open_dataset(str(root), size=8)
    assert opened["n"] == 0 and not second.decoded_now
    assert isinstance(second.split("train").images, np.memmap)
    for s in ("train", "val", "test"):
        assert np.array_equal(second.split(s).images, first.split(s).images)
    assert second.md5 == first.md5
    # one file's content changed in place, same byte size (uncompressed PNG): its mtime changed, so the
    # arrays are decoded again, in this process (no worker sees the patch)
    monkeypatch.setenv("FMEVAL_DECODE_WORKERS", "1")
    changed = root / "pneumonia" / "00003.png"
    before = changed.stat()
    PIL.Image.fromarray(255 - pixels[3]).save(changed, compress_level=0)
    assert changed.stat().st_size == before.st_size and changed.stat().st_mtime_ns != before.st_mtime_ns
    third = open_dataset(str(root), size=8)
    assert third.decoded_now and opened["n"] == 10_000 and third.md5 != first.md5
    # a removed file: decoded again, one row fewer
    (root / "normal" / "00000.png").unlink()
    fourth = open_dataset(str(root), size=8)
    assert fourth.decoded_now and sum(len(fourth.labels(s)) for s in ("train", "val", "test")) == 9_999


@pytest.mark.slow
def test_study_lists_a_folder_in_datasets(capsys, pneumonia_root, tmp_path, monkeypatch):
    """A study YAML lists a path beside a MedMNIST name; its leaderboard shows both by name."""
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(pneumonia_root))
    root = export_folder(pneumonia_root / "pneumoniamnist.npz", tmp_path / "mine", per_split=60, name="mine-png")
    study = tmp_path / "study.yaml"
    study.write_text("name: mine\nsettings: {tiny: true, n_boot: 20, limit: 60}\naxes:\n  models: [vit-s16]\n"
                     f"  datasets: [pneumoniamnist, {root}]\n  sizes: [28]\n  modes: [knn]\n  seeds: [0]\n")
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "study", "run", str(study), "--reports-dir", str(reports))
    assert code == 0, err
    board = next(reports.rglob("leaderboard.md")).read_text()
    assert "pneumoniamnist" in board and "mine-png" in board
    # per-sample outputs reopen the folder's test split: the misclassified sheet and CSV exist, with true classes
    (sheet_csv,) = reports.rglob("misclassified_mine-png-28*.csv")
    assert sheet_csv.with_suffix(".png").exists()
    with open(sheet_csv, newline="") as f:
        wrong = list(csv.DictReader(f))
    test_class = {int(p.stem): p.parent.name for p in (root / "test").glob("*/*.png")}
    assert wrong and all(row["true_class"] == test_class[int(row["index"])] for row in wrong)
    bad = tmp_path / "bad.yaml"
    bad.write_text(study.read_text().replace(str(root), str(root / "nothere")))
    code, out, err = run(capsys, "study", "plan", str(bad))
    assert code == 2 and "does not exist" in err


def test_data_layer_cache_root_follows_the_cache_rule(tmp_path, monkeypatch):
    """data/ cannot import fmeval.cache (it imports torch); its copy of the rule must agree."""
    from fmeval.cache import cache_root
    from fmeval.data.arraycache import cache_root as data_cache_root

    assert data_cache_root() == cache_root()
    monkeypatch.delenv("FMEVAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_root() == cache_root() == tmp_path / "xdg" / "fmeval"


@pytest.mark.slow
def test_nifti_manifest_of_vesselmnist3d_gives_the_npz_numbers(capsys, vessel_root, tmp_path):
    """VesselMNIST3D written as NIfTI volumes + a CSV: the 3D kNN run equals the npz run."""
    nib = require_extra("nibabel", "data")
    z = np.load(vessel_root / "vesselmnist3d.npz")
    out = tmp_path / "vessel"
    (out / "vols").mkdir(parents=True)
    rows = []
    for s in ("train", "val", "test"):
        for i, (v, label) in enumerate(zip(z[f"{s}_images"], z[f"{s}_labels"][:, 0])):
            nib.save(nib.Nifti1Image(v, np.eye(4)), out / "vols" / f"{s}{i:05d}.nii")
            rows.append((f"vols/{s}{i:05d}.nii", int(label), s))
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    (out / "fmeval.yaml").write_text("name: vessel-nifti\ntask: binary\nclasses: [vessel, aneurysm]\n")
    reports = tmp_path / "reports"
    common = ("--model", "resnet18-3d", "--tiny", "--bootstrap", "100", "--k", "1,5", "--limit", "120",
              "--reports-dir", str(reports), "--data-root", str(vessel_root))
    for ds in ("vesselmnist3d", str(out / "labels.csv")):
        code, _, err = run(capsys, "knn", "--dataset", ds, *common)
        assert code == 0, err
    res = _results(reports)
    ref, r = res[("vesselmnist3d", "knn")], res[("vessel-nifti", "knn")]
    assert r["test"]["metrics"] == ref["test"]["metrics"] and r["selection"] == ref["selection"]
    assert "NIfTI" in r["dataset"]["preprocessing"]


def test_prompts_init_writes_a_bank_that_validates_and_zero_shot_uses(capsys, tmp_path):
    root = _small_folder(tmp_path / "mine", n=4)
    (root / "fmeval.yaml").write_text(CARD.format(name="mine"))
    code, out, err = run(capsys, "prompts", "init", "--dataset", str(root))
    assert code == 0, err
    bank = root / "prompts.yaml"
    code, out, err = run(capsys, "prompts", "validate", str(bank))
    assert code == 0 and "ok" in out, err
    code, out, err = run(capsys, "prompts", "init", "--dataset", str(root))
    assert code == 2 and "exists" in err
    code, out, err = run(capsys, "zeroshot", "--model", "clip-vit-b16", "--tiny", "--dataset", str(root),
                         "--bootstrap", "0", "--reports-dir", str(tmp_path / "reports"))
    assert code == 0, err
    (res,) = [json.loads(p.read_text()) for p in (tmp_path / "reports").glob("*/results.json")]
    assert res["dataset"]["flag"] == "mine" and res["test"]["class_names"] == list(CLASSES)
    from fmeval.prompts import load_bank

    assert res["extras"]["prompt_bank_hash"] == load_bank(bank).content_hash  # the dataset's own bank, by default
    # a bank written for another dataset is refused for this one
    other = _small_folder(tmp_path / "other", n=2)
    (other / "fmeval.yaml").write_text(CARD.format(name="other"))
    code, out, err = run(capsys, "zeroshot", "--model", "clip-vit-b16", "--tiny", "--dataset", str(other),
                         "--prompts", str(bank), "--bootstrap", "0")
    assert code == 2 and "is for" in err


def test_decode_benchmark_runs_at_toy_size(tmp_path, monkeypatch):
    """benchmarks/decode.py end to end on 80 files (timings are not asserted, only that the
    cached pass was a cache hit and every field is there)."""
    from benchmarks.decode import run as bench

    monkeypatch.setenv("FMEVAL_DECODE_WORKERS", "2")
    res = bench(n=80, size=16, workdir=tmp_path / "bench", rounds=1)
    for key in ("baseline", "first", "second", "second_with_reading_arrays", "first_vs_baseline", "second_vs_first",
                "goals", "load_average_before", "machine"):
        assert key in res, key
    assert res["first"]["images_per_s"] > 0 and res["second"]["s"] > 0


def test_group_by_keeps_each_patient_in_one_split_of_a_manifest(capsys, tmp_path):
    from fmeval.data.local import SourceOptions
    from fmeval.data.sources import open_dataset

    rows = []
    for k in range(90):
        _png(tmp_path / "img" / f"{k:03d}.png", k)
        rows.append((f"img/{k:03d}.png", CLASSES[(k // 3) % 2], f"p{k // 3}"))  # 3 images per patient
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "patient"), *rows])
    code, out, err = run(capsys, "data", "check", str(tmp_path / "labels.csv"), "--group-by", "patient")
    assert code == 0, err
    data = open_dataset(str(tmp_path / "labels.csv"), options=SourceOptions(group_by="patient", split_seed=3))
    split_of = {}
    for s in ("train", "val", "test"):
        idx = json.loads(Path(data.split_record["file"]).read_text())[s]
        for i in idx:
            assert split_of.setdefault(rows[i][2], s) == s
    assert data.split_record["group_by"] == "patient" and len(set(split_of.values())) == 3
    code, out, err = run(capsys, "data", "check", str(tmp_path / "labels.csv"), "--group-by", "patinet")
    assert code == 2 and "no group column 'patinet'" in err and "did you mean 'patient'" in err


# -- robustness on your own data ------------------------------------------------------
def test_robustness_on_a_folder_uses_the_cards_corruptions_like_and_equals_the_npz_run(capsys, tmp_path):
    """A PNG export of a (synthetic) PneumoniaMNIST with `corruptions_like: pneumoniamnist` in its card gives
    the npz run's robustness table exactly (same images, same per-index corruption seeds, same parameters);
    the report records the rule. Without the field: one line saying how to opt in, before any work."""
    from helpers import ROBUSTNESS_INSTALL
    from helpers import require_extra as require

    require("medmnistc.corruptions.registry", "robustness", ROBUSTNESS_INSTALL)
    from fmeval.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(60, 30, 40))
    folder = export_folder(tmp_path / "data" / "pneumoniamnist.npz", tmp_path / "mine", name="mine-xray")
    reports = tmp_path / "reports"
    common = ("--model", "resnet18", "--tiny", "--bootstrap", "0", "--head", "knn", "--k", "1,5",
              "--corruptions", "gaussian_noise,contrast_down", "--severities", "1,5",
              "--data-root", str(tmp_path / "data"), "--reports-dir", str(reports))
    code, out, err = run(capsys, "robustness", "--dataset", str(folder), *common)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "corruptions_like: <dataset>" in err and "pneumoniamnist (chest X-ray)" in err
    assert "its modality: chest X-ray" in err and not reports.exists()
    card = folder / "fmeval.yaml"
    card.write_text(card.read_text() + "corruptions_like: pneumonimnist\n")
    code, out, err = run(capsys, "robustness", "--dataset", str(folder), *common)
    assert code == 2 and "corruptions_like pneumonimnist" in err and "pneumoniamnist" in err, err
    card.write_text(card.read_text().replace("pneumonimnist", "pneumoniamnist"))
    for ds in ("pneumoniamnist", str(folder)):
        code, out, err = run(capsys, "robustness", "--dataset", ds, *common)
        assert code == 0, err
    res = _results(reports)
    ref, mine = res[("pneumoniamnist", "robustness")], res[("mine-xray", "robustness")]
    r, m = ref["extras"]["robustness"], mine["extras"]["robustness"]
    assert m["table"] == r["table"] and m["severity_params"] == r["severity_params"]
    assert mine["test"]["metrics"] == ref["test"]["metrics"]
    assert r["corruptions_like"]["dataset"] == m["corruptions_like"]["dataset"] == "pneumoniamnist"
    assert "card fmeval.yaml: corruptions_like pneumoniamnist" in m["corruptions_like"]["rule"]
    assert "own MedMNIST-C corruptions" in r["corruptions_like"]["rule"]
    assert "AlexNet reference exists for MedMNIST datasets only" in m["medmnistc_errors"]["unavailable"]
    md = next(p for p in reports.glob("*/report.md") if "mine-xray" in p.read_text())
    assert "Corruption set: card fmeval.yaml: corruptions_like pneumoniamnist" in md.read_text()


def test_parquet_manifest_reads_like_the_csv(capsys, tmp_path):
    """A Parquet manifest (typed integer labels, a float label column, a null split) is read as the same
    CSV would be; its problems are one line naming the row."""
    pa = require_extra("pyarrow", "data")
    import pyarrow.parquet as pq

    from fmeval.data.sources import open_dataset

    root = _small_folder(tmp_path / "imgs", n=3)
    files = sorted(root.glob("*/*/*.png"))
    rows = [("imgs/" + str(p.relative_to(root)), p.parent.name, p.parent.parent.name) for p in files]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    (tmp_path / "pq").mkdir()
    table = pa.table({"path": ["../" + r[0] for r in rows],
                      "label": pa.array([float(CLASSES.index(r[1])) for r in rows], pa.float64()),
                      "split": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "pq" / "labels.parquet")
    for where, name in ((tmp_path, "pq-csv"), (tmp_path / "pq", "pq-parquet")):
        (where / "fmeval.yaml").write_text(CARD.format(name=name))
    a = open_dataset(str(tmp_path / "labels.csv"), size=28, write=False)
    b = open_dataset(str(tmp_path / "pq" / "labels.parquet"), size=28, write=False)
    assert a.md5 == b.md5 and b.info.labels == CLASSES
    for s in ("train", "val", "test"):
        assert np.array_equal(a.labels(s), b.labels(s)) and np.array_equal(a.split(s).images, b.split(s).images)
    bad = table.set_column(2, "split", pa.array(["train"] + [None] * (len(rows) - 1), pa.string()))
    pq.write_table(bad, tmp_path / "pq" / "labels.parquet")
    code, out, err = run(capsys, "data", "check", str(tmp_path / "pq" / "labels.parquet"))
    assert code == 2 and "rows have no split while others do" in err, err
    (tmp_path / "pq" / "labels.parquet").write_bytes(b"PAR1 not really")
    code, out, err = run(capsys, "data", "check", str(tmp_path / "pq" / "labels.parquet"))
    assert code == 2 and "is not a readable Parquet file" in err and len(err.strip().splitlines()) == 1, err


# -- Hugging Face hub datasets (no network here: datasets.load_dataset is replaced) -------------
def test_hub_dataset_is_resolved_offline_and_takes_a_card(capsys, tmp_path, monkeypatch):
    """hf-dataset:<owner/name>[@rev][/<config>] reaches datasets.load_dataset with repo, config and revision;
    `fmeval data init` writes a card naming it (source:), and a kNN run on that card file equals the npz run,
    named by the card and recording the hub address. A bad address or a failing hub: one line each."""
    datasets = require_extra("datasets", "data")
    from fmeval.data.hf import parse_spec
    from fmeval.data.synthetic import write_synthetic

    assert parse_spec("hf-dataset:owner/name") == ("owner/name", None, None)
    assert parse_spec("hf-dataset:owner/name@v1.2/default") == ("owner/name", "v1.2", "default")
    assert parse_spec("hf-dataset:owner/name/default") == ("owner/name", None, "default")
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(60, 30, 40))
    z = np.load(tmp_path / "data" / "pneumoniamnist.npz")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    hub = datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in z[f"{s}_images"]], "label": z[f"{s}_labels"][:, 0].tolist()},
        features=features) for s, name in (("train", "train"), ("val", "validation"), ("test", "test"))})
    calls = []

    def fake_load_dataset(repo, config=None, revision=None, **kw):
        calls.append((repo, config, revision))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    spec = "hf-dataset:someone/xray@v1.2/default"
    code, out, err = run(capsys, "data", "check", spec)
    text = " ".join((out + err).split())
    assert code == 0, text
    assert calls[-1] == ("someone/xray", "default", "v1.2") and "ok xray: binary-class, 2 classes, 60 train, 30 val, 40 test" in text
    assert "no dataset card" in text and f"fmeval data init {spec}" in text
    code, out, err = run(capsys, "data", "init", spec)
    assert code == 0, err
    card = tmp_path / "xray.yaml"
    assert f"source: {spec}" in card.read_text()
    card.write_text(card.read_text().replace("name: xray", "name: hub-xray"))
    reports = tmp_path / "reports"
    common = ("--model", "resnet18", "--tiny", "--bootstrap", "20", "--k", "1,5", "--data-root", str(tmp_path / "data"),
              "--reports-dir", str(reports))
    for ds in ("pneumoniamnist", str(card)):
        code, out, err = run(capsys, "knn", "--dataset", ds, *common)
        assert code == 0, err
    res = _results(reports)
    ref, mine = res[("pneumoniamnist", "knn")], res[("hub-xray", "knn")]
    assert mine["test"]["metrics"] == ref["test"]["metrics"] and mine["selection"] == ref["selection"]
    assert mine["dataset"]["origin"] == spec and mine["dataset"]["source"] == "hf-dataset"
    assert mine["dataset"]["card"] == str(card)
    # a hub card's prompt bank sits beside it, named after it
    code, out, err = run(capsys, "prompts", "init", "--dataset", str(card))
    assert code == 0 and (tmp_path / "xray.prompts.yaml").exists(), err
    # one line each: a malformed address, a hub that cannot be reached, a card with another kind of source
    code, out, err = run(capsys, "data", "check", "hf-dataset:someone/x ray")
    assert code == 2 and "is not hf-dataset:<owner/name>" in err and len(err.strip().splitlines()) == 1, err

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'someone/xray' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, out, err = run(capsys, "data", "check", spec)
    assert code == 2 and f"{spec}: cannot load (Couldn't reach" in err and len(err.strip().splitlines()) == 1, err
    card.write_text(card.read_text().replace(spec, "s3://bucket/xray"))
    code, out, err = run(capsys, "data", "check", str(card))
    assert code == 2 and "is not hf-dataset:<owner/name>" in err and len(err.strip().splitlines()) == 1, err


def test_predict_then_score_round_trips_on_a_folder_with_drawn_splits(capsys, tmp_path, monkeypatch):
    """`fmeval predict` names the folder (not the card's name) and the split options in its score
    command; run as printed, from another folder, it reproduces the run's test metrics."""
    import shlex

    root = tmp_path / "flat"
    for k in range(60):
        _png(root / CLASSES[k % 2] / f"{k:03d}.png", k)
    (root / "fmeval.yaml").write_text(CARD.format(name="flat-xray"))
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "knn", "--model", "vit-s16", "--tiny", "--dataset", str(root), "--bootstrap", "30",
                         "--k", "1,3", "--reports-dir", str(reports), "--split-seed", "7", "--split-ratios", "0.5,0.2,0.3")
    assert code == 0, err
    (run_dir,) = reports.glob("*knn*")
    code, out, err = run(capsys, "predict", "--run", str(run_dir), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("score it with: "))
    argv = shlex.split(line.removeprefix("score it with: "))
    assert argv[:2] == ["fmeval", "score"] and argv[argv.index("--dataset") + 1] == str(root)
    assert "--split-seed" in argv and "--split-ratios" in argv
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, *argv[1:], "--reports-dir", str(tmp_path / "scored"))
    assert code == 0, err
    (scored,) = [json.loads(p.read_text()) for p in (tmp_path / "scored").glob("*/results.json")]
    ran = json.loads((run_dir / "results.json").read_text())
    assert scored["test"]["metrics"] == ran["test"]["metrics"] and scored["dataset"]["flag"] == "flat-xray"


def test_cache_clear_removes_decoded_arrays_and_keeps_split_files(capsys, tmp_path):
    """`fmeval cache clear` removes decoded user datasets and the temporaries of killed writes, keeps a
    temporary a live run is writing, keeps the split index files reports name (not called foreign),
    and leaves a folder holding anything it did not write."""
    import os
    import subprocess
    import sys

    from fmeval.data import arraycache
    from fmeval.data.sources import open_dataset

    root = _small_folder(tmp_path / "d", n=4)
    data = open_dataset(str(root))
    (entry,) = [p for p in arraycache.decoded_root().glob("*/*") if not p.name.startswith(".")]
    split_file = Path(data.split_record["file"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    hh = entry.parent.name
    killed = entry.parent / f".{hh}{'a' * 62}.{int(dead.stdout)}.tmp"
    live = entry.parent / f".{hh}{'c' * 62}.{os.getpid()}.tmp"
    for tmp in (killed, live):
        tmp.mkdir()
        (tmp / "train_images.npy").write_bytes(b"half")
    theirs = entry.parent / f"{hh}{'e' * 62}"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    code, out, err = run(capsys, "cache", "clear", "--yes")
    text = " ".join(out.split())
    assert code == 0 and "1 decoded user dataset(s)" in text, out + err
    assert "kept 1 split index file(s)" in text and "did not write" in text
    assert not entry.exists() and not killed.exists() and live.exists() and split_file.exists()
    assert (theirs / "notes.txt").read_text() == "mine" and str(split_file.name) not in text
    assert open_dataset(str(root)).decoded_now  # decoded again on the next use


def test_every_command_takes_a_folder(capsys, tmp_path, monkeypatch):
    """features, few-shot kNN, fine-tuning and evaluate of the adapter run on a folder with a card; their
    reports carry the card's name, the content hash and the split record."""
    root = _small_folder(tmp_path / "mine", n=6)
    (root / "fmeval.yaml").write_text(CARD.format(name="mine-small"))
    reports = tmp_path / "reports"
    tiny = ("--model", "resnet18", "--tiny", "--dataset", str(root))
    code, out, err = run(capsys, "features", *tiny)
    assert code == 0, err
    code, out, err = run(capsys, "knn", *tiny, "--shots", "2,4", "--draws", "2", "--k", "1,3", "--bootstrap", "0",
                         "--reports-dir", str(reports))
    assert code == 0, err
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / "adapters"))
    code, out, err = run(capsys, "finetune", *tiny, "--full", "--epochs", "1", "--bootstrap", "0",
                         "--reports-dir", str(reports))
    assert code == 0, err
    (adapter,) = (tmp_path / "adapters").iterdir()
    code, out, err = run(capsys, "evaluate", "--adapter", str(adapter), "--bootstrap", "0", "--reports-dir", str(reports))
    assert code == 0, err
    recs = [json.loads(p.read_text()) for p in reports.glob("*/results.json")]
    modes = sorted(r["mode"] for r in recs)
    assert modes.count("knn") == 4 and modes.count("finetune-full") == 2, modes
    hashes = {r["dataset"]["content_hash"] for r in recs}
    assert {r["dataset"]["flag"] for r in recs} == {"mine-small"} and len(hashes) == 1
    assert all(r["dataset"]["split"]["given"] == ["train", "val", "test"] for r in recs)
    assert any("mine-small" in p.read_text() for p in reports.glob("fewshot-*/*.md"))
