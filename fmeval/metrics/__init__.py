"""Metrics for MedMNIST-style classification, with bootstrap CIs and a baseline.

Every evaluation mode (zero-shot, kNN, linear probe, fine-tuning) ends in the
same call, :func:`compute_metrics`, so that numbers from different modes are
computed by one piece of code and can be compared on a leaderboard.

- :mod:`~fmeval.metrics.core` - task rules, input validation, the ``METRICS`` registry
- :mod:`~fmeval.metrics.point` - the point metrics, per-class statistics, the collapse check
- :mod:`~fmeval.metrics.calibration` - confidence, reliability bins (ECE)
- :mod:`~fmeval.metrics.resampling` - vectorised percentile and paired bootstrap
- :mod:`~fmeval.metrics.summary` - :func:`compute_metrics` and :class:`MetricsReport`
- :mod:`~fmeval.metrics.aggregate` - statistics across runs (few-shot draws, corruptions)

Design notes
------------
* ``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly (the
  published baselines use them), including the strict ``> 0.5`` threshold on the
  *last* column for binary tasks. The only deliberate difference: a class or
  label absent from ``y_true`` is skipped with a warning instead of crashing
  (sklearn raises) or silently producing NaN.
* Point estimates call scikit-learn. The bootstrap cannot: 1000 resamples x a
  dozen sklearn calls each costs seconds to minutes. Instead each resample is
  represented by its *count vector* ``w`` and every metric is written as a
  function of weighted sums over samples (:mod:`~fmeval.metrics.resampling`).
"""

from fmeval.metrics.core import (  # noqa: F401
    BINARY,
    COLLAPSE_FRACTION,
    ECE_BINS,
    METRICS,
    MULTICLASS,
    MULTILABEL,
    ORDINAL,
    ROW_SUM_ATOL,
    TASKS,
    THRESHOLD,
    MetricInputError,
    MetricWarning,
    batched,
    check_task,
    class_prior,
    higher_is_better,
    majority_scores,
    predict_labels,
    rank_order,
    validate_inputs,
)
from fmeval.metrics.calibration import confidence_and_correct, reliability_bins  # noqa: F401
from fmeval.metrics.point import (  # noqa: F401
    acc,
    auc,
    balanced_acc,
    collapse_warning,
    ece,
    f1_macro,
    kappa,
    nll,
    per_class_stats,
)
from fmeval.metrics.comparisons import CORRECTION, holm, paired_difference_over_seeds  # noqa: F401
from fmeval.metrics.resampling import BOOT_BLOCK_ELEMS, bootstrap, bootstrap_weights, paired_difference, percentile_ci  # noqa: F401
from fmeval.metrics.summary import MetricValue, MetricsReport, compute_metrics  # noqa: F401
