"""Input transform of native 3D models: uint8 volumes -> float [N, C, D, H, W].

It reproduces the MedMNIST v2 3D baselines (MedMNIST/experiments,
``MedMNIST3D/train_and_eval_pytorch.py`` with ``utils.Transform3D``, on top of
``medmnist.dataset.MedMNIST3D.__getitem__``):

* voxels / 255, no mean/std normalisation (``MedMNIST3D.__getitem__``);
* the single grey channel stacked ``C`` times: ``C = 1`` by default, 3 with
  ``--as_rgb`` -- what a converted ImageNet network's first convolution needs;
* the "shape" transform (``--shape_transform``; ``Transform3D(mul=...)``):
  each training volume multiplied by its own factor drawn uniformly from
  [0, 1) (``np.random.uniform()`` per sample), every evaluation volume by
  0.5 -- the mean of that factor, so evaluation sits in the middle of the
  intensity range seen in training. ``shape=False`` is the script without
  the flag (plain voxels / 255 in both phases).

The object follows the image-transform contract the core uses for 2D
(``prepare(images_uint8, device, *, train=False, generator=None)`` and
``as_dict()``), is frozen (part of the run record) and works on whole
batches on the target device: factors are drawn from ``generator`` so a
seeded run draws the same factors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from fmeval.errors import ConfigError


@dataclass(frozen=True)
class VolumeTransform:
    """uint8 volumes [N, D, H, W] -> float [N, C, D, H, W] for a native 3D model."""

    channels: int = 1  # 1, or 3 for networks converted from RGB ImageNet models
    shape: bool = True  # the MedMNIST "shape" transform (random factor / 0.5)
    eval_factor: float = 0.5  # MedMNIST's Transform3D(mul='0.5')

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"volume transform: channels must be 1 or 3, not {self.channels}.")
        if not 0.0 < self.eval_factor <= 1.0:
            raise ConfigError(f"volume transform: eval_factor must be in (0, 1], not {self.eval_factor}.")

    def as_dict(self) -> dict:
        return {"kind": "volume", **asdict(self)}

    def prepare(
        self,
        images: np.ndarray | torch.Tensor,
        device: torch.device | str = "cpu",
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scale, multiply (shape transform) and stack channels, on ``device``.

        The channel copies are an ``expand`` (a view): models read them, none
        writes into its input.
        """
        uint8 = images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)
        if images.ndim != 4 or not uint8:
            raise ConfigError(
                f"volume transform expects uint8 volumes [N, D, H, W], got {images.dtype} "
                f"of shape {tuple(images.shape)}."
            )
        x = torch.as_tensor(images).to(device, non_blocking=True).float().div_(255.0)
        if self.shape:
            x = x.mul_(self.factors(len(x), x.device, train=train, generator=generator).view(-1, 1, 1, 1))
        return x.unsqueeze(1).expand(-1, self.channels, -1, -1, -1)

    def factors(
        self, n: int, device: torch.device | str = "cpu", *, train: bool,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The per-volume multipliers: U[0, 1) in training, ``eval_factor`` otherwise."""
        if not train:
            return torch.full((n,), self.eval_factor, device=device)
        where = generator.device if generator is not None else "cpu"
        return torch.rand(n, generator=generator, device=where).to(device)
