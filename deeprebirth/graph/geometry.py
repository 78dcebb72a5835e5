"""Convolution and pooling geometry, shared by the shape rules (shapes.py) and the rules.

Caffe's conventions: kernel/pad/stride given as ``x_h``/``x_w`` or as a repeated ``x`` (one value
for every spatial axis, or one per axis); convolutions round their output size down, pooling rounds
it up (unless ``round_mode: FLOOR``) and drops a last window that starts in the padding.
"""
from __future__ import annotations

from deeprebirth.caffe import proto as pb

Shape = tuple[int, ...]


def _spatial_param(p, many: str, h: str, w: str, n: int, default: int) -> list[int]:
    """Caffe's kernel/pad/stride convention: ``x_h``/``x_w`` (2-D only) or repeated ``x`` (1 or n values)."""
    if p.HasField(h) or p.HasField(w):
        return [getattr(p, h), getattr(p, w)]
    values = list(getattr(p, many))
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    return values


def conv_geometry(layer: "pb.LayerParameter", n_spatial: int = 2) -> dict[str, list[int]]:
    """kernel, pad, stride, dilation of a (de)convolution, one entry per spatial axis."""
    p = layer.convolution_param
    return {
        "kernel": _spatial_param(p, "kernel_size", "kernel_h", "kernel_w", n_spatial, 0),
        "pad": _spatial_param(p, "pad", "pad_h", "pad_w", n_spatial, 0),
        "stride": _spatial_param(p, "stride", "stride_h", "stride_w", n_spatial, 1),
        "dilation": list(p.dilation) * n_spatial if len(p.dilation) == 1 else (list(p.dilation) or [1] * n_spatial),
    }


def pool_geometry(layer: "pb.LayerParameter", in_hw: Shape | None = None) -> dict:
    """kernel, pad, stride (h, w) and rounding of a pooling layer; global pooling needs ``in_hw``."""
    p = layer.pooling_param
    if p.global_pooling:
        if in_hw is None:
            raise ValueError("global pooling needs the input size")
        kernel = list(in_hw)
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        kernel = [p.kernel_size, p.kernel_size]
    pad = [p.pad_h, p.pad_w] if (p.HasField("pad_h") or p.HasField("pad_w")) else [p.pad, p.pad]
    stride = [p.stride_h, p.stride_w] if (p.HasField("stride_h") or p.HasField("stride_w")) else [p.stride, p.stride]
    ceil = True
    if p.HasField("round_mode"):
        ceil = p.round_mode == 0  # CEIL
    elif p.HasField("ceil_mode"):  # the forks' spelling (BVLC PR #3057)
        ceil = p.ceil_mode
    return {"kernel": kernel, "pad": pad, "stride": stride, "ceil": ceil, "global": p.global_pooling}


def conv_out(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_out(size: int, kernel: int, pad: int, stride: int, ceil: bool = True) -> int:
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the image (Caffe's rule)
    return out


def canonical_axis(axis: int, ndim: int | None) -> int | None:
    """A possibly negative axis counted from the front (Caffe's CanonicalAxisIndex, unchecked);
    None when a negative axis meets an unknown number of axes."""
    if axis >= 0:
        return axis
    return axis + ndim if ndim is not None else None


def concat_axis(layer: "pb.LayerParameter") -> int:
    """The axis a Concat joins on (the legacy ``concat_dim`` wins when set); may be negative."""
    p = layer.concat_param
    return p.concat_dim if p.HasField("concat_dim") else p.axis


def choose_pad(size: int, kernel: int, stride: int, target: int, ideal: float, dilation: int = 1) -> int | None:
    """The padding (0 <= pad < kernel extent) that makes a convolution of ``size`` with ``stride``
    produce exactly ``target`` outputs, closest to ``ideal`` (ties: the smaller); None if none does."""
    extent = dilation * (kernel - 1) + 1
    fits = [p for p in range(extent) if conv_out(size, kernel, p, stride, dilation) == target]
    if not fits:
        return None
    return min(fits, key=lambda p: (abs(p - ideal), p))


def set_conv_stride_pad(layer: "pb.LayerParameter", stride: list[int], pad: list[int]) -> None:
    """Write 2-D stride and pad into a convolution_param (one value when both axes agree)."""
    p = layer.convolution_param
    for f in ("stride", "stride_h", "stride_w", "pad", "pad_h", "pad_w"):
        p.ClearField(f)
    if stride[0] == stride[1]:
        p.stride.append(stride[0])
    else:
        p.stride_h, p.stride_w = stride
    if pad[0] == pad[1]:
        p.pad.append(pad[0])
    else:
        p.pad_h, p.pad_w = pad


def stride_one_too_wide(pool_geo: dict, kernel: list[int]) -> bool:
    """A stride-1 pooling only aggregates space; a smaller kernel cannot stand in for it (the paper:
    the absorbing tensor layer's kernel must be at least the non-tensor layer's)."""
    return all(s == 1 for s in pool_geo["stride"]) and any(k < pk for k, pk in zip(kernel, pool_geo["kernel"]))


def fmt(values: list[int]) -> str:
    """[2, 2] -> '2'; [2, 1] -> '2x1' (kernel, stride, pad in notes)."""
    return str(values[0]) if len(set(values)) == 1 else "x".join(str(v) for v in values)
