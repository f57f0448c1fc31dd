"""The user functions of a config (``get_model``, ``train_step``, ``forward_step``, forward hooks), checked once.

Every such function must accept ``**kwargs``, so that the engine can pass new arguments in later versions without
breaking configs. This is checked when the engine starts (not by calling the function with a dummy argument).
A ``train_step`` or ``forward_step`` that takes ``extern_data`` is mainline RETURNN's kind: it gets exactly mainline's
arguments and is wrapped into this contract (see :mod:`returnn.torch.mainline_steps`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from returnn.config import Config, declare_options
from returnn.errors import ConfigError, StepFunctionError
from returnn.torch.mainline_steps import is_mainline_forward, mainline_functions, takes_extern_data

__all__ = ["StepFunctions", "check_accepts_kwargs"]

declare_options(
    "Model and step functions",
    {
        "get_model": (None, "get_model(*, epoch, step, **kwargs) -> torch.nn.Module: builds the model."),
        "train_step": (
            None,
            "train_step(*, model, data, run_ctx, **kwargs): computes the losses (run_ctx.mark_as_loss); "
            "also used for evaluation.",
        ),
        "forward_step": (None, "forward_step(*, model, data, run_ctx, **kwargs): task forward, per batch."),
        "forward_init_hook": (None, "forward_init_hook(run_ctx, **kwargs): called once before the forward loop."),
        "forward_finish_hook": (None, "forward_finish_hook(run_ctx, **kwargs): called once after the forward loop."),
    },
)

# how each function is called, for messages
SIGNATURES = {
    "get_model": "get_model(*, epoch, step, **kwargs)",
    "train_step": "train_step(*, model, data, run_ctx, **kwargs)",
    "forward_step": "forward_step(*, model, data, run_ctx, **kwargs)",
    "forward_init_hook": "forward_init_hook(run_ctx, **kwargs)",
    "forward_finish_hook": "forward_finish_hook(run_ctx, **kwargs)",
}


def check_accepts_kwargs(func: Callable[..., Any], name: str, signature: str) -> None:
    """Raise :class:`StepFunctionError` if ``func`` does not take ``**kwargs``.

    :param name: the config key of the function
    :param signature: how it should be written, e.g. ``"train_step(*, model, data, run_ctx, **kwargs)"``
    """
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature to check
        return
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise StepFunctionError(
            f"config function {name!r} must accept **kwargs (so that later versions can pass new arguments); "
            f"write it as 'def {signature}'"
        )


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The user functions that the config defines (None where it defines none)."""

    get_model: Callable[..., Any] | None = None
    train_step: Callable[..., Any] | None = None
    forward_step: Callable[..., Any] | None = None
    forward_init_hook: Callable[..., Any] | None = None
    forward_finish_hook: Callable[..., Any] | None = None
    # the forward functions are the trainer's own (a network dict's forward, mainline's forward_step with its outputs
    # to forward_callback or output_file), which gather the outputs of several processes themselves; a config's own
    # hooks run in a directory per process instead (see returnn.torch.forward_parts)
    forward_gathers_outputs: bool = False

    @classmethod
    def from_config(cls, config: Config) -> StepFunctions:
        """Read the functions and check that each accepts ``**kwargs``."""
        functions = {}
        for name in SIGNATURES:
            func = config.typed_value(name)
            if func is None:
                continue
            if not callable(func):
                raise ConfigError(
                    f"config key {name!r}: expected a function '{SIGNATURES[name]}', got {type(func).__name__}"
                )
            if not takes_extern_data(func):  # mainline's step functions get exactly mainline's arguments
                check_accepts_kwargs(func, name, SIGNATURES[name])
            functions[name] = func
        network_forward = False
        if config.typed_value("network") is not None:
            from returnn.torch.network.steps import network_step_functions

            network_forward = "forward_step" not in functions
            functions.update(network_step_functions(config, defined=functions))
        functions = mainline_functions(config, functions)
        gathers = network_forward or is_mainline_forward(functions.get("forward_step"))
        return cls(**functions, forward_gathers_outputs=gathers)

    def require(self, name: str, task: str) -> Callable[..., Any]:
        """The function ``name``; a clear error if the config lacks it.

        :param task: what needs it (for the message), e.g. "task 'forward'"
        """
        func = getattr(self, name)
        if func is None:
            raise StepFunctionError(f"{task} needs the config function {name!r}: define 'def {SIGNATURES[name]}'")
        return func
