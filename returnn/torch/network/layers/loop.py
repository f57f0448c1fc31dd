"""Layers of recurrent units (``"class": "rec"`` with a ``unit`` dict): ``rnn_cell``, ``choice``, ``compare``,
``cumsum``, ``gather``, ``reduce_out``, ``decide``; and the time-axis helpers ``prefix_in_time`` and
``postfix_in_time``.

Inside a unit a layer sees one time step: ``[B, F]`` (no time axis). Layers with a state over the steps
(``rnn_cell``, ``cumsum``) implement :meth:`StatefulLayer.step` for the loop and :meth:`StatefulLayer.sequence` for
when the unit runs them over the whole sequence at once (their inputs do not depend on the loop).
"""

from __future__ import annotations

from typing import Any

import torch

from returnn.torch.network.data import DataSpec, LayerOutput, sequence_mask
from returnn.torch.network.layers.base import Layer, LayerContext, register_layer
from returnn.torch.network.layers.rec import RNN_UNITS, RecLayer

__all__ = ["StatefulLayer", "RnnCellLayer", "ChoiceLayer", "CumsumLayer"]


class StatefulLayer(Layer):
    """A layer with a state carried from step to step."""

    def initial_state(self, batch: int, like: torch.Tensor) -> Any:
        """The state before the first step."""
        raise NotImplementedError

    def step(self, x: LayerOutput, state: Any) -> tuple[LayerOutput, Any]:
        """One step: the output and the new state."""
        raise NotImplementedError

    def sequence(self, x: LayerOutput) -> LayerOutput:
        """All steps at once on ``x`` ``[B, T, ...]`` (with its lengths)."""
        raise NotImplementedError

    def forward(self, x: LayerOutput) -> LayerOutput:
        return self.sequence(x) if x.spec.time else self.step(x, self.initial_state(x.tensor.shape[0], x.tensor))[0]


@register_layer("rnn_cell")
class RnnCellLayer(RecLayer, StatefulLayer):
    """A recurrent cell (LSTM, GRU or tanh RNN: the ``unit`` names of the ``rec`` layer) run one step at a time;
    its state is the previous step's. Parameters as the ``rec`` layer's: ``W``, ``W_re``, ``b``."""

    def __init__(
        self,
        ctx: LayerContext,
        *,
        unit: str = "lstm",
        n_out: int | None = None,
        unit_opts: dict[str, Any] | None = None,
        forward_weights_init: Any = "glorot_uniform",
        recurrent_weights_init: Any = "glorot_uniform",
        bias_init: Any = 0.0,
        initial_state: Any = None,
    ):
        if isinstance(unit, dict) or str(unit).lower() not in RNN_UNITS:
            raise ctx.error(
                f"unknown rnn_cell unit {unit!r}; choose an LSTM ('lstm', 'LSTMBlock', ...), 'gru' or 'rnn'"
            )
        source = ctx.single_source()
        # the parameters of a rec layer over time: outside the loop the cell runs as one
        over_time = LayerContext(name=ctx.name, sources=[source.copy(time=True)], target=ctx.target, loss=ctx.loss)
        super().__init__(
            over_time,
            unit=unit,
            n_out=n_out,
            unit_opts=unit_opts,
            forward_weights_init=forward_weights_init,
            recurrent_weights_init=recurrent_weights_init,
            bias_init=bias_init,
            initial_state=initial_state,
        )
        self.out_spec = source.copy(dim=self.n_out)

    def forward(self, x: LayerOutput) -> LayerOutput:
        return StatefulLayer.forward(self, x)

    def initial_state(self, batch: int, like: torch.Tensor) -> Any:
        zeros = like.new_zeros(batch, self.n_out)
        return (zeros, zeros) if self.kind == "lstm" else zeros

    def step(self, x: LayerOutput, state: Any) -> tuple[LayerOutput, Any]:
        zero = self.zero_bias.to(x.tensor.dtype)
        if self.kind == "lstm":
            h, c = torch.lstm_cell(x.tensor, state, self.W, self.W_re, self.b, zero)
            return LayerOutput(h, None, self.out_spec), (h, c)
        function = torch.gru_cell if self.kind == "gru" else torch.rnn_tanh_cell
        h = function(x.tensor, state, self.W, self.W_re, self.b, zero)
        return LayerOutput(h, None, self.out_spec), h

    def sequence(self, x: LayerOutput) -> LayerOutput:
        out = RecLayer.forward(self, x)
        return LayerOutput(out.tensor, out.lengths, self.out_spec.copy(time=True))


