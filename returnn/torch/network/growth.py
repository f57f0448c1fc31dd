"""The engine's side of pretraining (:mod:`returnn.torch.network.pretrain` has the stages): the network of each
epoch, built anew when it differs from the one trained before, with the parameters and optimizer state it shares.

- :func:`train_start_model_epoch`: a training that continues from a checkpoint builds the network of the checkpoint's
  epoch (the engine's ``_init_model``);
- :func:`pretrain_epoch_start`: at the start of each epoch (the engine's ``on_epoch_start``) the fixed learning rate
  of the pretrain phase, and the new model and updater when the epoch's network differs: :func:`copy_params` copies
  what the two networks share, the rest is initialized fresh (seeded from the epoch and step, as every model build),
  and the optimizer keeps the state of the parameters copied whole.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.learning_rate_file import EpochData
from returnn.torch.network.pretrain import COPY_PARAM_MODES, Pretrain, pretrain_from_config
from returnn.torch.network.steps import build_network

if TYPE_CHECKING:
    from returnn.torch.engine import Engine
    from returnn.torch.model_loading import StartPoint
    from returnn.torch.updater import Updater

__all__ = ["build_pretrain_network", "train_start_model_epoch", "pretrain_epoch_start", "copy_params"]

logger = logging.getLogger(__name__)

declare_options(
    "Network dicts: pretraining",
    {
        "pretrain_learning_rate": (None, "The fixed learning rate of the pretrain epochs (default: learning_rate)."),
        "use_learning_rate_control_always": (
            False,
            "Pretraining: the learning rate control decides the pretrain epochs' rates too (no fixed rate).",
        ),
    },
)


def _layers_of(net_dict: dict[str, Any]) -> dict[str, Any]:
    """The layers of a stage's dict: without its "#" keys (``#copy_param_mode``)."""
    return {name: layer for name, layer in net_dict.items() if not (isinstance(name, str) and name.startswith("#"))}


def build_pretrain_network(config: Config, pretrain: Pretrain, epoch: int) -> torch.nn.Module:
    """The network of ``epoch``; it keeps its dict as ``net_dict`` (the epoch start compares it with the next)."""
    net_dict = pretrain.network_for_epoch(epoch)
    layers = _layers_of(net_dict)
    # the data specs of the first build serve the later ones (without extern_data they come from the train dataset)
    network = build_network(config, data_specs=pretrain.data_specs, net_dict=layers)
    pretrain.data_specs = network.data_specs
    network.net_dict = net_dict
    return network


def train_start_model_epoch(config: Config, start: StartPoint) -> int:
    """The epoch whose model a training that starts at ``start`` builds: ``start.epoch``, but a checkpoint of a
    pretraining holds the network of its own epoch (the next epoch's network grows from it at the epoch start)."""
    pretrain = pretrain_from_config(config)  # read now: a mistake in it stops the run before anything is built
    if start.kind in ("resume", "load") and pretrain is not None:
        return max(start.epoch - 1, 1)
    return start.epoch


def pretrain_epoch_start(engine: Engine, epoch: int) -> tuple[torch.nn.Module, Updater] | None:
    """At the start of a train epoch: the learning rate of a pretrain epoch, and the new model and updater when the
    network of ``epoch`` differs from the one trained so far (None when it does not, or without pretraining)."""
    pretrain = pretrain_from_config(engine.config)
    if pretrain is None:
        return None
    _fix_learning_rate(engine, pretrain, epoch)
    net_dict = pretrain.network_for_epoch(epoch)
    old_model = engine.model
    old_dict = getattr(_network_of(old_model), "net_dict", None)
    grown = None
    change = "network=unchanged" if epoch > 1 else "network=new"
    if old_dict != net_dict:
        grown = _grow(engine, pretrain, old_model, net_dict, epoch)
        new_layers = [name for name in _layers_of(net_dict) if name not in (old_dict or {})]
        copied = grown[2]
        fresh = [name for name, _ in grown[0].named_parameters() if name not in copied]
        change = (
            f"new_layers={','.join(new_layers) or '-'} copied_params={len(copied)} "
            f"fresh_params={','.join(fresh) or '-'}"
        )
    if pretrain.is_pretrain_epoch(epoch):
        layers = ",".join(_layers_of(net_dict))
        logger.info(f"pretrain epoch={epoch} of={pretrain.num_epochs} layers={layers} {change}")
    elif grown is not None or epoch == pretrain.num_epochs + 1:
        logger.info(f"pretrain done: epoch={epoch} trains the whole network, {change}")
    return grown[:2] if grown is not None else None


