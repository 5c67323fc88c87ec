"""Named protocols: published recipes as versioned, tested presets.

``fmeval protocols ls`` lists them, ``fmeval protocols show NAME`` prints every
setting with its source, and ``--protocol NAME`` on a command (or in a study)
fixes everything the protocol defines; an option given explicitly overrides
it and is recorded as a deviation.
"""

from fmeval.protocols.apply import apply_protocol, load_protocol, model_recipe, protocol_names, recipe_defaults  # noqa: F401
from fmeval.protocols.spec import Protocol, ProtocolError  # noqa: F401
