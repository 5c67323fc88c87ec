"""Turning a 2D CNN into a 3D one: 2.5D, inflated 3D and ACS convolutions.

The MedMNIST v2 3D baselines (MedMNIST/experiments, ``MedMNIST3D/
train_and_eval_pytorch.py``) build a 2D ResNet and convert it with the
``acsconv`` package (Yang et al., "Reinventing 2D Convolutions for 3D
Images", IEEE JBHI 2021; github.com/M3DV/ACSConv):

* ``Conv2_5dConverter``: every ``Conv2d`` becomes a ``Conv3d`` with kernel
  1 x k x k (the 2D kernel unsqueezed along depth), padding (0, p, p), and the
  2D stride and dilation applied to all three axes (acsconv passes the scalar
  through, so a stride-2 layer also halves the depth);
* ``Conv3dConverter(i3d_repeat_axis=-3)`` (the script's default
  ``--pretrained_3d i3d``): a k x k x k ``Conv3d`` whose kernel is the 2D
  kernel repeated k times along depth and divided by k (I3D inflation,
  Carreira & Zisserman 2017): a volume constant along depth gives the 2D
  response;
* ``ACSConverter``: ``ACSConv`` keeps the 2D kernel [O, I, k, k] and splits
  the output channels in three groups (sizes ceil/floor of O/3, the first
  groups taking the remainder); the first group's kernel is used as
  1 x k x k (axial), the second as k x 1 x k (coronal), the third as
  k x k x 1 (sagittal), and the three outputs are concatenated.

Every converter also maps ``BatchNorm2d``, the pools and the adaptive pools to
their 3D classes (``base_converter.convert_module``).

Why not use ``acsconv`` (0.1.1, 2022): its converters rebuild each module by
reading every name in ``TargetClass.__init__.__code__.co_varnames`` off the
2D instance. torch 2.14's ``BatchNorm3d.__init__`` has a new boolean
argument ``bias``; the converter fills it with the 2D BatchNorm's ``bias``
*tensor*, and the conversion fails with "Boolean value of Tensor with more
than one value is ambiguous" (checked: the arguments of
``nn.BatchNorm3d.__init__`` on torch 2.14 end in ``device, dtype, bias``).
Reading constructor signatures off instances breaks whenever torch adds an
argument, so the conversion (~200 lines) is written here against explicit
constructor arguments instead, with the 2D weights and BatchNorm statistics
copied over explicitly (acsconv's ACS path reloads the old state dict with
``strict=False``, which would silently skip a mismatch).

One deliberate difference: :class:`ACSConv3d` holds its three groups as
three ordinary ``nn.Conv3d`` children (``axial``, ``coronal``,
``sagittal``) instead of one 2D weight and a functional call. The arithmetic
is acsconv's (``acs_conv_f``, including its centre-tap handling when the
padding is not "same"), but peft's LoRA, which supports ``Conv3d`` and not
custom layers, can then wrap the ACS groups too. Narrow layers (fewer than
16 output channels, the tiny test builds) run as one equivalent dense
``conv3d`` instead, which is faster there (see ``ACSConv3d.DENSE_BELOW``).
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fmeval.errors import ConfigError, ModelError
from fmeval.registry import Registry

ACS_AXES = ("axial", "coronal", "sagittal")  # kernel extent 1 along D, H, W respectively

ConvConversion = Callable[[nn.Conv2d], nn.Module]
CONVERSIONS: Registry[ConvConversion] = Registry("3D conversion", ConfigError)


def _one(value, what: str, conv: nn.Module) -> int:
    """The single value of a square kernel/stride/padding/dilation."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if isinstance(vals[0], str) or len(set(vals)) != 1:
        raise ModelError(
            f"cannot convert {conv} to 3D: {what} {value!r} is not one square value "
            "(only square kernels, strides, paddings and dilations convert)."
        )
    return int(vals[0])


