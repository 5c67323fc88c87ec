"""Training-time augmentation that never changes a label.

Off by default (the MedMNIST protocols train without augmentation). When
asked for, what is allowed depends on the dataset: OrganA/C/SMNIST label left
and right organs (kidney, lung, femur) as different classes, so a horizontal
flip would silently mislabel the image; there only shifts are used. Shifts
fill the uncovered border with the normalised mean colour (0) instead of
wrapping pixels around from the opposite edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Datasets whose labels encode laterality (left vs right organ).
LATERAL = frozenset({"organamnist", "organcmnist", "organsmnist"})


@dataclass(frozen=True)
class AugmentPolicy:
    hflip: bool
    max_shift: int = 2

    def as_dict(self) -> dict:
        return {"hflip": self.hflip, "max_shift": self.max_shift}


def augment_policy(dataset: str) -> AugmentPolicy:
    return AugmentPolicy(hflip=dataset.lower() not in LATERAL)


def augment_batch(x: torch.Tensor, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip (where allowed) and shift of up to
    ``max_shift`` px with zero fill; x is a normalised [N, C, H, W] batch."""
    n, _, h, w = x.shape
    if policy.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    s = policy.max_shift
    if s <= 0:
        return x
    dy = torch.randint(-s, s + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(-s, s + 1, (n,), generator=gen).to(x.device)
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=0.0)
    rows = (torch.arange(h, device=x.device).view(1, h) + s - dy.view(n, 1))  # [N, H]
    cols = (torch.arange(w, device=x.device).view(1, w) + s - dx.view(n, 1))  # [N, W]
    c = x.shape[1]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * s))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
