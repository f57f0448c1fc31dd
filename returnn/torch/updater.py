"""The updater: optimizer, learning rate, gradient accumulation, clipping and noise, and the AMP gradient scaler.

Per training step the engine calls :meth:`Updater.backward` with the step's total loss and then
:meth:`Updater.step`. Every ``accum_grad_multiple_step`` steps (counted over the whole run, so a restart or an epoch
end does not shift it), ``step`` unscales the gradients (float16 AMP), adds ``gradient_noise``, clips them
(``gradient_clip`` by value, then ``gradient_clip_norm`` by global norm) and updates the parameters. Accumulated
gradients are summed, not averaged, so the reported losses stay as they are.

A non-finite gradient norm (only computed with ``gradient_clip_norm``) skips the update; after
``gradient_clip_norm_invalid_gradient_threshold`` such steps in a row, training stops. With float16 AMP the gradient
scaler handles non-finite gradients itself (it skips the update and lowers its scale), so they do not count there.

With several processes (a :class:`~returnn.torch.distributed.DataParallel`), the gradients are averaged over the
processes (by DDP during the backward pass, or explicitly) before anything else in an update step uses them, so that
the scaler, the clipping and the optimizer see the same gradients in every process and the parameters stay equal;
``gradient_noise`` then draws the same noise in every process.
Accumulated gradients are each process's own: the optimizer file keeps those of every process, and each process
gets its own back when training resumes.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.tensor import DTensor

import returnn
from returnn.config import Config, declare_options
from returnn.errors import CheckpointError, ConfigError, TrainingError
from returnn.lr_schedules import schedule_from_config
from returnn.torch.distributed import DataParallel
from returnn.torch.ema import WeightAverage
from returnn.torch.random_state import derive_seed
from returnn.torch.step_functions import check_accepts_kwargs

logger = logging.getLogger(__name__)

__all__ = ["Updater", "create_optimizer", "optimizer_classes"]

declare_options(
    "Optimizer",
    {
        "optimizer": (
            None,
            'The optimizer: {"class": "adam", ...}; class is any torch.optim optimizer (name, any case) or an '
            "Optimizer subclass; the other entries are its arguments (epsilon = eps).",
        ),
        "gradient_clip": (None, "Clip each gradient value to [-x, x]."),
        "gradient_clip_norm": (None, "Clip the global gradient norm to x."),
        "gradient_clip_global_norm": (None, "Alias of gradient_clip_norm."),
        "gradient_clip_norm_invalid_gradient_threshold": (
            3,
            "With gradient_clip_norm: a non-finite gradient norm skips the update; this many in a row stop training.",
        ),
        "gradient_noise": (None, "Add Gaussian noise with this standard deviation to the gradients."),
        "accum_grad_multiple_step": (1, "Update every N steps with the summed gradients of those steps."),
        "adam": (
            False,
            "RETURNN's TensorFlow-era form of optimizer = {'class': 'adam'} (used where optimizer is unset).",
        ),
        "nadam": (False, "TensorFlow-era form of optimizer = {'class': 'nadam'}."),
        "adadelta": (False, "TensorFlow-era form of optimizer = {'class': 'adadelta'}."),
        "rmsprop": (False, "TensorFlow-era form of optimizer = {'class': 'rmsprop'}."),
        "optimizer_epsilon": (1e-16, "The epsilon of the TensorFlow-era optimizer flags (adam = True, ...)."),
        "dynamic_learning_rate": (
            None,
            "dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs) -> float: "
            "the learning rate of each step, given the epoch's.",
        ),
    },
)


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """The torch.optim optimizers by lower-case name."""
    classes = {}
    for name in dir(torch.optim):
        value = getattr(torch.optim, name)
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer:
            classes[name.lower()] = value
    return classes


def optimizer_from_flags(config: Config) -> dict[str, Any] | None:
    """The optimizer dict of RETURNN's TensorFlow-era flags (``adam = True`` with ``optimizer_epsilon``), or None."""
    chosen = [name for name in ("adam", "nadam", "adadelta", "rmsprop") if config.bool(name)]
    epsilon = config.float("optimizer_epsilon")
    if len(chosen) > 1:
        raise ConfigError(f"config keys {', '.join(chosen)} are all True; choose one optimizer")
    return {"class": chosen[0], "epsilon": epsilon} if chosen else None


