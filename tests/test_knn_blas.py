"""The kNN's GEMM backends (probes.blas) and thread choice (probes.threads).

Whichever BLAS multiplies the tiles and however many threads it uses, the
neighbours are scikit-learn's; the settings of both libraries are restored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from fmeval.probes import blas
from fmeval.probes.knn import BF16_MIN_WORK, knn_predict, resolve_scoring
from fmeval.probes.knn_search import SearchStats
from fmeval.probes.threads import ThreadChooser
from tests.test_knn_exact import _exact_cosine, _near_ties


def _numpy_or_skip():
    g = blas.numpy_gemm()
    if g is None:
        pytest.skip("threadpoolctl sees no BLAS under numpy here: the numpy backend is never chosen")
    return g


@pytest.mark.parametrize("rule", ["euclidean-majority", "cosine"])
def test_numpy_blas_path_matches_the_reference_on_near_ties(monkeypatch, rule):
    """The search forced onto numpy's BLAS (as the timing picks it on large fp32 searches):
    near-tie data, exact duplicates, both rules; the tiles really went through numpy."""
    g = _numpy_or_skip()
    monkeypatch.setattr(blas, "MIN_WORK_TO_TIME", 0.0)
    monkeypatch.setattr(blas, "_fastest", lambda *a: ("numpy", (("numpy", 0.01), ("torch", 0.02))))
    calls = []
    real_mm = type(g).mm
    monkeypatch.setattr(type(g), "mm", lambda self, b, op, out: calls.append(1) or real_mm(self, b, op, out))
    torch_threads, blas_threads = torch.get_num_threads(), g.threads()
    g.set_threads(1)  # the search sets numpy's BLAS to torch's thread count: it must put 1 back
    xtr, ytr, xte = _near_ties()
    stats = SearchStats()
    ours = knn_predict(xtr, ytr, xte, [5, 11], n_classes=3, rule=rule, scoring="fp32", stats=stats)
    assert stats.gemm == "numpy" and stats.gemm_probe == {"numpy": 0.01, "torch": 0.02} and calls
    for k in (5, 11):
        if rule == "cosine":
            torch.testing.assert_close(ours[k], _exact_cosine(xtr, ytr, xte, k, 3), atol=1e-5, rtol=0)
        else:
            clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(xtr.numpy(), ytr.numpy())
            np.testing.assert_array_equal(ours[k].argmax(1).numpy(), clf.predict(xte.numpy()))
            np.testing.assert_allclose(ours[k].numpy(), clf.predict_proba(xte.numpy()), atol=1e-6)
    assert torch.get_num_threads() == torch_threads and g.threads() == 1
    g.set_threads(blas_threads)


def test_the_backend_is_timed_only_for_large_fp32_cpu_searches(monkeypatch):
    cpu = torch.device("cpu")
    timed = []
    monkeypatch.setattr(blas, "_fastest", lambda *a: timed.append(a) or ("torch", (("torch", 1.0),)))
    assert blas.fastest(cpu, "bf16", 2, 769, 512, 4096, 1e15) == (blas.TORCH, {})  # numpy has no bf16
    assert blas.fastest(cpu, "fp32", 2, 769, 512, 4096, blas.MIN_WORK_TO_TIME / 2) == (blas.TORCH, {})
    assert blas.fastest(torch.device("cuda"), "fp32", 2, 769, 512, 4096, 1e15) == (blas.TORCH, {})
    assert not timed
    gemm, times = blas.fastest(cpu, "fp32", 2, 769, 512, 4096, blas.MIN_WORK_TO_TIME)
    assert gemm is blas.TORCH and times == {"torch": 1.0} and timed == [(2, 769, 512, 4096)]


def test_timing_picks_the_faster_backend_and_restores_threads():
    g = _numpy_or_skip()
    torch_threads, blas_threads = torch.get_num_threads(), g.threads()
    blas._fastest.cache_clear()
    name, times = blas._fastest(1, 64, 32, 256)
    assert set(dict(times)) == {"torch", "numpy"} and all(t > 0 for _, t in times)
    assert name == min(dict(times), key=dict(times).get)
    assert torch.get_num_threads() == torch_threads and g.threads() == blas_threads
    blas._fastest.cache_clear()


def test_auto_scores_small_cpu_searches_in_fp32(monkeypatch):
    import fmeval.device as fd

    monkeypatch.setattr(fd, "cpu_flags", lambda path=fd.CPUINFO: frozenset({"amx_bf16"}))
    cpu = torch.device("cpu")
    assert resolve_scoring("auto", cpu, work=BF16_MIN_WORK / 10) == "fp32"
    assert resolve_scoring("auto", cpu, work=BF16_MIN_WORK) == "bf16"
    assert resolve_scoring("bf16", cpu, work=1.0) == "bf16"  # asked for: kept
    stats = SearchStats()
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    knn_predict(x, torch.arange(200) % 2, x[:20], [3], n_classes=2, rule="euclidean-majority", stats=stats)
    assert stats.precision == "fp32" and stats.by_precision == {"fp32": 20}


def test_thread_trials_back_off_while_the_other_option_loses():
    """Trials of the other option at tile 7, then 64, 128, 256, 256 tiles apart while it loses;
    when the kept option's own tiles slow past the other's timing, the other is kept."""
    saved = torch.get_num_threads()
    tc = ThreadChooser(2, every=32)
    tc.current = 2
    trials = []
    for tile in range(900):
        tc.pick()
        if tc.last == 1:
            trials.append(tile)
        tc.record(2.0 if tc.last == 1 else 1.0, 100)  # one thread: twice as slow
    assert trials == [7, 71, 199, 455, 711]
    assert tc.current == 2
    tc.pick()  # 900: no trial due
    assert tc.last == 2
    tc.record(5.0, 100)  # one slow tile (a busy moment) does not flip the choice ...
    tc.pick()
    assert tc.current == 2 and tc.last == 2
    tc.record(5.0, 100)  # ... a second does (two threads got slower): one thread is kept
    tc.pick()
    assert tc.current == 1 and tc.last == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(saved)


def test_a_shared_machine_keeps_one_thread_even_when_two_time_faster():
    """Two threads got 40 % of their cores (a rival search on the same cores): one thread is kept
    although its tiles time slower (each process would keep two otherwise, and both lose); a later
    trial of two threads that gets its cores back (the rival finished) brings two threads back."""
    saved = torch.get_num_threads()
    tc = ThreadChooser(2, every=32)
    tc.pick()
    assert tc.last == 2
    tc.record(1.0, 100, share=0.6)  # one busy moment is not a rival ...
    assert not tc.shared and tc.current == 2
    for _ in range(3):  # ... four tiles that ran 60 % of their ready time are
        tc.pick()
        tc.record(1.0, 100, share=0.6)
    assert tc.shared and tc.current == 1
    trials = []
    for tile in range(4, 200):
        tc.pick()
        if tc.last == 2:
            trials.append(tile)
            tc.record(1.0, 100, share=0.6)  # still shared, though faster than one thread
        else:
            tc.record(1.5, 100)
        assert tc.current == 1
    assert trials == [7, 71, 135, 199]  # back off while shared, to at most 64 tiles apart
    for _ in range(300):  # the rival is gone: the next trial of two threads gets its cores
        tc.pick()
        tc.record(*((0.5, 100, 1.0) if tc.last == 2 else (1.5, 100)))
        if tc.last == 2:
            break
    assert tc.tiles == 264 and not tc.shared and tc.current == 2
    torch.set_num_threads(saved)


def test_the_share_is_read_from_the_scheduler_statistics():
    """The share comes from the process's run and run-queue wait times between two tiles: a tile
    whose threads waited as long as they ran got half their cores; threads that ended between
    readings (a count going down) give no reading rather than a wrong one."""
    from fmeval.probes.threads import runqueue

    readings = iter([(0, 0), (4_000_000, 4_000_000), (5_000_000, 4_000_000), (1_000_000, 4_000_000)])
    tc = ThreadChooser(2, runqueue=lambda: next(readings))
    tc.pick()
    tc.record(1.0, 100)
    assert tc.share == 0.875 and not tc.shared  # averaged into an unshared start
    assert tc._read_share() == 1.0 and tc._read_share() is None
    real = runqueue()
    if real is None:
        pytest.skip("no /proc/self/task/*/schedstat here: the timing alone chooses")
    sum(i * i for i in range(300_000))  # run for a few ms
    later = runqueue()
    assert later[0] > real[0] >= 0 and later[1] >= 0
