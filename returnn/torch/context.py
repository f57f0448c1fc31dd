"""The run context that step functions get: ``run_ctx.mark_as_loss(...)``, epoch, global step, device, engine.

One :class:`RunCtx` lives for a whole train epoch, evaluation pass or forward pass, so attributes that user code
attaches to it (in ``forward_init_hook``, say) stay until the pass ends. Model code that has no ``run_ctx``
argument calls :func:`get_run_ctx` to get the current one (e.g. to read the epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import torch

from returnn.errors import StepFunctionError
from returnn.torch import distributed

if TYPE_CHECKING:
    from returnn.torch.engine import Engine

__all__ = ["Loss", "RunCtx", "get_run_ctx", "set_run_ctx", "using_run_ctx", "STAGES"]

STAGES = ("load", "train_step", "forward_step")

T = TypeVar("T")


@dataclasses.dataclass
class Loss:
    """A loss marked by ``run_ctx.mark_as_loss``.

    ``loss`` is normally a sum and ``inv_norm_factor`` its count (frames, labels): the gradient uses
    ``loss * scale / inv_norm_factor``, and the epoch score is Σ loss / Σ inv_norm_factor.
    """

    loss: torch.Tensor
    name: str
    scale: float = 1.0
    inv_norm_factor: torch.Tensor | float | None = None
    use_normalized_loss: bool = True
    score_key: str | None = None

    def normalized(self) -> torch.Tensor:
        """``loss / inv_norm_factor`` (without scale)."""
        return self.loss if self.inv_norm_factor is None else self.loss / self.inv_norm_factor

    def objective(self) -> torch.Tensor:
        """What the gradient is taken of: ``loss * scale``, divided by ``inv_norm_factor`` if
        ``use_normalized_loss``."""
        term = self.normalized() if self.use_normalized_loss else self.loss
        return term * self.scale if self.scale != 1 else term

    @property
    def key(self) -> str:
        """The score key without the dataset prefix: ``loss_<name>`` unless the loss names its own."""
        return f"loss_{self.name}" if self.score_key is None else self.score_key


class RunCtx:
    """What a step function knows about the run, and where it reports its losses.

    :param stage: "load" (while get_model runs), "train_step" (training and evaluation) or "forward_step"
    :param device: the device of the data tensors, e.g. "cpu" or "cuda:0"
    :param engine: the engine running the step
    :param epoch: the current epoch (the checkpoint's epoch in forward)
    :param global_step: the number of training steps done so far
    """

    def __init__(self, *, stage: str, device: str, engine: Engine | None, epoch: int, global_step: int):
        assert stage in STAGES, stage
        self._stage = stage
        self._device = device
        self._engine = engine
        self._epoch = epoch
        self._global_step = global_step
        self.losses: dict[str, Loss] = {}

    def __repr__(self) -> str:
        return f"<RunCtx stage={self._stage} epoch={self._epoch} global_step={self._global_step}>"

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def device(self) -> str:
        return self._device

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def rank(self) -> int:
        """This process's rank under torchrun (0 in one process)."""
        return distributed.rank()

    @property
    def world_size(self) -> int:
        """The number of processes under torchrun (1 in one process)."""
        return distributed.world_size()

    def all_gather(self, value: T) -> list[T]:
        """``value`` of every process, by rank (``[value]`` in one process). Every process must call it at the same
        point, e.g. in ``forward_finish_hook`` to sum what the steps accumulated before rank 0 writes it. The values
        are pickled: move tensors to the CPU first."""
        return distributed.all_gather_values(self._engine.data_parallel if self._engine is not None else None, value)

    def init_step(self, global_step: int) -> None:
        """Start a new step: forget the losses of the previous one."""
        self._global_step = global_step
        self.losses = {}

    def mark_as_loss(
        self,
        loss: torch.Tensor,
        name: str,
        *,
        scale: float = 1.0,
        inv_norm_factor: torch.Tensor | float | None = None,
        use_normalized_loss: bool = True,
        score_key: str | None = None,
    ) -> None:
        """Report a loss of this step.

        :param loss: a scalar tensor, normally a sum (e.g. summed over frames)
        :param name: the score key becomes ``train_loss_<name>`` / ``<dataset>_loss_<name>``
        :param scale: factor for the gradient only (reported scores are unscaled); 0 = report only
        :param inv_norm_factor: what the sum is normalized by (e.g. the number of frames); None = 1
        :param use_normalized_loss: False: the gradient is that of ``loss * scale`` (the sum, as RETURNN's network
            dicts optimize it); the reported score is normalized either way
        :param score_key: the score key after ``<dataset>_`` instead of ``loss_<name>`` (network dicts: ``score``,
            ``error_output``, ...); ``""``: not reported
        """
        if self._stage != "train_step":
            raise StepFunctionError(
                f"run_ctx.mark_as_loss({name!r}) called in stage {self._stage!r}; losses are only marked in "
                "train_step (forward_step writes its outputs itself)"
            )
        if not isinstance(loss, torch.Tensor):
            raise StepFunctionError(
                f"run_ctx.mark_as_loss({name!r}): expected a torch.Tensor, got {type(loss).__name__}; pass the tensor "
                "the loss is computed as (not loss.item()), so that its gradient can be taken"
            )
        if loss.dim() != 0:
            raise StepFunctionError(
                f"run_ctx.mark_as_loss({name!r}): the loss must be a scalar, got shape {list(loss.shape)}; "
                "reduce it first (e.g. loss.sum()) and pass the count as inv_norm_factor"
            )
        if name in self.losses:
            raise StepFunctionError(
                f"run_ctx.mark_as_loss: the loss name {name!r} was marked twice in one step; give each loss its own "
                "name"
            )
        if isinstance(inv_norm_factor, torch.Tensor) and inv_norm_factor.dim() != 0:
            raise StepFunctionError(
                f"run_ctx.mark_as_loss({name!r}): inv_norm_factor must be a scalar, got shape "
                f"{list(inv_norm_factor.shape)}; pass the total count (e.g. lengths.sum())"
            )
        self.losses[name] = Loss(
            loss=loss,
            name=name,
            scale=scale,
            inv_norm_factor=inv_norm_factor,
            use_normalized_loss=use_normalized_loss,
            score_key=score_key,
        )

    def total_loss(self) -> torch.Tensor:
        """Σ over the marked losses of ``loss * scale / inv_norm_factor`` (what the gradient is taken of; see
        :meth:`Loss.objective`)."""
        total: torch.Tensor | None = None
        for loss in self.losses.values():
            if loss.scale == 0:
                continue
            term = loss.objective()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self._device)
        return total


_current: RunCtx | None = None  # the compatibility accessor for model code (see get_run_ctx)


def set_run_ctx(run_ctx: RunCtx | None) -> None:
    """Make ``run_ctx`` the current one (the engine does this at the start of each pass)."""
    global _current
    _current = run_ctx


@contextlib.contextmanager
def using_run_ctx(run_ctx: RunCtx) -> Iterator[RunCtx]:
    """Make ``run_ctx`` the current one for a pass; afterwards (also on errors) there is none."""
    set_run_ctx(run_ctx)
    try:
        yield run_ctx
    finally:
        set_run_ctx(None)


def get_run_ctx() -> RunCtx:
    """The run context of the running pass."""
    if _current is None:
        raise StepFunctionError(
            "get_run_ctx() was called while no train, evaluation or forward pass (nor get_model) is running; call it "
            "from code that get_model, train_step, forward_step or the forward hooks run"
        )
    return _current