def _conv_params(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    if type(conv) is not nn.Conv2d:
        raise ModelError(f"cannot convert {type(conv).__name__} (a Conv2d with its own forward) to 3D.")
    if conv.padding_mode != "zeros":
        raise ModelError(f"cannot convert {conv} to 3D: padding_mode {conv.padding_mode!r}.")
    return (_one(conv.kernel_size, "kernel", conv), _one(conv.stride, "stride", conv),
            _one(conv.padding, "padding", conv), _one(conv.dilation, "dilation", conv))


def _conv3d_like(conv: nn.Conv2d, kernel, stride, padding, dilation, weight: torch.Tensor) -> nn.Conv3d:
    new = nn.Conv3d(conv.in_channels, conv.out_channels, kernel, stride=stride, padding=padding,
                    dilation=dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


@CONVERSIONS.register("2.5d", "kernel 1 x k x k: the 2D kernel on every axial slice (acsconv Conv2_5d)")
def conv_2_5d(conv: nn.Conv2d) -> nn.Conv3d:
    k, s, p, d = _conv_params(conv)
    return _conv3d_like(conv, (1, k, k), s, (0, p, p), d, conv.weight.detach().unsqueeze(2))


@CONVERSIONS.register("3d", "k x k x k, the 2D kernel repeated along depth / k (I3D inflation)")
def conv_3d(conv: nn.Conv2d) -> nn.Conv3d:
    k, s, p, d = _conv_params(conv)
    w = conv.weight.detach().unsqueeze(2).repeat(1, 1, k, 1, 1) / k
    return _conv3d_like(conv, k, s, p, d, w)


def acs_split(out_channels: int) -> tuple[int, int, int]:
    """acsconv's split of output channels over (axial, coronal, sagittal)."""
    q, r = divmod(out_channels, 3)
    return (q + (r > 0), q + (r > 1), q)


class ACSConv3d(nn.Module):
    """ACS convolution: three groups of output channels, one per orthogonal plane.

    Group ``axial`` convolves with kernel 1 x k x k, ``coronal`` k x 1 x k,
    ``sagittal`` k x k x 1; each is a plain ``nn.Conv3d`` child, so state
    dicts, LoRA and ``channels_last_3d`` treat it like any other conv.
    Along the axis where a group's kernel is 1 wide, its single tap is the
    centre tap of the k-wide 3D kernel it stands for (acsconv's
    ``acs_conv_f``): with "same" padding (2p = d (k - 1)) that is the input as
    it is; otherwise the input is padded and cut so that output sizes and
    positions match those of a k x k x k ``Conv3d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True,
                 split: tuple[int, int, int] | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.depthwise = groups > 1 and groups == in_channels == out_channels
        if groups != 1 and not self.depthwise:
            raise ModelError(
                f"ACS conversion supports groups=1 or depthwise convolutions, not groups={groups}."
            )
        self.split = split or acs_split(out_channels)
        if sum(self.split) != out_channels:
            raise ModelError(f"ACS split {self.split} does not add up to {out_channels} channels.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k, self.s, self.p, self.d = kernel_size, stride, padding, dilation
        for axis, n in enumerate(self.split):
            if n == 0:
                continue
            kernel, pad = [kernel_size] * 3, [padding] * 3
            kernel[axis], pad[axis] = 1, 0
            conv = nn.Conv3d(n if self.depthwise else in_channels, n, tuple(kernel), stride=stride,
                             padding=tuple(pad), dilation=dilation, groups=n if self.depthwise else 1,
                             bias=bias, device=device, dtype=dtype)
            self.add_module(ACS_AXES[axis], conv)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "ACSConv3d":
        k, s, p, d = _conv_params(conv)
        new = cls(conv.in_channels, conv.out_channels, k, s, p, d, conv.groups, conv.bias is not None,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        w, b = conv.weight.detach(), conv.bias
        start = 0
        with torch.no_grad():
            for axis, n in enumerate(new.split):
                if n == 0:
                    continue
                sub = getattr(new, ACS_AXES[axis])
                sub.weight.copy_(w[start : start + n].unsqueeze(2 + axis))
                if b is not None:
                    sub.bias.copy_(b[start : start + n])
                start += n
        return new

    def _centre_tap(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Cut ``x`` along ``dim`` so a 1-wide kernel samples the k-wide kernel's centre."""
        k, s, p, d = self.k, self.s, self.p, self.d
        if 2 * p == d * (k - 1):
            return x
        out = (x.shape[dim] + 2 * p - d * (k - 1) - 1) // s + 1
        pad = [0] * 6
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = p  # F.pad lists the last dim first
        return F.pad(x, pad).narrow(dim, d * (k // 2), (out - 1) * s + 1)

    def dense_kernel(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The k x k x k kernel (and bias) this ACS convolution equals.

        Each group's planar kernel sits in the central plane of a zero k^3
        kernel; built differentiably from the group weights, so gradients
        reach only the planar taps, exactly as with three separate convs.
        """
        c = self.k // 2
        weights, biases = [], []
        for axis, n in enumerate(self.split):
            if n == 0:
                continue
            conv = getattr(self, ACS_AXES[axis])
            pad = [0] * 6
            pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = c, self.k - 1 - c  # F.pad: last dim first
            weights.append(F.pad(conv.weight, pad))
            biases.append(conv.bias)
        bias = None if biases[0] is None else torch.cat(biases)
        return torch.cat(weights), bias

    # Below this many output channels one dense conv3d beats three narrow ones.
    # Measured fwd+bwd on CPU, batch 4: 4-8 channels at 28^3 dense 1.6-1.8x
    # faster; 16 at 28^3 and 32-256 at 7-14^3 the groups 1.2-2.8x faster
    # (they do a third of the multiply-adds).
    DENSE_BELOW: ClassVar[int] = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Narrow layers: one ``conv3d`` with :meth:`dense_kernel`; wide ones: the three groups.

        Both give the same numbers (tested). The dense form is used only while
        the groups are plain ``nn.Conv3d``: once a group is wrapped (peft LoRA
        replaces it with a layer adding its own update), each group runs its
        own forward so that the wrapper takes part.
        """
        plain = all(type(getattr(self, a, None)) in (nn.Conv3d, type(None)) for a in ACS_AXES)
        if plain and self.out_channels < self.DENSE_BELOW:
            weight, bias = self.dense_kernel()
            groups = self.in_channels if self.depthwise else 1
            return F.conv3d(x, weight, bias, self.s, self.p, self.d, groups)
        outs, start = [], 0
        for axis, n in enumerate(self.split):
            if n == 0:
                continue
            xi = x[:, start : start + n] if self.depthwise else x
            outs.append(getattr(self, ACS_AXES[axis])(self._centre_tap(xi, 2 + axis)))
            start += n
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.k}, stride={self.s}, "
                f"padding={self.p}, split={self.split}")


@CONVERSIONS.register("acs", "ACS: output channels split over axial / coronal / sagittal 2D kernels")
def conv_acs(conv: nn.Conv2d) -> ACSConv3d:
    return ACSConv3d.from_conv2d(conv)


# -- everything that is not a convolution ------------------------------------------------
def _bn(m: nn.BatchNorm2d) -> nn.BatchNorm3d:
    new = nn.BatchNorm3d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                         track_running_stats=m.track_running_stats)
    new.load_state_dict(m.state_dict())  # weight, bias, running mean/var, batch count
    return new.to(next(iter(m.state_dict().values()), torch.empty(0)).device)


def _triple(v):
    return tuple(v) + (v[-1],) if isinstance(v, (tuple, list)) and len(v) == 2 else v


def _max_pool(m: nn.MaxPool2d) -> nn.MaxPool3d:
    return nn.MaxPool3d(_one(m.kernel_size, "kernel", m), _one(m.stride, "stride", m),
                        _one(m.padding, "padding", m), _one(m.dilation, "dilation", m),
                        return_indices=m.return_indices, ceil_mode=m.ceil_mode)


def _avg_pool(m: nn.AvgPool2d) -> nn.AvgPool3d:
    return nn.AvgPool3d(_one(m.kernel_size, "kernel", m), _one(m.stride, "stride", m),
                        _one(m.padding, "padding", m), ceil_mode=m.ceil_mode,
                        count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)


LAYERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.BatchNorm2d: _bn,
    nn.MaxPool2d: _max_pool,
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool2d: lambda m: nn.AdaptiveAvgPool3d(_triple(m.output_size)),
    nn.AdaptiveMaxPool2d: lambda m: nn.AdaptiveMaxPool3d(_triple(m.output_size), m.return_indices),
    nn.Dropout2d: lambda m: nn.Dropout3d(m.p, m.inplace),
}


def convert_2d_to_3d(model: nn.Module, kind: str) -> nn.Module:
    """Convert ``model`` in place (and return it): every Conv2d by ``kind``, the rest by type.

    ``kind`` is a :data:`CONVERSIONS` name (``2.5d``, ``3d``, ``acs``). The 2D
    weights and BatchNorm statistics are carried over. A 2D-only layer this
    module does not know (a subclass of a known layer with its own forward,
    or any other ``...2d`` leaf) is an error, not a silent 2D layer inside a
    3D network.
    """
    conv = CONVERSIONS.get(kind)
    _convert(model, conv, "")
    return model


def _convert(module: nn.Module, conv: ConvConversion, prefix: str) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Conv2d):
            setattr(module, name, conv(child))
        elif type(child) in LAYERS:
            setattr(module, name, LAYERS[type(child)](child))
        elif any(isinstance(child, t) for t in LAYERS):
            raise ModelError(
                f"cannot convert {path} ({type(child).__name__}, a 2D layer with its own forward) to 3D."
            )
        elif not any(True for _ in child.children()) and "2d" in type(child).__name__.lower():
            raise ModelError(
                f"cannot convert {path} ({type(child).__name__}) to 3D: no 3D counterpart known."
            )
        else:
            _convert(child, conv, f"{path}.")
