"""``TensorDict``: named :class:`~returnn.tensor.Tensor` s, as in ``extern_data`` and ``model_outputs``."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

from returnn.errors import ConfigError
from returnn.tensor.dim import Dim, batch_dim
from returnn.tensor.tensor import Tensor, sizes_tensor

__all__ = ["TensorDict", "tensor_from_spec"]


class TensorDict:
    """``{name: Tensor}``; entries may be given as Tensors or as mainline's data specs
    (``{"dim": 9}``, ``{"dim": 2, "sparse": True}``, ``{"shape": (None, 80)}``, ``{"dims": [batch_dim, time, feat]}``).
    """

    def __init__(self, data: Mapping[str, Tensor | Mapping[str, Any]] | None = None):
        self.data: dict[str, Tensor] = {}
        if data:
            self.update(data, auto_convert=True)

    def __repr__(self) -> str:
        return f"TensorDict({self.data!r})"

    def update(self, data: Mapping[str, Any] | TensorDict, *, auto_convert: bool = False) -> None:
        """Add entries: Tensors, or (with ``auto_convert``) data specs."""
        items = data.data if isinstance(data, TensorDict) else data
        for name, value in items.items():
            if isinstance(value, Tensor):
                self.data[name] = value
            elif auto_convert and isinstance(value, Mapping):
                self.data[name] = tensor_from_spec(name, value)
            else:
                raise TypeError(f"TensorDict entry {name!r}: expected a Tensor, got {type(value).__name__}")

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.data[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in this TensorDict (it has {sorted(self.data)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def keys(self) -> KeysView[str]:
        return self.data.keys()

    def values(self) -> ValuesView[Tensor]:
        return self.data.values()

    def items(self) -> ItemsView[str, Tensor]:
        return self.data.items()

    def reset_content(self) -> None:
        """Forget the values and the sizes of dynamic dims (each gets an empty sizes tensor to fill); the dims stay."""
        for tensor in self.data.values():
            tensor.raw_tensor = None
            for dim in tensor.dims:
                if dim.is_dynamic() and not dim.is_batch_dim():
                    dim.dyn_size_ext = sizes_tensor(f"{dim.name}:size", None)

    def copy_template(self) -> TensorDict:
        """The same entries without values."""
        return TensorDict({name: tensor.copy_template() for name, tensor in self.data.items()})

    def as_raw_tensor_dict(self) -> dict[str, Any]:
        """``{name: raw_tensor}``."""
        return {name: tensor.raw_tensor for name, tensor in self.data.items()}


_SPEC_KEYS_IGNORED = ("available_for_inference", "time_dim_axis", "feature_dim_axis", "batch_dim_axis", "vocab")


def tensor_from_spec(name: str, spec: Mapping[str, Any]) -> Tensor:
    """The Tensor (without values) that a mainline data spec describes; see :class:`TensorDict`.

    Without ``dims`` or ``shape``, dense data is ``[batch, time, dim]`` and sparse data ``[batch, time]``.
    """
    known = ("dims", "shape", "dim", "sparse", "sparse_dim", "dtype", *_SPEC_KEYS_IGNORED)
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ConfigError(f"data spec {name!r}: unknown keys {unknown}; known are {', '.join(known)}")
    sparse_dim = spec.get("sparse_dim")
    if sparse_dim is None and spec.get("sparse", False):
        if spec.get("dim") is None:
            raise ConfigError(f"data spec {name!r}: sparse data needs 'dim' (the number of classes)")
        sparse_dim = Dim(spec["dim"], f"{name}:classes")
    if "dims" in spec:
        dims = tuple(spec["dims"])
        if not all(isinstance(dim, Dim) for dim in dims):
            raise ConfigError(f"data spec {name!r}: 'dims' must be returnn.tensor.Dim objects, got {dims!r}")
    else:
        if "shape" in spec:
            shape = tuple(spec["shape"])
        else:
            shape = (None,) if sparse_dim is not None or spec.get("dim") is None else (None, spec["dim"])
        names = ["time" if size is None else "feature" for size in shape]
        dims = (batch_dim, *(Dim(size, f"{name}:{kind}{i}") for i, (size, kind) in enumerate(zip(shape, names))))
    available = bool(spec.get("available_for_inference", True))
    return Tensor(name, dims, spec.get("dtype"), sparse_dim=sparse_dim, available_for_inference=available)
