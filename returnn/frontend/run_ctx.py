"""Mainline's run context: ``rf.get_run_ctx().mark_as_loss(...)``, ``mark_as_output(...)``.

It reports to this trainer's :class:`returnn.torch.context.RunCtx` with mainline's semantics: a loss may be
unreduced (per frame); its score is Σ loss / Σ inv_norm_factor (the number of elements, or
``custom_inv_norm_factor``) under the name ``train_loss_<name>`` / ``<dataset>_loss_<name>``; the gradient uses
Σ loss * scale (the normalized value with ``use_normalized_loss=True``); ``as_error`` losses are reported only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from returnn.errors import StepFunctionError
from returnn.tensor import Dim, Tensor, TensorDict, batch_dim
from returnn.torch import context

__all__ = ["Loss", "RunCtx", "get_run_ctx", "using_frontend_run_ctx"]

Loss = context.Loss


class RunCtx:
    """What mainline's step functions get from ``rf.get_run_ctx()``.

    :param stage: "init" (outside steps, e.g. in get_model), "train_step" (also evaluation) or "forward_step"
    :param run_ctx: this trainer's run context of the pass (None in stage "init")
    :param expected_outputs: in forward: the outputs that ``model_outputs`` declares
    """

    def __init__(
        self, stage: str, run_ctx: context.RunCtx | None = None, *, expected_outputs: TensorDict | None = None
    ):
        self._stage = stage
        self._run_ctx = run_ctx
        self.expected_outputs = expected_outputs
        self.outputs = TensorDict()

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def train_flag(self) -> bool:
        """Whether the model is being trained (gradients on), as opposed to evaluation and forwarding."""
        return self._stage == "train_step" and torch.is_grad_enabled()

    @property
    def epoch(self) -> int | None:
        return self._run_ctx.epoch if self._run_ctx is not None else None

    @property
    def step(self) -> int | None:
        return self._run_ctx.global_step if self._run_ctx is not None else None

    @property
    def losses(self) -> dict[str, Loss]:
        return self._run_ctx.losses if self._run_ctx is not None else {}

    def mark_as_loss(
        self,
        loss: Tensor | torch.Tensor,
        name: str,
        *,
        scale: float = 1.0,
        as_error: bool = False,
        use_normalized_loss: bool = False,
        use_flatten_frames: bool = True,
        custom_inv_norm_factor: Tensor | torch.Tensor | float | None = None,
    ) -> None:
        """Report a loss, reduced or not (e.g. one value per frame); see the module docstring.

        :param use_flatten_frames: accepted for compatibility; padded frames never count
        """
        if self._stage != "train_step" or self._run_ctx is None:
            raise StepFunctionError(
                f"rf.get_run_ctx().mark_as_loss({name!r}) called in stage {self._stage!r}; losses are marked in "
                "train_step (forward_step marks outputs with mark_as_output)"
            )
        summed, count = _sum_and_count(loss, name)
        if isinstance(custom_inv_norm_factor, Tensor):
            count = custom_inv_norm_factor.raw_tensor
        elif custom_inv_norm_factor is not None:
            count = custom_inv_norm_factor
        self._run_ctx.mark_as_loss(summed, name, scale=0.0 if as_error else scale, inv_norm_factor=count)
        self._run_ctx.losses[name].use_normalized_loss = use_normalized_loss

    def mark_as_output(self, tensor: Tensor | torch.Tensor, name: str, *, dims: Sequence[Dim] | None = None) -> None:
        """Mark an output of forward_step (the forward task writes it to output_file or gives it to forward_callback).

        :param dims: the tensor's dims, batch dim first; default: those of ``model_outputs``, else inferred
        """
        if self._stage != "forward_step":
            raise StepFunctionError(
                f"rf.get_run_ctx().mark_as_output({name!r}) called in stage {self._stage!r}; outputs are marked in "
                "forward_step"
            )
        if name in self.outputs:
            raise StepFunctionError(f"mark_as_output: the output {name!r} was marked twice in one step")
        expected = self.expected_outputs.data.get(name) if self.expected_outputs is not None else None
        if self.expected_outputs is not None and expected is None:
            raise StepFunctionError(
                f"mark_as_output: {name!r} is not declared in model_outputs (it declares "
                f"{sorted(self.expected_outputs.data)}); add it there"
            )
        if isinstance(tensor, Tensor):
            dims, raw, sparse_dim = tuple(dims or tensor.dims), tensor.raw_tensor, tensor.sparse_dim
        else:
            raw, sparse_dim = tensor, expected.sparse_dim if expected is not None else None
            dims = tuple(dims or (expected.dims if expected is not None else _default_dims(name, raw)))
        if not isinstance(raw, torch.Tensor) or raw.dim() != len(dims):
            shape = list(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise StepFunctionError(
                f"mark_as_output({name!r}): got {shape} for the {len(dims)} dims {list(dims)}; pass a torch tensor "
                "with one axis per dim (batch first)"
            )
        if dims[0] is not batch_dim:
            raise StepFunctionError(f"mark_as_output({name!r}): the first dim must be batch_dim, got {dims[0]!r}")
        self.outputs.data[name] = Tensor(name, dims, sparse_dim=sparse_dim, raw_tensor=raw)

    def mark_as_default_output(self, tensor: Tensor | torch.Tensor, *, shape: Sequence[Dim] | None = None) -> None:
        """``mark_as_output(tensor, "output", dims=shape)``."""
        self.mark_as_output(tensor, "output", dims=shape)

    def check_outputs_complete(self) -> None:
        """In forward: every output that ``model_outputs`` declares was marked."""
        if self.expected_outputs is not None:
            missing = sorted(set(self.expected_outputs.data) - set(self.outputs.data))
            if missing:
                raise StepFunctionError(
                    f"forward_step did not mark the outputs {missing} that model_outputs declares; mark them with "
                    "rf.get_run_ctx().mark_as_output(tensor, name)"
                )


def _sum_and_count(loss: Tensor | torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Σ loss over its valid elements, and their number (padded frames of dynamic dims excluded)."""
    raw = loss.raw_tensor if isinstance(loss, Tensor) else loss
    if not isinstance(raw, torch.Tensor):
        raise StepFunctionError(
            f"mark_as_loss({name!r}): expected a torch.Tensor or returnn.tensor.Tensor, got {type(raw).__name__}"
        )
    if not raw.is_floating_point():
        raw = raw.float()  # frame errors come as bool tensors
    if isinstance(loss, Tensor) and loss.dims and loss.dims[0] is batch_dim:
        mask = torch.ones(raw.shape, dtype=torch.bool, device=raw.device)
        for axis, dim in enumerate(loss.dims[1:], start=1):
            if dim.dyn_size is not None:
                positions = torch.arange(raw.shape[axis], device=raw.device)
                sizes = dim.dyn_size.to(raw.device)
                shape = [1] * raw.dim()
                shape[0], shape[axis] = raw.shape[0], raw.shape[axis]
                mask = mask & (positions[None, :] < sizes[:, None]).reshape(shape)
        return torch.where(mask, raw, 0.0).sum(), mask.sum()
    return raw.sum(), raw.numel()


def _default_dims(name: str, raw: Any) -> tuple[Dim, ...]:
    """Dims for an output given without dims: batch, then dynamic axes, with a static last axis if there are 3+."""
    ndim = raw.dim() if isinstance(raw, torch.Tensor) else 0
    dims = [batch_dim]
    for axis in range(1, ndim):
        static = ndim >= 3 and axis == ndim - 1
        dims.append(Dim(int(raw.shape[axis]) if static else None, f"{name}:axis{axis}"))
    return tuple(dims)


_current: RunCtx | None = None  # the compatibility accessor (see get_run_ctx)


@contextmanager
def using_frontend_run_ctx(run_ctx: RunCtx) -> Iterator[RunCtx]:
    """Make ``run_ctx`` what :func:`get_run_ctx` returns while a mainline step function runs."""
    global _current
    previous, _current = _current, run_ctx
    try:
        yield run_ctx
    finally:
        _current = previous


def get_run_ctx() -> RunCtx:
    """The run context of the running step; outside a step one of stage "init"."""
    return _current if _current is not None else RunCtx("init")
