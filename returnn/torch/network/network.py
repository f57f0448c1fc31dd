"""The module built from a ``network`` dict: runs its layers on a batch, computes their losses and constraints."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from returnn.errors import ConfigError, DatasetError
from returnn.torch.network.construction import LayerEntry
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import concat_outputs
from returnn.torch.network.losses import LossSpec, LossValues

__all__ = ["Network"]


class Network(torch.nn.Module):
    """The layers of a network dict, registered under their names (parameters ``<layer>.<param>``).

    ``network(data)`` runs the layers on the batch dict that step functions get and returns every layer's
    :class:`LayerOutput` by name (and the input data as ``"data:KEY"``); :meth:`losses` and :meth:`constraints` give
    what training adds to the objective.

    :param entries: the built layers in the order they run
    :param data_specs: the input data keys and their specs
    """

    def __init__(self, entries: list[LayerEntry], data_specs: dict[str, DataSpec]):
        super().__init__()
        for entry in entries:
            # registered directly: a layer may be named like a Module attribute ("forward", "train", ...)
            self._modules[entry.name] = entry.module
            reuse = entry.options.get("reuse_params")
            if isinstance(reuse, str):
                _share_params(entry.module, self._modules[reuse], entry.name, reuse)
        self.entries = entries
        self.data_specs = data_specs
        self._loss_specs = _loss_specs(entries)  # the losses are fixed once built; read at every step

    def specs(self) -> dict[str, DataSpec]:
        """The output spec of every layer, by name, in the order they run."""
        return {entry.name: entry.module.out_spec for entry in self.entries}

    def layer(self, name: str) -> torch.nn.Module:
        """The layer module ``name``."""
        return self._modules[name]

    def search(self, data: dict[str, Any]) -> dict[str, LayerOutput]:
        """Run the network with beam search in its recurrent units (their choice layers search instead of reading
        the target). Layers that need data the batch does not have (e.g. the target) are left out."""
        from returnn.torch.network.rec_unit import RecUnitLayer

        units = [m for m in self.modules() if isinstance(m, RecUnitLayer)]
        for unit in units:
            unit.searching = True
        try:
            return self.forward(data, _skip_missing=True)
        finally:
            for unit in units:
                unit.searching = False

    def forward(self, data: dict[str, Any], _skip_missing: bool = False) -> dict[str, LayerOutput]:
        """Run all layers on ``data`` (``data[key]``, ``data[f"{key}:size1"]``). Returns the outputs by name."""
        outputs = self.inputs(data)
        for entry in self.entries:
            refs = [ref if ref in outputs else _data_ref(ref) for ref in entry.sources]
            missing = [ref for ref in refs if ref not in outputs]
            if missing and not _skip_missing:
                raise DatasetError(
                    f"network: layer {entry.name!r} reads {', '.join(missing)}, which the batch does not have; the "
                    f"data keys: {', '.join(sorted(k[5:] for k in outputs if k.startswith('data:')))}"
                )
            if missing and not hasattr(entry.module, "searching"):
                continue  # search without the data this layer needs (a rec unit's choice does without its target)
            sources = [outputs.get(ref) for ref in refs]
            sources = prepared_sources(entry, sources, self.training)
            if entry.module.concat_sources:
                out = entry.module(concat_outputs(sources))
            else:
                out = entry.module(sources)
            outputs[entry.name] = out
            for name, inner in getattr(out, "inner", {}).items():  # the layers of a rec unit, over time
                outputs[f"{entry.name}/{name}"] = inner
            registered = entry.options.get("register_as_extern_data")
            if registered:
                outputs[f"data:{registered}"] = out
        return outputs

    def inputs(self, data: dict[str, Any]) -> dict[str, LayerOutput]:
        """The input data keys present in ``data`` as ``{"data:KEY": LayerOutput}``."""
        inputs = {}
        for key, spec in self.data_specs.items():
            if key not in data:
                continue
            tensor = data[key]
            if spec.sparse:
                tensor = tensor.long()
            elif tensor.dtype != torch.float32 and spec.dtype == "float32":
                tensor = tensor.float()
            lengths = data.get(f"{key}:size1") if spec.time else None
            inputs[f"data:{key}"] = LayerOutput(tensor, lengths, spec)
        return inputs

    def loss_specs(self) -> dict[str, LossSpec]:
        """The loss of every layer that has one, by layer name (``rec/inner`` for the layers of a rec unit)."""
        return self._loss_specs

    def losses(self, outputs: dict[str, LayerOutput]) -> dict[str, LossValues]:
        """The loss values of every layer that has a loss, by layer name."""
        values = {}
        for name, spec in self.loss_specs().items():
            key = spec.target
            target = outputs.get(key[len("layer:") :] if key.startswith("layer:") else f"data:{key}")
            if target is None:
                raise DatasetError(
                    f"network: layer {name!r}: the batch has no data key {key!r} for its loss; the dataset's "
                    f"keys: {sorted(k[5:] for k in outputs if k.startswith('data:'))}"
                )
            values[name] = spec.compute(outputs[name], target)
        return values

    def constraints(self, outputs: dict[str, LayerOutput]) -> torch.Tensor | None:
        """Σ of the layers' ``L2``, ``darc1`` and ``spatial_smoothing`` terms (None if no layer has one)."""
        total = None
        for entry in _with_unit_entries(self.entries):
            terms = []
            l2 = entry.options.get("L2")
            if l2:
                terms.append(l2 * sum(p.float().pow(2).sum() for p in entry.module.parameters()))
            darc1 = entry.options.get("darc1")
            if darc1:
                terms.append(darc1 * _darc1(outputs[entry.name]))
            smoothing = entry.options.get("spatial_smoothing")
            if smoothing:
                terms.append(smoothing * _spatial_smoothing_energy(outputs[entry.name]))
            for term in terms:
                total = term if total is None else total + term
        return total

    def loss_layers(self) -> list[str]:
        """The names of the layers with a loss, in order."""
        return list(self.loss_specs())


