"""One benchmark case = one measured call, run in a fresh process by bench.py.

A fresh process per case keeps the numbers independent: no allocator reuse
between phases (so the peak-RSS delta is the call's own), no OpenMP pools of
scikit-learn and torch spinning against each other, no warm caches from the
previous case. ``python -m benchmarks.cases NAME JSON`` prints one result line
``@@RESULT@@ {json}``; bench.py can also call :data:`CASES` in-process
(``--inline``, used by the smoke test).

Inputs are rebuilt inside the case (synthetic features from a seed, real
features from an ``.npz`` written by the ``prepare`` case) and are resident
before the measurement starts, so the reported peak-RSS delta is the working
memory of the call itself, comparable with the size of the feature matrix.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import numpy as np

from benchmarks.common import measure, synthetic_features

MARKER = "@@RESULT@@"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# -- feature extraction -------------------------------------------------------


def baseline_extract(adapter, images: np.ndarray, batch_size: int, device: str):
    """What a user would write: per-image torchvision transforms + DataLoader,
    then ``for x in loader: model(x)`` without inference_mode/no_grad."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    pre = adapter.preprocess
    interp = {
        "bicubic": T.InterpolationMode.BICUBIC,
        "bilinear": T.InterpolationMode.BILINEAR,
        "nearest": T.InterpolationMode.NEAREST,
    }.get(pre.interpolation, T.InterpolationMode.BILINEAR)
    tf = T.Compose([
        T.Resize((pre.input_size, pre.input_size), interpolation=interp),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])

    class ImageArray(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(images[i]).convert("RGB"))

    loader = DataLoader(ImageArray(), batch_size=batch_size, shuffle=False)
    model = adapter.to(device).eval()
    feats = []
    for x in loader:
        feats.append(model(x.to(device)).detach().cpu())
    return torch.cat(feats)


def fmeval_extractor(adapter, precision: str, dev: str, bs: int):
    """fmeval's extraction (``extract_features``) at the resolved ``precision``, in the
    memory format the policy picks for the adapter's family."""
    import torch

    from fmeval.device import resolve_precision, use_channels_last
    from fmeval.features import extract_features

    device = torch.device(dev)
    resolved = resolve_precision(precision, device, adapter.family)
    cl = use_channels_last(adapter.family, device, resolved)
    return (lambda imgs: extract_features(adapter, imgs, batch_size=bs, device=dev, precision=resolved)), \
        resolved, cl


def case_extract(p: dict) -> dict:
    from fmeval.adapters.base import create_adapter

    dev, bs = p["device"], p["batch_size"]
    images = np.load(p["data"])["train_images"][: p["n_images"]]
    adapter = create_adapter(p["model"], pretrained=False, tiny=p["tiny"],
                             input_size=p["input_size"], device=dev)
    extra: dict = {"model": p["model"]}
    if p["method"] == "fmeval":
        run, resolved, cl = fmeval_extractor(adapter, p.get("precision", "auto"), dev, bs)
        extra.update(precision=resolved, channels_last=cl)
    else:
        def run(imgs):
            return baseline_extract(adapter, imgs, bs, dev)
        extra.update(precision="fp32", channels_last=False)
    run(images[: min(bs, len(images))])  # warm-up: one batch (kernel selection, allocator)
    with measure(dev) as m:
        feats = run(images)
    if p.get("save"):
        np.save(p["save"], feats.float().numpy())
    return {
        **m.as_dict(), **extra,
        "n_images": len(images),
        "images_per_s": len(images) / m.seconds,
        "feature_dim": int(feats.shape[1]),
        "input_size": adapter.preprocess.input_size,
        "threads": _threads(),
    }


# -- cached prepare_frozen -------------------------------------------------------


