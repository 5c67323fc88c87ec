"""The benchmark suite runs end to end at toy sizes and writes valid results.

Timings are not asserted (they depend on the machine and its load); only
that every section ran, the JSON/Markdown are well formed and kNN agrees
with scikit-learn.
"""

from __future__ import annotations

import json

from fmeval.data.synthetic import write_synthetic


def test_bench_toy_end_to_end(tmp_path):
    from benchmarks.bench import main

    data = write_synthetic(tmp_path / "data", "pneumoniamnist", n=(48, 24, 24))
    out = tmp_path / "results"
    res = main(["--preset", "toy", "--inline", "--devices", "cpu",
                "--data", str(data), "--out", str(out)])

    saved = json.loads((out / "bench.json").read_text())
    assert saved["preset"] == "toy"
    for key in ("machine", "extraction", "cache", "knn", "linear", "scaling", "memory", "checks",
                "gemm", "finetune", "goals", "load_trace"):
        assert key in saved, key
    assert saved["machine"]["torch_threads"] >= 1 and saved["machine"]["cpu_cores"] >= 1
    assert saved["checks"]["knn_identical_predictions"] is True
    assert saved["cache"]["second"]["cache_hits"] == {"train": True, "val": True, "test": True}
    assert saved["cache"]["first"]["cache_hits"] == {"train": False, "val": False, "test": False}
    ex = saved["extraction"]["rows"][0]
    assert ex["fmeval"]["images_per_s"] > 0 and ex["baseline"]["images_per_s"] > 0
    assert {r["model"] for r in saved["extraction"]["rows"]} == {"vit-s16", "resnet18"}
    for r in saved["extraction"]["rows"]:  # same features as the plain loop (preprocessing aside)
        assert r["fmeval"]["precision"] in ("fp32", "bf16") and r["min_cosine_to_baseline"] > 0.9
    g = saved["gemm"]["cpu"]
    assert g["square_fp32_gflops"] > 0 and g["square_bf16_gflops"] > 0
    roof = saved["knn"]["rows"][0]["roofline"]
    assert roof["achieved_gflops"] > 0 and roof["roofline_gflops"] > 0
    ft = saved["finetune"]["rows"]
    assert {r["precision"] for r in ft} == {"fp32", "bf16"}
    for r in ft:
        assert r["lora"]["trainable_params"] < r["full"]["trainable_params"]
        assert r["epoch_ratio"] > 0 and r["lora"]["peak_rss_mb"] > 0
    lin = saved["linear"]["synthetic"]
    assert 0.0 <= lin["rows"][0]["fmeval"]["accuracy"] <= 1.0 and 0.0 <= lin["sklearn"]["accuracy"] <= 1.0
    assert [s["n_train"] for s in saved["scaling"]] == [200, 600]
    assert all(m["peak_rss_delta_mb"] >= 0 for m in saved["memory"])
    md = (out / "bench.md").read_text()
    assert "| Benchmark |" in md and "kNN" in md
    assert res["suite_seconds"] > 0
