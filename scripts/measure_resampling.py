"""Mean absolute grey-level difference between fmeval's tensor resize and PIL's, 28 -> 224 on real data.

PIL's bicubic uses the Keys kernel with a = -0.5 and bilinear a triangle filter, both scaled to the
source pixel grid; torch's F.interpolate without antialias uses a = -0.75 for bicubic, and with
antialias=True it computes PIL's kernels (for up- and down-sampling). Usage:
FMEVAL_DATA_ROOT=... python scripts/measure_resampling.py [--n 500] [--size 224]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fmeval.data import load_dataset
from fmeval.settings import env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    imgs = load_dataset("pneumoniamnist", 28, env("FMEVAL_DATA_ROOT"), md5="off").split("test").images[: a.n]
    x = torch.as_tensor(imgs, dtype=torch.float32)[:, None] / 255.0
    print(f"PneumoniaMNIST test, first {len(imgs)} images, 28 -> {a.size}; mean |torch - PIL| in grey levels (0-255)")
    for mode, pil in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        ref = np.stack([np.asarray(Image.fromarray(im).resize((a.size, a.size), pil), dtype=np.float64) for im in imgs])
        for aa in (False, True):
            t = F.interpolate(x, size=(a.size, a.size), mode=mode, align_corners=False, antialias=aa).clamp(0, 1)
            got = t[:, 0].double().numpy() * 255.0
            d = np.abs(got - ref)
            r = np.abs(np.round(got) - ref)  # PIL stores uint8: compare like with like too
            print(f"{mode:8s} antialias={aa!s:5s}: mean {d.mean():.3f}, max {d.max():.2f}; rounded to uint8: "
                  f"mean {r.mean():.3f}, {np.mean(r == 0):.1%} of pixels equal")


if __name__ == "__main__":
    main()
