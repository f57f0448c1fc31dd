"""Convolution and pooling over time (``[B,T,F]``) or over time and one spatial axis (``[B,T,W,C]``): conv, pool.

Frames past each sequence's length are zeroed (conv) or left out (pool) before the window slides over them, so the
result of a sequence never depends on the padding of its batch. ``padding = "same"`` on the time axis pads
``max(k - s, 0) // 2`` frames on the left (``k`` the dilated filter size, ``s`` the stride), as TensorFlow does when
the length is a multiple of the stride, and keeps ``ceil(T / s)`` frames; ``"valid"`` keeps the frames whose window
lies within the input, ``(T - k) // s + 1``. Spatial axes are padded as TensorFlow does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from returnn.torch.network.activations import get_activation
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, register_layer

__all__ = ["ConvLayer", "PoolLayer"]

_PADDINGS = ("same", "valid")


def _as_tuple(value: Any, n: int, name: str, ctx: LayerContext) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ``n`` positive ints) as a tuple of ``n`` ints."""
    values = (value,) * n if isinstance(value, int) else value
    if (
        not isinstance(values, (list, tuple))
        or len(values) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ctx.error(f"{name} {value!r}: expected {n} positive int(s), one per axis (time{', spatial' * (n - 1)})")
    return tuple(values)


def _check_padding(padding: Any, ctx: LayerContext) -> str:
    if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
        raise ctx.error(f"padding {padding!r}: choose one of: 'same', 'valid'")
    return padding.lower()


def _check_input(source: DataSpec, n_axes: int, ctx: LayerContext) -> None:
    if source.sparse or not source.feature_axis:
        raise ctx.error(f"its input {source.describe()} must be dense with a feature axis (embed sparse data first)")
    if not source.time:
        raise ctx.error(f"its input {source.describe()} has no time axis")
    if n_axes != 1 + len(source.spatial):
        raise ctx.error(
            f"filter/pool size has {n_axes} axes, but its input {source.describe()} has {1 + len(source.spatial)} "
            "axes to slide over (time and spatial); give one size per axis"
        )
    if len(source.spatial) > 1:
        raise ctx.error(f"its input {source.describe()} has more than one spatial axis; only 1D and 2D are supported")


def _spatial_out_size(size: int, k_eff: int, stride: int, padding: str, ctx: LayerContext) -> int:
    out = math.ceil(size / stride) if padding == "same" else (size - k_eff) // stride + 1
    if out < 1:
        raise ctx.error(f"a spatial axis of size {size} is smaller than the (dilated) window {k_eff}")
    return out


def _pads(size: int, k_eff: int, stride: int, padding: str, *, time: bool) -> tuple[int, int, int]:
    """(left, right, output size) of one axis. Time: left independent of the size (see the module doc); spatial:
    TensorFlow's padding. The right side pads also short valid inputs up to one window (output frames past the
    lengths)."""
    if padding == "valid":
        out = max((size - k_eff) // stride + 1, 1)
        return 0, max(k_eff - size, 0), out
    out = math.ceil(size / stride)
    if time:
        left = max(k_eff - stride, 0) // 2
    else:
        left = max((out - 1) * stride + k_eff - size, 0) // 2
    right = max((out - 1) * stride + k_eff - size - left, 0)
    return left, right, out


def _out_lengths(lengths: torch.Tensor, k_eff: int, stride: int, padding: str) -> torch.Tensor:
    if padding == "same":
        return (lengths + stride - 1) // stride
    return ((lengths - k_eff) // stride + 1).clamp(min=0)


def _pad_input(
    x: torch.Tensor, sizes: tuple[int, ...], strides: tuple[int, ...], dilation: tuple[int, ...], padding: str, value
) -> torch.Tensor:
    """``x`` ``[B, T, *spatial, F]`` padded with ``value`` on the time and spatial axes."""
    pad: list[int] = [0, 0]  # F.pad lists the pads from the last axis (here F) backwards
    for axis in reversed(range(len(sizes))):
        k_eff = (sizes[axis] - 1) * dilation[axis] + 1
        left, right, _ = _pads(x.shape[1 + axis], k_eff, strides[axis], padding, time=axis == 0)
        pad += [left, right]
    return F.pad(x, pad, value=value)


@register_layer("conv")
class ConvLayer(Layer):
    """Convolution over time (input ``[B,T,F]``, ``filter_size`` ``(k,)``) or over time and the spatial axis (input
    ``[B,T,W,C]``, ``filter_size`` ``(k_t, k_w)``), then ``activation``. Output ``[B,T',n_out]`` or
    ``[B,T',W',n_out]``.

    Parameters as in RETURNN: ``W`` ``[*filter_size, n_in, n_out]`` and ``bias`` ``[n_out]`` (``with_bias``).
    """

    def __init__(
        self,
        ctx: LayerContext,
        *,
        filter_size: Any,
        padding: str,
        n_out: int | None = None,
        strides: Any = 1,
        dilation_rate: Any = 1,
        activation: str | None = None,
        with_bias: bool = True,
        forward_weights_init: Any = "glorot_uniform",
        bias_init: Any = 0.0,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        if not isinstance(filter_size, (list, tuple)) or not filter_size:
            raise ctx.error(f"filter_size {filter_size!r}: expected a tuple with one size per axis, e.g. (3,)")
        n_axes = len(filter_size)
        self.filter_size = _as_tuple(filter_size, n_axes, "filter_size", ctx)
        self.strides = _as_tuple(strides, n_axes, "strides", ctx)
        self.dilation = _as_tuple(dilation_rate, n_axes, "dilation_rate", ctx)
        self.padding = _check_padding(padding, ctx)
        _check_input(source, n_axes, ctx)
        n_out = ctx.default_n_out(n_out)
        self.activation_name = activation
        self.activation = get_activation(activation, ctx.where)
        n_in = source.dim
        receptive = math.prod(self.filter_size)
        self.W = self.add_param(
            "W", (*self.filter_size, n_in, n_out), forward_weights_init, fan_in=receptive * n_in,
            fan_out=receptive * n_out, where=f"{ctx.where}: forward_weights_init",
        )  # fmt: skip
        self.bias = (
            self.add_param("bias", (n_out,), bias_init, fan_in=n_in, fan_out=n_out, where=f"{ctx.where}: bias_init")
            if with_bias
            else None
        )
        spatial = tuple(
            _spatial_out_size(size, (k - 1) * d + 1, s, self.padding, ctx)
            for size, k, s, d in zip(source.spatial, self.filter_size[1:], self.strides[1:], self.dilation[1:])
        )
        self.out_spec = source.copy(dim=n_out, spatial=spatial)

    def forward(self, x: LayerOutput) -> LayerOutput:
        padded = _pad_input(x.masked(0.0), self.filter_size, self.strides, self.dilation, self.padding, 0.0)
        n = len(self.filter_size)
        inputs = padded.movedim(-1, 1)  # channels first: [B, F, T, *spatial]
        weight = self.W.permute(n + 1, n, *range(n))  # [n_out, n_in, *filter_size]
        conv = F.conv1d if n == 1 else F.conv2d
        y = conv(inputs, weight, self.bias, stride=self.strides, dilation=self.dilation).movedim(1, -1)
        k_eff = (self.filter_size[0] - 1) * self.dilation[0] + 1
        lengths = _out_lengths(x.lengths, k_eff, self.strides[0], self.padding)
        out = y if self.activation is None else self.activation(y)
        return LayerOutput(out, lengths, self.out_spec, pre_activation=y)


_POOL_MODES = ("max", "avg")


@register_layer("pool")
class PoolLayer(Layer):
    """Max or average pooling over time (``[B,T,F]``, ``pool_size`` ``(k,)``) or over time and the spatial axis
    (``[B,T,W,C]``, ``pool_size`` ``(k_t, k_w)``); ``strides`` default to ``pool_size``. Padding and frames past the
    sequence lengths never take part: they are ``-inf`` for max and left out of the average."""

    def __init__(
        self,
        ctx: LayerContext,
        *,
        mode: str,
        pool_size: Any,
        padding: str = "VALID",
        dilation_rate: Any = 1,
        strides: Any = None,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        if mode not in _POOL_MODES:
            raise ctx.error(f"mode {mode!r}: choose one of: {', '.join(_POOL_MODES)}")
        if not isinstance(pool_size, (list, tuple)) or not pool_size:
            raise ctx.error(f"pool_size {pool_size!r}: expected a tuple with one size per axis, e.g. (2,)")
        n_axes = len(pool_size)
        self.mode = mode
        self.pool_size = _as_tuple(pool_size, n_axes, "pool_size", ctx)
        self.strides = self.pool_size if strides is None else _as_tuple(strides, n_axes, "strides", ctx)
        self.dilation = _as_tuple(dilation_rate, n_axes, "dilation_rate", ctx)
        self.padding = _check_padding(padding, ctx)
        _check_input(source, n_axes, ctx)
        spatial = tuple(
            _spatial_out_size(size, (k - 1) * d + 1, s, self.padding, ctx)
            for size, k, s, d in zip(source.spatial, self.pool_size[1:], self.strides[1:], self.dilation[1:])
        )
        self.out_spec = source.copy(spatial=spatial)

    def _windows(self, x: torch.Tensor, value: float) -> torch.Tensor:
        """``[B, T', *spatial', F, *pool_size]``: the (padded) windows of ``x``."""
        x = _pad_input(x, self.pool_size, self.strides, self.dilation, self.padding, value)
        for axis, (k, s, d) in enumerate(zip(self.pool_size, self.strides, self.dilation)):
            x = x.unfold(1 + axis, (k - 1) * d + 1, s)[..., ::d]
        return x

    def forward(self, x: LayerOutput) -> LayerOutput:
        n = len(self.pool_size)
        window_axes = tuple(range(-n, 0))
        valid = x.mask().reshape(x.mask().shape + (1,) * (x.tensor.dim() - 2)).expand_as(x.tensor)
        valid_windows = self._windows(valid.to(x.tensor.dtype), 0.0)
        count = valid_windows.sum(dim=window_axes)
        if self.mode == "max":
            y = self._windows(x.masked(float("-inf")), float("-inf")).amax(dim=window_axes)
            y = y.masked_fill(count == 0, 0.0)  # windows without a valid frame (past the output lengths)
        else:
            y = self._windows(x.masked(0.0), 0.0).sum(dim=window_axes) / count.clamp(min=1.0)
        k_eff = (self.pool_size[0] - 1) * self.dilation[0] + 1
        lengths = _out_lengths(x.lengths, k_eff, self.strides[0], self.padding)
        return LayerOutput(y, lengths, self.out_spec)
