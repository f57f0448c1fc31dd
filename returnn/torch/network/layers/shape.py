"""Layers that change the axes of their input: reduce, slice, split_dims, merge_dims, window, time_chunking,
time_unchunking.

Axis names, as RETURNN writes them: ``"T"`` (``"t"``, ``"time"``), ``"F"`` (``"f"``, ``"feature"``), ``"spatial"`` (all
static axes between time and feature), ``"S:i"`` (the i-th of them), ``"static"`` and ``"except_time"`` (spatial and
feature), ``"except_batch"`` (all but the batch axis). The batch axis cannot be named.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec, LayerOutput, sequence_mask
from returnn.torch.network.layers.base import Layer, LayerContext, concat_outputs, concat_spec, register_layer

__all__ = ["ChunkedOutput", "ReduceLayer", "SliceLayer", "resolve_axes"]

_TIME_NAMES = ("T", "t", "time")
_FEATURE_NAMES = ("F", "f", "feature")


def resolve_axes(spec: DataSpec, axes: Any, ctx: LayerContext) -> list[int]:
    """The tensor axes (batch = 0) that ``axes`` (a name, see the module doc, or a list of names) means, sorted."""
    names = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    spatial = list(range(1 + int(spec.time), 1 + int(spec.time) + len(spec.spatial)))
    feature = [spec.ndim - 1] if spec.feature_axis else []
    time = [1] if spec.time else []
    resolved: set[int] = set()
    for name in names:
        if name in _TIME_NAMES:
            found = time
        elif name in _FEATURE_NAMES:
            found = feature
        elif name == "spatial":
            found = spatial
        elif isinstance(name, str) and name[:2] in ("S:", "s:") and name[2:].isdigit():
            index = int(name[2:])
            found = spatial[index : index + 1]
        elif name in ("static", "except_time"):
            found = spatial + feature
        elif name == "except_batch":
            found = time + spatial + feature
        else:
            raise ctx.error(
                f"axis {name!r}: choose one of: 'T', 'F', 'spatial', 'S:<i>', 'static', 'except_time', 'except_batch'"
                " (axes are named here, not numbered; the batch axis cannot be chosen)"
            )
        if not found:
            raise ctx.error(f"axis {name!r}: its input {spec.describe()} has no such axis")
        resolved.update(found)
    return sorted(resolved)


def _spec_without(spec: DataSpec, axes: list[int], keep_dims: bool) -> DataSpec:
    """``spec`` with the tensor ``axes`` removed (or, with ``keep_dims``, of size 1)."""
    first_spatial = 1 + int(spec.time)
    time = spec.time
    spatial = list(spec.spatial)
    dim = spec.dim
    for axis in sorted(axes, reverse=True):
        if spec.time and axis == 1:
            time = keep_dims
        elif spec.feature_axis and axis == spec.ndim - 1:
            dim = 1 if keep_dims else None
        elif keep_dims:
            spatial[axis - first_spatial] = 1
        else:
            del spatial[axis - first_spatial]
    return spec.copy(time=time, spatial=tuple(spatial), dim=dim)


def _time_mask(x: LayerOutput) -> torch.Tensor:
    """``[B, T, 1, ...]`` bool broadcastable to the tensor: True at the frames within the lengths."""
    mask = x.mask()
    return mask.reshape(mask.shape + (1,) * (x.tensor.dim() - 2))


_REDUCE_MODES = ("sum", "max", "min", "mean", "prod", "logsumexp")
# the value frames past the lengths take, so that they do not change the result
_NEUTRAL = {"sum": 0.0, "mean": 0.0, "max": float("-inf"), "min": float("inf"), "prod": 1.0, "logsumexp": float("-inf")}


@register_layer("reduce")
class ReduceLayer(Layer):
    """``mode`` (sum, max, min, mean, prod, logsumexp) over ``axes`` (or ``axis``); over the time axis only the
    frames within each sequence's length count. ``keep_dims`` keeps the reduced axes with size 1 (a kept time axis
    has length 1)."""

    def __init__(
        self, ctx: LayerContext, *, mode: str, axes: Any = None, axis: Any = None, keep_dims: bool = False
    ):  # fmt: skip
        super().__init__(ctx)
        source = ctx.single_source()
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in _REDUCE_MODES:
            raise ctx.error(f"mode {mode!r}: choose one of: {', '.join(_REDUCE_MODES)}")
        if (axes is None) == (axis is None):
            raise ctx.error("set exactly one of 'axes' and 'axis', e.g. 'axes': 'T'")
        if source.sparse:
            raise ctx.error(f"its input {source.describe()} is sparse; embed it first")
        self.mode = mode
        self.keep_dims = keep_dims
        self.axes = resolve_axes(source, axes if axes is not None else axis, ctx)
        self.reduces_time = source.time and 1 in self.axes
        self.out_spec = _spec_without(source, self.axes, keep_dims)

    def forward(self, x: LayerOutput) -> LayerOutput:
        tensor = x.masked(_NEUTRAL[self.mode]) if self.reduces_time else x.tensor
        axes, keep = tuple(self.axes), self.keep_dims
        if self.mode in ("sum", "mean"):
            y = tensor.sum(dim=axes, keepdim=keep)
            if self.mode == "mean":
                count = _time_mask(x).expand_as(tensor) if self.reduces_time else torch.ones_like(tensor)
                y = y / count.to(tensor.dtype).sum(dim=axes, keepdim=keep)
        elif self.mode == "max":
            y = tensor.amax(dim=axes, keepdim=keep)
        elif self.mode == "min":
            y = tensor.amin(dim=axes, keepdim=keep)
        elif self.mode == "logsumexp":
            y = torch.logsumexp(tensor, dim=axes, keepdim=keep)
        else:
            y = tensor
            for axis in reversed(axes):
                y = y.prod(dim=axis, keepdim=keep)
        lengths = x.lengths
        if self.reduces_time:
            lengths = torch.ones_like(x.lengths) if keep else None
        return LayerOutput(y, lengths, self.out_spec)


def _check_slice_args(start: Any, end: Any, step: Any, ctx: LayerContext) -> None:
    for key, value in (("slice_start", start), ("slice_end", end), ("slice_step", step)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ctx.error(f"{key} {value!r}: expected an int or None")
    if step is not None and step < 1:
        raise ctx.error(f"slice_step {step!r}: only positive steps are supported")


@register_layer("slice")
class SliceLayer(Layer):
    """``x[slice_start:slice_end:slice_step]`` on ``axis`` ``"T"`` or ``"F"``, with Python's meaning of negative
    indices; on the time axis each sequence is sliced within its own length (its new length is that of the slice)."""

    def __init__(
        self,
        ctx: LayerContext,
        *,
        axis: str,
        slice_start: int | None = None,
        slice_end: int | None = None,
        slice_step: int | None = None,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        _check_slice_args(slice_start, slice_end, slice_step, ctx)
        self.start, self.end, self.step = slice_start, slice_end, slice_step or 1
        if axis in _TIME_NAMES and source.time:
            self.on_time = True
            self.out_spec = source
        elif axis in _FEATURE_NAMES and source.feature_axis:
            self.on_time = False
            dim = len(range(source.dim)[slice(slice_start, slice_end, slice_step)])
            if dim == 0:
                raise ctx.error(f"slice {slice_start}:{slice_end}:{slice_step} of {source.dim} features is empty")
            self.out_spec = source.copy(dim=dim)
        else:
            raise ctx.error(f"axis {axis!r}: choose 'T' or 'F' (an axis that its input {source.describe()} has)")

    def _bound(self, value: int | None, default: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if value is None:
            return default
        if value >= 0:
            return lengths.clamp(max=value)
        return (lengths + value).clamp(min=0)

    def forward(self, x: LayerOutput) -> LayerOutput:
        if not self.on_time:
            return LayerOutput(x.tensor[..., self.start : self.end : self.step], x.lengths, self.out_spec)
        lengths = x.lengths
        start = self._bound(self.start, torch.zeros_like(lengths), lengths)
        end = self._bound(self.end, lengths, lengths)
        new_lengths = ((end - start + self.step - 1) // self.step).clamp(min=0)
        out_time = int(new_lengths.max()) if new_lengths.numel() else 0
        positions = start[:, None] + torch.arange(out_time, device=lengths.device)[None, :] * self.step
        positions = positions.clamp(min=0, max=max(x.tensor.shape[1] - 1, 0))
        index = positions.reshape(positions.shape + (1,) * (x.tensor.dim() - 2))
        index = index.expand(-1, -1, *x.tensor.shape[2:])
        return LayerOutput(x.tensor.gather(1, index), new_lengths, self.out_spec)


@register_layer("split_dims")
class SplitDimsLayer(Layer):
    """The feature axis split into ``dims`` (one may be -1, inferred): the last becomes the feature axis, the others
    spatial axes, e.g. ``[B,T,12]`` with ``dims = (3, 4)`` is ``[B,T,3,F=4]``."""

    def __init__(self, ctx: LayerContext, *, axis: str, dims: Any):
        super().__init__(ctx)
        source = ctx.single_source()
        if axis not in _FEATURE_NAMES:
            raise ctx.error(f"axis {axis!r}: only the feature axis ('F') can be split here")
        if not source.feature_axis:
            raise ctx.error(f"its input {source.describe()} has no feature axis")
        if (
            not isinstance(dims, (list, tuple))
            or not dims
            or not all(isinstance(d, int) and (d > 0 or d == -1) for d in dims)
            or list(dims).count(-1) > 1
        ):
            raise ctx.error(f"dims {dims!r}: expected a tuple of positive ints (one may be -1), e.g. (2, 3)")
        known = math.prod(d for d in dims if d != -1)
        if source.dim % known or (-1 not in dims and known != source.dim):
            raise ctx.error(f"dims {tuple(dims)} do not split the feature dim {source.dim}")
        self.dims = tuple(source.dim // known if d == -1 else d for d in dims)
        self.out_spec = source.copy(spatial=source.spatial + self.dims[:-1], dim=self.dims[-1])

    def forward(self, x: LayerOutput) -> LayerOutput:
        y = x.tensor.reshape(*x.tensor.shape[:-1], *self.dims)
        return LayerOutput(y, x.lengths, self.out_spec)


@register_layer("merge_dims", "combine_dims")
class MergeDimsLayer(Layer):
    """Axes merged into one, in order: the spatial axes with the feature axis (``"static"``, ``"except_time"``, or
    ``"except_batch"`` on data without time) into the feature axis, or neighbouring spatial axes into one spatial
    axis. The time axis cannot be merged here (its lengths differ per sequence)."""

    def __init__(self, ctx: LayerContext, *, axes: Any, keep_order: bool = True, n_out: int | None = None):
        super().__init__(ctx)
        source = ctx.single_source()
        if keep_order is not True:
            raise ctx.error("keep_order=False is not supported; the axes are always merged in their order")
        resolved = resolve_axes(source, axes, ctx)
        if source.time and 1 in resolved:
            raise ctx.error(
                f"axes {axes!r} include the time axis of {source.describe()}, which cannot be merged here; "
                "merge the static axes ('static') or chunk/window the time axis instead"
            )
        if resolved != list(range(resolved[0], resolved[-1] + 1)):
            raise ctx.error(f"axes {axes!r} are not neighbours in {source.describe()}")
        self.first, self.last = resolved[0], resolved[-1]
        first_spatial = 1 + int(source.time)
        sizes = list(source.spatial) + ([source.dim] if source.feature_axis else [])
        merged = math.prod(sizes[self.first - first_spatial : self.last - first_spatial + 1])
        spatial = list(source.spatial)
        if source.feature_axis and self.last == source.ndim - 1:
            self.out_spec = source.copy(spatial=tuple(spatial[: self.first - first_spatial]), dim=merged)
        else:
            spatial[self.first - first_spatial : self.last - first_spatial + 1] = [merged]
            self.out_spec = source.copy(spatial=tuple(spatial))

    def forward(self, x: LayerOutput) -> LayerOutput:
        y = x.tensor.flatten(self.first, self.last)
        return LayerOutput(y, x.lengths, self.out_spec)


@register_layer("window")
class WindowLayer(Layer):
    """For every frame, the window of ``window_size`` frames around it, as a new spatial axis after time:
    ``[B,T,F]`` gives ``[B,T,window_size,F]``. ``padding = "same"``: ``window_left`` frames before and
    ``window_right`` after each frame (default: centered, ``window_right = window_size // 2``), frames past the
    lengths and outside the sequence are zeros; ``"valid"``: only the frames whose window lies within the sequence,
    ``T - window_size + 1``. ``stride`` keeps every stride-th frame."""

    def __init__(
        self,
        ctx: LayerContext,
        *,
        window_size: int,
        window_left: int | None = None,
        window_right: int | None = None,
        axis: str = "T",
        padding: str = "same",
        stride: int = 1,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        if axis not in _TIME_NAMES:
            raise ctx.error(f"axis {axis!r}: only the time axis ('T') is supported")
        if not source.time:
            raise ctx.error(f"its input {source.describe()} has no time axis")
        for key, value in (("window_size", window_size), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ctx.error(f"{key} {value!r}: expected a positive int")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("same", "valid"):
            raise ctx.error(f"padding {padding!r}: choose one of: 'same', 'valid'")
        if padding == "valid":
            if window_left is not None or window_right is not None:
                raise ctx.error("window_left/window_right need padding 'same'")
            window_left = window_right = 0
            self.pad = (0, 0)
        else:
            if window_left is None and window_right is None:
                window_right = window_size // 2
            if window_left is None:
                window_left = window_size - window_right - 1
            if window_right is None:
                window_right = window_size - window_left - 1
            if window_left < 0 or window_right < 0 or window_left + window_right + 1 != window_size:
                raise ctx.error(
                    f"window_left={window_left} + window_right={window_right} + 1 must equal window_size={window_size}"
                )
            self.pad = (window_left, window_right)
        self.window_size, self.stride, self.padding = window_size, stride, padding
        self.out_spec = source.copy(spatial=(window_size, *source.spatial))

    def forward(self, x: LayerOutput) -> LayerOutput:
        tensor = x.masked(0.0)
        time = tensor.shape[1]
        right = self.pad[1] + max(self.window_size - time, 0)  # a short valid input: one window, of length 0
        padded = torch.cat(
            [tensor.new_zeros(tensor.shape[0], self.pad[0], *tensor.shape[2:]), tensor,
             tensor.new_zeros(tensor.shape[0], right, *tensor.shape[2:])], dim=1,
        )  # fmt: skip
        windows = padded.unfold(1, self.window_size, 1).movedim(-1, 2)[:, :: self.stride]
        if self.padding == "same":
            windows = windows[:, : math.ceil(time / self.stride)]
            lengths = (x.lengths + self.stride - 1) // self.stride
        else:
            lengths = ((x.lengths - self.window_size) // self.stride + 1).clamp(min=0)
        return LayerOutput(windows, lengths, self.out_spec)


@dataclasses.dataclass
class ChunkedOutput(LayerOutput):
    """The output of ``time_chunking``: chunks in the batch axis, and what ``time_unchunking`` needs to undo it.

    :param unchunked_lengths: ``[B]`` the lengths of the input sequences
    :param unchunked_time: the time axis size of the input
    """

    unchunked_lengths: torch.Tensor | None = None
    unchunked_time: int = 0


def _n_chunks(time: int, chunk_size: int, chunk_step: int) -> int:
    return max(time - chunk_size + chunk_step - 1, 0) // chunk_step + 1


def _check_chunking(chunk_size: Any, chunk_step: Any, ctx: LayerContext) -> None:
    for key, value in (("chunk_size", chunk_size), ("chunk_step", chunk_step)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ctx.error(f"{key} {value!r}: expected a positive int")
    if chunk_step > chunk_size:
        raise ctx.error(f"chunk_step {chunk_step} > chunk_size {chunk_size} would skip frames")


@register_layer("time_chunking")
class TimeChunkingLayer(Layer):
    """The time axis cut into chunks of ``chunk_size`` frames starting every ``chunk_step`` frames, the chunks moved
    into the batch axis: ``[B,T,F]`` gives ``[B*n_chunks, chunk_size, F]``, chunk ``i`` of sequence ``b`` at batch
    index ``b*n_chunks + i`` (as RETURNN's native op), with ``n_chunks`` from the batch's time axis. A chunk past a
    sequence's end has length 0."""

    def __init__(self, ctx: LayerContext, *, chunk_size: int, chunk_step: int):
        super().__init__(ctx)
        source = ctx.single_source()
        _check_chunking(chunk_size, chunk_step, ctx)
        if not source.time:
            raise ctx.error(f"its input {source.describe()} has no time axis")
        self.chunk_size, self.chunk_step = chunk_size, chunk_step
        self.out_spec = source

    def forward(self, x: LayerOutput) -> ChunkedOutput:
        batch, time = x.tensor.shape[:2]
        n_chunks = _n_chunks(time, self.chunk_size, self.chunk_step)
        padded_time = (n_chunks - 1) * self.chunk_step + self.chunk_size
        tensor = x.masked(0.0)
        tensor = torch.cat([tensor, tensor.new_zeros(batch, padded_time - time, *tensor.shape[2:])], dim=1)
        chunks = tensor.unfold(1, self.chunk_size, self.chunk_step).movedim(-1, 2)  # [B, n_chunks, size, ...]
        chunks = chunks.reshape(batch * n_chunks, self.chunk_size, *tensor.shape[2:])
        starts = torch.arange(n_chunks, device=x.lengths.device)[None, :] * self.chunk_step
        lengths = (x.lengths[:, None] - starts).clamp(min=0, max=self.chunk_size).reshape(-1)
        return ChunkedOutput(chunks, lengths, self.out_spec, unchunked_lengths=x.lengths, unchunked_time=time)


@register_layer("time_unchunking")
class TimeUnChunkingLayer(Layer):
    """The inverse of ``time_chunking`` (``chunking_layer`` names it): ``[B*n_chunks, chunk_size, F]`` back to
    ``[B,T,F]`` with the lengths of the chunking layer's input; frames that several chunks cover are averaged."""

    concat_sources = False

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """The chunking layer, appended to the sources (its output tells the batch and lengths to restore)."""
        chunking_layer = options.get("chunking_layer")
        return [chunking_layer] if isinstance(chunking_layer, str) else []

    def __init__(self, ctx: LayerContext, *, chunking_layer: str):
        super().__init__(ctx)
        if not isinstance(chunking_layer, str):
            raise ctx.error(f"chunking_layer {chunking_layer!r}: expected the name of a 'time_chunking' layer")
        entry = ctx.builder.entries.get(chunking_layer) if ctx.builder is not None else None
        chunking = entry.module if entry is not None else None
        if not isinstance(chunking, TimeChunkingLayer):
            raise ctx.error(f"chunking_layer {chunking_layer!r} is not a 'time_chunking' layer")
        if len(ctx.sources) < 2:
            raise ctx.error("needs a source: set 'from' (the processed chunks)")
        source = concat_spec(ctx.sources[:-1], ctx)
        if not source.time:
            raise ctx.error(f"its input {source.describe()} has no time axis")
        self.chunking_layer = chunking_layer
        self.chunk_size, self.chunk_step = chunking.chunk_size, chunking.chunk_step
        self.out_spec = source

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        *inputs, chunked = sources
        if not isinstance(chunked, ChunkedOutput):
            raise ConfigError(
                f"network: layer {self.ctx_name!r}: the output of its chunking_layer {self.chunking_layer!r} lost its "
                "chunking (dropout on this layer replaces it); put the dropout on the layer before"
            )
        x = concat_outputs(inputs)
        batch, time = chunked.unchunked_lengths.shape[0], chunked.unchunked_time
        n_chunks = x.tensor.shape[0] // batch
        size = x.tensor.shape[1]
        mask = sequence_mask(chunked.lengths, size).to(x.tensor.dtype)
        mask = mask.reshape(mask.shape + (1,) * (x.tensor.dim() - 2))
        chunks = (x.tensor * mask).reshape(batch, n_chunks, *x.tensor.shape[1:])
        counts = mask.reshape(batch, n_chunks, *mask.shape[1:])
        padded_time = max((n_chunks - 1) * self.chunk_step + size, time)
        total = x.tensor.new_zeros(batch, padded_time, *x.tensor.shape[2:])
        count = x.tensor.new_zeros(batch, padded_time, *mask.shape[2:])
        for i in range(n_chunks):
            start = i * self.chunk_step
            total[:, start : start + size] += chunks[:, i]
            count[:, start : start + size] += counts[:, i]
        y = (total / count.clamp(min=1.0))[:, :time]
        return LayerOutput(y, chunked.unchunked_lengths, self.out_spec)