@register_layer("cumsum")
class CumsumLayer(StatefulLayer):
    """The running sum over the time steps (inside a unit: the previous step's sum plus this step's input)."""

    def __init__(self, ctx: LayerContext, *, axis: str = "T", initial_output: Any = None):
        super().__init__(ctx)
        if axis not in ("T", "t", "time"):
            raise ctx.error(f"axis {axis!r}: only the time axis is supported")
        self.out_spec = ctx.single_source()

    def initial_state(self, batch: int, like: torch.Tensor) -> Any:
        return None

    def step(self, x: LayerOutput, state: Any) -> tuple[LayerOutput, Any]:
        total = x.tensor if state is None else state + x.tensor
        return LayerOutput(total, None, self.out_spec), total

    def sequence(self, x: LayerOutput) -> LayerOutput:
        tensor = x.masked() if x.lengths is not None else x.tensor
        return LayerOutput(torch.cumsum(tensor, dim=1), x.lengths, x.spec)


@register_layer("choice")
class ChoiceLayer(Layer):
    """The label of each step: in training the target (teacher forcing), in search the beam's choices from the
    probabilities of ``from`` (see :mod:`returnn.torch.network.search`)."""

    concat_sources = False

    def __init__(
        self,
        ctx: LayerContext,
        *,
        beam_size: int = 1,
        input_type: str = "prob",
        length_normalization: bool = True,
        explicit_search_source: str | None = None,
        scheduled_sampling: Any = False,
        cheating: Any = False,
    ):
        super().__init__(ctx)
        if ctx.target is None or not ctx.target.sparse:
            raise ctx.error("a choice layer needs 'target': the data key of its labels (sparse)")
        if input_type not in ("prob", "log_prob", "regression"):
            raise ctx.error(f"input_type {input_type!r}: choose 'prob' or 'log_prob'")
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ctx.error(f"beam_size must be an int >= 1, got {beam_size!r}")
        self.beam_size = beam_size
        self.input_type = input_type
        self.length_normalization = length_normalization
        self.out_spec = ctx.target.copy(time=False)

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """The target (training gives it as the label of each step)."""
        return [f"data:{options.get('target', default_target)}"]

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        # training: the last source is this step's target
        target = sources[-1]
        return LayerOutput(target.tensor, None, self.out_spec)


_COMPARE = {
    "equal": torch.eq,
    "not_equal": torch.ne,
    "less": torch.lt,
    "less_equal": torch.le,
    "greater": torch.gt,
    "greater_equal": torch.ge,
}


@register_layer("compare")
class CompareLayer(Layer):
    """``kind`` (equal, not_equal, less, less_equal, greater, greater_equal) of the source and ``value`` (or of two
    sources), a bool per element."""

    concat_sources = False

    def __init__(self, ctx: LayerContext, *, kind: str = "equal", value: float | int | None = None):
        super().__init__(ctx)
        if kind not in _COMPARE:
            raise ctx.error(f"unknown compare kind {kind!r}; choose one of: {', '.join(_COMPARE)}")
        if len(ctx.sources) + (value is not None) != 2:
            raise ctx.error("compares two things: one source and 'value', or two sources")
        self.kind = kind
        self.value = value
        first = ctx.sources[0]
        self.out_spec = first.copy(sparse=False, dim=first.dim if first.feature_axis else None, dtype="bool")

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        a = sources[0].tensor
        b = sources[1].tensor if len(sources) > 1 else torch.as_tensor(self.value, device=a.device)
        return LayerOutput(_COMPARE[self.kind](a, b), sources[0].lengths, self.out_spec)


