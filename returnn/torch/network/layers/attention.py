"""Attention layers: softmax_over_spatial, dot_attention, generic_attention, self_attention, gauss_window_attention.

A layer that attends over another layer names it in ``base``: the construction builds that layer first and appends
it to the sources (``dependencies_from_options``), so ``base`` is the last source. Frames past a sequence's length
never get attention weight, so a sequence's result does not depend on the padding of its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, concat_outputs, concat_spec, register_layer
from returnn.torch.network.layers.loop import StatefulLayer

__all__ = [
    "DotAttentionLayer",
    "GaussWindowAttentionLayer",
    "GenericAttentionLayer",
    "SelfAttentionLayer",
    "SoftmaxOverSpatialLayer",
    "masked_softmax",
]

_TIME_AXIS_NAMES = ("T", "t", "time")


def masked_softmax(energy: torch.Tensor, mask: torch.Tensor, log_space: bool = False) -> torch.Tensor:
    """Softmax over the last axis of ``energy`` where ``mask`` (broadcastable) is True; elsewhere probability 0
    (``-inf`` in log space). A row without any True gets all zeros instead of NaN."""
    # the smallest finite value instead of -inf: an all-masked row (a sequence of length 0) stays finite
    energy = energy.masked_fill(~mask, torch.finfo(energy.dtype).min)
    if log_space:
        return torch.log_softmax(energy, dim=-1).masked_fill(~mask, float("-inf"))
    return torch.softmax(energy, dim=-1).masked_fill(~mask, 0.0)


def _positive_int(value: Any, name: str, ctx: LayerContext) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error(f"{name} {value!r}: expected a positive int")
    return value


def _number(value: Any, name: str, ctx: LayerContext) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ctx.error(f"{name} {value!r}: expected a number")
    return value


def _check_sequence(spec: DataSpec, what: str, ctx: LayerContext) -> None:
    """``spec`` must be ``[B,T,F]`` dense."""
    if not spec.time or spec.spatial or not spec.feature_axis:
        raise ctx.error(f"{what} {spec.describe()}: expected [B,T,F] (a time and a feature axis, nothing else)")


def _from_sources(ctx: LayerContext, n_dependencies: int, what: str) -> DataSpec:
    """The spec of the ``from`` sources (the sources before the ``n_dependencies`` appended ones)."""
    sources = ctx.sources[: len(ctx.sources) - n_dependencies]
    if not sources:
        raise ctx.error(f"needs {what} in 'from'")
    return concat_spec(sources, ctx)


@register_layer("softmax_over_spatial")
class SoftmaxOverSpatialLayer(Layer):
    """Softmax over the time axis of the source (any other axes kept), frames past each sequence's length masked
    out (probability 0).

    ``energy_factor`` scales the energies (a temperature); ``start`` (a layer ``[B]``) masks the frames before it;
    ``window_start`` and ``window_size`` (ints or layers ``[B]``) keep only ``[window_start, window_start +
    window_size)``; ``use_time_mask=False`` takes the softmax over all frames of the padded batch; ``log_space``
    gives log-probabilities (``-inf`` where masked).
    """

    concat_sources = False

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """The layers among ``start``, ``window_start`` and ``window_size``, appended to the sources in that order."""
        return [options[key] for key in ("start", "window_start", "window_size") if isinstance(options.get(key), str)]

    def __init__(
        self,
        ctx: LayerContext,
        *,
        axis: str | None = None,
        energy_factor: float | None = None,
        start: str | None = None,
        window_start: int | str | None = None,
        window_size: int | str | None = None,
        use_time_mask: bool | None = None,
        log_space: bool = False,
    ):
        super().__init__(ctx)
        if axis is not None and axis not in _TIME_AXIS_NAMES:
            raise ctx.error(f"axis {axis!r}: only the time axis is supported here; choose 'T' (the default)")
        if start is not None and not isinstance(start, str):
            raise ctx.error(f"start {start!r}: expected the name of a layer with the start frame per sequence [B]")
        if window_start is not None and window_size is None:
            raise ctx.error("window_start needs window_size")
        if window_size is not None and window_start is None:
            raise ctx.error("window_size needs window_start")
        if window_start is not None and not isinstance(window_start, str):
            if isinstance(window_start, bool) or not isinstance(window_start, int) or window_start < 0:
                raise ctx.error(f"window_start {window_start!r}: expected an int >= 0 or the name of a layer [B]")
        if window_size is not None and not isinstance(window_size, str):
            _positive_int(window_size, "window_size", ctx)
        if use_time_mask is False and (start is not None or window_start is not None):
            raise ctx.error("start and window_start mask frames: they need use_time_mask (leave it None or True)")
        self.energy_factor = _number(energy_factor, "energy_factor", ctx)
        given = {"start": start, "window_start": window_start, "window_size": window_size}
        self.layer_options = [key for key, value in given.items() if isinstance(value, str)]
        for key, spec in zip(self.layer_options, ctx.sources[len(ctx.sources) - len(self.layer_options) :]):
            if spec.time or spec.spatial or (spec.feature_axis and spec.dim != 1):
                raise ctx.error(f"{key} {spec.describe()}: expected one number per sequence, [B]")
        source = _from_sources(ctx, len(self.layer_options), "the energies")
        if not source.time:
            raise ctx.error(f"its input {source.describe()} has no time axis to take the softmax over")
        if source.sparse or not source.dtype.startswith("float"):
            raise ctx.error(f"its input {source.describe()} ({source.dtype}) is not float energies")
        self.window_start = window_start
        self.window_size = window_size
        self.use_time_mask = use_time_mask is not False
        self.log_space = log_space
        self.out_spec = source

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        n_layers = len(self.layer_options)
        x = concat_outputs(sources[: len(sources) - n_layers])
        layers = {
            key: out.tensor.reshape(-1) for key, out in zip(self.layer_options, sources[len(sources) - n_layers :])
        }
        energy = x.tensor.movedim(1, -1)  # [B, ..., T]: the softmax axis last
        time = energy.shape[-1]
        mask = x.mask() if self.use_time_mask else torch.ones_like(x.mask())
        frames = torch.arange(time, device=energy.device)[None, :]
        if "start" in layers:
            mask = mask & (frames >= layers["start"][:, None])
        if self.window_start is not None:
            window_start = layers.get("window_start", self.window_start)
            window_size = layers.get("window_size", self.window_size)
            if isinstance(window_start, torch.Tensor):
                window_start = window_start[:, None]
            if isinstance(window_size, torch.Tensor):
                window_size = window_size[:, None]
            mask = mask & (frames >= window_start) & (frames < window_start + window_size)
        mask = mask.reshape(mask.shape[0], *[1] * (energy.dim() - 2), time)
        if self.energy_factor:
            energy = energy * self.energy_factor
        y = masked_softmax(energy, mask, log_space=self.log_space)
        return LayerOutput(y.movedim(-1, 1), x.lengths, self.out_spec, pre_activation=energy.movedim(-1, 1))


@register_layer("dot_attention")
class DotAttentionLayer(Layer):
    """Dot-product attention of the query (``from``) over the frames of ``base``: the energies are the dot products
    of the query with the keys (``base_ctx``; default ``base`` itself), times ``energy_factor``; the output is the
    softmax-weighted sum of the values ``base`` ``[B,T,F_v]``.

    The query is one vector per sequence ``[B,F]`` (one decoder step; output ``[B,F_v]``), or a sequence ``[B,T_q,F]``
    (output ``[B,T_q,F_v]`` with the query's lengths). Unlike RETURNN, ``base_ctx`` may be left out.
    """

    concat_sources = False

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """``base_ctx`` (if given) and ``base``, appended to the sources in that order."""
        return [options[key] for key in ("base_ctx", "base") if isinstance(options.get(key), str)]

    def __init__(
        self, ctx: LayerContext, *, base: str, base_ctx: str | None = None, energy_factor: float | None = None
    ):
        super().__init__(ctx)
        if not isinstance(base, str):
            raise ctx.error(f"base {base!r}: expected the name of the layer to attend over")
        if base_ctx is not None and not isinstance(base_ctx, str):
            raise ctx.error(f"base_ctx {base_ctx!r}: expected the name of the layer of the keys")
        self.energy_factor = _number(energy_factor, "energy_factor", ctx)
        self.n_dependencies = 2 if base_ctx is not None else 1
        query = _from_sources(ctx, self.n_dependencies, "the query")
        values, keys = ctx.sources[-1], ctx.sources[-self.n_dependencies]
        _check_sequence(values, f"base {base!r}", ctx)
        _check_sequence(keys, f"base_ctx {base_ctx!r}", ctx)
        if query.spatial or not query.feature_axis:
            raise ctx.error(f"the query {query.describe()}: expected [B,F] or [B,T,F]")
        if query.dim != keys.dim:
            raise ctx.error(
                f"the query's dim {query.dim} differs from the keys' dim {keys.dim} "
                f"({'base_ctx' if base_ctx is not None else 'base'}); project one of them with a linear layer"
            )
        self.out_spec = DataSpec(dim=values.dim, time=query.time)

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        query = concat_outputs(sources[: len(sources) - self.n_dependencies])
        values, keys = sources[-1], sources[-self.n_dependencies]
        q = query.tensor if query.spec.time else query.tensor[:, None]  # [B,T_q,F]
        energy = torch.matmul(q, keys.masked(0.0).transpose(1, 2))  # [B,T_q,T]
        if self.energy_factor:
            energy = energy * self.energy_factor
        weights = masked_softmax(energy, values.mask()[:, None, :])
        out = torch.matmul(weights, values.masked(0.0))  # [B,T_q,F_v]
        if not query.spec.time:
            return LayerOutput(out[:, 0], None, self.out_spec)
        return LayerOutput(out, query.lengths, self.out_spec)


@register_layer("generic_attention")
class GenericAttentionLayer(Layer):
    """The weighted sum over time of ``base`` ``[B,T,*spatial,F]`` with given weights ``[B,T,...]``.

    The weights come from ``weights`` (RETURNN's option) or from ``from``. Their axes besides batch and time are
    matched, from the last, to the spatial axes of ``base`` by size (e.g. the heads: weights ``[B,T,H]``, base
    ``[B,T,H,F/H]``); unmatched axes of size 1 are squeezed (``auto_squeeze``), others kept. The output is
    ``[B, matched axes, unmatched axes, F]`` (heads: ``[B,H,F/H]``, as in RETURNN; ``merge_dims`` makes it
    ``[B,F]``). Frames past the lengths count with weight 0.
    """

    concat_sources = False

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """``weights`` (if given) and ``base``, appended to the sources in that order."""
        return [options[key] for key in ("weights", "base") if isinstance(options.get(key), str)]

    def __init__(self, ctx: LayerContext, *, base: str, weights: str | None = None, auto_squeeze: bool = True):
        super().__init__(ctx)
        if not isinstance(base, str):
            raise ctx.error(f"base {base!r}: expected the name of the layer to attend over")
        if weights is not None and not isinstance(weights, str):
            raise ctx.error(f"weights {weights!r}: expected the name of the layer of the attention weights")
        if weights is not None and _from_given(ctx):
            raise ctx.error("give the attention weights either in 'weights' or in 'from', not both")
        self.weights_from_option = weights is not None
        weights_spec = ctx.sources[-2] if weights is not None else _from_sources(ctx, 1, "the attention weights")
        base_spec = ctx.sources[-1]
        if not base_spec.time or not base_spec.feature_axis:
            raise ctx.error(f"base {base!r} {base_spec.describe()}: expected [B,T,...,F]")
        if not weights_spec.time or weights_spec.sparse:
            raise ctx.error(f"the weights {weights_spec.describe()}: expected [B,T,...] (a time axis to sum over)")
        weight_axes = [*weights_spec.spatial, *([weights_spec.dim] if weights_spec.feature_axis else [])]
        base_axes = list(range(len(base_spec.spatial)))
        matched: dict[int, int] = {}  # weights axis -> base axis (counted after B and T)
        kept = []
        for i in reversed(range(len(weight_axes))):
            if base_axes and weight_axes[i] == base_spec.spatial[base_axes[-1]]:
                matched[i] = base_axes.pop()
            elif not (auto_squeeze and weight_axes[i] == 1):
                kept.append(i)
        if base_axes:
            raise ctx.error(
                f"the spatial axes {[base_spec.spatial[j] for j in base_axes]} of base {base!r} "
                f"{base_spec.describe()} match no axis of the weights {weights_spec.describe()} (by size)"
            )
        letters = "cdeghijklmnopqrsuvwxyz"  # b, t and f are batch, time and feature
        weight_letters = letters[: len(weight_axes)]
        base_letters = [""] * len(base_spec.spatial)
        for i, j in matched.items():
            base_letters[j] = weight_letters[i]
        out_axes = sorted(matched) + sorted(kept)
        self.equation = (
            f"bt{weight_letters},bt{''.join(base_letters)}f->b{''.join(weight_letters[i] for i in out_axes)}f"
        )
        self.out_spec = DataSpec(dim=base_spec.dim, time=False, spatial=tuple(weight_axes[i] for i in out_axes))

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        base = sources[-1]
        weights = sources[-2] if self.weights_from_option else concat_outputs(sources[:-1])
        return LayerOutput(torch.einsum(self.equation, weights.masked(0.0), base.masked(0.0)), None, self.out_spec)


def _from_given(ctx: LayerContext) -> bool:
    """Whether the layer dict sets ``from`` to something besides the default ``data``."""
    if ctx.builder is None:
        return False
    value = ctx.builder.flat.get(ctx.name, {}).get("from")
    if value in (None, [], ()):
        return False
    return not (isinstance(value, str) and (value == "data" or value.endswith("/data")))


@register_layer("self_attention")
class SelfAttentionLayer(StatefulLayer):
    """Multi-head dot-product self-attention over the time axis of full sequences; inside a recurrent unit (an
    input without a time axis) each step attends to itself and the steps before it, whose keys and values are its
    state.

    The parameter ``QKV`` ``[n_in, 2 * total_key_dim + n_out]`` projects the input (on sparse input: a row lookup);
    as in RETURNN, its columns are ``num_heads`` blocks, one per head, each ``[q | k | v]`` with ``total_key_dim //
    num_heads`` query and key and ``n_out // num_heads`` value columns. The queries are scaled by ``(total_key_dim //
    num_heads) ** -0.5``; each frame attends to the frames within its sequence's length, with
    ``attention_left_only`` only to itself and the frames before it (causal). ``attention_dropout`` is dropout on
    the attention weights in training.
    """

    def __init__(
        self,
        ctx: LayerContext,
        *,
        num_heads: int,
        total_key_dim: int,
        n_out: int | None = None,
        key_shift: str | None = None,
        forward_weights_init: Any = "glorot_uniform",
        attention_dropout: float = 0.0,
        attention_left_only: bool = False,
    ):
        super().__init__(ctx)
        source = ctx.single_source()
        n_out = ctx.default_n_out(n_out)
        self.num_heads = _positive_int(num_heads, "num_heads", ctx)
        _positive_int(total_key_dim, "total_key_dim", ctx)
        if total_key_dim % num_heads or n_out % num_heads:
            raise ctx.error(
                f"total_key_dim {total_key_dim} and n_out {n_out} must both be divisible by num_heads {num_heads}"
            )
        if key_shift is not None:
            raise ctx.error("key_shift (relative positional encoding) is not supported yet; remove it")
        if source.spatial or source.dim is None:
            raise ctx.error(f"its input {source.describe()}: expected [B,T,F] or sparse [B,T]")
        attention_dropout = _number(attention_dropout, "attention_dropout", ctx) or 0.0
        if not 0 <= attention_dropout < 1:
            raise ctx.error(f"attention_dropout {attention_dropout!r}: expected a rate in [0, 1)")
        self.key_dim = total_key_dim // num_heads
        self.value_dim = n_out // num_heads
        self.attention_dropout = attention_dropout
        # inside a unit the steps come one by one: a step attends to those before it
        self.attention_left_only = bool(attention_left_only) or not source.time
        self.sparse_input = source.sparse
        n_qkv = 2 * total_key_dim + n_out
        self.QKV = self.add_param(
            "QKV",
            (source.dim, n_qkv),
            forward_weights_init,
            fan_in=source.dim,
            fan_out=n_qkv,
            where=f"{ctx.where}: QKV",
        )
        self.out_spec = DataSpec(dim=n_out, time=source.time)

    def initial_state(self, batch: int, like: torch.Tensor) -> Any:
        return None

    def step(self, x: LayerOutput, state: Any) -> tuple[LayerOutput, Any]:
        batch = x.tensor.shape[0]
        qkv = F.embedding(x.tensor.long(), self.QKV) if self.sparse_input else torch.matmul(x.tensor, self.QKV)
        q, k, v = qkv.reshape(batch, self.num_heads, 1, -1).split([self.key_dim, self.key_dim, self.value_dim], -1)
        keys, values = (k, v) if state is None else (torch.cat([state[0], k], 2), torch.cat([state[1], v], 2))
        weights = torch.softmax(torch.matmul(q * self.key_dim**-0.5, keys.transpose(-1, -2)), dim=-1)
        if self.attention_dropout and self.training:
            weights = F.dropout(weights, self.attention_dropout, training=True)
        out = torch.matmul(weights, values).reshape(batch, -1)  # [B, H*value_dim]
        return LayerOutput(out, None, self.out_spec), (keys, values)

    def sequence(self, x: LayerOutput) -> LayerOutput:
        batch, time = x.tensor.shape[:2]
        if self.sparse_input:
            qkv = F.embedding(x.masked(0).long(), self.QKV)
        else:
            qkv = torch.matmul(x.masked(0.0), self.QKV)
        qkv = qkv.reshape(batch, time, self.num_heads, -1).transpose(1, 2)  # [B,H,T,per head]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        energy = torch.matmul(q * self.key_dim**-0.5, k.transpose(-1, -2))  # [B,H,T_q,T_k]
        mask = x.mask()[:, None, None, :]
        if self.attention_left_only:
            mask = mask & torch.ones(time, time, dtype=torch.bool, device=mask.device).tril()
        weights = masked_softmax(energy, mask)
        if self.attention_dropout and self.training:
            weights = F.dropout(weights, self.attention_dropout, training=True)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, time, -1)  # [B,T,H*value_dim]
        return LayerOutput(out, x.lengths, self.out_spec.copy(time=True))


@register_layer("gauss_window_attention")
class GaussWindowAttentionLayer(Layer):
    """A Gaussian-weighted sum of ``window_size`` frames of ``base`` ``[B,T,F]`` around the position ``from``
    (``[B]`` or ``[B,1]``, in frames), as RETURNN computes it.

    The window is the frames ``round(t) - window_size // 2 + i``; indices before the first frame read the first,
    those past the sequence's length its last frame (weighted by their own, unclipped distance). Weight of frame
    ``j``: ``exp(-(t - j)**2 / (2 std**2)) / (std sqrt(2 pi))`` (not normalized). With ``inner_size``, the output is
    ``[B,inner_size,F]``, one sum per position ``t + i * inner_size_step - inner_size / 2``; otherwise ``[B,F]``.
    """

    concat_sources = False

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        """``base``, appended to the sources."""
        base = options.get("base")
        return [base] if isinstance(base, str) else []

    def __init__(
        self,
        ctx: LayerContext,
        *,
        base: str,
        window_size: int,
        std: float = 1.0,
        inner_size: int | None = None,
        inner_size_step: float = 0.5,
    ):
        super().__init__(ctx)
        if not isinstance(base, str):
            raise ctx.error(f"base {base!r}: expected the name of the layer to attend over")
        self.window_size = _positive_int(window_size, "window_size", ctx)
        if _number(std, "std", ctx) is None or std <= 0:
            raise ctx.error(f"std {std!r}: expected a positive number")
        self.inner_size = _positive_int(inner_size, "inner_size", ctx) if inner_size else None
        if _number(inner_size_step, "inner_size_step", ctx) is None:
            raise ctx.error("inner_size_step None: expected a number")
        self.inner_size_step = float(inner_size_step)
        self.std = float(std)
        position = _from_sources(ctx, 1, "the position")
        if position.time or position.spatial or (position.feature_axis and position.dim != 1):
            raise ctx.error(f"the position {position.describe()}: expected one number per sequence, [B] or [B,1]")
        base_spec = ctx.sources[-1]
        _check_sequence(base_spec, f"base {base!r}", ctx)
        spatial = (self.inner_size,) if self.inner_size else ()
        self.out_spec = DataSpec(dim=base_spec.dim, time=False, spatial=spatial)

    def forward(self, sources: list[LayerOutput]) -> LayerOutput:
        base = sources[-1]
        x = base.masked(0.0)  # [B,T,F]
        batch, time, dim = x.shape
        t = concat_outputs(sources[:-1]).tensor.reshape(batch).to(x.dtype)
        offsets = torch.arange(self.window_size, device=x.device) - self.window_size // 2
        frames = torch.round(t).long()[:, None] + offsets[None, :]  # [B,W]
        last = (base.lengths[:, None] - 1).clamp(min=0)
        read = torch.minimum(frames.clamp(0, time - 1), last)
        gathered = x.gather(1, read[:, :, None].expand(batch, self.window_size, dim))  # [B,W,F]
        centers = t[:, None, None]  # [B,1,K]
        if self.inner_size:
            shifts = [i * self.inner_size_step - self.inner_size / 2.0 for i in range(self.inner_size)]
            centers = centers + torch.tensor(shifts, dtype=x.dtype, device=x.device)
        distance = centers - frames[:, :, None].to(x.dtype)  # [B,W,K]
        weights = torch.exp(-(distance**2) / (2 * self.std**2)) / (self.std * math.sqrt(2 * math.pi))
        out = torch.einsum("bwk,bwf->bkf", weights, gathered)
        return LayerOutput(out if self.inner_size else out[:, 0], None, self.out_spec)
