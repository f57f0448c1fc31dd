"""Normalization layers: layer_norm (over the feature axis of each frame) and batch_norm (over the batch)."""

from __future__ import annotations

from typing import Any

import torch

from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, register_layer

__all__ = ["BatchNormLayer", "LayerNormLayer"]


def _dense_source(ctx: LayerContext) -> DataSpec:
    source = ctx.single_source()
    if source.sparse or not source.feature_axis:
        raise ctx.error(f"its input {source.describe()} must be dense with a feature axis")
    return source


@register_layer("layer_norm")
class LayerNormLayer(Layer):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias``, mean and (biased) variance over the feature axis of each
    frame. Parameters as in RETURNN: ``scale`` (ones) and ``bias`` (zeros), ``[F]``."""

    def __init__(self, ctx: LayerContext, *, epsilon: float = 1e-6):
        super().__init__(ctx)
        source = _dense_source(ctx)
        self.epsilon = epsilon
        dim = source.dim
        self.scale = self.add_param("scale", (dim,), 1.0, fan_in=dim, fan_out=dim, where=f"{ctx.where}: scale")
        self.bias = self.add_param("bias", (dim,), 0.0, fan_in=dim, fan_out=dim, where=f"{ctx.where}: bias")
        self.out_spec = source

    def forward(self, x: LayerOutput) -> LayerOutput:
        mean = x.tensor.mean(dim=-1, keepdim=True)
        variance = (x.tensor - mean).pow(2).mean(dim=-1, keepdim=True)
        y = (x.tensor - mean) * torch.rsqrt(variance + self.epsilon) * self.scale + self.bias
        return LayerOutput(y, x.lengths, self.out_spec)


@register_layer("batch_norm")
class BatchNormLayer(Layer):
    """Batch normalization per feature, with RETURNN's defaults (behavior version 12 on).

    Statistics: mean and (biased) variance over the batch, time and spatial axes; with ``masked_time`` only the
    frames within the sequence lengths count. In training the batch's statistics normalize (``use_sample = 0``)
    and the running ones are updated afterwards: ``running += (batch - running) * momentum``. In evaluation the
    running statistics normalize and are not updated (``update_sample_only_in_training``). ``use_sample`` mixes
    the running statistics into training's, ``force_sample`` uses that mix in evaluation too.

    Parameters (``param_version = 2``): ``v2_gamma`` (scale), ``v2_beta`` (shift), and the buffers ``v2_mean``,
    ``v2_variance``, all ``[F]``.
    """

    def __init__(
        self,
        ctx: LayerContext,
        *,
        use_shift: bool = True,
        use_std: bool = True,
        use_sample: float = 0.0,
        force_sample: bool = False,
        momentum: float = 0.1,
        epsilon: float = 1e-3,
        update_sample_only_in_training: bool = True,
        delay_sample_update: bool = True,
        param_version: int = 2,
        gamma_init: Any = 1.0,
        beta_init: Any = 0.0,
        masked_time: bool = True,
    ):
        super().__init__(ctx)
        source = _dense_source(ctx)
        if param_version != 2:
            raise ctx.error(f"param_version {param_version!r}: only 2 is supported (parameters v2_gamma, v2_beta, ...)")
        if not 0.0 <= use_sample <= 1.0:
            raise ctx.error(f"use_sample {use_sample!r}: expected a factor in [0, 1]")
        if not 0.0 <= momentum <= 1.0:
            raise ctx.error(f"momentum {momentum!r}: expected a factor in [0, 1] (RETURNN's default: 0.1)")
        dim = source.dim
        self.use_sample, self.force_sample = use_sample, force_sample
        self.momentum, self.epsilon = momentum, epsilon
        self.update_sample_only_in_training = update_sample_only_in_training
        self.delay_sample_update = delay_sample_update
        self.masked_time = masked_time
        self.register_buffer("v2_mean", torch.zeros(dim))
        self.register_buffer("v2_variance", torch.ones(dim))
        where = ctx.where
        self.v2_gamma = (
            self.add_param("v2_gamma", (dim,), gamma_init, fan_in=dim, fan_out=dim, where=f"{where}: gamma_init")
            if use_std
            else None
        )
        self.v2_beta = (
            self.add_param("v2_beta", (dim,), beta_init, fan_in=dim, fan_out=dim, where=f"{where}: beta_init")
            if use_shift
            else None
        )
        self.out_spec = source

    def _batch_moments(self, x: LayerOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased variance per feature over all other axes (only valid frames with ``masked_time``)."""
        frames = x.tensor.reshape(-1, x.tensor.shape[-1])
        if self.masked_time and x.lengths is not None:
            mask = x.mask().reshape(x.mask().shape + (1,) * (x.tensor.dim() - 2)).expand_as(x.tensor)
            frames = frames[mask.reshape(-1, x.tensor.shape[-1])[:, 0]]
        mean = frames.mean(dim=0)
        return mean, (frames - mean).pow(2).mean(dim=0)

    def forward(self, x: LayerOutput) -> LayerOutput:
        use_batch = self.training or self.force_sample
        update = self.training or not self.update_sample_only_in_training
        mean, variance = self.v2_mean, self.v2_variance
        if update or (use_batch and self.use_sample != 1.0):
            batch_mean, batch_variance = self._batch_moments(x)
        if update:
            with torch.no_grad():
                new_mean = self.v2_mean + (batch_mean.detach() - self.v2_mean) * self.momentum
                new_variance = self.v2_variance + (batch_variance.detach() - self.v2_variance) * self.momentum
                if self.delay_sample_update:  # this batch still uses the statistics before the update
                    mean, variance = self.v2_mean.clone(), self.v2_variance.clone()
                else:
                    mean, variance = new_mean, new_variance
                self.v2_mean.copy_(new_mean)
                self.v2_variance.copy_(new_variance)
        if use_batch and self.use_sample != 1.0:
            mean = (1.0 - self.use_sample) * batch_mean + self.use_sample * mean
            variance = (1.0 - self.use_sample) * batch_variance + self.use_sample * variance
        y = (x.tensor - mean) * torch.rsqrt(variance + self.epsilon)
        if self.v2_gamma is not None:
            y = y * self.v2_gamma
        if self.v2_beta is not None:
            y = y + self.v2_beta
        return LayerOutput(y, x.lengths, self.out_spec)
