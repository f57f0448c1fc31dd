"""A network dict in the engine: the model function, the generated step functions and RETURNN's score names.

A config with ``network`` and no ``get_model`` gets:

- ``get_model``: the :class:`~returnn.torch.network.network.Network` built from the dict;
- ``train_step`` (unless the config defines one): runs the network and marks each layer's loss with RETURNN's
  normalization (see :func:`mark_losses`), plus the constraints (``L2``, ...) in training;
- ``forward_step`` with its hooks (unless the config defines ``forward_step``): writes the layer
  ``forward_output_layer`` of every sequence to ``output_file`` in RETURNN's HDF format.

A config's own ``train_step`` / ``forward_step`` gets the network as ``model``: ``outputs = model(data)`` gives every
layer's :class:`~returnn.torch.network.data.LayerOutput` (``tensor``, ``lengths``, ``spec``) by name,
``model.losses(outputs)`` each loss layer's sums, and ``mark_losses(model, outputs, run_ctx)`` marks them as the
generated ``train_step`` does.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.torch.forward_output import ForwardOutputFile
from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec
from returnn.torch.network.extern_data import data_specs_from_config, data_specs_from_dataset
from returnn.torch.network.network import Network

__all__ = ["build_network", "mark_losses", "network_step_functions", "score_keys"]

logger = logging.getLogger(__name__)

declare_options(
    "Network dicts",
    {
        "network": (
            None,
            "RETURNN's network dict {name: {'class': ..., 'from': ..., ...}}: the model, instead of get_model.",
        ),
        "extern_data": (
            None,
            "The data keys of a network, and of step functions that take extern_data (default there: inferred from "
            "the data): {key: {'dim': ..., 'sparse': ..., 'shape': ...}} or {key: {'dims': [batch_dim, ...]}}.",
        ),
        "num_inputs": (None, "Old form of extern_data: the feature dim of 'data'."),
        "num_outputs": (None, "Old form of extern_data: the classes of 'classes' (int), or {key: [dim, ndim]}."),
        "target": ("classes", "The data key of a loss's target where the layer sets no 'target'."),
        "forward_output_layer": ("output", "Task forward of a network: the layer written to output_file."),
        "output_file": (
            None,
            "Task forward of a network, or of a forward_step(*, model, extern_data) without forward_callback: the HDF "
            "file (mainline forward_step default: dump-fwd-epoch-<epoch>.hdf); task compute_priors: the priors file.",
        ),
    },
)


def build_network(
    config: Config, data_specs: dict[str, DataSpec] | None = None, net_dict: dict[str, Any] | None = None
) -> Network:
    """The network of the config's ``network`` dict.

    :param data_specs: the input data; by default from ``extern_data`` / ``num_outputs`` or the train dataset
    :param net_dict: another network dict than ``network`` (a pretrain stage)
    """
    if net_dict is None:
        net_dict = config.typed_value("network")
    if data_specs is None:
        data_specs = data_specs_from_config(config) or _data_specs_from_datasets(config)
    flat = flatten_subnetworks(net_dict)
    entries = NetworkBuilder(flat, data_specs, default_target=config.value("target")).build()
    return Network(entries, data_specs)


def _data_specs_from_datasets(config: Config) -> dict[str, DataSpec]:
    from returnn.datasets import init_dataset

    for name in ("train", "dev", "forward"):
        definition = config.typed_value(name)
        if definition:
            return data_specs_from_dataset(init_dataset(definition, default_kwargs={"name": name}))
    raise ConfigError(
        "network: the data dims are unknown: set extern_data = {'data': {'dim': ...}, 'classes': {'dim': ..., "
        "'sparse': True}} (or num_inputs / num_outputs), or define a 'train' dataset"
    )


def score_keys(network: Network) -> dict[str, tuple[str, str]]:
    """The score and error keys (without the dataset prefix) of each loss layer, as RETURNN names them: ``score``
    and ``error`` when the network has one loss, else ``score_<layer>`` and ``error_<layer>``."""
    layers = network.loss_layers()
    if len(layers) == 1:
        return {layers[0]: ("score", "error")}
    return {layer: (f"score_{layer}", f"error_{layer}") for layer in layers}


def mark_losses(network: Network, outputs: dict[str, Any], run_ctx: Any) -> None:
    """Mark the network's losses on ``run_ctx`` as RETURNN's TensorFlow backend optimizes and reports them.

    The objective gets each loss summed over the batch times ``loss_scale`` (normalized only with
    ``use_normalized_loss``), plus the constraints in training; the scores (``<dataset>_score...``,
    ``<dataset>_error...``) are normalized per frame (per target label for ctc).
    """
    keys = score_keys(network)
    specs = network.loss_specs()
    for layer, values in network.losses(outputs).items():
        spec = specs[layer]
        score_key, error_key = keys[layer]
        run_ctx.mark_as_loss(
            values.loss,
            layer,
            scale=spec.scale,
            inv_norm_factor=values.norm,
            use_normalized_loss=spec.normalized,
            score_key=score_key,
        )
        if values.error is not None:
            run_ctx.mark_as_loss(
                values.error.float(), f"{layer}:error", scale=0.0, inv_norm_factor=values.norm, score_key=error_key
            )
    if network.training:
        constraints = network.constraints(outputs)
        if constraints is not None:
            run_ctx.mark_as_loss(constraints, "constraints", use_normalized_loss=False, score_key="")


def _network_of(model: torch.nn.Module) -> Network:
    module = getattr(model, "module", model)  # a wrapper (e.g. for data parallelism) keeps the network as .module
    if not isinstance(module, Network):
        raise ConfigError(f"the model is a {type(module).__name__}, not the network of the config's 'network' dict")
    return module


def network_get_model(*, config: Config, epoch: int, step: int, **kwargs) -> Network:
    """``get_model`` of a network config (with ``pretrain``: the network of ``epoch``, see
    :mod:`returnn.torch.network.pretrain`)."""
    from returnn.torch.network.growth import build_pretrain_network
    from returnn.torch.network.pretrain import pretrain_from_config

    pretrain = pretrain_from_config(config)
    if pretrain is not None:
        return build_pretrain_network(config, pretrain, epoch)
    return build_network(config)


def network_train_step(*, model: torch.nn.Module, data: dict[str, Any], run_ctx: Any, **kwargs) -> None:
    """``train_step`` of a network config: run the network, mark its losses."""
    outputs = model(data)
    mark_losses(_network_of(model), outputs, run_ctx)


def network_forward_init_hook(run_ctx: Any, *, config: Config, **kwargs) -> None:
    """Open ``output_file`` for the forward output layer."""
    from returnn.datasets.util.hdf_writer import SimpleHDFWriter

    network = _network_of(run_ctx.engine.model)
    layer = config.value("forward_output_layer")
    if layer not in network.specs():
        raise ConfigError(
            f"config key 'forward_output_layer': {layer!r} is not a layer of the network; layers: "
            f"{', '.join(network.specs())}"
        )
    filename = config.value("output_file")
    if not filename:
        raise ConfigError("task 'forward' of a network needs 'output_file': the HDF file to write the outputs to")
    spec = network.specs()[layer]
    ndim = int(spec.time) + len(spec.spatial) + int(spec.feature_axis)
    output = ForwardOutputFile(filename, run_ctx.engine.data_parallel)
    run_ctx.network_output = (layer, SimpleHDFWriter(output.path, dim=spec.dim, ndim=max(ndim, 1)), output)


def network_forward_step(*, model: torch.nn.Module, data: dict[str, Any], run_ctx: Any, **kwargs) -> None:
    """Write the forward output layer of the batch's sequences."""
    layer, writer, output = run_ctx.network_output
    out = model(data)[layer]
    tensor = out.tensor.float() if out.tensor.is_floating_point() else out.tensor
    lengths = out.lengths if out.lengths is not None else torch.ones(tensor.shape[0], dtype=torch.int64)
    writer.insert_batch(tensor.cpu().numpy(), np.asarray(lengths.cpu()), list(data["seq_tag"]))
    output.add(data["seq_idx"])


def network_forward_finish_hook(run_ctx: Any, **kwargs) -> None:
    """Close ``output_file`` (with several processes: this process's part, which rank 0 merges into it)."""
    layer, writer, output = run_ctx.network_output
    writer.close()
    output.finish(written=True)
    logger.info(f"forward: wrote layer {layer!r} to {output.filename}")


def network_step_functions(config: Config, defined: dict[str, Any]) -> dict[str, Any]:
    """The functions a network config gets, given those it defines itself (``defined``)."""
    if "get_model" in defined:
        raise ConfigError(
            "the config defines both 'network' and 'get_model'; a network dict is the model: remove one of them"
        )
    data_specs_from_config(config)  # read and checked now: a mistake there stops the run before anything is built
    functions = {"get_model": functools.partial(network_get_model, config=config)}
    if "train_step" not in defined:
        functions["train_step"] = network_train_step
    if "forward_step" not in defined:
        functions["forward_step"] = network_forward_step
        functions["forward_init_hook"] = functools.partial(network_forward_init_hook, config=config)
        functions["forward_finish_hook"] = network_forward_finish_hook
    return functions
