"""Feed-forward layers: linear, softmax, copy, activation, dropout, combine, constant, length, reinterpret_data,
source, eval."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from returnn.torch.network.activations import get_activation
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, register_layer

__all__ = ["LinearLayer", "SoftmaxLayer", "CombineLayer", "EvalLayer", "broadcast_outputs"]


@register_layer("linear")
class LinearLayer(Layer):
    """``activation(x W + b)`` on the feature axis; on sparse input an embedding (row lookup in ``W``).

    Parameters: ``W`` ``[n_in, n_out]`` and ``b`` ``[n_out]``, as in RETURNN.
    """

    default_activation: str | None = None

    def __init__(
        self,
        ctx: LayerContext,
        *,
        n_out: int | None = None,
        activation: str | None = "<default>",
        with_bias: bool = True,
        forward_weights_init: Any = "glorot_uniform",
        bias_init: Any = 0.0,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        n_out = ctx.default_n_out(n_out)
        if source.dim is None:
            raise ctx.error(f"its input {source.describe()} has no feature axis to transform")
        self.sparse_input = source.sparse
        self.activation_name = self.default_activation if activation == "<default>" else activation
        self.activation = get_activation(self.activation_name, ctx.where)
        where = ctx.where
        self.W = self.add_param(
            "W", (source.dim, n_out), forward_weights_init, fan_in=source.dim, fan_out=n_out, where=f"{where}: W"
        )
        self.b = (
            self.add_param("b", (n_out,), bias_init, fan_in=source.dim, fan_out=n_out, where=f"{where}: b")
            if with_bias
            else None
        )
        self.out_spec = source.copy(dim=n_out, sparse=False, dtype="float32")

    def forward(self, x: LayerOutput) -> LayerOutput:
        if self.sparse_input:
            y = F.embedding(x.tensor.long(), self.W)
            if self.b is not None:
                y = y + self.b
        else:
            y = F.linear(x.tensor, self.W.t(), self.b)
        out = y if self.activation is None else self.activation(y)
        return LayerOutput(out, x.lengths, self.out_spec, pre_activation=y)


@register_layer("softmax")
class SoftmaxLayer(LinearLayer):
    """A linear layer with ``activation = "softmax"`` (the losses use its logits)."""

    default_activation = "softmax"


@register_layer("copy")
class CopyLayer(Layer):
    """The (concatenated) sources unchanged."""

    def __init__(self, ctx: LayerContext):
        super().__init__(ctx)
        self.out_spec = ctx.single_source()

    def forward(self, x: LayerOutput) -> LayerOutput:
        return LayerOutput(x.tensor, x.lengths, self.out_spec)


@register_layer("dropout")
class DropoutLayer(CopyLayer):
    """The sources with dropout (the common ``dropout`` option; the layer itself copies)."""


@register_layer("activation")
class ActivationLayer(Layer):
    """``activation(x)``."""

    def __init__(self, ctx: LayerContext, *, activation: str | None):
        super().__init__(ctx)
        self.out_spec = ctx.single_source()
        self.activation_name = activation
        self.activation = get_activation(activation, ctx.where)

    def forward(self, x: LayerOutput) -> LayerOutput:
        y = x.tensor if self.activation is None else self.activation(x.tensor)
        return LayerOutput(y, x.lengths, self.out_spec, pre_activation=x.tensor)


def _broadcast_spec(specs: list[DataSpec], ctx: LayerContext) -> DataSpec:
    """The spec that all ``specs`` broadcast to (the one with the most axes; feature dims must agree or be 1)."""
    widest = max(specs, key=lambda s: s.ndim)
    for spec in specs:
        if spec.time and not widest.time:
            raise ctx.error(f"sources cannot be broadcast: {', '.join(s.describe() for s in specs)}")
        if spec.feature_axis and widest.feature_axis and spec.dim not in (widest.dim, 1):
            raise ctx.error(
                f"feature dims of the sources differ: {', '.join(s.describe() for s in specs)}; "
                "make them equal (e.g. with a linear layer)"
            )
        if spec.spatial and spec.spatial != widest.spatial:
            raise ctx.error(f"spatial axes of the sources differ: {', '.join(s.describe() for s in specs)}")
    return widest.copy(sparse=widest.sparse and all(s.sparse for s in specs))


def broadcast_outputs(outputs: list[LayerOutput], spec: DataSpec) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The tensors of ``outputs`` with axes inserted so that they broadcast to ``spec``; and the lengths."""
    tensors, lengths = [], None
    for out in outputs:
        t = out.tensor
        if spec.time and not out.spec.time and t.dim() >= 1:
            t = t.unsqueeze(1)
        if spec.feature_axis and not out.spec.feature_axis:
            t = t.unsqueeze(-1)
        while t.dim() < spec.ndim:  # missing spatial axes
            t = t.unsqueeze(-2)
        tensors.append(t)
        if lengths is None and out.lengths is not None:
            lengths = out.lengths
    return tensors, lengths


