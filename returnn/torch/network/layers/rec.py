"""The ``rec`` layer with a cell unit: LSTM (all of RETURNN's LSTM implementations), GRU and plain tanh RNN over
time, forward (``direction = 1``) or backward (``direction = -1``).

The backward direction reads each sequence reversed within its own length, so the result of a sequence never
depends on the padding of its batch. Parameters, in torch's gate layout (LSTM: input, forget, cell, output; GRU:
reset, update, new): ``W`` ``[gates * n_out, n_in]``, ``W_re`` ``[gates * n_out, n_out]``, ``b`` ``[gates * n_out]``.
A ``unit`` dict of layers makes a recurrent unit instead (:mod:`returnn.torch.network.rec_unit`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, register_layer

__all__ = ["RecLayer", "reverse_sequences", "RNN_UNITS"]

_LSTM_UNITS = (
    "lstm",
    "nativelstm",
    "nativelstm2",
    "nativelstmlowmem",
    "basiclstm",
    "standardlstm",
    "lstmblock",
    "lstmblockfused",
    "cudnnlstm",
    "lstmcell",
    "basiclstmcell",
    "lstmblockcell",
)
# TensorFlow's LSTM cells (BasicLSTM, LSTMBlock, ...) add 1.0 to the forget gate; RETURNN's native LSTMs do not
_FORGET_BIAS_ONE = ("basiclstm", "standardlstm", "lstmblock", "lstmblockfused", "basiclstmcell", "lstmblockcell")
_GRU_UNITS = ("gru", "grublock", "cudnngru", "grucell")
_RNN_UNITS = ("rnn", "vanilla", "basicrnn", "rnncell", "basicrnncell", "cudnnrnntanh")
RNN_UNITS = _LSTM_UNITS + _GRU_UNITS + _RNN_UNITS


def reverse_sequences(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, T, ...]`` with each sequence reversed within its length; frames past the length are undefined."""
    batch, time = x.shape[:2]
    positions = (lengths[:, None] - 1 - torch.arange(time, device=x.device)[None, :]).clamp(min=0)
    # one index per frame (not per value, as gather would need): much cheaper forward and backward
    flat = (positions + time * torch.arange(batch, device=x.device)[:, None]).reshape(-1)
    return x.reshape(batch * time, *x.shape[2:]).index_select(0, flat).reshape(x.shape)


