"""An exponential moving average of the model's weights (``ema_decay``), kept by the updater.

After every update, each floating point parameter and buffer ``w`` moves its average ``a`` to
``a = decay * a + (1 - decay) * w``. The averages are part of the optimizer state (so training resumes exactly, also
from a mid-epoch checkpoint), are saved in every epoch checkpoint as ``"model_ema"`` (a state dict of the model:
load it with ``preload_from_files = {"ema": {"filename": ..., "checkpoint_key": "model_ema"}}``), and the engine
evaluates each dataset with them too (scores ``<dataset>_ema_loss_<name>``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from returnn.config import Config, declare_options
from returnn.errors import CheckpointError, ConfigError

__all__ = ["WeightAverage"]

declare_options(
    "Optimizer",
    {
        "ema_decay": (
            None,
            "Keep an exponential moving average of the weights with this decay (e.g. 0.999): saved as 'model_ema' "
            "in each checkpoint and evaluated as <dataset>_ema.",
        ),
    },
)


class WeightAverage:
    """The moving average of a model's floating point parameters and buffers.

    :param decay: the weight of the old average, in [0, 1)
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, value in model.state_dict().items() if value.is_floating_point()]
        state = model.state_dict()
        self.averages = [state[name].detach().clone() for name in self.names]

    @staticmethod
    def decay_from_config(config: Config) -> float | None:
        """``ema_decay``, checked (None: no average)."""
        decay = config.typed_value("ema_decay")
        if decay is None:
            return None
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ConfigError(f"config key 'ema_decay': expected a number in [0, 1), e.g. 0.999, got {decay!r}")
        return float(decay)

    def update(self, model: torch.nn.Module) -> None:
        """Move the averages towards the model's current weights (after an update)."""
        state = model.state_dict()
        with torch.no_grad():
            torch._foreach_lerp_(self.averages, [state[name].detach() for name in self.names], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by name (a state dict of the model, for the floating point entries)."""
        return dict(zip(self.names, self.averages))

    def load_state_dict(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """Restore :meth:`state_dict`."""
        missing = [name for name in self.names if name not in state]
        if missing:
            raise CheckpointError(
                f"{source}: the weight average (ema_decay) was saved for another model (it lacks {missing[:5]}); "
                "load the files of this model"
            )
        with torch.no_grad():
            for average, name in zip(self.averages, self.names):
                average.copy_(state[name])

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block, the model holds the averages; afterwards its own weights again."""
        state = model.state_dict()
        own = [state[name].detach().clone() for name in self.names]
        with torch.no_grad():
            for name, average in zip(self.names, self.averages):
                state[name].copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in zip(self.names, own):
                    state[name].copy_(value)
