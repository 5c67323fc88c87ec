"""The MedViT network (Manzari et al., 2023), re-implemented in plain PyTorch.

MedViT is not on PyPI. This module rebuilds the architecture of the authors'
reference code (github.com/Omid-Nejati/MedViT, ``MedViT.py``) with the same
module and parameter names, so the released ImageNet-1K checkpoints
(``MedViT_{small,base,large}_im1k.pth``, state dict under ``model``) load
strictly. Only the 1000-class ``proj_head`` is dropped, explicitly: fmeval
puts its own head on the pooled features (the adapter: :mod:`fmeval.adapters.medvit`).

Layout (names as in the authors' code)::

    stem.{0..3}.{conv,norm}                 4 x Conv3x3-BN-ReLU, stride 2,1,1,2
    features.{i}                             ECB or LTB blocks, 4 stages
      ECB: patch_embed.{conv,norm}, mhca.{group_conv3x3,norm,projection},
           norm, conv.conv.{0..8}            (LFFN: 1x1, BN, hswish, dw3x3, BN,
                                              hswish, SE(fc.0, fc.2), 1x1, BN)
      LTB: patch_embed, norm1, e_mhsa.{q,k,v,proj,norm}, projection.{conv,norm},
           mhca, norm2, conv.conv.{0..8}
    norm                                     BatchNorm2d before pooling
    proj_head.0                              Linear classifier (not built here)

Parameter counts of the released configurations, 1000-class head included:
small 32,161,440, base 45,430,972, large 58,700,504 (features: 1024-d).

Checked against a transcription of the reference code: identical state-dict
keys and shapes for all three sizes, features equal to ~1e-6 relative (float
rounding: attention runs through ``scaled_dot_product_attention``). Two
generalisations leave the published configurations unchanged while allowing
tiny models and small inputs:

* The stage layouts are derived from a rule instead of hard-coded lists: stage 1
  is all ECBs; in stages 2-4 the last block is an LTB, and in stage 3 every
  fifth block too (the authors' ``[ECB]*4 + [LTB]`` pattern). ECBs get the
  stage's narrow width, LTBs the wide one (96/96, 192/256, 384/512, 768/1024).
* The spatial reduction of the efficient self-attention averages ``sr**2``
  consecutive tokens (an ``AvgPool1d`` over the raster-ordered sequence, exactly
  as the reference). The reference crashes when a stage has fewer tokens than
  that (inputs below ~25 px); here the window shrinks to the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

NORM_EPS = 1e-5
BN = partial(nn.BatchNorm2d, eps=NORM_EPS)


def round_channels(value: float, divisor: int) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded



# -- building blocks ----------------------------------------------------------


class ConvBNReLU(nn.Module):
    """3x3 convolution (padding 1, no bias) -> BatchNorm -> ReLU; one stem layer."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = BN(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class PatchEmbed(nn.Module):
    """Down-sampling / channel change at a block's entry.

    stride 2: 2x2 average pool (ceil mode) + 1x1 conv + BN; a channel change
    alone: 1x1 conv + BN; otherwise the identity (no parameters).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.avgpool: nn.Module = (
            nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
            if stride == 2 else nn.Identity()
        )
        if stride == 2 or cin != cout:
            self.conv: nn.Module = nn.Conv2d(cin, cout, 1, bias=False)
            self.norm: nn.Module = BN(cout)
        else:
            self.conv = nn.Identity()
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.avgpool(x)))


class MHCA(nn.Module):
    """Multi-head convolutional attention: grouped 3x3 conv (one group per head) -> BN -> ReLU -> 1x1."""

    def __init__(self, channels: int, head_dim: int) -> None:
        super().__init__()
        if channels <= 0 or channels % head_dim:
            raise ValueError(f"MHCA channels {channels} must be a positive multiple of {head_dim}")
        self.group_conv3x3 = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels // head_dim, bias=False
        )
        self.norm = BN(channels)
        self.act = nn.ReLU(inplace=True)
        self.projection = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.act(self.norm(self.group_conv3x3(x))))


class SqueezeExcite(nn.Module):
    """Channel gate of the LFFN: pool -> Linear -> ReLU -> Linear -> hard sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels), nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class LocalityFeedForward(nn.Module):
    """LFFN (from LocalViT): 1x1 expand, depth-wise 3x3, SE, 1x1 project, with its own residual.

    The sequence indices (``conv.0`` ... ``conv.8``) are part of the checkpoint
    key names and must stay in this order. The SE reduction equals the output
    width, as in the reference, so its bottleneck has ``expand_ratio`` units.
    """

    def __init__(self, dim: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),                                  # 0
            nn.BatchNorm2d(hidden, eps=NORM_EPS),                                   # 1
            nn.Hardswish(),                                                         # 2
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),     # 3
            nn.BatchNorm2d(hidden, eps=NORM_EPS),                                   # 4
            nn.Hardswish(),                                                         # 5
            SqueezeExcite(hidden, reduction=dim),                                   # 6
            nn.Conv2d(hidden, dim, 1, bias=False),                                  # 7
            nn.BatchNorm2d(dim, eps=NORM_EPS),                                      # 8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class ECB(nn.Module):
    """Efficient Convolution Block: x += MHCA(x); x += LFFN(BN(x))."""

    def __init__(
        self, cin: int, cout: int, stride: int = 1, path_dropout: float = 0.0,
        head_dim: int = 32, mlp_ratio: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.patch_embed = PatchEmbed(cin, cout, stride)
        self.mhca = MHCA(cout, head_dim)
        self.attention_path_dropout = DropPath(path_dropout) if path_dropout > 0 else nn.Identity()
        self.conv = LocalityFeedForward(cout, mlp_ratio)
        self.norm = BN(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.attention_path_dropout(self.mhca(x))
        # No drop-path here: the reference adds the LFFN branch unconditionally.
        return x + self.conv(self.norm(x))


class EfficientMHSA(nn.Module):
    """E-MHSA: multi-head self-attention whose keys/values come from a shorter sequence.

    Keys and values are computed from the tokens averaged in windows of
    ``sr_ratio**2`` consecutive positions (raster order) followed by BatchNorm1d.
    """

    def __init__(
        self, dim: int, head_dim: int = 32, qkv_bias: bool = True,
        attn_drop: float = 0.0, proj_drop: float = 0.0, sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not a multiple of head_dim {head_dim}")
        self.dim = dim
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        self.window = sr_ratio**2
        if sr_ratio > 1:
            self.norm = nn.BatchNorm1d(dim, eps=NORM_EPS)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C]
        b, n, c = x.shape
        kv = x
        if self.sr_ratio > 1:
            window = min(self.window, n)
            kv = F.avg_pool1d(x.transpose(1, 2), window, window)  # [B, C, N // window]
            kv = self.norm(kv).transpose(1, 2)
        q, k, v = self._heads(self.q(x)), self._heads(self.k(kv)), self._heads(self.v(kv))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class LTB(nn.Module):
    """Local Transformer Block.

    The input is projected to ``mhsa`` channels and refined by E-MHSA; a 1x1
    projection of the result feeds MHCA; both are concatenated to ``cout``
    channels and passed through the LFFN.
    """

    def __init__(
        self, cin: int, cout: int, path_dropout: float = 0.0, stride: int = 1,
        sr_ratio: int = 1, mlp_ratio: int = 2, head_dim: int = 32,
        mix_block_ratio: float = 0.75, attn_drop: float = 0.0, drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        # The reference rounds to multiples of 32, which is its head_dim.
        self.mhsa_out_channels = round_channels(int(cout * mix_block_ratio), head_dim)
        self.mhca_out_channels = cout - self.mhsa_out_channels
        self.patch_embed = PatchEmbed(cin, self.mhsa_out_channels, stride)
        self.norm1 = BN(self.mhsa_out_channels)
        self.e_mhsa = EfficientMHSA(
            self.mhsa_out_channels, head_dim=head_dim, sr_ratio=sr_ratio,
            attn_drop=attn_drop, proj_drop=drop,
        )
        p1, p2 = path_dropout * mix_block_ratio, path_dropout * (1 - mix_block_ratio)
        self.mhsa_path_dropout = DropPath(p1) if p1 > 0 else nn.Identity()
        self.projection = PatchEmbed(self.mhsa_out_channels, self.mhca_out_channels, stride=1)
        self.mhca = MHCA(self.mhca_out_channels, head_dim=head_dim)
        self.mhca_path_dropout = DropPath(p2) if p2 > 0 else nn.Identity()
        self.norm2 = BN(cout)
        self.conv = LocalityFeedForward(cout, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        tokens = self.norm1(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        attn = self.mhsa_path_dropout(self.e_mhsa(tokens))
        x = x + attn.transpose(1, 2).reshape(b, c, h, w)
        local = self.projection(x)
        local = local + self.mhca_path_dropout(self.mhca(local))
        x = torch.cat([x, local], dim=1)
        return x + self.conv(self.norm2(x))


# -- the network --------------------------------------------------------------


@dataclass(frozen=True)
class MedViTConfig:
    """One MedViT size. ``widths[s]`` = (ECB width, LTB width) of stage ``s``."""

    depths: tuple[int, int, int, int]
    path_dropout: float
    stem_chs: tuple[int, int, int] = (64, 32, 64)
    widths: tuple[tuple[int, int], ...] = ((96, 96), (192, 256), (384, 512), (768, 1024))
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    head_dim: int = 32
    mix_block_ratio: float = 0.75
    ltb_period: int = 5  # stage 3 repeats [ECB] * 4 + [LTB]

    def layout(self) -> list[list[tuple[str, int]]]:
        """Per stage, the (block kind, output width) of each block."""
        stages = []
        for s, depth in enumerate(self.depths):
            narrow, wide = self.widths[s]
            blocks = []
            for i in range(1, depth + 1):
                is_ltb = s > 0 and (i == depth or (s == 2 and i % self.ltb_period == 0))
                blocks.append(("LTB", wide) if is_ltb else ("ECB", narrow))
            stages.append(blocks)
        return stages


VARIANTS: dict[str, MedViTConfig] = {
    "small": MedViTConfig(depths=(3, 4, 10, 3), path_dropout=0.1),
    "base": MedViTConfig(depths=(3, 4, 20, 3), path_dropout=0.2),
    "large": MedViTConfig(depths=(3, 4, 30, 3), path_dropout=0.2),
}

# Same classes, a few thousand parameters: runs on 28-32 px input in milliseconds.
# Depth 2 in stage 2 keeps a strided ECB and an ECB->LTB transition in the test path.
TINY_OVERRIDES = dict(
    depths=(1, 2, 1, 1), stem_chs=(16, 8, 16),
    widths=((16, 16), (24, 32), (32, 48), (48, 64)), head_dim=8,
)
TINY_INPUT = 28


class MedViT(nn.Module):
    """stem -> ECB/LTB stages -> BatchNorm2d -> global average pool [-> proj_head].

    ``num_classes=0`` builds no classifier; :meth:`forward_features` returns the
    pooled pre-logits either way.
    """

    def __init__(
        self, config: MedViTConfig, num_classes: int = 1000,
        attn_drop: float = 0.0, drop: float = 0.0,
    ) -> None:
        super().__init__()
        c = config
        self.config = c
        self.stem = nn.Sequential(
            ConvBNReLU(3, c.stem_chs[0], stride=2),
            ConvBNReLU(c.stem_chs[0], c.stem_chs[1], stride=1),
            ConvBNReLU(c.stem_chs[1], c.stem_chs[2], stride=1),
            ConvBNReLU(c.stem_chs[2], c.stem_chs[2], stride=2),
        )
        layout = c.layout()
        rates = torch.linspace(0, c.path_dropout, sum(c.depths), device="cpu").tolist()  # drop-path decay
        blocks: list[nn.Module] = []
        cin = c.stem_chs[-1]
        for s, stage in enumerate(layout):
            for i, (kind, cout) in enumerate(stage):
                stride = 2 if (c.strides[s] == 2 and i == 0) else 1
                rate = rates[len(blocks)]
                if kind == "ECB":
                    blocks.append(ECB(cin, cout, stride, rate, head_dim=c.head_dim))
                else:
                    blocks.append(LTB(
                        cin, cout, rate, stride, sr_ratio=c.sr_ratios[s], head_dim=c.head_dim,
                        mix_block_ratio=c.mix_block_ratio, attn_drop=attn_drop, drop=drop,
                    ))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.num_features = cin
        self.norm = BN(cin)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.proj_head: nn.Module = (
            nn.Sequential(nn.Linear(cin, num_classes)) if num_classes > 0 else nn.Identity()
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        return torch.flatten(self.avgpool(self.norm(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_head(self.forward_features(x))


def build_medvit(variant: str, *, tiny: bool = False, num_classes: int = 1000) -> MedViT:
    config = VARIANTS[variant]
    if tiny:
        config = replace(config, **TINY_OVERRIDES)
    return MedViT(config, num_classes=num_classes)
