"""The input data of a network: from ``extern_data``, from the old ``num_inputs`` / ``num_outputs``, or (when the
config has neither) from the training dataset."""

from __future__ import annotations

from typing import Any

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec

__all__ = ["data_specs_from_config", "data_specs_from_dataset"]

_EXTERN_DATA_KEYS = {
    "dim",
    "shape",
    "sparse",
    "dtype",
    "available_for_inference",
    "time_dim_axis",
    "feature_dim_axis",
    "batch_dim_axis",
    "dim_tags",
    "same_dim_tags_as",
    "vocab",
    "sparse_dim",
}


def data_specs_from_config(config: Config) -> dict[str, DataSpec] | None:
    """The data specs from ``extern_data`` or ``num_inputs`` / ``num_outputs``; None if the config has neither."""
    extern_data = config.typed_value("extern_data")
    if extern_data is not None:
        if not isinstance(extern_data, dict) or not extern_data:
            raise ConfigError(f"config key 'extern_data': expected {{key: {{'dim': ..., ...}}}}, got {extern_data!r}")
        return {key: _spec_from_extern_data(key, value) for key, value in extern_data.items()}
    num_outputs = config.typed_value("num_outputs")
    num_inputs = config.typed_value("num_inputs")
    if num_outputs is None and num_inputs is None:
        return None
    specs = {}
    if num_inputs is not None:
        specs["data"] = DataSpec(dim=_positive_int(num_inputs, "num_inputs"))
    if isinstance(num_outputs, dict):
        for key, value in num_outputs.items():
            specs[key] = _spec_from_num_outputs(key, value)
    elif num_outputs is not None:
        specs["classes"] = DataSpec(dim=_positive_int(num_outputs, "num_outputs"), sparse=True)
    return specs


def data_specs_from_dataset(dataset: Any) -> dict[str, DataSpec]:
    """The data specs of a dataset's keys (its dims, sparsity and frame shapes)."""
    specs = {}
    for key in dataset.get_data_keys():
        # RETURNN's num_outputs entries are (dim, ndim) with ndim counting the time axis; ndim 0 is one value per seq
        ndim = dataset.num_outputs.get(key, (None, 1))[1]
        time = ndim != 0
        if dataset.is_data_sparse(key):
            specs[key] = DataSpec(dim=dataset.get_data_dim(key), sparse=True, time=time)
        else:
            shape = dataset.get_data_shape(key)
            specs[key] = DataSpec(dim=shape[-1] if shape else None, time=time, spatial=tuple(shape[:-1]))
    return specs


def _spec_from_extern_data(key: str, value: Any) -> DataSpec:
    where = f"config key 'extern_data', entry {key!r}"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a dict such as {{'dim': 40}}, got {value!r}")
    unknown = set(value) - _EXTERN_DATA_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(_EXTERN_DATA_KEYS))}"
        )
    sparse = bool(value.get("sparse", False)) or value.get("sparse_dim") is not None
    dim = value.get("dim", value.get("sparse_dim"))
    shape = value.get("shape")
    time = value.get("time_dim_axis", 1) is not None
    spatial: tuple[int, ...] = ()
    if shape is not None:
        shape = tuple(shape)
        time = bool(shape) and shape[0] is None
        frame = shape[1:] if time else shape
        if sparse:
            if frame:
                raise ConfigError(f"{where}: sparse data has no feature axis; shape {shape} should be (None,)")
        elif frame:
            if dim is not None and frame[-1] != dim:
                raise ConfigError(f"{where}: dim {dim} differs from the last axis of shape {shape}")
            dim = frame[-1]
            spatial = tuple(frame[:-1])
    if dim is None and (sparse or shape is None):
        raise ConfigError(f"{where}: needs 'dim' (the feature dim, or the number of classes for sparse data)")
    dtype = value.get("dtype", "int32" if sparse else "float32")
    return DataSpec(dim=dim, sparse=sparse, time=time, spatial=spatial, dtype="int64" if sparse else dtype)


def _spec_from_num_outputs(key: str, value: Any) -> DataSpec:
    where = f"config key 'num_outputs', entry {key!r}"
    if isinstance(value, int):
        return DataSpec(dim=value, sparse=key != "data")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        dim, ndim = value
        if ndim == 0:
            return DataSpec(dim=None, time=False, sparse=False)
        return DataSpec(dim=_positive_int(dim, where), sparse=ndim == 1)
    raise ConfigError(f"{where}: expected a dim or [dim, ndim] (ndim 1: sparse labels, 2: features), got {value!r}")


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"config key {where!r}: expected a positive int, got {value!r}")
    return value
