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
    for key in ("machine", "extraction", "cache", "knn", "linear", "scaling", "memory", "checks"):
        assert key in saved, key
    assert saved["machine"]["torch_threads"] >= 1 and saved["machine"]["cpu_cores"] >= 1
    assert saved["checks"]["knn_identical_predictions"] is True
    assert saved["cache"]["second"]["cache_hits"] == {"train": True, "val": True, "test": True}
    assert saved["cache"]["first"]["cache_hits"] == {"train": False, "val": False, "test": False}
    ex = saved["extraction"]["rows"][0]
    assert ex["fmeval"]["images_per_s"] > 0 and ex["baseline"]["images_per_s"] > 0
    lin = saved["linear"]["synthetic"]
    assert 0.0 <= lin["rows"][0]["fmeval"]["accuracy"] <= 1.0 and 0.0 <= lin["sklearn"]["accuracy"] <= 1.0
    assert [s["n_train"] for s in saved["scaling"]] == [200, 600]
    assert all(m["peak_rss_delta_mb"] >= 0 for m in saved["memory"])
    md = (out / "bench.md").read_text()
    assert "| Benchmark |" in md and "kNN" in md
    assert res["suite_seconds"] > 0
