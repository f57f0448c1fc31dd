"""RETURNN's ``activation`` option: a name, ``factor*name`` (``"2*sigmoid"``), or such terms joined by ``+``
(applied from left to right)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from returnn.errors import ConfigError
from returnn.util.suggest import did_you_mean

__all__ = ["ACTIVATIONS", "get_activation"]

# all act on the feature axis (the last one) where that matters
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "linear": lambda x: x,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "gelu": F.gelu,
    "swish": F.silu,
    "silu": F.silu,
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "square": torch.square,
    "sqrt": torch.sqrt,
    "log_sigmoid": F.logsigmoid,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "negative": torch.neg,
}


def get_activation(spec: str | None, where: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function of an ``activation`` option; None for no activation.

    :param spec: e.g. ``"relu"``, ``"tanh+relu"``, ``None``
    :param where: for messages, e.g. "layer 'hidden'"
    """
    if spec is None or spec == "" or spec == "identity":
        return None
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: activation must be a name such as 'relu' or None, got {spec!r}")
    functions = []
    for name in spec.split("+"):
        name = name.strip()
        factor, _, rest = name.partition("*")
        if rest and _is_number(factor):  # RETURNN's "2*sigmoid": a factor times an activation
            inner = get_activation(rest, where) or ACTIVATIONS["identity"]
            functions.append(lambda x, f=float(factor), g=inner: f * g(x))
            continue
        if name not in ACTIVATIONS:
            raise ConfigError(
                f"{where}: unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; "
                f"known: {', '.join(ACTIVATIONS)}"
            )
        functions.append(ACTIVATIONS[name])
    if len(functions) == 1:
        return functions[0]
    return _chain(functions)


def _chain(functions: list[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:

    def chained(x: torch.Tensor) -> torch.Tensor:
        for function in functions:
            x = function(x)
        return x

    return chained


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
