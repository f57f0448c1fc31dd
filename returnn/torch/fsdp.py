"""``reduce_type = "fsdp"``: torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) shards the parameters, gradients
and optimizer state over the processes, for models whose parameters and optimizer state do not fit one device.

``fully_shard`` changes the config's module in place: the submodules whose class is named in ``fsdp_modules``
(e.g. ``["TransformerBlock"]``) and then the module itself become FSDP units, and every parameter becomes a DTensor
that holds only this process's shard. ``train_step`` therefore still gets the config's own module, but that module
is now the sharded one. For a step function this means:

- A unit gathers its full parameters in a hook of its ``forward`` and frees them after it. Call the module
  (``model(...)``) and the listed submodules through ``__call__``: parameters of the root unit that are used without
  ``model(...)`` (e.g. ``model.encode(x)`` for a method ``encode``) are still shards, and torch then fails on the
  DTensors. Name such methods in ``fsdp_forward_methods`` (``["encode"]``): they then gather the root unit's
  parameters as ``forward`` does (``torch.distributed.fsdp.register_fsdp_forward_method``).
- Every process must run the same units' forwards in each step, also without gradients: a process whose data is
  done (the last round of an epoch, the evaluation of a dataset with fewer batches on it) repeats its last batch of
  the task with its losses ignored and zero gradients. A process that had no batch at all yet has nothing to repeat:
  that is an error (give each process at least one batch).
- The model is built whole on every process (``get_model``, then moved to ``device``) and sharded afterwards: its
  parameters must fit the device once (not its gradients and optimizer state, which are sharded); building it on
  the meta device is not supported.
- Accumulated gradients (``accum_grad_multiple_step``) stay unsharded inside FSDP between updates
  (``set_requires_gradient_sync(False)``) and are reduce-scattered in the update step; checkpoints do not hold
  gradients accumulated since the last update (a run resumed from one starts without them, with a warning).
- Not with ``gradient_noise`` or ``ema_decay`` (configuration errors).

Checkpoints stay ``<model>.<epoch>.pt`` and ``.opt.pt`` with full, plain tensors (gathered with
``torch.distributed.checkpoint.state_dict``), in the same form as from one process: they load in one process with
``weights_only=True``, and an FSDP run resumes from them with any number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from returnn.errors import ConfigError

__all__ = ["DTYPES", "FsdpStep", "check_fsdp_options", "is_sharded"]

# The names accepted for ``param_dtype`` and ``reduce_dtype``.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, on the CPU
_FULL_LOAD = StateDictOptions(full_state_dict=True)  # every process passes the whole state (each reads the file)


def check_fsdp_options(
    fsdp_modules: Any, fsdp_forward_methods: Any, param_dtype: Any, reduce_dtype: Any, cpu_offload: Any, where: str
) -> None:
    """Raise a ConfigError unless the fsdp options have their types."""
    for name, value, example in (
        ("fsdp_modules", fsdp_modules, "module class names (e.g. ['TransformerBlock'])"),
        ("fsdp_forward_methods", fsdp_forward_methods, "method names of the model (e.g. ['encode'])"),
    ):
        if value is not None and not (
            isinstance(value, (list, tuple)) and all(isinstance(x, str) and x for x in value)
        ):
            raise ConfigError(f"{where}: {name!r} must be a list of {example}, got {value!r}")
    for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
        if value is not None and value not in DTYPES:
            raise ConfigError(f"{where}: unknown {name} {value!r}; choose one of: {', '.join(DTYPES)} (or None)")
    if not isinstance(cpu_offload, bool):
        raise ConfigError(f"{where}: 'cpu_offload' must be True or False, got {cpu_offload!r}")


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` made this module an FSDP unit."""
    return isinstance(module, FSDPModule)


class FsdpStep:
    """The config's module, sharded in place, and what runs around a train step.

    :param module: the config's module on this process's device, equal in all processes (broadcast before)
    :param fsdp_modules: class names of the submodules that become units of their own (before the root)
    :param fsdp_forward_methods: methods of the module that gather the root unit's parameters as ``forward`` does
    :param param_dtype: the dtype of the gathered parameters in forward and backward (None: their own)
    :param reduce_dtype: the dtype in which gradients are reduced (None: that of the gathered parameters)
    :param cpu_offload: keep the shards (parameters, gradients, optimizer state) on the CPU
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        fsdp_modules: list[str] | None = None,
        fsdp_forward_methods: list[str] | None = None,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        cpu_offload: bool = False,
    ):
        kwargs: dict[str, Any] = {}
        if param_dtype is not None or reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=DTYPES.get(param_dtype), reduce_dtype=DTYPES.get(reduce_dtype)
            )
        if cpu_offload:  # pinned memory speeds up the copies to a GPU, and needs one
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        names = set(fsdp_modules or ())
        units = [sub for sub in module.modules() if sub is not module and type(sub).__name__ in names]
        missing = sorted(names - {type(sub).__name__ for sub in units})
        if missing:
            present = sorted({type(sub).__name__ for sub in module.modules() if sub is not module})
            raise ConfigError(
                f"config key 'torch_distributed': 'fsdp_modules' names {missing}, which the model does not contain; "
                f"its submodule classes are: {present}"
            )
        methods = [name for name in fsdp_forward_methods or () if not callable(getattr(module, name, None))]
        if methods:
            raise ConfigError(
                f"config key 'torch_distributed': 'fsdp_forward_methods' names {methods}, which "
                f"{type(module).__name__} does not have as methods"
            )
        for sub in reversed(units):  # innermost first: a unit's parameters exclude those of units inside it
            fully_shard(sub, **kwargs)
        fully_shard(module, **kwargs)
        for name in fsdp_forward_methods or ():
            register_fsdp_forward_method(module, name)
        self.module = module

    @contextlib.contextmanager
    def step(self, *, sync: bool) -> Iterator[None]:
        """Around one train step: reduce-scatter its gradients in the backward pass if ``sync`` (an update step),
        else accumulate them unsharded."""
        self.module.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The full parameters and buffers as plain CPU tensors on rank 0 (empty elsewhere), in the order of
        ``state_dict()``; a collective."""
        full = get_model_state_dict(self.module, options=_FULL)
        return {name: full[name] for name in self.module.state_dict() if name in full}

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full state dict (every process passes the same one)."""
        set_model_state_dict(self.module, state, options=_FULL_LOAD)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer, param_names: list[str]) -> dict[str, Any]:
        """The optimizer's full state on rank 0 (empty elsewhere), in the form of ``optimizer.state_dict()`` of one
        process (parameters by index in ``param_names``); a collective."""
        state = get_optimizer_state_dict(self.module, optimizer, options=_FULL)
        if not state:
            return {}
        index = {name: i for i, name in enumerate(param_names)}
        return {
            "state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [
                {**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]
            ],
        }

    def load_optimizer_state_dict(
        self, optimizer: torch.optim.Optimizer, state: dict[str, Any], param_names: list[str]
    ) -> None:
        """Load a state of the form of :meth:`optimizer_state_dict` (every process passes the same one)."""
        by_name = {
            "state": {param_names[i]: value for i, value in state["state"].items()},
            "param_groups": [
                {**group, "params": [param_names[i] for i in group["params"]]} for group in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(self.module, optimizer, by_name, options=_FULL_LOAD)
