#!/usr/bin/env bash
# Mutation testing of the code that picks and scores: mutmut (3.x) mutates the
# selection-relevant functions below one at a time and runs the fast unit tests
# that cover each (tests/test_metrics.py, tests/test_probes.py,
# tests/test_selection.py; see [tool.mutmut] in pyproject.toml). A surviving
# mutant is a change no test notices: add a test, or record in
# benchmarks/results/mutation_equivalent.json why it cannot be noticed.
#
# usage: scripts/mutation.sh [-j JOBS]     (default JOBS=2; ~25 min on a busy 2-core box)
# needs: pip install "mutmut==3.8.1"  (the `mutation` extra; not part of constraints.txt)
# writes: ./mutants/ (scratch, git-ignored) and benchmarks/results/mutation.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
JOBS=2
while [ $# -gt 0 ]; do
  case "$1" in
    -j) JOBS="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "scripts/mutation.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The scope: mutmut mutant-name globs (module.x_function / module.xǁClassǁmethod).
SCOPE=(
  "fmeval.metrics.*"
  "fmeval.probes.knn.*"
  "fmeval.probes.linear.*"
  "fmeval.modes.knn.x_select_k__mutmut_*"
  "fmeval.modes.knn.x__nan_low__mutmut_*"
  "fmeval.modes.knn.x_sweep_ks__mutmut_*"
  "fmeval.modes.knn.x_check_ks__mutmut_*"
  "fmeval.modes.knn.x__candidate_ks__mutmut_*"
  "fmeval.modes.knn.x_fit_head__mutmut_*"
  "fmeval.modes.prompt_compare.x__better__mutmut_*"
  "fmeval.modes.base.x_build_result__mutmut_*"
  "fmeval.training.loop.xǁ_Trainerǁupdate__mutmut_*"
  "fmeval.training.loop.xǁ_Trainerǁfresh_state__mutmut_*"
  "fmeval.training.loop.x_fit__mutmut_*"
)

"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install 'mutmut==3.8.1'" >&2; exit 2; }
rm -rf mutants
start=$(date +%s)
export FMEVAL_PROGRESS=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$PY" -m mutmut run --max-children "$JOBS" "${SCOPE[@]}" || true  # the summary below is the verdict
end=$(date +%s)
"$PY" scripts/mutation_report.py --seconds "$((end - start))" \
  --equivalent benchmarks/results/mutation_equivalent.json \
  -o benchmarks/results/mutation.json "${SCOPE[@]}"
