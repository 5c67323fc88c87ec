"""The published baselines, pre-loaded as team "baseline" (``reference/leaderboard.md``, Table 6).

Bachmeier (2024) re-evaluated Doerrich et al.'s end-to-end models: the mean
over the 12 2D MedMNIST+ datasets of AUC, balanced ACC and unweighted kappa,
3 seeds, at 28/64/128/224 px. Only the means were published (no per-dataset
values), so a baseline row has no CI and no per-dataset page; it is shown on
the leaderboard of the 12-dataset benchmark only, since a mean over another
dataset set would not be comparable.
"""

from __future__ import annotations

SIZES = (28, 64, 128, 224)
#: model -> (AUC x4, balanced ACC x4, kappa x4) at SIZES
TABLE6 = {
    "VGG16": (.9266, .9424, .9516, .9530, .7263, .7598, .7786, .7812, .6560, .6995, .7231, .7253),
    "AlexNet": (.9114, .9269, .9429, .9490, .6875, .7375, .7621, .7724, .6124, .6685, .7005, .7103),
    "ResNet-18": (.9092, .9249, .9391, .9451, .6805, .7253, .7565, .7665, .6099, .6620, .7025, .7150),
    "DenseNet-121": (.9175, .9359, .9457, .9503, .6995, .7448, .7806, .7869, .6181, .6793, .7252, .7318),
    "EfficientNet-B4": (.8701, .9008, .9189, .9164, .6120, .6788, .7151, .7202, .5121, .5898, .6363, .6401),
    "ViT-B/16": (.9054, .9253, .9325, .9408, .6727, .7324, .7610, .7716, .5898, .6583, .6838, .7040),
    "CLIP ViT-B/16": (.8922, .9091, .9151, .9183, .6498, .6990, .7187, .7212, .5600, .6117, .6358, .6447),
    "EVA-02 ViT-B/16": (.8891, .9053, .9119, .9260, .6578, .6912, .7110, .7509, .5717, .5940, .6058, .6785),
    "DINO ViT-B/16": (.9102, .9194, .9291, .9390, .6781, .7177, .7513, .7640, .5991, .6398, .6753, .6889),
    "SAM ViT-B/16": (.8901, .9079, .9194, .9191, .6703, .7096, .7459, .7432, .5917, .6238, .6753, .6665),
}
SOURCE = ("Bachmeier 2024, Table 6: Doerrich et al.'s end-to-end models re-evaluated; mean over the 12 2D "
          "MedMNIST+ datasets, 3 seeds (the ViT-B/16 kappa at 28 px may be a copy error in the thesis)")


def baseline_rows() -> list[dict]:
    """One row per (model, size): {model, size, means: {metric: {mean, ci_low, ci_high}}}."""
    rows = []
    for model, v in TABLE6.items():
        for i, size in enumerate(SIZES):
            means = {m: {"mean": v[4 * j + i], "ci_low": None, "ci_high": None}
                     for j, m in enumerate(("auc", "balanced_acc", "kappa"))}
            rows.append({"model": model, "size": size, "means": means})
    return rows