@register_layer("rec")
class RecLayer(Layer):
    """A recurrent layer over the time axis of its source."""

    @classmethod
    def select_class(cls, options: dict[str, Any]) -> type[Layer]:
        """A unit of layers (a dict) runs as :class:`~returnn.torch.network.rec_unit.RecUnitLayer`."""
        if isinstance(options.get("unit"), dict):
            from returnn.torch.network.rec_unit import RecUnitLayer

            return RecUnitLayer
        return cls

    def __init__(
        self,
        ctx: LayerContext,
        *,
        unit: str | dict[str, Any] = "lstm",
        n_out: int | None = None,
        direction: int = 1,
        unit_opts: dict[str, Any] | None = None,
        forward_weights_init: Any = "glorot_uniform",
        recurrent_weights_init: Any = "glorot_uniform",
        bias_init: Any = 0.0,
        initial_state: Any = None,
    ):
        super().__init__(ctx)
        kind = str(unit).lower()
        if kind not in RNN_UNITS:
            raise ctx.error(f"unknown rec unit {unit!r}; choose one of: LSTM ({', '.join(_LSTM_UNITS)}), gru, rnn")
        if direction not in (1, -1):
            raise ctx.error(f"direction must be 1 (forward) or -1 (backward), got {direction!r}")
        if initial_state not in (None, "zeros", 0):
            raise ctx.error(f"initial_state {initial_state!r} is not supported; the state starts at zeros")
        source = ctx.single_source()
        if not source.time:
            raise ctx.error(f"its source {source.describe()} has no time axis to recur over")
        if source.sparse or source.spatial:
            raise ctx.error(f"its source {source.describe()} must be dense [B,T,F] (embed sparse data first)")
        n_out = ctx.default_n_out(n_out)
        self.kind = "lstm" if kind in _LSTM_UNITS else "gru" if kind in _GRU_UNITS else "rnn"
        self.direction = direction
        self.n_out = n_out
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.kind]
        where = ctx.where
        self.W = self.add_param(
            "W", (gates * n_out, source.dim), forward_weights_init, fan_in=source.dim, fan_out=gates * n_out,
            where=f"{where}: forward_weights_init",
        )  # fmt: skip
        self.W_re = self.add_param(
            "W_re", (gates * n_out, n_out), recurrent_weights_init, fan_in=n_out, fan_out=gates * n_out,
            where=f"{where}: recurrent_weights_init",
        )  # fmt: skip
        self.b = self.add_param("b", (gates * n_out,), bias_init, fan_in=source.dim, fan_out=n_out, where=where)
        unit_opts = dict(unit_opts or {})
        forget_bias = unit_opts.pop("forget_bias", 1.0 if kind in _FORGET_BIAS_ONE else 0.0)
        if unit_opts:
            raise ctx.error(f"unit_opts {sorted(unit_opts)} are not supported; supported: forget_bias")
        if self.kind == "lstm" and forget_bias:
            with torch.no_grad():
                self.b[n_out : 2 * n_out] += forget_bias
        self.register_buffer("zero_bias", torch.zeros(gates * n_out), persistent=False)
        self.out_spec = source.copy(dim=n_out)

    keep_last_state = False  # set by a get_last_hidden_state layer reading this one

    def forward(self, x: LayerOutput) -> LayerOutput:
        inputs = x.tensor if self.direction == 1 else reverse_sequences(x.tensor, x.lengths)
        if self.keep_last_state:
            return self._forward_keeping_state(inputs, x)
        batch = inputs.shape[0]
        h0 = inputs.new_zeros(1, batch, self.n_out)
        params = [self.W, self.W_re, self.b, self.zero_bias.to(inputs.dtype)]
        if self.kind == "lstm":
            y = torch.lstm(inputs, (h0, h0), params, True, 1, 0.0, self.training, False, True)[0]
        elif self.kind == "gru":
            y = torch.gru(inputs, h0, params, True, 1, 0.0, self.training, False, True)[0]
        else:
            y = torch.rnn_tanh(inputs, h0, params, True, 1, 0.0, self.training, False, True)[0]
        if self.direction == -1:
            y = reverse_sequences(y, x.lengths)
        return LayerOutput(y, x.lengths, self.out_spec)

    def _forward_keeping_state(self, inputs: torch.Tensor, x: LayerOutput) -> LayerOutput:
        """The same output, computed on the packed batch so that each sequence's state at its own end is known:
        ``last_state`` ``[B, n_out]`` (GRU, RNN) or ``[B, 2 * n_out]`` (LSTM: cell state and output)."""
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            inputs, x.lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        h0 = inputs.new_zeros(1, inputs.shape[0], self.n_out)
        params = [self.W, self.W_re, self.b, self.zero_bias.to(inputs.dtype)]
        args = (packed.data, packed.batch_sizes)
        if self.kind == "lstm":
            data, h, c = torch.lstm(*args, (h0, h0), params, True, 1, 0.0, self.training, False)
            state = torch.cat([c[0], h[0]], dim=-1)
        else:
            function = torch.gru if self.kind == "gru" else torch.rnn_tanh
            data, h = function(*args, h0, params, True, 1, 0.0, self.training, False)
            state = h[0]
        state = state[packed.unsorted_indices]
        y = torch.nn.utils.rnn.pad_packed_sequence(
            packed._replace(data=data), batch_first=True, total_length=inputs.shape[1]
        )[0]
        if self.direction == -1:
            y = reverse_sequences(y, x.lengths)
        return RnnOutput(y, x.lengths, self.out_spec, last_state=state)


@dataclasses.dataclass
class RnnOutput(LayerOutput):
    """A rec layer's output with each sequence's last state (for ``get_last_hidden_state``)."""

    last_state: torch.Tensor | None = None


@register_layer("get_last_hidden_state")
class GetLastHiddenStateLayer(Layer):
    """The state of a ``rec`` layer (a cell unit) at the end of each sequence: ``[B, n_out]`` for GRU and RNN,
    ``[B, 2 * n_out]`` for LSTM (its cell state and its output, concatenated)."""

    def __init__(self, ctx: LayerContext, *, n_out: int | None = None, combine: str = "concat", key: Any = None):
        super().__init__(ctx)
        if combine != "concat" or key is not None:
            raise ctx.error("only combine='concat' of the whole state is supported (no 'key')")
        refs = ctx.source_refs
        entry = ctx.builder.entries.get(refs[0]) if ctx.builder is not None and len(refs) == 1 else None
        if entry is None or not isinstance(entry.module, RecLayer):
            raise ctx.error("its 'from' must be one rec layer with a cell unit (e.g. 'unit': 'lstm')")
        entry.module.keep_last_state = True
        rec = entry.module
        self.out_spec = DataSpec(dim=rec.n_out * (2 if rec.kind == "lstm" else 1), time=False)

    def forward(self, x: LayerOutput) -> LayerOutput:
        if not isinstance(x, RnnOutput) or x.last_state is None:
            raise RuntimeError("get_last_hidden_state: its source did not keep its last state")
        return LayerOutput(x.last_state, None, self.out_spec)
