"""Mainline's interface of ``forward_callback``: what the forward task hands each sequence's outputs to.

A config sets ``forward_callback`` to an instance of a subclass (or to the class, or a function returning one). With
a mainline-style ``forward_step(*, model, extern_data)``, the forward task calls ``init(model=)`` once, then
``process_seq(seq_tag=, outputs=)`` per sequence (numpy values without the batch axis, padding cut off), then
``finish()``. Without ``forward_callback``, the outputs go to the HDF file ``output_file``.

Under torchrun the callback runs in rank 0 alone and sees the sequences of all processes, in the order of one process
(see :mod:`returnn.torch.forward_output`).
"""

from __future__ import annotations

from typing import Any

from returnn.tensor import TensorDict

__all__ = ["ForwardCallbackIface"]


class ForwardCallbackIface:
    """Override the methods you need; each does nothing by default."""

    def init(self, *, model: Any) -> None:
        """Called once before the first sequence."""

    def process_seq(self, *, seq_tag: str, outputs: TensorDict) -> None:
        """Called per sequence with its outputs (numpy arrays in ``outputs[name].raw_tensor``)."""

    def finish(self) -> None:
        """Called once after the last sequence."""
