"""The small part of mainline RETURNN's ``returnn.frontend`` that pure-torch step functions use: the run context.

``rf.get_run_ctx().mark_as_loss(...)`` in ``train_step`` and ``mark_as_output`` / ``mark_as_default_output`` in
``forward_step`` (see :mod:`returnn.frontend.run_ctx`). RETURNN-frontend modules and functions (``rf.Linear``,
``rf.reduce_sum``, ...) are not part of this trainer: using one is an error that says to write the model in torch.
"""

from __future__ import annotations

from typing import Any

from returnn.errors import StepFunctionError
from returnn.frontend.run_ctx import Loss, RunCtx, get_run_ctx
from returnn.tensor import Dim, Tensor, TensorDict

__all__ = ["Dim", "Loss", "RunCtx", "Tensor", "TensorDict", "get_run_ctx"]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise StepFunctionError(
        f"returnn.frontend.{name} is not available: this trainer runs pure torch models; write the model and step "
        "functions with torch (extern_data[...].raw_tensor), and use rf only for get_run_ctx()"
    )