def _loss_specs(entries: list[LayerEntry]) -> dict[str, LossSpec]:
    specs = {}
    for entry in entries:
        if entry.loss is not None:
            specs[entry.name] = entry.loss
        for name, spec in getattr(entry.module, "inner_losses", {}).items():
            specs[f"{entry.name}/{name}"] = spec
    return specs


def _with_unit_entries(entries: list[LayerEntry]) -> list[LayerEntry]:
    """``entries`` and the layers of their rec units (named ``rec/inner``, as the outputs are)."""
    result = []
    for entry in entries:
        result.append(entry)
        for inner in getattr(entry.module, "entries", []):
            result.append(dataclasses.replace(inner, name=f"{entry.name}/{inner.name}"))
    return result


def prepared_sources(entry: LayerEntry, sources: list[LayerOutput], training: bool) -> list[LayerOutput]:
    """The ``from`` sources of a layer with its ``grad_filter`` and its ``dropout`` (in training, or always with
    ``dropout_on_forward``) applied; the other sources (``base`` etc.) as they are."""
    num_from = entry.num_from if entry.num_from else len(sources)
    threshold = entry.options.get("grad_filter")
    if threshold is not None:
        sources = [_grad_filtered(s, threshold) if i < num_from else s for i, s in enumerate(sources)]
    rate = entry.options.get("dropout")
    if not rate or not (training or entry.options.get("dropout_on_forward")):
        return sources
    noise_shape = entry.options.get("dropout_noise_shape")
    return [_dropout(s, rate, noise_shape) if i < num_from else s for i, s in enumerate(sources)]