@register_layer("reduce_out")
class ReduceOutLayer(Layer):
    """Maxout: the feature axis in groups of ``num_pieces``, reduced by ``mode`` (max, sum, mean)."""

    def __init__(self, ctx: LayerContext, *, mode: str = "max", num_pieces: int):
        super().__init__(ctx)
        source = ctx.single_source()
        if mode not in ("max", "sum", "mean"):
            raise ctx.error(f"mode {mode!r}: choose 'max', 'sum' or 'mean'")
        if not source.feature_axis or source.dim % num_pieces:
            raise ctx.error(f"the feature dim {source.dim} is not a multiple of num_pieces={num_pieces}")
        self.mode, self.num_pieces = mode, num_pieces
        self.out_spec = source.copy(dim=source.dim // num_pieces)

    def forward(self, x: LayerOutput) -> LayerOutput:
        pieces = x.tensor.reshape(*x.tensor.shape[:-1], self.out_spec.dim, self.num_pieces)
        reduced = {"max": lambda p: p.max(dim=-1).values, "sum": lambda p: p.sum(-1), "mean": lambda p: p.mean(-1)}
        return LayerOutput(reduced[self.mode](pieces), x.lengths, self.out_spec)


@register_layer("gather")
class GatherLayer(Layer):
    """``from`` indexed on ``axis`` at ``position`` (a layer of int indices, one per sequence or per frame)."""

    concat_sources = False

    def __init__(self, ctx: LayerContext, *, position: str | int, axis: str = "T"):
        super().__init__(ctx)
        if axis not in ("T", "t", "time"):
            raise ctx.error(f"axis {axis!r}: only the time axis is supported")
        source = ctx.sources[0]
        if not source.time:
            raise ctx.error(f"its source {source.describe()} has no time axis to gather from")
        self.constant = position if isinstance(position, int) else None
        positions = ctx.sources[1] if self.constant is None else DataSpec(dim=None, time=False)
        self.out_spec = source.copy(time=positions.time)

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        position = options.get("position")
        return [position] if isinstance(position, str) else []

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        x = sources[0]
        batch = x.tensor.shape[0]
        if self.constant is not None:
            index = torch.full((batch,), self.constant, dtype=torch.int64, device=x.tensor.device)
            lengths = None
        else:
            index, lengths = sources[1].tensor.long(), sources[1].lengths
        index = index.clamp(0, x.tensor.shape[1] - 1)
        flat = index.reshape(batch, -1)  # [B, N]
        gathered = x.tensor[torch.arange(batch, device=x.tensor.device)[:, None], flat]  # [B, N, ...]
        return LayerOutput(gathered.reshape(*index.shape, *x.tensor.shape[2:]), lengths, self.out_spec)


@register_layer("decide")
class DecideLayer(Layer):
    """The best hypothesis of a beam (search); in training the source unchanged."""

    def __init__(self, ctx: LayerContext, *, length_normalization: bool = True):
        super().__init__(ctx)
        self.out_spec = ctx.single_source()

    def forward(self, x: LayerOutput) -> LayerOutput:
        return LayerOutput(x.tensor, x.lengths, self.out_spec)


class _InTimeLayer(Layer):
    def __init__(self, ctx: LayerContext, *, prefix: float | int = 0.0, postfix: float | int = 0.0, repeat: int = 1):
        super().__init__(ctx)
        source = ctx.single_source()
        if not source.time:
            raise ctx.error(f"its source {source.describe()} has no time axis")
        if not isinstance(repeat, int) or repeat < 0:
            raise ctx.error(f"repeat must be an int >= 0, got {repeat!r}")
        self.repeat = repeat
        self.value = prefix if self.layer_class == "prefix_in_time" else postfix
        self.out_spec = source


@register_layer("prefix_in_time")
class PrefixInTimeLayer(_InTimeLayer):
    """``repeat`` frames of ``prefix`` before every sequence (lengths + repeat)."""

    def forward(self, x: LayerOutput) -> LayerOutput:
        pad = x.tensor.new_full((x.tensor.shape[0], self.repeat, *x.tensor.shape[2:]), self.value)
        return LayerOutput(torch.cat([pad, x.tensor], dim=1), x.lengths + self.repeat, self.out_spec)


@register_layer("postfix_in_time")
class PostfixInTimeLayer(_InTimeLayer):
    """``repeat`` frames of ``postfix`` after the end of every sequence (lengths + repeat)."""

    def forward(self, x: LayerOutput) -> LayerOutput:
        batch, time = x.tensor.shape[:2]
        out = x.tensor.new_full((batch, time + self.repeat, *x.tensor.shape[2:]), self.value)
        mask = sequence_mask(x.lengths, time)
        out[:, :time][mask] = x.tensor[mask]
        return LayerOutput(out, x.lengths + self.repeat, self.out_spec)
