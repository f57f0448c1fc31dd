"""Parameter initializers named as RETURNN's layer options name them (``forward_weights_init``, ``bias_init``, ...).

Accepted values: a number (constant), ``"glorot_uniform"`` (the default of weights), ``"glorot_normal"``,
``"xavier"``, ``"orthogonal"``, ``"zeros"``, ``"ones"``, calls such as ``"random_normal_initializer(stddev=0.1)"``,
``"random_uniform_initializer(minval=-0.1, maxval=0.1)"``, ``"truncated_normal_initializer(stddev=0.1)"``,
``"variance_scaling_initializer(factor=1.0, mode='FAN_AVG', uniform=True)"`` (TensorFlow 1's form), ``"constant(0.5)"``,
and ``{"class": "VarianceScaling", "scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}`` (Keras' form).
"""

from __future__ import annotations

import ast
import math
from typing import Any

import torch

from returnn.errors import ConfigError

__all__ = ["initialize", "check_initializer"]

_TRUNCATED_NORMAL_STDDEV_FACTOR = 0.87962566103423978  # stddev of a unit normal truncated at +-2


def check_initializer(value: Any, where: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an initializer this module knows (without a tensor)."""
    _parse(value, where)


def initialize(param: torch.Tensor, value: Any, *, fan_in: int, fan_out: int, where: str) -> None:
    """Fill ``param`` in place as the initializer ``value`` says.

    :param fan_in: inputs per output unit (for weights ``[in, out]``: ``in``; for conv kernels times the window)
    :param fan_out: outputs per input unit
    :param where: the option, for messages, e.g. "layer 'output': forward_weights_init"
    """
    name, kwargs = _parse(value, where)
    with torch.no_grad():
        if name == "constant":
            param.fill_(kwargs["value"])
        elif name == "orthogonal":
            torch.nn.init.orthogonal_(param.view(param.shape[0], -1) if param.dim() > 2 else param, kwargs["gain"])
        elif name == "random_normal":
            param.normal_(kwargs["mean"], kwargs["stddev"])
        elif name == "truncated_normal":
            torch.nn.init.trunc_normal_(
                param, kwargs["mean"], kwargs["stddev"], kwargs["mean"] - 2 * kwargs["stddev"], 2 * kwargs["stddev"]
            )
        elif name == "random_uniform":
            param.uniform_(kwargs["minval"], kwargs["maxval"])
        else:
            _variance_scaling(param, fan_in=fan_in, fan_out=fan_out, **kwargs)


def _variance_scaling(param: torch.Tensor, *, fan_in: int, fan_out: int, scale: float, mode: str, dist: str) -> None:
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    n = max(1.0, n)
    if dist == "uniform":
        limit = math.sqrt(3.0 * scale / n)
        param.uniform_(-limit, limit)
    elif dist in ("truncated_normal", "normal_trunc"):
        # Keras corrects the stddev for the truncation; TensorFlow 1 (normal_trunc) does not
        stddev = math.sqrt(scale / n) / (_TRUNCATED_NORMAL_STDDEV_FACTOR if dist == "truncated_normal" else 1.0)
        torch.nn.init.trunc_normal_(param, 0.0, stddev, -2 * stddev, 2 * stddev)
    else:
        param.normal_(0.0, math.sqrt(scale / n))


_SIMPLE = {
    "glorot_uniform": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "uniform"}),
    "xavier": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "uniform"}),
    "xavier_initializer": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "uniform"}),
    "glorot_normal": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "truncated_normal"}),
    "he_normal": ("variance_scaling", {"scale": 2.0, "mode": "fan_in", "dist": "truncated_normal"}),
    "he_uniform": ("variance_scaling", {"scale": 2.0, "mode": "fan_in", "dist": "uniform"}),
    "lecun_normal": ("variance_scaling", {"scale": 1.0, "mode": "fan_in", "dist": "truncated_normal"}),
    "zeros": ("constant", {"value": 0.0}),
    "ones": ("constant", {"value": 1.0}),
}

# name(...) forms: the canonical name and the keyword arguments with their defaults
_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "random_normal_initializer": ("random_normal", {"mean": 0.0, "stddev": 1.0}),
    "random_normal": ("random_normal", {"mean": 0.0, "stddev": 1.0}),
    "truncated_normal_initializer": ("truncated_normal", {"mean": 0.0, "stddev": 1.0}),
    "truncated_normal": ("truncated_normal", {"mean": 0.0, "stddev": 1.0}),
    "random_uniform_initializer": ("random_uniform", {"minval": -0.05, "maxval": 0.05}),
    "random_uniform": ("random_uniform", {"minval": -0.05, "maxval": 0.05}),
    "constant_initializer": ("constant", {"value": 0.0}),
    "constant": ("constant", {"value": 0.0}),
    "orthogonal_initializer": ("orthogonal", {"gain": 1.0}),
    "orthogonal": ("orthogonal", {"gain": 1.0}),
    "variance_scaling_initializer": ("tf1_variance_scaling", {"factor": 2.0, "mode": "FAN_IN", "uniform": False}),
    "glorot_uniform_initializer": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "uniform"}),
    "glorot_normal_initializer": ("variance_scaling", {"scale": 1.0, "mode": "fan_avg", "dist": "truncated_normal"}),
}


def _parse(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """The canonical initializer name and its arguments."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "constant", {"value": float(value)}
    if isinstance(value, dict):
        return _parse_dict(value, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an initializer (a number, a name or a dict), got {value!r}")
    text = value.strip()
    if text in _SIMPLE:
        name, kwargs = _SIMPLE[text]
        return name, dict(kwargs)
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError:
        call = None
    if isinstance(call, ast.Name) and call.id in _CALLS:
        call = ast.Call(func=call, args=[], keywords=[])
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id not in _CALLS:
        known = sorted(set(_SIMPLE) | set(_CALLS))
        raise ConfigError(f"{where}: unknown initializer {value!r}; use a number or one of: {', '.join(known)}")
    name, defaults = _CALLS[call.func.id]
    kwargs = dict(defaults)
    try:
        args = [ast.literal_eval(arg) for arg in call.args]
        for keyword in call.keywords:
            if keyword.arg not in defaults and keyword.arg not in ("dtype", "seed"):
                raise ConfigError(
                    f"{where}: {call.func.id} has no argument {keyword.arg!r}; it takes {', '.join(defaults)}"
                )
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError as exc:
        raise ConfigError(f"{where}: the arguments of {value!r} must be plain numbers or strings") from exc
    for key, arg in zip(defaults, args):
        kwargs[key] = arg
    kwargs.pop("dtype", None)
    kwargs.pop("seed", None)
    if name == "tf1_variance_scaling":
        mode = str(kwargs["mode"]).lower()
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ConfigError(f"{where}: mode must be FAN_IN, FAN_OUT or FAN_AVG, got {kwargs['mode']!r}")
        if kwargs["uniform"]:
            return "variance_scaling", {"scale": float(kwargs["factor"]), "mode": mode, "dist": "uniform"}
        # TensorFlow 1 draws from a normal truncated at 2 stddevs whose stddev is sqrt(1.3 * factor / n)
        return "variance_scaling", {"scale": 1.3 * float(kwargs["factor"]), "mode": mode, "dist": "normal_trunc"}
    return name, kwargs


def _parse_dict(value: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    options = dict(value)
    cls = str(options.pop("class", "")).lower()
    if cls in ("variancescaling", "variance_scaling"):
        kwargs = {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}
        unknown = set(options) - set(kwargs) - {"seed", "dtype"}
        if unknown:
            raise ConfigError(f"{where}: VarianceScaling has no option(s) {sorted(unknown)}; it takes {sorted(kwargs)}")
        kwargs.update({k: v for k, v in options.items() if k in kwargs})
        mode = str(kwargs["mode"]).lower()
        dist = str(kwargs["distribution"]).lower()
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ConfigError(f"{where}: VarianceScaling mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        dist = {"normal": "truncated_normal", "untruncated_normal": "normal"}.get(dist, dist)
        if dist not in ("uniform", "truncated_normal", "normal"):
            raise ConfigError(
                f"{where}: VarianceScaling distribution must be uniform, truncated_normal, normal or "
                f"untruncated_normal, got {kwargs['distribution']!r}"
            )
        return "variance_scaling", {"scale": float(kwargs["scale"]), "mode": mode, "dist": dist}
    if cls in _SIMPLE and not options:
        name, kwargs = _SIMPLE[cls]
        return name, dict(kwargs)
    raise ConfigError(f"{where}: unknown initializer dict {value!r}; use {{'class': 'VarianceScaling', ...}}")
