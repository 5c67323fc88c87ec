"""Study tables and cells with expectations worked out by hand (issue 22 item 12): ranking by a loss-like
metric (ascending, undefined last) in the group tables and in the summary, pooling over seeds (mean, sample
SD, min-max), and which datasets the summary averages when models ran different sets."""

from __future__ import annotations

import math

import pytest

from fmeval.studies import cells as C
from fmeval.studies import tables as T


def row(model, dataset, seed=0, *, mode="knn", size=28, **metrics):
    base = {"model": model, "mode": mode, "dataset": dataset, "size": size, "seed": seed, "run_id": f"{model}-{dataset}-{seed}",
            "style": "", "variant": "v", "n_test": 10, "md5_official": True, "protocol": "", "deviations": "",
            "input_size": 28, "weights": "tiny", "precision": "fp32", "baseline_acc": 0.5}
    for m, v in metrics.items():
        base.update({m: v, f"{m}_ci_low": v - 0.05, f"{m}_ci_high": v + 0.05})
    return base


def _ranked_models(table: T.Table) -> list[str]:
    return [r[1].text for r in table.rows]


def test_group_table_ranks_a_loss_like_metric_ascending_with_undefined_last():
    rows = [row("a", "d", auc=0.9, ece=0.30), row("b", "d", auc=0.8, ece=0.10), row("c", "d", auc=0.7, ece=math.nan),
            row("e", "d", auc=0.6, ece=0.20)]
    (table,) = T.group_tables(C.pool_entries(rows), "ece")
    assert _ranked_models(table) == ["b", "e", "a", "c"]  # 0.10 < 0.20 < 0.30, NaN last
    assert [r[0].text for r in table.rows] == ["1", "2", "3", "4"]
    (by_auc,) = T.group_tables(C.pool_entries(rows), "auc")
    assert _ranked_models(by_auc) == ["a", "b", "c", "e"]


def test_pooling_over_seeds_by_hand():
    rows = [row("a", "d", s, auc=v) for s, v in ((0, 0.70), (1, 0.80), (2, 0.90))]
    (e,) = C.pool_entries(rows)
    p = e.metrics["auc"]
    assert (p.mean, p.lo, p.hi, p.n) == (pytest.approx(0.80), 0.70, 0.90, 3)
    assert p.sd == pytest.approx(0.1)  # sqrt(((-.1)^2 + 0 + .1^2) / (3 - 1))
    assert e.seeds == [0, 1, 2]
    (table,) = T.group_tables([e], "auc")
    assert table.rows[0][3].text == "3" and table.rows[0][4].text == "0.8000 ± 0.1000"


def test_default_summary_averages_only_datasets_every_model_ran():
    """a ran d1, d2, d3; b ran d1, d2; c ran d2, d3: only d2 is common, so the default summary is d2 alone
    and d1, d3 are listed as not averaged."""
    rows = [row("a", d, auc=v, acc=v, balanced_acc=v) for d, v in (("d1", 0.9), ("d2", 0.8), ("d3", 0.7))]
    rows += [row("b", d, auc=v, acc=v, balanced_acc=v) for d, v in (("d1", 0.5), ("d2", 0.6))]
    rows += [row("c", d, auc=v, acc=v, balanced_acc=v) for d, v in (("d2", 0.75), ("d3", 0.95))]
    (s,) = T.summarise(C.pool_entries(rows), None)
    assert s.datasets == ["d2"] and s.left_out == ["d1", "d3"] and s.chosen_by == "default"
    means = {r["key"].model: r["mean"]["auc"] for r in s.rows}
    assert means == {"a": pytest.approx(0.8), "b": pytest.approx(0.6), "c": pytest.approx(0.75)}
    # an explicit list: a row missing a listed dataset gets no mean and names what is missing
    (s2,) = T.summarise(C.pool_entries(rows), ["d1", "d2"])
    got = {r["key"].model: (r["mean"]["auc"], r["missing"]) for r in s2.rows}
    assert got["a"][0] == pytest.approx(0.85) and got["b"][0] == pytest.approx(0.55)
    assert math.isnan(got["c"][0]) and got["c"][1] == ["d1"]
    table = T.summary_table(s2, "auc", show_style=False, ambiguous={})
    assert _ranked_models(table) == ["a", "b", "c"]


def test_summary_ranks_a_loss_like_metric_by_its_own_mean():
    """Ranked by ECE, the summary averages ECE (not only AUC/ACC/bACC) and ranks it ascending."""
    rows = []
    for model, (e1, e2) in {"a": (0.30, 0.10), "b": (0.05, 0.15), "c": (0.40, 0.40)}.items():
        rows += [row(model, "d1", auc=0.8, acc=0.8, balanced_acc=0.8, ece=e1),
                 row(model, "d2", auc=0.8, acc=0.8, balanced_acc=0.8, ece=e2)]
    entries = C.pool_entries(rows)
    (s,) = T.summarise(entries, None, metrics=["ece", *T.TABLE_METRICS])
    table = T.summary_table(s, "ece", show_style=False, ambiguous={})
    assert _ranked_models(table) == ["b", "a", "c"]  # means 0.10, 0.20, 0.40
    assert [r[3].text for r in table.rows] == ["0.1000", "0.2000", "0.4000"]


def test_summary_metrics_lead_with_the_study_metric():
    assert T.summary_metrics("ece") == ("ece", "auc", "acc", "balanced_acc")
    assert T.summary_metrics("acc") == ("acc", "auc", "balanced_acc")


def test_pool_edges_by_hand():
    """No finite value: everything NaN and n 0; one seed: no SD; two: the SD; a run with only one finite
    CI bound gives no CI."""
    empty = C.pool([math.nan, math.nan], [0.1, 0.2], [0.3, 0.4])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.sd, empty.lo, empty.hi,
                                                         empty.ci_low, empty.ci_high))
    one = C.pool([0.7, math.nan], [0.6, 0.1], [0.8, 0.2])
    assert one.n == 1 and math.isnan(one.sd) and (one.lo, one.hi, one.ci_low, one.ci_high) == (0.7, 0.7, 0.6, 0.8)
    two = C.pool([0.6, 0.8], [0.5, 0.7], [0.7, 0.9])
    assert two.sd == pytest.approx(math.sqrt(0.02)) and two.n == 2
    half = C.pool([0.7], [math.nan], [0.8])
    assert math.isnan(half.ci_low) and math.isnan(half.ci_high)


def test_summary_records_its_size_subset_and_how_the_datasets_were_chosen():
    rows = [row("a", d, auc=v, acc=v, balanced_acc=v, size=64) for d, v in (("d1", 0.9), ("d2", 0.7))]
    rows += [{**row("a", "d1", auc=0.5, acc=0.5, balanced_acc=0.5, size=64), "limit": 20, "run_id": "lim"}]
    by = {(s.size, s.limit): s for s in T.summarise(C.pool_entries(rows), ["d1", "d2"])}
    full, sub = by[(64, 0)], by[(64, 20)]
    assert full.chosen_by == "study" and full.datasets == ["d1", "d2"]
    assert full.rows[0]["per_dataset"] == {"d1": {m: pytest.approx(0.9) for m in T.TABLE_METRICS},
                                           "d2": {m: pytest.approx(0.7) for m in T.TABLE_METRICS}}
    assert sub.rows[0]["missing"] == ["d2"]
    assert T.summarise(C.pool_entries(rows), None)[0].chosen_by == "default"