def case_prepare(p: dict) -> dict:
    os.environ["FMEVAL_CACHE_DIR"] = p["cache_dir"]
    import timm  # noqa: F401  (imported before the timer: both runs pay it equally)

    import fmeval.adapters  # noqa: F401
    from fmeval.config import RunConfig
    from fmeval.pipeline import prepare_frozen

    cfg = RunConfig(
        mode="knn", model=p["model"], dataset=p["dataset"], size=28, data_root=p["data_root"],
        pretrained=False, tiny=p["tiny"], input_size=p["input_size"],
        batch_size=p["batch_size"], device=p["device"], limit=p.get("limit"),
    )
    with measure(p["device"]) as m:
        fz = prepare_frozen(cfg)
    if p.get("save"):
        np.savez(
            p["save"],
            **{f"x_{s}": fz.features[s].cpu().numpy() for s in fz.features},
            **{f"y_{s}": np.asarray(fz.labels[s]).reshape(len(fz.labels[s]), -1)[:, 0]
               for s in fz.labels},
        )
    return {
        **m.as_dict(),
        "cache_hits": fz.cache_hits,
        "n_images": int(sum(len(v) for v in fz.labels.values())),
        "feature_dim": int(fz.features["train"].shape[1]),
        "threads": _threads(),
    }


# -- probes -----------------------------------------------------------------------


def _features(p: dict, splits: tuple[str, ...]):
    """{split: (x float32 tensor, y int64 tensor)} from a saved npz or a seed."""
    import torch

    if p.get("features"):
        z = np.load(p["features"])
        return {s: (torch.from_numpy(z[f"x_{s}"]).float(), torch.from_numpy(z[f"y_{s}"]).long())
                for s in splits}
    sizes = {"train": p["n_train"], "val": p.get("n_val", 0), "test": p["n_test"]}
    seeds = {"train": 1, "val": 2, "test": 3}
    return {s: synthetic_features(sizes[s], dim=p["dim"], n_classes=p["n_classes"], seed=seeds[s])
            for s in splits}


def case_knn(p: dict) -> dict:
    """fmeval's ``knn_predict`` or scikit-learn's brute-force ``KNeighborsClassifier``, one rule.

    ``euclidean-majority``: scikit-learn's default (Euclidean, uniform votes).
    ``cosine``: fmeval's DINOv2 rule (votes ``exp(sim / 0.07)``) against
    scikit-learn with ``metric="cosine"`` and the same weights as a callable
    of its cosine distance, so the two predictions must agree.
    """
    data = _features(p, ("train", "test"))
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    n_classes = int(max(ytr.max(), yte.max())) + 1
    k, dev = p["k"], p.get("device", "cpu")
    rule = p.get("rule", "euclidean-majority")
    extra: dict = {"rule": rule}
    if p["impl"] == "fmeval":
        from fmeval.probes.knn import knn_predict
        from fmeval.probes.knn_search import SearchStats

        xtr_d, ytr_d, xte_d = xtr.to(dev), ytr.to(dev), xte.to(dev)
        stats = SearchStats()
        scoring = p.get("scoring", "auto")
        with measure(dev) as m:
            prob = knn_predict(xtr_d, ytr_d, xte_d, [k], n_classes=n_classes, rule=rule,
                               scoring=scoring, stats=stats, threads=p.get("threads"))[k]
            pred = prob.argmax(1).cpu().numpy()
        gemm_flops = 2.0 * len(xtr) * len(xte) * xtr.shape[1]
        extra.update(scoring=stats.precision,
                     rows_by_precision=stats.by_precision, rows_full_exact=stats.full_exact,
                     switched_to_fp32=stats.switched_to_fp32, reranked_per_row=stats.reranked / len(xte),
                     gathered_per_row=stats.gathered / len(xte),
                     tiles_by_threads=stats.tiles_by_threads, thread_probe_s=stats.probe,
                     gemm=stats.gemm, gemm_probe_s=stats.gemm_probe, core_share=stats.core_share,
                     gemm_gflop=gemm_flops / 1e9, achieved_gflops=gemm_flops / m.seconds / 1e9)
    else:
        from sklearn.neighbors import KNeighborsClassifier

        xtr_n, ytr_n, xte_n = xtr.numpy(), ytr.numpy(), xte.numpy()
        kw: dict = {}
        if rule == "cosine":
            t = float(p.get("temperature", 0.07))
            kw = dict(metric="cosine", weights=lambda dist: np.exp((1.0 - dist) / t))
        clf = KNeighborsClassifier(n_neighbors=k, algorithm=p.get("algorithm", "auto"), n_jobs=-1, **kw)
        with measure("cpu") as m:
            clf.fit(xtr_n, ytr_n)
            pred = clf.predict(xte_n)
        extra.update(algorithm=p.get("algorithm", "auto"), fit_method=clf._fit_method, n_jobs=-1,
                     metric=kw.get("metric", "euclidean"))
    if p.get("save_pred"):
        np.save(p["save_pred"], np.asarray(pred, dtype=np.int64))
    return {
        **m.as_dict(), **extra,
        "n_train": len(xtr), "n_test": len(xte), "dim": int(xtr.shape[1]), "k": k,
        "accuracy": float((np.asarray(pred) == yte.numpy()).mean()),
        "train_matrix_mb": xtr.numel() * 4 / 2**20,
        "threads": _threads(),
    }


