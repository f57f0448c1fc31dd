"""Mainline RETURNN's step functions on this engine: ``train_step(*, model, extern_data, **kwargs)`` and
``forward_step(*, model, extern_data, **kwargs)``.

A config function that takes ``extern_data`` is wrapped into this trainer's step contract: per batch, the ``data``
dict becomes a :class:`~returnn.tensor.TensorDict` (shaped by the config's ``extern_data``, else inferred from the
data), and ``returnn.frontend.get_run_ctx()`` reports to the engine's run context. In forward, the outputs marked with
``mark_as_output`` go per sequence to the config's ``forward_callback``, or else into the HDF file ``output_file``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError, StepFunctionError
from returnn.forward_iface import ForwardCallbackIface
from returnn.frontend.run_ctx import RunCtx as FrontendRunCtx
from returnn.frontend.run_ctx import using_frontend_run_ctx
from returnn.tensor import Dim, Tensor, TensorDict, batch_dim
from returnn.tensor.tensor import sizes_tensor
from returnn.torch.context import RunCtx
from returnn.torch.forward_output import ForwardOutputFile, GatheredCallback

__all__ = ["takes_extern_data", "mainline_functions", "is_mainline_forward"]

declare_options(
    "Model and step functions",
    {
        "model_outputs": (None, "Mainline's specs of the outputs that forward_step marks, like extern_data."),
        "forward_callback": (
            None,
            "With forward_step(*, model, extern_data): a returnn.forward_iface.ForwardCallbackIface (or its class) "
            "that gets each sequence's outputs; default: write them to output_file.",
        ),
    },
)


def takes_extern_data(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is a mainline step function (has a parameter ``extern_data``)."""
    try:
        return "extern_data" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def mainline_functions(config: Config, functions: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """``functions`` with mainline step functions wrapped into this trainer's contract."""
    result = dict(functions)
    template = _template(config, "extern_data")
    if "train_step" in functions and takes_extern_data(functions["train_step"]):
        result["train_step"] = _TrainStep(functions["train_step"], template)
    if "forward_step" in functions and takes_extern_data(functions["forward_step"]):
        hooks = sorted({"forward_init_hook", "forward_finish_hook"} & set(functions))
        if hooks:
            raise ConfigError(
                f"config: {hooks} together with forward_step(*, model, extern_data); mainline-style forwarding "
                "hands the outputs to forward_callback (a returnn.forward_iface.ForwardCallbackIface) instead"
            )
        forward = _Forward(functions["forward_step"], template, _template(config, "model_outputs"), config)
        result.update(forward_step=forward.step, forward_init_hook=forward.init, forward_finish_hook=forward.finish)
    return result


def is_mainline_forward(forward_step: Callable[..., Any] | None) -> bool:
    """Whether ``forward_step`` (as :func:`mainline_functions` returned it) is a mainline forward_step (whose outputs
    go to the ``forward_callback`` or the HDF ``output_file``, in one process or gathered from several)."""
    return isinstance(getattr(forward_step, "__self__", None), _Forward)


def _template(config: Config, key: str) -> TensorDict | None:
    specs = config.typed_value(key)
    if specs is None:
        return None
    if not isinstance(specs, dict):
        raise ConfigError(f"config key {key!r}: expected a dict {{name: data spec}}, got {type(specs).__name__}")
    return TensorDict(specs)


def extern_data_from_batch(template: TensorDict | None, data: dict[str, Any]) -> TensorDict:
    """The batch ``data`` (this trainer's data dict) as mainline's extern_data.

    With a template (the config's ``extern_data``), its tensors get the values and its dynamic dims the sizes of this
    batch (as in mainline, the same Dim objects every step); without, each data key becomes ``[batch, dynamic axes...,
    static feature axis]`` (3 axes and more) or ``[batch, dynamic axes...]``.
    """
    if template is None:
        template = TensorDict()
        for key, value in data.items():
            if isinstance(value, torch.Tensor) and ":size" not in key:
                static_last = value.dim() >= 3
                dims = [batch_dim]
                for axis in range(1, value.dim()):
                    size = int(value.shape[axis]) if static_last and axis == value.dim() - 1 else None
                    dims.append(Dim(size, f"{key}:size{axis}"))
                template.data[key] = Tensor(key, dims)
    for key, tensor in template.items():
        if key not in data and not tensor.available_for_inference:
            tensor.raw_tensor = None  # e.g. the targets, when forwarding data without them
            continue
        if key not in data:
            raise StepFunctionError(
                f"extern_data[{key!r}]: the dataset has no data key {key!r} (it has "
                f"{sorted(k for k in data if ':' not in k)}); fix extern_data or the dataset"
            )
        raw = data[key]
        if raw.dim() != len(tensor.dims):
            raise StepFunctionError(
                f"extern_data[{key!r}] declares {len(tensor.dims)} dims {list(tensor.dims)}, the data has shape "
                f"{list(raw.shape)}; fix the spec in extern_data"
            )
        tensor.raw_tensor = raw
        for axis, dim in enumerate(tensor.dims[1:], start=1):
            if dim.is_dynamic():
                dim.dyn_size_ext = sizes_tensor(f"{key}:size{axis}", data[f"{key}:size{axis}"])
    return template


class _TrainStep:
    """A mainline ``train_step(*, model, extern_data)`` called as ``train_step(*, model, data, run_ctx)``."""

    def __init__(self, func: Callable[..., Any], template: TensorDict | None):
        self.func = func
        self.template = template

    def __call__(self, *, model: torch.nn.Module, data: dict[str, Any], run_ctx: RunCtx, **kwargs: Any) -> None:
        extern_data = extern_data_from_batch(self.template, data)
        with using_frontend_run_ctx(FrontendRunCtx("train_step", run_ctx)):
            self.func(model=model, extern_data=extern_data)
        if not run_ctx.losses:
            raise StepFunctionError("train_step marked no loss; call rf.get_run_ctx().mark_as_loss(loss, name)")


class _Forward:
    """A mainline ``forward_step(*, model, extern_data)`` with its outputs handed to the callback per sequence."""

    def __init__(
        self, func: Callable[..., Any], template: TensorDict | None, outputs: TensorDict | None, config: Config
    ):
        self.func = func
        self.template = template
        self.expected_outputs = outputs
        self.callback_spec = config.typed_value("forward_callback")
        self.output_file = config.value("output_file")
        self.callback: ForwardCallbackIface | None = None
        self.output: ForwardOutputFile | None = None  # where the default callback writes
        self.gathered: GatheredCallback | None = None  # under torchrun, with the config's forward_callback

    def init(self, run_ctx: RunCtx, **kwargs: Any) -> None:
        data_parallel = run_ctx.engine.data_parallel if run_ctx.engine is not None else None
        if self.callback_spec is None:
            filename = self.output_file or f"dump-fwd-epoch-{run_ctx.epoch}.hdf"
            self.output = ForwardOutputFile(filename, data_parallel)
            self.callback = HDFOutputWriter(self.output.path)
        elif data_parallel is not None:  # rank 0 creates the callback when it hands it the outputs of all processes
            if not callable(self.callback_spec) and not isinstance(self.callback_spec, ForwardCallbackIface):
                raise _callback_type_error(self.callback_spec)
            self.gathered = GatheredCallback(self._make_callback, data_parallel)
            return
        else:
            self.callback = self._make_callback()
        self.callback.init(model=_model_of(run_ctx))

    def _make_callback(self) -> ForwardCallbackIface:
        callback = self.callback_spec
        if callable(callback) and not isinstance(callback, ForwardCallbackIface):
            callback = callback()
        if not isinstance(callback, ForwardCallbackIface):
            raise _callback_type_error(callback)
        return callback

    def step(self, *, model: torch.nn.Module, data: dict[str, Any], run_ctx: RunCtx, **kwargs: Any) -> None:
        extern_data = extern_data_from_batch(self.template, data)
        if self.expected_outputs is not None:
            self.expected_outputs.reset_content()
        ctx = FrontendRunCtx("forward_step", run_ctx, expected_outputs=self.expected_outputs)
        with using_frontend_run_ctx(ctx):
            self.func(model=model, extern_data=extern_data)
        ctx.check_outputs_complete()
        if not ctx.outputs:
            raise StepFunctionError(
                "forward_step marked no output; call rf.get_run_ctx().mark_as_default_output(tensor) or "
                "mark_as_output(tensor, name)"
            )
        for b, (seq_tag, position) in enumerate(zip(data["seq_tag"], data["seq_idx"])):
            outputs = TensorDict({name: _sequence_of(tensor, b) for name, tensor in ctx.outputs.items()})
            if self.gathered is not None:
                self.gathered.add(position, seq_tag, outputs)
            else:
                self.callback.process_seq(seq_tag=seq_tag, outputs=outputs)
        if self.output is not None:
            self.output.add(data["seq_idx"])

    def finish(self, run_ctx: RunCtx, **kwargs: Any) -> None:
        if self.gathered is not None:
            self.gathered.finish(model=_model_of(run_ctx))
            return
        self.callback.finish()
        if self.output is not None:
            self.output.finish(written=self.callback.writer is not None)


def _callback_type_error(callback: Any) -> ConfigError:
    return ConfigError(
        "config key 'forward_callback': expected a returnn.forward_iface.ForwardCallbackIface (instance, class or "
        f"factory), got {type(callback).__name__}"
    )


def _model_of(run_ctx: RunCtx) -> torch.nn.Module | None:
    return run_ctx.engine.model if run_ctx.engine is not None else None


def _sequence_of(tensor: Tensor, b: int) -> Tensor:
    """Sequence ``b`` of a batched output: numpy, without the batch dim, padding cut off."""
    raw = tensor.raw_tensor[b]
    dims = []
    for axis, dim in enumerate(tensor.dims[1:]):
        if dim.is_dynamic() and dim.dyn_size is not None:
            size = int(dim.dyn_size[b])
            raw = raw.narrow(axis, 0, size)
            dim = Dim(
                None,
                dim.name,
                kind=dim.kind,
                dyn_size_ext=Tensor(f"{dim.name}:size", (), "int32", raw_tensor=np.array(size)),
            )
        dims.append(dim)
    raw = raw.detach().cpu()
    if raw.dtype == torch.bfloat16:
        raw = raw.float()
    return Tensor(tensor.name, dims, sparse_dim=tensor.sparse_dim, raw_tensor=raw.numpy())


class HDFOutputWriter(ForwardCallbackIface):
    """The default ``forward_callback``: the outputs into an HDF file (``output`` as inputs, others as extra data)."""

    def __init__(self, filename: str):
        self.filename = filename
        self.writer = None

    def process_seq(self, *, seq_tag: str, outputs: TensorDict) -> None:
        from returnn.datasets.util.hdf_writer import SimpleHDFWriter

        if "output" not in outputs:
            raise StepFunctionError(
                f"forward: writing {self.filename!r} needs an output named 'output' (mark_as_default_output), got "
                f"{sorted(outputs.keys())}; or set forward_callback"
            )
        main = outputs["output"]
        extra = {name: tensor for name, tensor in outputs.items() if name != "output"}
        if self.writer is None:
            extra_type = {name: (t.dim, len(t.dims), t.dtype) for name, t in extra.items()}
            self.writer = SimpleHDFWriter(self.filename, dim=main.dim, ndim=len(main.dims), extra_type=extra_type)
        raw = main.raw_tensor
        seq_len = {axis: [raw.shape[axis]] for axis in range(max(1, raw.ndim - (main.feature_dim is not None)))}
        self.writer.insert_batch(
            raw[None], seq_len, [seq_tag], extra={name: [t.raw_tensor] for name, t in extra.items()}
        )

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
