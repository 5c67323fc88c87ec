"""Volume views: how a 2D encoder sees a 3D MedMNIST volume.

A 2D foundation model cannot read a volume [D, H, W]; it reads slices. Which
slices it reads, and how their features are pooled into one vector per
volume, changes the result as much as the encoder does, so a view is an
explicit, recorded value (part of the feature-cache key and of the report),
never a hidden default.

Syntax, ``[SELECTOR:]PLANES[/POOL]`` (case-insensitive):

* ``SELECTOR`` -- which slices along each plane's axis:
  ``central`` (the default, may be omitted): the one central slice, index
  ``(size - 1) // 2`` (13 of 0..27: for an even size the lower of the two
  middle slices); ``all``: every slice; ``strided:K``: every K-th slice,
  centred (``(size - 1 - (n - 1) * K) // 2`` is the first of ``n = (size - 1)
  // K + 1`` slices, so 28 voxels at K = 4 give slices 1, 5, ..., 25; K >= size
  gives the central slice).
* ``PLANES`` -- ``axial`` (slices ``v[d, :, :]``, along array axis 1 of
  [N, D, H, W]), ``coronal`` (``v[:, h, :]``, axis 2), ``sagittal``
  (``v[:, :, w]``, axis 3) or ``tri-planar`` (all three, in that order). The
  names follow the usual [D, H, W] convention; MedMNIST does not promise an
  anatomical orientation for every dataset, so read them as array axes.
* ``POOL`` -- ``mean`` (default), ``max``, or ``mean+max`` (the two
  concatenated: twice the feature width).

Examples: ``axial/mean`` (one central axial slice), ``tri-planar/mean+max``,
``all:axial/max``, ``strided:4:axial/mean``, ``all:tri-planar/mean``. The
canonical :attr:`VolumeView.name` drops the default ``central:`` selector and
always names the pool, and parses back to the same view.

Use: ``view.select(volumes)`` gives uint8 slices [N * S, h, w] that any 2D
pipeline encodes like a split of grey images; ``view.pool_features(f, S)``
(``S = view.n_slices(side)``) turns their features [N * S, F] into one row
per volume; :func:`encode_volumes` chains the three. Zero-shot pools class
scores per slice with ``view.pool_scores(logits, S)`` (``mean`` or ``max``;
probabilities are renormalised after ``max``, see there). The pooling method
is ``pool_features`` because ``pool`` is the field naming the pool.

Everything here is vectorised numpy / torch (no loop over volumes or slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from fmeval.errors import ConfigError
from fmeval.registry import Registry

# plane -> array axis of a batch of volumes [N, D, H, W]
PLANE_AXIS = {"axial": 1, "coronal": 2, "sagittal": 3}
TRI_PLANAR = ("axial", "coronal", "sagittal")
SELECTORS = ("central", "all", "strided")

Volumes = TypeVar("Volumes", np.ndarray, torch.Tensor)

# A pool maps per-slice values [N, S, F] to one row per volume [N, F * width].
Pool = Callable[[torch.Tensor], torch.Tensor]
POOLS: Registry[Pool] = Registry("volume pool", ConfigError)
POOL_WIDTH = {"mean": 1, "max": 1, "mean+max": 2}


@POOLS.register("mean", "average over slices")
def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(1)


@POOLS.register("max", "element-wise maximum over slices")
def _max(x: torch.Tensor) -> torch.Tensor:
    return x.amax(1)


@POOLS.register("mean+max", "mean and max concatenated (twice the width)")
def _mean_max(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.mean(1), x.amax(1)], dim=1)


def _syntax_error(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"volume view {text!r}: {why}; use [central:|all:|strided:K:]"
        "axial|coronal|sagittal|tri-planar[/mean|max|mean+max], e.g. 'strided:4:axial/mean'."
    )


def _parse_slices(text: str) -> tuple[str, int, tuple[str, ...]]:
    """'strided:4:axial' -> ("strided", 4, ("axial",)); stride 0 means 'not strided'."""
    parts = text.strip().lower().split(":")
    planes_word = parts[-1]
    head = parts[:-1]
    selector, stride = "central", 0
    if head:
        selector = head[0]
        if selector not in SELECTORS:
            raise _syntax_error(text, f"unknown selector {selector!r}")
        if selector == "strided":
            if len(head) != 2 or not head[1].isdigit() or int(head[1]) < 1:
                raise _syntax_error(text, "strided needs a stride K >= 1 ('strided:K:PLANES')")
            stride = int(head[1])
        elif len(head) != 1:
            raise _syntax_error(text, f"{selector!r} takes no argument")
    if planes_word == "tri-planar":
        planes = TRI_PLANAR
    elif planes_word in PLANE_AXIS:
        planes = (planes_word,)
    else:
        raise _syntax_error(text, f"unknown plane {planes_word!r}")
    return selector, stride, planes


@dataclass(frozen=True)
class VolumeView:
    """Which slices of a volume a 2D encoder reads, and how they are pooled.

    ``slices`` is the slice part of the syntax (``"axial"``, ``"all:axial"``,
    ``"strided:4:tri-planar"``), ``pool`` one of :data:`POOLS`. Both are
    normalised to their canonical spelling, so equal views compare (and
    hash, and cache) equal however they were written.
    """

    slices: str = "axial"
    pool: str = "mean"
    selector: str = field(init=False, repr=False, compare=False)
    stride: int = field(init=False, repr=False, compare=False)
    planes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        selector, stride, planes = _parse_slices(self.slices)
        pool = self.pool.strip().lower()
        POOLS.get(pool)  # unknown pool -> ConfigError with the known names
        plane_word = "tri-planar" if len(planes) == 3 else planes[0]
        canonical = {"central": plane_word, "all": f"all:{plane_word}"}.get(
            selector, f"strided:{stride}:{plane_word}"
        )
        for name, value in (("slices", canonical), ("pool", pool), ("selector", selector),
                            ("stride", stride), ("planes", planes)):
            object.__setattr__(self, name, value)

    @classmethod
    def parse(cls, text: str) -> "VolumeView":
        """``'strided:4:axial/max'`` -> VolumeView; the pool defaults to mean."""
        if text.count("/") > 1:
            raise _syntax_error(text, "more than one '/'")
        slices, _, pool = text.partition("/")
        return cls(slices=slices, pool=pool or "mean")

    @property
    def name(self) -> str:
        """Canonical text form (``parse(view.name) == view``): reports, file names."""
        return f"{self.slices}/{self.pool}"

    def as_dict(self) -> dict:
        """The view's part of a cache key and of a report."""
        return {"slices": self.slices, "pool": self.pool}

    # -- slice selection -----------------------------------------------------
    def indices(self, size: int) -> np.ndarray:
        """Slice indices taken along each plane's axis of a volume of side ``size``."""
        if size < 1:
            raise ConfigError(f"volume view {self.name}: volume side must be >= 1, not {size}.")
        if self.selector == "all":
            return np.arange(size)
        step = self.stride if self.selector == "strided" else size  # central = one slice
        n = (size - 1) // step + 1
        start = (size - 1 - (n - 1) * step) // 2
        return start + step * np.arange(n)

    def n_slices(self, size: int | tuple[int, ...]) -> int:
        """Slices per volume (rows of :meth:`select` per volume) for a side or a (D, H, W)."""
        sides = (size,) * 3 if isinstance(size, int) else tuple(size)
        return sum(len(self.indices(sides[PLANE_AXIS[p] - 1])) for p in self.planes)

    def select(self, volumes: Volumes) -> Volumes:
        """Volumes [N, D, H, W] -> slices [N * S, h, w], volume-major.

        Rows ``i * S .. (i + 1) * S - 1`` are volume ``i``'s slices (planes in
        axial, coronal, sagittal order, indices ascending), the layout
        :meth:`pool` undoes. Works on numpy arrays and torch tensors alike and
        keeps the dtype (uint8 stays uint8, ready for any 2D image pipeline).
        """
        if volumes.ndim != 4:
            raise ConfigError(
                f"volume view {self.name} needs volumes [N, D, H, W], got shape {tuple(volumes.shape)}."
            )
        sides = {PLANE_AXIS[p]: volumes.shape[PLANE_AXIS[p]] for p in self.planes}
        if len(self.planes) > 1 and len(set(volumes.shape[1:])) != 1:
            raise ConfigError(
                f"volume view {self.name} needs cubic volumes (D = H = W) to stack the three "
                f"planes, got {tuple(volumes.shape[1:])}."
            )
        parts = []
        for plane in self.planes:
            axis = PLANE_AXIS[plane]
            idx = self.indices(sides[axis])
            if isinstance(volumes, torch.Tensor):
                taken = volumes.index_select(axis, torch.as_tensor(idx, device=volumes.device))
                parts.append(taken.movedim(axis, 1))
            else:
                parts.append(np.moveaxis(np.take(volumes, idx, axis=axis), axis, 1))
        n = volumes.shape[0]
        if isinstance(volumes, torch.Tensor):
            out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            return out.reshape(n * out.shape[1], *out.shape[2:]).contiguous()
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, 1)
        return np.ascontiguousarray(out.reshape(n * out.shape[1], *out.shape[2:]))

    # -- pooling ---------------------------------------------------------------
    def feature_dim(self, slice_dim: int) -> int:
        """Width of a pooled volume feature given the per-slice width."""
        return slice_dim * POOL_WIDTH[self.pool]

    def pool_features(self, x: torch.Tensor, n_slices: int) -> torch.Tensor:
        """Per-slice features [N * S, F] (volume-major) -> [N, F] or [N, 2F] (mean+max)."""
        return POOLS.get(self.pool)(_per_volume(x, n_slices, self.name))

    def pool_scores(self, x: torch.Tensor, n_slices: int, *, kind: str = "logits") -> torch.Tensor:
        """Per-slice class scores [N * S, C] -> per-volume scores [N, C] (zero-shot).

        ``kind="logits"``: the pooled logits as they are (mean of logits is a
        geometric mean of the unnormalised slice probabilities; apply softmax
        afterwards, which is what zero-shot should do). ``kind="probs"``
        (rows that sum to 1): ``mean`` keeps that property on its own;
        ``max`` does not, so the per-class maxima are divided by their row
        sum, giving a distribution again. ``mean+max`` concatenates and
        would double the class columns: it is refused for scores.
        """
        if self.pool == "mean+max":
            raise ConfigError(
                f"volume view {self.name}: mean+max concatenates features and has no meaning for "
                "class scores; use a mean or max view for zero-shot."
            )
        if kind not in ("logits", "probs"):
            raise ConfigError(f"score kind must be 'logits' or 'probs', not {kind!r}.")
        pooled = POOLS.get(self.pool)(_per_volume(x, n_slices, self.name))
        if kind == "probs" and self.pool == "max":
            pooled = pooled / pooled.sum(1, keepdim=True).clamp_min(torch.finfo(pooled.dtype).tiny)
        return pooled


