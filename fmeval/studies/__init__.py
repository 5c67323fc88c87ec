"""Studies: a benchmark grid (models x datasets x sizes x modes x seeds) as one YAML file.

- :mod:`~fmeval.studies.spec` - the study file format (validated before anything runs)
- :mod:`~fmeval.studies.plan` - cells (resolved RunConfigs keyed by their hash), order, state
- :mod:`~fmeval.studies.executors` - local, local with N workers, Slurm through submitit
- :mod:`~fmeval.studies.outputs` - the study's leaderboards (:mod:`~fmeval.studies.cells`,
  :mod:`~fmeval.studies.tables`), plots, paired comparisons, misclassified images, HTML page
"""
