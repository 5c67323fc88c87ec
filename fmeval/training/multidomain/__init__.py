"""Multi-domain training (mm-PT): one shared backbone, one linear head per dataset.

- :mod:`~fmeval.training.multidomain.sampler` - which dataset each step trains on
  (drawn in proportion to its remaining batches; every batch once per epoch) and the
  per-dataset loss weights ``n_batches(smallest) / n_batches(d)``
- :mod:`~fmeval.training.multidomain.model` - the multi-head classifier and optional
  per-dataset BatchNorm statistics
- :mod:`~fmeval.training.multidomain.losses` - each head's loss (CE, BCE for multi-label,
  the optional ordinal loss)
- :mod:`~fmeval.training.multidomain.trainer` - the trainer run by the one epoch loop
  (:func:`fmeval.training.loop.run_epochs`): optimiser, schedule, precision, checkpoints,
  resume, early stopping and the callback point are the single-dataset loop's own
"""

from fmeval.training.multidomain.model import MultiHeadClassifier, head_key  # noqa: F401
from fmeval.training.multidomain.sampler import batch_counts, domain_schedule, size_weights  # noqa: F401
from fmeval.training.multidomain.trainer import Domain, fit_multidomain  # noqa: F401
