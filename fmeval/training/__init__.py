"""Fine-tuning: one training loop for LoRA (peft) and full fine-tuning.

- :mod:`fmeval.training.loop` - the loop (``fit``, ``predict``, ``TrainConfig``)
- :mod:`fmeval.training.methods` - the ``lora`` / ``full`` method registry
- :mod:`fmeval.training.lora` - peft wiring (inject, save, load)
- :mod:`fmeval.training.optim` - AdamW groups, layer-wise LR decay, warm-up + cosine
- :mod:`fmeval.training.losses` - loss and score rule per task type
- :mod:`fmeval.training.checkpoint` - run folders, ``run.json``, resumable state
"""

from fmeval.training.lora import LoraSettings, count_parameters  # noqa: F401
from fmeval.training.loop import FitResult, TrainConfig, TrainData, fit, predict  # noqa: F401
from fmeval.training.methods import METHODS, Classifier, Method  # noqa: F401
