"""Built-in adapters. Importing this package registers them all."""

from fmeval.adapters.base import (  # noqa: F401
    ADAPTERS,
    Adapter,
    AdapterConfig,
    Preprocess,
    create_adapter,
    register_adapter,
)

# One import per adapter module; each registers its models on import.
from fmeval.adapters import timm_models  # noqa: F401,E402
from fmeval.adapters import medvit  # noqa: F401,E402
from fmeval.adapters import openclip  # noqa: F401,E402
from fmeval.adapters import medclip  # noqa: F401,E402
from fmeval.adapters import volumetric  # noqa: F401,E402
