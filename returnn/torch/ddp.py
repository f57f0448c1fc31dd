"""``reduce_type = "grad"``: torch's DistributedDataParallel around the config's own module.

The config's ``train_step`` gets the user's module, not the DDP wrapper: it may call the module, its submodules and
its methods in any way. What ``DistributedDataParallel.forward`` does before and after the module's forward is done
around the whole step instead (as mainline RETURNN does): :meth:`DdpStep.step` prepares the reducer before
``train_step`` runs, and :meth:`DdpStep.before_backward` hands the step's total loss to DDP, which then knows the
autograd graph of the step (``find_unused_parameters``) and all-reduces the gradients in buckets while the backward
pass runs. Between updates (``accum_grad_multiple_step``) the step runs under ``no_sync()``: the gradients
accumulate locally and are all-reduced with those of the update step.

What a step function must not do under DDP: compute the loss through a second copy of the module or its parameters
(only the parameters of the wrapped module are reduced); call ``backward`` itself (the engine does, through
:meth:`~returnn.torch.updater.Updater.backward`); leave some parameters without gradient in some steps unless
``find_unused_parameters`` is set (DDP then waits for gradients that never come, and torch's error says so).

A process whose data of the epoch is done while others still train runs :meth:`DdpStep.backward_without_data` in
their update steps: a backward pass of zero times every parameter, so that it takes part in the others' all-reduce
with zero gradients.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from returnn.errors import ConfigError, TrainingError

__all__ = ["COMM_HOOKS", "DdpStep", "check_ddp_options"]

# ``torch_distributed["comm_hook"]``: gradient compression before the all-reduce (torch's default hooks).
COMM_HOOKS = ("fp16_compress", "bf16_compress")
# Set by the trainer itself, not through ``torch_distributed["options"]``.
_RESERVED = ("module", "device_ids", "output_device", "process_group", "device_mesh")


def check_ddp_options(options: Any, where: str) -> None:
    """Raise a ConfigError unless ``options`` are keyword arguments of ``DistributedDataParallel``."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: 'options' must be a dict of DistributedDataParallel arguments, got {options!r}")
    accepted = [name for name in inspect.signature(DistributedDataParallel.__init__).parameters if name != "self"]
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"{where}: 'options' must not set {reserved}: the trainer sets them; remove them")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        choices = [name for name in accepted if name not in _RESERVED]
        raise ConfigError(
            f"{where}: 'options' has {unknown}, which DistributedDataParallel does not accept; choose from: {choices}"
        )


class DdpStep:
    """The DDP wrapper of a module and the parts of its forward that run around a train step.

    :param module: the config's module, on this process's device (its parameters are broadcast from rank 0 here)
    :param options: keyword arguments of ``DistributedDataParallel`` (``find_unused_parameters``,
        ``gradient_as_bucket_view``, ``static_graph``, ``bucket_cap_mb``, ``forward_sync_buffers`` (default False: the
        buffers are made equal at the end of each epoch instead), ...)
    :param comm_hook: one of :data:`COMM_HOOKS`, or None
    :param device: this process's device
    """

    def __init__(self, module: torch.nn.Module, options: dict[str, Any], comm_hook: str | None, device: str):
        if not (hasattr(DistributedDataParallel, "_pre_forward") and hasattr(DistributedDataParallel, "_post_forward")):
            raise TrainingError(
                f"torch {torch.__version__}: DistributedDataParallel lacks _pre_forward/_post_forward, through which "
                "the trainer runs train_step on the unwrapped module; set torch_distributed = "
                "{'reduce_type': 'grad_explicit'}"
            )
        kwargs = dict(options)
        if "broadcast_buffers" not in kwargs and "forward_sync_buffers" not in kwargs:
            # the buffers are made equal at the end of each epoch, not before each step
            accepted = inspect.signature(DistributedDataParallel.__init__).parameters
            kwargs["forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"] = False
        device_ = torch.device(device)
        if device_.type == "cuda":
            kwargs["device_ids"] = [device_.index if device_.index is not None else torch.cuda.current_device()]
        self.module = module
        self.ddp = DistributedDataParallel(module, **kwargs)
        if comm_hook is not None:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            try:
                self.ddp.register_comm_hook(None, getattr(default_hooks, f"{comm_hook}_hook"))
            except TypeError as exc:  # torch's check of what the backend supports (bf16 needs NCCL)
                raise ConfigError(
                    f"config key 'torch_distributed': comm_hook {comm_hook!r} cannot be used here ({exc}); use "
                    "another comm_hook or none"
                ) from exc
        self._params = [param for param in module.parameters() if param.requires_grad]
        self._prepared = False  # whether the current step's loss went through before_backward
        self._sync = True  # whether the current step all-reduces

    @contextlib.contextmanager
    def step(self, *, sync: bool) -> Iterator[None]:
        """Around one train step (forward and backward): all-reduce its gradients in the backward pass if ``sync``
        (an update step), else accumulate them locally."""
        with contextlib.nullcontext() if sync else self.ddp.no_sync():
            self._prepared, self._sync = False, sync
            try:
                self.ddp._pre_forward()
            except RuntimeError as exc:
                if "find_unused_parameters" not in str(exc):
                    raise
                raise TrainingError(
                    "DistributedDataParallel: some parameters got no gradient in the last update step; set "
                    "torch_distributed = {'options': {'find_unused_parameters': True}}, or use reduce_type "
                    f"'grad_explicit' (torch: {str(exc).splitlines()[0]})"
                ) from exc
            yield
            if sync and torch.is_grad_enabled() and not self._prepared:
                raise TrainingError(
                    "a train step computed gradients without passing its loss to Updater.backward, so DDP did not "
                    "all-reduce them; in an overridden Engine.run_train_step, call self.updater.backward(loss)"
                )

    def before_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on: DDP learns which parameters the step used (``find_unused_parameters``)
        and, for ``static_graph``, delays its first all-reduce through it."""
        self._prepared = True
        return self.ddp._post_forward(loss)

    def backward_without_data(self) -> None:
        """Take part in the other processes' gradient all-reduce with zero gradients (call it inside :meth:`step`;
        between updates there is nothing to take part in, and no gradients are made)."""
        if not self._sync:
            return
        zero = torch.stack([param.sum() for param in self._params]).sum() * 0.0
        self.before_backward(zero).backward()
