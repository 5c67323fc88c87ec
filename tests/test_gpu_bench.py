"""benchmarks/gpu.py runs end to end on CPU at toy sizes, so it stays working without a GPU."""

from __future__ import annotations

import json

from fmeval.data.synthetic import write_synthetic


def test_gpu_bench_toy_on_cpu(tmp_path):
    from benchmarks.gpu import main

    data = write_synthetic(tmp_path / "data", "pneumoniamnist", n=(48, 24, 24))
    res = main(["--preset", "toy", "--device", "cpu", "--data", str(data), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_toy_cpu.json").read_text())
    assert saved["bf16_peak_flops"] > 0
    for r in saved["extraction"]:
        assert r["images_per_s"] > 0 and r["gflops_per_image"] > 0 and 0 < r["mfu"]
    assert saved["knn"]["identical_predictions"] is True  # bf16 and fp32 scoring: both exact
    assert saved["knn"]["bf16"]["achieved_gflops"] > 0
    assert res["finetune"]["rows"][1]["trainable_params"] < res["finetune"]["rows"][0]["trainable_params"]