_COMBINE_KINDS = {
    "add": lambda ts: _fold(torch.add, ts),
    "sub": lambda ts: _fold(torch.sub, ts),
    "mul": lambda ts: _fold(torch.mul, ts),
    "truediv": lambda ts: _fold(torch.true_divide, ts),
    "maximum": lambda ts: _fold(torch.maximum, ts),
    "minimum": lambda ts: _fold(torch.minimum, ts),
    "average": lambda ts: _fold(torch.add, ts) / len(ts),
    "logical_and": lambda ts: _fold(torch.logical_and, ts),
    "logical_or": lambda ts: _fold(torch.logical_or, ts),
}


def _fold(op, tensors: list[torch.Tensor]) -> torch.Tensor:
    result = tensors[0]
    for t in tensors[1:]:
        result = op(result, t)
    return result


@register_layer("combine")
class CombineLayer(Layer):
    """Element-wise ``kind`` (add, sub, mul, truediv, maximum, minimum, average) of the sources, broadcast."""

    concat_sources = False

    def __init__(self, ctx: LayerContext, *, kind: str, activation: str | None = None, with_bias: bool = False):
        super().__init__(ctx)
        if kind not in _COMBINE_KINDS:
            raise ctx.error(f"unknown combine kind {kind!r}; choose one of: {', '.join(_COMBINE_KINDS)}")
        if not ctx.sources:
            raise ctx.error("needs sources in 'from'")
        self.kind = kind
        self.out_spec = _broadcast_spec(ctx.sources, ctx)
        self.activation_name = activation
        self.activation = get_activation(activation, ctx.where)
        self.b = (
            self.add_param("b", (self.out_spec.dim,), 0.0, fan_in=1, fan_out=1, where=f"{ctx.where}: b")
            if with_bias
            else None
        )

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        tensors, lengths = broadcast_outputs(sources, self.out_spec)
        y = _COMBINE_KINDS[self.kind](tensors)
        if self.b is not None:
            y = y + self.b
        out = y if self.activation is None else self.activation(y)
        return LayerOutput(out, lengths, self.out_spec, pre_activation=y)


@register_layer("eval")
class EvalLayer(Layer):
    """A Python expression over ``source(i)`` (the i-th source's tensor), with ``torch`` in scope.

    The output has the first source's spec unless ``out_type`` says otherwise.
    """

    concat_sources = False

    def __init__(self, ctx: LayerContext, *, eval: str, out_type: dict[str, Any] | None = None):
        super().__init__(ctx)
        if not isinstance(eval, str):
            raise ctx.error(f"'eval' must be a Python expression string, got {eval!r}")
        if "tf." in eval or "tf_util" in eval:
            raise ctx.error(f"'eval' is TensorFlow code ({eval!r}); write it with torch, e.g. 'torch.relu(source(0))'")
        try:
            self.code = compile(eval, f"<eval layer {ctx.name!r}>", "eval")
        except SyntaxError as exc:
            raise ctx.error(f"'eval' is not a valid Python expression: {exc.msg} in {eval!r}") from exc
        self.expression = eval
        base = _broadcast_spec(ctx.sources, ctx) if ctx.sources else DataSpec(dim=None, time=False)
        self.out_spec = base.copy(**_out_type_fields(out_type or {}))

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        tensors, lengths = broadcast_outputs(sources, self.out_spec) if sources else ([], None)
        scope = {"torch": torch, "F": F, "source": lambda i, **_: tensors[i]}
        return LayerOutput(eval(self.code, scope), lengths, self.out_spec)