def _optimizer_class(spec: Any) -> type[torch.optim.Optimizer]:
    if isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer):
        return spec
    classes = optimizer_classes()
    if isinstance(spec, str) and spec.lower() in classes:
        return classes[spec.lower()]
    raise ConfigError(
        f"config key 'optimizer': unknown class {spec!r}; give a torch.optim.Optimizer subclass or one of: "
        f"{', '.join(sorted(classes))}"
    )


def create_optimizer(
    params: list[torch.nn.Parameter], options: dict[str, Any], learning_rate: float
) -> torch.optim.Optimizer:
    """The optimizer of the ``optimizer`` config dict (which is left as it is).

    :param params: the parameters to optimize (all in one group: ``weight_decay`` applies to all)
    :param options: ``{"class": name_or_class, **arguments}``; ``epsilon`` means ``eps``
    :param learning_rate: the initial learning rate
    """
    if not isinstance(options, dict) or "class" not in options:
        raise ConfigError(
            f"config key 'optimizer': expected a dict with 'class', e.g. {{'class': 'adam'}}, got {options!r}"
        )
    kwargs = {key: value for key, value in options.items() if key != "class"}
    cls = _optimizer_class(options["class"])
    if "epsilon" in kwargs:
        if "eps" in kwargs:
            raise ConfigError("config key 'optimizer': both 'epsilon' and 'eps' are given; keep one")
        kwargs["eps"] = kwargs.pop("epsilon")
    if "learning_rate" in kwargs or "lr" in kwargs:
        raise ConfigError(
            "config key 'optimizer': set the learning rate with the config key 'learning_rate' (or "
            "'learning_rates'), not inside the optimizer dict"
        )
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            choices = [name for name in accepted if name not in ("self", "params", "lr")]
            raise ConfigError(
                f"config key 'optimizer': {cls.__name__} has no option(s) {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(choices)}"
            )
    try:
        return cls(params, lr=learning_rate, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'optimizer': cannot create {cls.__name__}: {exc}") from exc


def _positive_or_none(config: Config, key: str) -> float | None:
    value = config.float(key)
    if value is None or value == 0:  # 0 means off (it would zero every gradient)
        return None
    if value < 0:
        raise ConfigError(f"config key {key!r}: expected a number > 0 (or 0 / None for off), got {value!r}")
    return value


class Updater:
    """Applies the gradients to the model's parameters.

    :param model: the model to train
    :param optimizer_options: the ``optimizer`` dict
    :param learning_rate: the initial learning rate
    :param device: the model's device (for the gradient scaler)
    :param amp_dtype: the AMP dtype; float16 gets a gradient scaler
    :param data_parallel: the process group when training with several processes
    :param noise_seed: with several processes, ``gradient_noise`` is seeded from it and the step
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        optimizer_options: dict[str, Any],
        learning_rate: float,
        device: str = "cpu",
        amp_dtype: torch.dtype | None = None,
        gradient_clip: float | None = None,
        gradient_clip_norm: float | None = None,
        invalid_gradient_threshold: int = 3,
        gradient_noise: float | None = None,
        accum_grad_multiple_step: int = 1,
        dynamic_learning_rate: Callable[..., float] | None = None,
        data_parallel: DataParallel | None = None,
        noise_seed: int = 0,
        ema_decay: float | None = None,
    ):
        self.model = model
        self.param_names = [name for name, _ in model.named_parameters()]
        self.params = [param for _, param in model.named_parameters()]
        self.optimizer = create_optimizer(self.params, optimizer_options, learning_rate)
        self.grad_scaler = torch.amp.GradScaler(torch.device(device).type) if amp_dtype == torch.float16 else None
        self.gradient_clip = gradient_clip
        self.gradient_clip_norm = gradient_clip_norm
        self.invalid_gradient_threshold = invalid_gradient_threshold
        self.gradient_noise = gradient_noise
        self.accum_grad_multiple_step = accum_grad_multiple_step
        self.dynamic_learning_rate = dynamic_learning_rate
        self.epoch = 0
        self.epoch_learning_rate = learning_rate
        self.epoch_continuous: float | None = None  # epoch - 1 + the share of the epoch done; set by the engine
        self.num_consecutive_invalid = 0
        self.data_parallel = data_parallel
        self.noise_seed = noise_seed
        self.has_local_gradients = False  # since the last update, in this process
        self.last_grad_norm: float | None = None  # of the last step, before clipping; None if it made no update
        self.num_skipped_updates = 0  # non-finite gradient norm, over the updater's life
        self.ema = WeightAverage(model, ema_decay) if ema_decay is not None else None
        self.fsdp = data_parallel.fsdp if data_parallel is not None else None  # the sharded model's state helpers
        if self.fsdp is not None and (gradient_noise is not None or ema_decay is not None):
            raise ConfigError(
                "torch_distributed reduce_type 'fsdp' does not support 'gradient_noise' or 'ema_decay' (the "
                "parameters and gradients are shards); remove them or use reduce_type 'grad'"
            )

    @classmethod
    def from_config(
        cls,
        config: Config,
        model: torch.nn.Module,
        *,
        device: str,
        amp_dtype: torch.dtype | None,
        data_parallel: DataParallel | None = None,
    ) -> Updater:
        """The updater of the config's ``optimizer``, ``learning_rate`` and gradient options (see the module doc)."""
        options = config.typed_value("optimizer")
        flagged = optimizer_from_flags(config)
        if options is None:
            options = flagged
        if options is None:
            raise ConfigError(
                "config key 'optimizer' is not set; training needs one, e.g. optimizer = {'class': 'adam'}"
            )
        clip_norm = _positive_or_none(config, "gradient_clip_norm")
        clip_global_norm = _positive_or_none(config, "gradient_clip_global_norm")
        if clip_norm is not None and clip_global_norm is not None:
            raise ConfigError("config keys 'gradient_clip_norm' and 'gradient_clip_global_norm' are both set; keep one")
        accum = config.int("accum_grad_multiple_step")
        if accum is None or accum < 1:
            raise ConfigError(f"config key 'accum_grad_multiple_step': expected an int >= 1, got {accum!r}")
        threshold = config.int("gradient_clip_norm_invalid_gradient_threshold")
        dynamic_learning_rate = config.callable("dynamic_learning_rate")
        if dynamic_learning_rate is not None:
            check_accepts_kwargs(
                dynamic_learning_rate,
                "dynamic_learning_rate",
                "dynamic_learning_rate(*, global_train_step, epoch, learning_rate, **kwargs)",
            )
        schedule = schedule_from_config(config)
        if schedule is not None and dynamic_learning_rate is not None:
            if config.typed_value("learning_rate_schedule") is not None:
                raise ConfigError(
                    "config keys 'learning_rate_schedule' and 'dynamic_learning_rate' are both set; keep one"
                )
        elif schedule is not None:  # (with a dynamic_learning_rate, mainline's piecewise keys are the function's)
            dynamic_learning_rate = schedule.dynamic_learning_rate
        return cls(
            model,
            optimizer_options=options,
            learning_rate=config.float("learning_rate"),
            device=device,
            amp_dtype=amp_dtype,
            gradient_clip=_positive_or_none(config, "gradient_clip"),
            gradient_clip_norm=clip_norm if clip_norm is not None else clip_global_norm,
            invalid_gradient_threshold=threshold,
            gradient_noise=_positive_or_none(config, "gradient_noise"),
            accum_grad_multiple_step=accum,
            dynamic_learning_rate=dynamic_learning_rate,
            data_parallel=data_parallel,
            noise_seed=config.int("random_seed"),
            ema_decay=WeightAverage.decay_from_config(config),
        )

    # ---------------------------------------------------------------- learning rate

    def set_epoch_learning_rate(self, epoch: int, learning_rate: float) -> None:
        """The learning rate for the coming epoch (before ``dynamic_learning_rate``)."""
        self.epoch = epoch
        self.epoch_learning_rate = learning_rate
        self._set_learning_rate(learning_rate)

    def _set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    @property
    def learning_rate(self) -> float:
        """The learning rate currently in effect."""
        return self.optimizer.param_groups[0]["lr"]

    # ---------------------------------------------------------------- the step

    def backward(self, loss: torch.Tensor) -> None:
        """Add this step's gradients (scaled with float16 AMP). With several processes, call it inside
        ``data_parallel.gradient_step`` (DDP all-reduces the gradients during this backward pass)."""
        if self.data_parallel is not None:
            loss = self.data_parallel.before_backward(loss)
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        self.has_local_gradients = True

    def is_update_step(self, global_step: int) -> bool:
        """Whether the step with this index (0-based, over the whole run) applies the accumulated gradients."""
        return (global_step + 1) % self.accum_grad_multiple_step == 0

    def step(self, global_step: int, *, fetch: torch.Tensor | None = None) -> list[float]:
        """Update the parameters if this is an update step, and return ``fetch`` as Python floats.

        ``fetch`` (e.g. the step's loss values) is copied to the host together with the gradient norm, so a step
        waits for the device only once.

        :param global_step: the index of this step over the whole run (0-based)
        :param fetch: a 1-d tensor of values wanted on the host
        :raise TrainingError: too many non-finite gradient norms in a row
        """
        self.last_grad_norm = None
        if not self.is_update_step(global_step):
            return fetch.tolist() if fetch is not None else []
        if self.dynamic_learning_rate is not None:
            learning_rate = self.dynamic_learning_rate(
                global_train_step=global_step,
                epoch=self.epoch,
                epoch_continuous=self.epoch_continuous if self.epoch_continuous is not None else self.epoch - 1.0,
                learning_rate=self.epoch_learning_rate,
            )
            self._set_learning_rate(float(learning_rate))
        if self.data_parallel is not None:
            self.data_parallel.reduce_gradients(self.params, contributed=self.has_local_gradients)
        grad_norm = self._prepare_gradients(global_step)
        values = fetch.float() if fetch is not None else torch.zeros(0)
        if grad_norm is None:
            fetched = values.tolist()
            norm_is_finite = True
        else:
            if isinstance(grad_norm, DTensor):  # FSDP: the norm over the shards of all processes
                grad_norm = grad_norm.full_tensor()
            fetched = torch.cat([values, grad_norm.detach().float().reshape(1).to(values.device)]).tolist()
            self.last_grad_norm = fetched.pop()
            # without gradient_clip_norm the norm is only reported; the update happens as before
            norm_is_finite = math.isfinite(self.last_grad_norm) or self.gradient_clip_norm is None
        self._apply_gradients(global_step, norm_is_finite)
        if self.data_parallel is not None:
            self.data_parallel.after_update(self.params, num_updates=(global_step + 1) // self.accum_grad_multiple_step)
        if self.ema is not None:
            self.ema.update(self.model)
        return fetched

    def _prepare_gradients(self, global_step: int) -> torch.Tensor | None:
        """Unscale, add noise, clip. Returns the global gradient norm (before clipping), None without gradients."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if self.gradient_noise is not None:
            generators: dict[torch.device, torch.Generator] = {}
            for grad in (p.grad for p in self.params if p.grad is not None):
                grad.add_(self._noise_like(grad, global_step, generators) * self.gradient_noise)
        if self.gradient_clip is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.gradient_clip)
        if self.gradient_clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.gradient_clip_norm)
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else None

    def _noise_like(
        self, grad: torch.Tensor, global_step: int, generators: dict[torch.device, torch.Generator]
    ) -> torch.Tensor:
        if self.data_parallel is None:
            return torch.randn_like(grad)
        # Each process draws from its own random state; the noise must be the same everywhere (the gradients are).
        if grad.device not in generators:
            generator = torch.Generator(device=grad.device)
            generator.manual_seed(derive_seed(self.noise_seed, self.epoch, global_step))
            generators[grad.device] = generator
        return torch.randn(grad.shape, generator=generators[grad.device], device=grad.device, dtype=grad.dtype)

    def _apply_gradients(self, global_step: int, norm_is_finite: bool) -> None:
        if self.grad_scaler is not None:
            # the scaler checks for non-finite gradients itself: it skips such an update and lowers its scale
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        elif norm_is_finite:
            self.optimizer.step()
            self.num_consecutive_invalid = 0
        else:
            self.num_consecutive_invalid += 1
            self.num_skipped_updates += 1
            logger.warning(
                f"global_step={global_step} non-finite gradient norm, update skipped "
                f"({self.num_consecutive_invalid} in a row, stop at {self.invalid_gradient_threshold})"
            )
            if self.num_consecutive_invalid >= self.invalid_gradient_threshold:
                raise TrainingError(
                    f"the gradient norm was non-finite (nan/inf) in {self.num_consecutive_invalid} steps in a row "
                    f"(up to global step {global_step}); training stopped. Lower the learning rate, check the data, "
                    "or raise gradient_clip_norm_invalid_gradient_threshold"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.has_local_gradients = False

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The optimizer file's content (plain types). Includes gradients accumulated but not applied yet; with
        several processes, those of every process (``pending_grads_by_rank``, on rank 0, which writes the file), so
        every process must call this."""
        if self.fsdp is not None:
            return self._fsdp_state_dict()
        pending = {name: p.grad for name, p in zip(self.param_names, self.params) if p.grad is not None}
        state = {
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class_name": type(self.optimizer).__name__,
            "param_names": list(self.param_names),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "pending_grads": pending or None,
            "num_consecutive_invalid": self.num_consecutive_invalid,
            "returnn_version": returnn.__version__,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.data_parallel is not None:
            own = {name: grad.cpu() for name, grad in pending.items()} or None
            state["pending_grads_by_rank"] = self.data_parallel.gather_to_main(own)
        return state

    def _fsdp_state_dict(self) -> dict[str, Any]:
        """With FSDP: the full optimizer state gathered on rank 0, without accumulated gradients (they are inside
        FSDP, unsharded, until the next update)."""
        if self.has_local_gradients:
            logger.warning(
                "reduce_type 'fsdp': the optimizer file does not hold the gradients accumulated since the last update; "
                "a run resumed from it starts without them"
            )
        return {
            "optimizer": self.fsdp.optimizer_state_dict(self.optimizer, self.param_names),
            "optimizer_class_name": type(self.optimizer).__name__,
            "param_names": list(self.param_names),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "pending_grads": None,
            "num_consecutive_invalid": self.num_consecutive_invalid,
            "returnn_version": returnn.__version__,
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str) -> None:
        """Restore :meth:`state_dict` (also accepts a bare ``optimizer.state_dict()``, as older trainers saved).

        :param source: the file name, for messages
        """
        if "optimizer" not in state and "param_groups" in state:
            state = {"optimizer": state}
        saved_class, own_class = state.get("optimizer_class_name"), type(self.optimizer).__name__
        if saved_class is not None and saved_class != own_class:
            # torch would load it: the parameter groups would then lack the options of the new class
            raise CheckpointError(
                f"{source}: the optimizer state is of {saved_class}, but the config's optimizer is {own_class}; set "
                f"the optimizer class back to {saved_class!r}, or delete that file and set "
                f"allow_missing_optimizer_checkpoint = True to continue with a fresh {own_class} state"
            )
        saved_names = state.get("param_names")
        if saved_names is not None and list(saved_names) != self.param_names:
            raise CheckpointError(
                f"{source}: the optimizer state is for other parameters (it has {len(saved_names)}, the model "
                f"{len(self.param_names)}, or they are named differently); load the optimizer file of this model, "
                "or delete it and set allow_missing_optimizer_checkpoint = True"
            )
        try:
            if self.fsdp is not None:
                self.fsdp.load_optimizer_state_dict(self.optimizer, state["optimizer"], self.param_names)
            else:
                self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{source}: cannot load the optimizer state ({exc}); was it written with another optimizer class or "
                "parameter groups? Load the optimizer file of this training, or delete it and set "
                "allow_missing_optimizer_checkpoint = True to continue with a fresh optimizer state"
            ) from None
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        pending_grads = self._own_pending_grads(state, source=source) or {}
        if self.fsdp is not None and pending_grads:
            logger.warning(f"{source}: reduce_type 'fsdp' continues without the accumulated gradients saved there")
            pending_grads = {}
        for name, param in zip(self.param_names, self.params):
            pending = pending_grads.get(name)
            param.grad = pending.to(param.device) if pending is not None else None
        self.has_local_gradients = bool(pending_grads)
        self.num_consecutive_invalid = int(state.get("num_consecutive_invalid", 0))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], source=source)

    def _own_pending_grads(self, state: dict[str, Any], *, source: str) -> dict[str, torch.Tensor] | None:
        """The accumulated gradients that this process continues with."""
        process, processes = (
            (0, 1) if self.data_parallel is None else (self.data_parallel.rank, self.data_parallel.world_size)
        )
        by_rank = state.get("pending_grads_by_rank")
        if by_rank is None:  # saved by a single process: one process continues with them, else they would add up
            return state.get("pending_grads") if process == 0 else None
        if process == 0 and any(by_rank[processes:]):
            logger.warning(
                f"{source}: gradients accumulated by {len(by_rank)} processes, training goes on with {processes}; "
                f"those of ranks {processes}..{len(by_rank) - 1} are dropped"
            )
        return by_rank[process] if process < len(by_rank) else None
