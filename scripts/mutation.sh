#!/usr/bin/env bash
# Mutation testing of the code that picks and scores: mutmut (3.x) mutates the
# selection-relevant functions below one at a time and runs the fast unit tests
# that cover each (tests/test_metrics.py, tests/test_probes.py,
# tests/test_selection.py; see [tool.mutmut] in pyproject.toml). A surviving
# mutant is a change no test notices: add a test, or record in
# benchmarks/results/mutation_equivalent.json why it cannot be noticed.
#
# usage: scripts/mutation.sh [-j JOBS] [--keep]   (default JOBS=2)
# needs: pip install "mutmut==3.8.1"  (the `mutation` extra; not part of constraints.txt)
# writes: ./mutants/ (scratch, git-ignored) and benchmarks/results/mutation.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
JOBS=2
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    -j) JOBS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "scripts/mutation.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The scope: mutmut mutant-name globs (module.x_function / module.xǁClassǁmethod).
# Narrowed to the functions that choose (k, probe head, epoch, prompt style) or turn
# scores into the reported numbers (argmax rule, prior, CI quantiles, resamples), so a
# run fits well inside an hour on 2 cores. Left out, for time: train_linear_probe's
# body (615 mutants; its selection, standardisation and bias-fold lines are guarded by
# scripts/known_mutations.py), fit() and build_result() (mostly checkpoint/report
# plumbing), the rest of metrics/ (checked against scikit-learn by tests/test_metrics.py),
# the error bounds of knn_search.py (they decide only how many rows are re-ranked; the
# re-rank, the exact float64 values and the tie rule are in scope).
# Decorated functions (knn_predict, the registered metrics) are never mutated by mutmut.
SCOPE=(
  "fmeval.metrics.core.x_predict_labels__mutmut_*"
  "fmeval.metrics.core.x_class_prior__mutmut_*"
  "fmeval.metrics.core.x_majority_scores__mutmut_*"
  "fmeval.metrics.core.x_higher_is_better__mutmut_*"
  "fmeval.metrics.resampling.x_percentile_ci__mutmut_*"
  "fmeval.metrics.resampling.x_bootstrap_weights__mutmut_*"
  "fmeval.probes.knn.*"
  "fmeval.probes.knn_search.x__topk__mutmut_*"
  "fmeval.probes.knn_search.x__stable_top__mutmut_*"
  "fmeval.probes.knn_search.x_exact_values__mutmut_*"
  "fmeval.probes.knn_search.x__full_exact__mutmut_*"
  "fmeval.probes.linear.x__loss_and_grad__mutmut_*"
  "fmeval.probes.linear.x__mean_std__mutmut_*"
  "fmeval.probes.linear.x__all_finite__mutmut_*"
  "fmeval.probes.linear.xǁLinearProbeǁ*"
  "fmeval.probes.linear.x_probe_lr_factor__mutmut_*"
  "fmeval.modes.knn.x_select_k__mutmut_*"
  "fmeval.modes.knn.x__nan_low__mutmut_*"
  "fmeval.modes.knn.x_sweep_ks__mutmut_*"
  "fmeval.modes.knn.x_check_ks__mutmut_*"
  "fmeval.modes.knn.x__candidate_ks__mutmut_*"
  "fmeval.modes.knn.x_fit_head__mutmut_*"
  "fmeval.modes.prompt_compare.x__better__mutmut_*"
  "fmeval.training.loop.xǁ_Trainerǁupdate__mutmut_*"
  "fmeval.training.loop.xǁ_Trainerǁfresh_state__mutmut_*"
  # issue 22: the study's paired comparisons and their correction (tests/test_paired_family.py
  # computes Holm from its definition and the differences with scikit-learn)
  "fmeval.metrics.comparisons.*"
  "fmeval.metrics.resampling.x_paired_difference__mutmut_*"
  "fmeval.studies.paired.*"
  # issue 22 second pass: tables/cells (tests/test_study_tables.py, by hand), predictions column
  # order (tests/test_predictions_columns.py), ECE bins, warm-up, accumulation, the balanced sampler
  # (tests/test_training_edges.py), episodes at K (tests/test_episode_edges.py), the pooled CI
  "fmeval.studies.tables.x_summarise__mutmut_*"
  "fmeval.studies.tables.x_default_datasets__mutmut_*"
  "fmeval.studies.tables.x_summary_metrics__mutmut_*"
  "fmeval.studies.tables.x_group_table__mutmut_*"
  "fmeval.studies.cells.x_pool__mutmut_*"
  "fmeval.studies.cells.x_pool_entries__mutmut_*"
  "fmeval.studies.cells.x_resample_pooled_cis__mutmut_*"
  "fmeval.predictions.x__column_order__mutmut_*"
  "fmeval.predictions.x__positive_column_only__mutmut_*"
  "fmeval.metrics.calibration.*"
  "fmeval.training.optim.xǁWarmupCosineǁ*"
  "fmeval.training.loop.x_balanced_sample_weights__mutmut_*"
  "fmeval.training.loop.x_epoch_order__mutmut_*"
  "fmeval.training.loop.xǁ_Trainerǁtrain_epoch__mutmut_*"
  "fmeval.data.episodes.x__single_label__mutmut_*"
  "fmeval.data.episodes.x_make_episode__mutmut_*"
  "fmeval.data.episodes.x_check_shots_fit__mutmut_*"
)

"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install 'mutmut==3.8.1'" >&2; exit 2; }
[ "$KEEP" = 1 ] || rm -rf mutants  # --keep: reuse ./mutants (results of an earlier run are re-checked)
start=$(date +%s)
export FMEVAL_PROGRESS=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$PY" -m mutmut run --max-children "$JOBS" "${SCOPE[@]}" || true  # the summary below is the verdict
end=$(date +%s)
"$PY" scripts/mutation_report.py --seconds "$((end - start))" \
  --equivalent benchmarks/results/mutation_equivalent.json \
  -o benchmarks/results/mutation.json "${SCOPE[@]}"