def _out_type_fields(out_type: dict[str, Any]) -> dict[str, Any]:
    fields = {}
    if "dim" in out_type:
        fields["dim"] = out_type["dim"]
    if "sparse" in out_type:
        fields["sparse"] = bool(out_type["sparse"])
    if "dtype" in out_type:
        fields["dtype"] = out_type["dtype"]
    if "time_dim_axis" in out_type and out_type["time_dim_axis"] is None:
        fields["time"] = False
    return fields


@register_layer("constant")
class ConstantLayer(Layer):
    """A constant ``value`` (a number), broadcast over the batch."""

    concat_sources = False

    def __init__(self, ctx: LayerContext, *, value: float | int | bool = 0.0, dtype: str | None = None):
        super().__init__(ctx)
        if ctx.sources:
            raise ctx.error("takes no sources; set 'from': []")
        if dtype is None:
            dtype = "bool" if isinstance(value, bool) else "int32" if isinstance(value, int) else "float32"
        self.out_spec = DataSpec(dim=None, time=False, dtype=dtype)
        self.register_buffer("value", torch.tensor([value], dtype=getattr(torch, dtype)), persistent=False)

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        return LayerOutput(self.value, None, self.out_spec)


@register_layer("length")
class LengthLayer(Layer):
    """The sequence lengths of the source, ``[B]`` int64."""

    def __init__(self, ctx: LayerContext, *, axis: str = "T"):
        super().__init__(ctx)
        if axis not in ("T", "t", "time"):
            raise ctx.error(f"axis {axis!r}: only the time axis ('T') has lengths here")
        if not ctx.single_source().time:
            raise ctx.error("its source has no time axis")
        self.out_spec = DataSpec(dim=None, time=False, dtype="int64")

    def forward(self, x: LayerOutput) -> LayerOutput:
        return LayerOutput(x.lengths, None, self.out_spec)


@register_layer("reinterpret_data")
class ReinterpretDataLayer(Layer):
    """The source unchanged, with its description changed: ``set_sparse``, ``set_sparse_dim``,
    ``increase_sparse_dim``. Axis options (``enforce_batch_major``, ``set_axes``, ...) change nothing here: the data
    is always batch-major."""

    def __init__(
        self,
        ctx: LayerContext,
        *,
        set_sparse: bool | None = None,
        set_sparse_dim: int | None = None,
        increase_sparse_dim: int | None = None,
        enforce_batch_major: bool = False,
        enforce_time_major: bool = False,
        set_axes: dict[str, Any] | None = None,
        size_base: str | None = None,
        set_dim_tags: dict[str, Any] | None = None,
    ):
        super().__init__(ctx)
        spec = ctx.single_source()
        if set_sparse is not None:
            if set_sparse and spec.feature_axis:
                raise ctx.error(f"set_sparse=True on dense data {spec.describe()}")
            spec = spec.copy(sparse=set_sparse)
        if set_sparse_dim is not None:
            spec = spec.copy(dim=set_sparse_dim)
        if increase_sparse_dim is not None:
            spec = spec.copy(dim=(spec.dim or 0) + increase_sparse_dim)
        self.out_spec = spec

    def forward(self, x: LayerOutput) -> LayerOutput:
        return LayerOutput(x.tensor, x.lengths, self.out_spec)


@register_layer("source")
class SourceLayer(CopyLayer):
    """A data key of the input (``data_key``, default ``"data"``); the construction reads it as ``from``."""

    @staticmethod
    def sources_from_options(options: dict[str, Any]) -> list[str]:
        """``from`` of a source layer: its data key."""
        return [f"data:{options.pop('data_key', 'data')}"]
