"""The compute device and automatic mixed precision (AMP) from the config."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError

__all__ = ["resolve_device", "amp_dtype_from_config", "autocast"]

declare_options(
    "Device",
    {
        "device": (
            None,
            'Where the model runs: "cpu", "cuda" (= "gpu") or "cuda:N". Unset: cuda if available, else cpu.',
        ),
        "torch_amp": (
            None,
            'Automatic mixed precision: "bfloat16" or "float16" (float16 also uses a gradient scaler), '
            'or a dict {"dtype": ...}.',
        ),
        "torch_amp_options": (None, 'The same as torch_amp, written as {"dtype": "float16" | "bfloat16"}.'),
    },
)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(value: str | None) -> str:
    """The torch device string for the config's ``device``.

    :raise ConfigError: unknown device, or cuda requested on a machine without a usable GPU
    """
    if value is None or value == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(value).strip().lower()
    if device == "gpu":
        device = "cuda"
    if device == "cpu":
        return device
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ConfigError(f"config key 'device': unknown device {value!r}; choose one of: cpu, cuda, gpu, cuda:N")
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(
            f"config key 'device': {value!r} requested, but {build} "
            f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES decides what is visible); set device = 'cpu' or run "
            "on a machine with a GPU"
        )
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ConfigError(
            f"config key 'device': {value!r} requested, but only {torch.cuda.device_count()} GPU(s) are visible; "
            f"choose one of cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or 'cuda'"
        )
    return device


def amp_dtype_from_config(config: Config) -> torch.dtype | None:
    """The autocast dtype from ``torch_amp`` / ``torch_amp_options``, or None without AMP."""
    amp = config.typed_value("torch_amp")
    amp_options = config.typed_value("torch_amp_options")
    if amp is not None and amp_options is not None:
        raise ConfigError("config keys 'torch_amp' and 'torch_amp_options' are both set; keep one of them")
    key = "torch_amp" if amp is not None else "torch_amp_options"
    value: Any = amp if amp is not None else amp_options
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"dtype"})
        if unknown or "dtype" not in value:
            raise ConfigError(f"config key {key!r}: expected {{'dtype': 'float16' | 'bfloat16'}}, got {value!r}")
        value = value["dtype"]
    if isinstance(value, torch.dtype) and value in _AMP_DTYPES.values():
        return value
    if isinstance(value, str) and value in _AMP_DTYPES:
        return _AMP_DTYPES[value]
    raise ConfigError(f"config key {key!r}: unknown AMP dtype {value!r}; choose one of: {', '.join(_AMP_DTYPES)}")


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for the device's type, or nothing without AMP."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
