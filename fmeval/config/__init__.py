"""One typed configuration for every run: a leaf that imports nothing of fmeval but the ground.

- :mod:`~fmeval.config.run` - :class:`RunConfig`, its dotted paths, hash and dict round trip
- :mod:`~fmeval.config.sections` - the settings of each mode family (kNN, probe, train, LoRA, ...)
- :mod:`~fmeval.config.paths` - coercing YAML / JSON / command-line values to the field types

Build a run's config only through :func:`fmeval.runner.make_config` (defaults < user
settings < protocol < explicit options, every named choice checked).
"""

from fmeval.config.run import MODE_SECTIONS, NON_SEMANTIC, SECTIONS, RunConfig, field_paths, variant_digest  # noqa: F401
from fmeval.config.sections import (  # noqa: F401
    FewShotSettings,
    KnnSettings,
    LinprobeSettings,
    LoraSettings,
    MultiDomainSettings,
    ProbeConfig,
    RobustnessSettings,
    ScoreSettings,
    TrainConfig,
    ZeroshotSettings,
)
