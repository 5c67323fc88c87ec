"""MedMNIST / MedMNIST+ data layer: metadata, npz files, image geometry, volume views."""

from fmeval.data.info import (  # noqa: F401
    BINARY,
    MULTICLASS,
    MULTILABEL,
    ORDINAL,
    SIZES,
    SPLITS,
    DatasetInfo,
    all_flags,
    dataset_info,
    flags_2d,
    flags_3d,
    is_multilabel,
)
from fmeval.data.npz import MedMNIST, Split, default_data_root, load_dataset  # noqa: F401
