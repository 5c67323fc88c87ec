"""MedMNIST / MedMNIST+ data layer: metadata, npz files, image geometry."""

from fmeval.data.info import (  # noqa: F401
    BINARY,
    MULTICLASS,
    MULTILABEL,
    ORDINAL,
    SIZES,
    SPLITS,
    DatasetInfo,
    dataset_info,
    flags_2d,
    is_multilabel,
)
from fmeval.data.npz import MedMNIST, Split, default_data_root, load_dataset  # noqa: F401