def case_linear(p: dict) -> dict:
    import torch

    data = _features(p, ("train", "val", "test"))
    (xtr, ytr), (xva, yva), (xte, yte) = data["train"], data["val"], data["test"]
    n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    dev = p.get("device", "cpu")
    extra: dict = {}
    if p["impl"] == "fmeval":
        from fmeval.device import resolve_precision
        from fmeval.probes.linear import ProbeConfig, train_linear_probe

        cfg = ProbeConfig(epochs=p["epochs"]) if p.get("epochs") else ProbeConfig()
        xtr_d, ytr_d, xva_d, yva_d = xtr.to(dev), ytr.to(dev), xva.to(dev), yva.to(dev)
        precision = resolve_precision(p.get("precision", "auto"), torch.device(dev), None)
        with measure(dev) as m:
            probe = train_linear_probe(xtr_d, ytr_d, xva_d, yva_d, n_outputs=n_classes,
                                       multilabel=False, config=cfg, precision=precision)
        extra["precision"] = precision
        pred = probe.predict_proba(xte.to(dev)).argmax(1).cpu().numpy()
        extra.update(heads=len(cfg.grid()), epochs_run=probe.epochs_run, max_epochs=cfg.epochs,
                     batch_size=cfg.batch_size, selected_lr=probe.lr,
                     selected_weight_decay=probe.weight_decay, optimizer="AdamW minibatch, 12-head lr x wd grid")
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import log_loss
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        xtr_n, ytr_n = xtr.numpy(), ytr.numpy()
        cs = p.get("Cs", [1.0])
        fits = []
        with measure("cpu") as m:
            for c in cs:
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=p["max_iter"]))
                clf.fit(xtr_n, ytr_n)
                vl = log_loss(yva.numpy(), clf.predict_proba(xva.numpy()), labels=list(range(n_classes))) \
                    if len(cs) > 1 else None
                fits.append((vl, c, clf))
        best = min(fits, key=lambda f: (f[0] if f[0] is not None else 0.0))
        clf = best[2]
        lr = clf[-1]
        pred = clf.predict(xte.numpy())
        extra.update(Cs=cs, selected_C=best[1], max_iter=p["max_iter"], n_iter=int(np.max(lr.n_iter_)),
                     converged=bool(np.max(lr.n_iter_) < p["max_iter"]),
                     optimizer="StandardScaler + LogisticRegression(lbfgs)")
    return {
        **m.as_dict(), **extra,
        "n_train": len(xtr), "n_val": len(xva), "n_test": len(xte), "dim": int(xtr.shape[1]),
        "n_classes": n_classes,
        "accuracy": float((np.asarray(pred) == yte.numpy()).mean()),
        "train_matrix_mb": xtr.numel() * 4 / 2**20,
        "threads": _threads(),
    }


CASES: dict[str, Callable[[dict], dict]] = {
    "extract": case_extract,
    "prepare": case_prepare,
    "knn": case_knn,
    "linear": case_linear,
}


def _register_perf_cases() -> None:
    from benchmarks.cases_perf import PERF_CASES

    CASES.update(PERF_CASES)


_register_perf_cases()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name, params = argv[0], json.loads(argv[1])
    os.environ.setdefault("FMEVAL_PROGRESS", "0")
    threads = os.environ.get("FMEVAL_BENCH_THREADS")
    if threads:  # the same cap for torch and for scikit-learn's BLAS/OpenMP pools
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(threads))
        with threadpool_limits(limits=int(threads)):
            result = CASES[name](params)
    else:
        result = CASES[name](params)
    print(MARKER, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