class _GradFilter(torch.autograd.Function):
    """Identity forward; backward zeroes the gradient of every frame whose gradient norm (over the feature axis)
    is above the threshold."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: float) -> torch.Tensor:
        ctx.threshold = threshold
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        norm = grad.norm(dim=-1, keepdim=True)
        return torch.where(norm > ctx.threshold, torch.zeros_like(grad), grad), None


def _grad_filtered(x: LayerOutput, threshold: float) -> LayerOutput:
    if not x.tensor.is_floating_point() or not x.tensor.requires_grad:
        return x
    return LayerOutput(_GradFilter.apply(x.tensor, float(threshold)), x.lengths, x.spec, x.pre_activation)


def _data_ref(ref: str) -> str:
    return "data:data" if ref == "data" else ref


def _share_params(module: torch.nn.Module, other: torch.nn.Module, name: str, other_name: str) -> None:
    """``reuse_params``: ``module`` uses the parameters of ``other`` (same names and shapes)."""
    own = dict(module.named_parameters(recurse=False))
    theirs = dict(other.named_parameters(recurse=False))
    for param_name, param in own.items():
        if param_name not in theirs or theirs[param_name].shape != param.shape:
            raise ConfigError(
                f"network: layer {name!r}: reuse_params {other_name!r}: it has no parameter {param_name!r} of shape "
                f"{list(param.shape)} (it has {', '.join(f'{k}{list(v.shape)}' for k, v in theirs.items()) or 'none'})"
            )
        setattr(module, param_name, theirs[param_name])


_AXIS_NAMES = {"B": "B", "batch": "B", "T": "T", "t": "T", "time": "T", "F": "F", "f": "F", "feature": "F"}


def _dropout(x: LayerOutput, rate: float, noise_shape: dict[str, Any] | None) -> LayerOutput:
    """Dropout on ``x`` (kept values scaled by ``1 / (1 - rate)``); ``noise_shape`` maps axes (``"B"``, ``"T"``,
    ``"F"``, ``"*"`` for the rest) to 1 where the mask is shared along that axis."""
    if x.spec.sparse or not x.tensor.is_floating_point():
        return x
    if not noise_shape:
        return LayerOutput(F.dropout(x.tensor, rate, training=True), x.lengths, x.spec, x.pre_activation)
    names = (
        ["B"] + (["T"] if x.spec.time else []) + ["*"] * len(x.spec.spatial) + (["F"] if x.spec.feature_axis else [])
    )
    shared = {_AXIS_NAMES.get(str(k), str(k)) for k, v in noise_shape.items() if v == 1}
    shape = [1 if name in shared or (name == "*" and "*" in shared) else n for name, n in zip(names, x.tensor.shape)]
    keep = torch.empty(shape, device=x.tensor.device, dtype=x.tensor.dtype).bernoulli_(1.0 - rate) / (1.0 - rate)
    return LayerOutput(x.tensor * keep, x.lengths, x.spec, x.pre_activation)


def _darc1(out: LayerOutput) -> torch.Tensor:
    """``max_f Σ_t |x_{t,f}|`` over the valid frames (x before the activation), summed over the batch as RETURNN
    flattens batch and time."""
    x = out.pre_activation if out.pre_activation is not None else out.tensor
    x = x.abs()
    if out.lengths is not None:
        x = x.masked_fill(~out.mask().reshape(out.mask().shape + (1,) * (x.dim() - 2)), 0.0)
    return x.reshape(-1, x.shape[-1]).sum(dim=0).max()


def _spatial_smoothing_energy(out: LayerOutput) -> torch.Tensor:
    """The feature axis seen as an ``h x w`` grid (circularly padded) through a 3x3 high-pass filter, squared and
    summed over the grid and the valid frames."""
    x = out.tensor
    dim = x.shape[-1]
    width = int(math.sqrt(dim))
    while dim % width:
        width -= 1
    height = dim // width
    grid = x.reshape(-1, 1, height, width)
    grid = F.pad(grid, (1, 1, 1, 1), mode="circular")
    kernel = torch.full((3, 3), -0.125, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 1.0
    energy = F.conv2d(grid, kernel.reshape(1, 1, 3, 3)).pow(2).sum(dim=(1, 2, 3)).reshape(x.shape[:-1])
    if out.lengths is not None:
        energy = energy.masked_fill(~out.mask(), 0.0)
    return energy.sum()