def _grow(
    engine: Engine, pretrain: Pretrain, old_model: torch.nn.Module, net_dict: dict[str, Any], epoch: int
) -> tuple[torch.nn.Module, Updater, set[str]]:
    """The model of ``net_dict`` with the parameters of ``old_model`` that it shares, its updater with their
    optimizer state, and the names of those parameters."""
    new_model = engine.build_model(epoch=epoch, step=engine.global_step)
    skip = set()
    if not pretrain.copy_output_layer:
        skip = {name for name, layer in _layers_of(net_dict).items() if _is_output(name, layer)}
    mode = net_dict.get("#copy_param_mode", pretrain.copy_param_mode)
    copied = copy_params(old_model.state_dict(), new_model, mode=mode, skip_layers=skip)
    updater = engine.build_updater(new_model)
    _carry_optimizer_state(engine.updater, updater, copied)
    return new_model, updater, copied


def _fix_learning_rate(engine: Engine, pretrain: Pretrain, epoch: int) -> None:
    """RETURNN's fixed rates: ``pretrain_learning_rate`` in the pretrain epochs, ``learning_rate`` right after."""
    config = engine.config
    if config.is_true("use_learning_rate_control_always"):
        return
    if pretrain.is_pretrain_epoch(epoch):
        learning_rate = config.float("pretrain_learning_rate")
        if learning_rate is None:
            learning_rate = config.float("learning_rate")
    elif epoch == pretrain.num_epochs + 1 and epoch > 1:
        learning_rate = config.float("learning_rate")
    else:
        return
    data = engine.learning_rate_control.epoch_data.get(epoch)
    if data is None:
        engine.learning_rate_control.epoch_data[epoch] = EpochData(learning_rate=learning_rate)
    elif data.learning_rate is None:
        data.learning_rate = learning_rate


def _network_of(model: torch.nn.Module) -> Any:
    return getattr(model, "module", model)


def _is_output(name: str, layer: dict[str, Any]) -> bool:
    """RETURNN's output layers for ``copy_output_layer``: ``is_output_layer``, else a loss or the name "output"."""
    if layer.get("is_output_layer") is not None:
        return bool(layer["is_output_layer"])
    return bool(layer.get("loss")) or name == "output"


def copy_params(
    old_state: dict[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    mode: str | None = None,
    skip_layers: Collection[str] = (),
) -> set[str]:
    """Copy the entries of ``old_state`` (a state dict) into ``model`` as pretraining does between two epochs.

    :param mode: ``copy_param_mode``: None / "ifpossible": entries of the same name and shape; "subset": also the
        overlapping part (from index 0 on each axis) of an entry of the same name and rank; "reset": none
    :param skip_layers: layers whose parameters stay as initialized (``<layer>.<param>``)
    :return: the names of the entries copied whole (those whose optimizer state carries over)
    """
    if mode not in COPY_PARAM_MODES:
        raise ConfigError(f"'#copy_param_mode': unknown mode {mode!r}; choose one of: {COPY_PARAM_MODES}")
    copied: set[str] = set()
    if mode == "reset":
        return copied
    with torch.no_grad():
        for name, target in model.state_dict().items():
            old = old_state.get(name)
            if old is None or name.split(".", 1)[0] in skip_layers:
                continue
            if old.shape == target.shape:
                target.copy_(old)
                copied.add(name)
            elif mode == "subset" and old.dim() == target.dim():
                overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, target.shape))
                target[overlap] = old[overlap]
                logger.info(f"pretrain: {name}: the part {list(old.shape)} of {list(target.shape)} copied")
            else:
                logger.info(f"pretrain: {name}: shape {list(old.shape)} -> {list(target.shape)}, initialized fresh")
    return copied


def _carry_optimizer_state(old: Updater, new: Updater, copied: set[str]) -> None:
    """Give ``new`` the optimizer state (and pending gradients) of the parameters copied whole from ``old``."""
    old_index = {name: i for i, name in enumerate(old.param_names)}
    old_state = old.optimizer.state_dict()
    new_state = new.optimizer.state_dict()
    state = {}
    for j, (name, param) in enumerate(zip(new.param_names, new.params)):
        i = old_index.get(name)
        if name not in copied or i is None:
            continue
        if i in old_state["state"]:
            state[j] = old_state["state"][i]
        grad = old.params[i].grad
        if grad is not None:
            param.grad = grad.detach().clone()
            new.has_local_gradients = True
    new.optimizer.load_state_dict({"state": state, "param_groups": new_state["param_groups"]})
    if old.grad_scaler is not None and new.grad_scaler is not None:
        new.grad_scaler.load_state_dict(old.grad_scaler.state_dict())
    new.num_consecutive_invalid = old.num_consecutive_invalid