def _per_volume(x: torch.Tensor, n_slices: int, name: str) -> torch.Tensor:
    """[N * S, F] -> [N, S, F] (numpy arrays are accepted and become tensors)."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or n_slices < 1 or x.shape[0] % n_slices:
        raise ConfigError(
            f"volume view {name}: expected per-slice rows [N * {n_slices}, F], got {tuple(x.shape)}."
        )
    return x.reshape(x.shape[0] // n_slices, n_slices, x.shape[1])


def parse_view(text: str | VolumeView) -> VolumeView:
    """CLI / config helper: a view object passes through, text is parsed."""
    return text if isinstance(text, VolumeView) else VolumeView.parse(text)


def encode_volumes(
    volumes: np.ndarray | torch.Tensor,
    view: VolumeView,
    encode_slices: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Volumes [N, D, H, W] -> pooled features [N, F'] through any 2D encoder.

    ``encode_slices`` is whatever turns uint8 images [M, h, w] into features
    [M, F] for a 2D adapter (fmeval's batched feature extraction). ``chunk``
    volumes are sliced at a time, bounding the slice array's memory (all
    slices of all three planes at 64^3 is 192 slices per volume).
    """
    n = len(volumes)
    if n == 0:
        raise ConfigError("no volumes to encode.")
    step = n if chunk is None else max(1, int(chunk))
    per_volume = view.n_slices(tuple(volumes.shape[1:]))
    out = [
        view.pool_features(encode_slices(view.select(volumes[i : i + step])), per_volume)
        for i in range(0, n, step)
    ]
    return out[0] if len(out) == 1 else torch.cat(out)
