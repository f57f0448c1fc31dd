"""``Tensor``: a raw torch tensor together with its named axes (:class:`~returnn.tensor.Dim`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from returnn.tensor.dim import Dim, batch_dim

__all__ = ["Tensor"]


class Tensor:
    """A raw tensor (``raw_tensor``, a torch tensor or numpy array) with its dims, dtype and, for class indices,
    ``sparse_dim`` (the number of classes).

    :param name: for messages and output names
    :param dims: one Dim per axis of ``raw_tensor``
    :param dtype: e.g. "float32", "int32"; default from ``raw_tensor``, else float32 (int32 when sparse)
    :param sparse_dim: for class indices: the dim of the classes
    :param feature_dim: the feature axis (default: the last static dim of a dense tensor)
    :param raw_tensor: the values
    :param available_for_inference: False for data that only training has (targets); forwarding may lack it
    """

    def __init__(
        self,
        name: str,
        dims: Sequence[Dim] = (),
        dtype: str | None = None,
        *,
        sparse_dim: Dim | None = None,
        feature_dim: Dim | None = None,
        raw_tensor: Any = None,
        available_for_inference: bool = True,
        **_mainline_options: Any,
    ):
        self.name = name
        self.available_for_inference = available_for_inference  # False: data only training has (targets)
        self.dims = tuple(dims)
        self.sparse_dim = sparse_dim
        self._feature_dim = feature_dim
        self._dtype = dtype
        self.raw_tensor = raw_tensor

    def __repr__(self) -> str:
        sparse = f" sparse_dim={self.sparse_dim!r}" if self.sparse_dim is not None else ""
        return f"Tensor({self.name!r}, {list(self.dims)}, {self.dtype}{sparse})"

    @property
    def dtype(self) -> str:
        """The dtype name, e.g. "float32"."""
        if self.raw_tensor is not None and hasattr(self.raw_tensor, "dtype"):
            return str(self.raw_tensor.dtype).replace("torch.", "")
        if self._dtype is not None:
            return self._dtype
        return "int32" if self.sparse_dim is not None else "float32"

    @property
    def sparse(self) -> bool:
        """Whether the values are class indices."""
        return self.sparse_dim is not None

    @property
    def feature_dim(self) -> Dim | None:
        """The feature axis of a dense tensor, or None."""
        if self._feature_dim is not None or self.sparse:
            return self._feature_dim
        static = [dim for dim in self.dims if dim.is_static() and not dim.is_batch_dim()]
        return static[-1] if static else None

    @property
    def dim(self) -> int | None:
        """The number of classes (sparse) or the feature dimension (dense)."""
        dim = self.sparse_dim if self.sparse else self.feature_dim
        return dim.dimension if dim is not None else None

    @property
    def batch_ndim(self) -> int:
        """The number of axes, the batch axis included."""
        return len(self.dims)

    @property
    def batch_shape(self) -> tuple[int | None, ...]:
        """The size of each axis (None where dynamic)."""
        return tuple(dim.dimension for dim in self.dims)

    @property
    def shape(self) -> tuple[int | None, ...]:
        """The sizes of the axes other than the batch axis (None where dynamic)."""
        return tuple(dim.dimension for dim in self.dims if not dim.is_batch_dim())

    @property
    def dims_set(self) -> set[Dim]:
        """The dims, as a set."""
        return set(self.dims)

    def have_batch_axis(self) -> bool:
        """Whether one of the dims is the batch dim."""
        return any(dim.is_batch_dim() for dim in self.dims)

    def get_time_dim_tag(self) -> Dim:
        """The first dynamic dim that is not the batch dim."""
        for dim in self.dims:
            if dim.is_dynamic() and not dim.is_batch_dim():
                return dim
        raise ValueError(f"{self!r} has no dynamic (time) dim")

    def get_sequence_lengths(self) -> Any:
        """The raw sizes of the time dim (see :meth:`get_time_dim_tag`)."""
        return self.get_time_dim_tag().dyn_size

    def copy(self, name: str | None = None) -> Tensor:
        """The same values and dims under another name."""
        return Tensor(
            name or self.name,
            self.dims,
            self._dtype,
            sparse_dim=self.sparse_dim,
            feature_dim=self._feature_dim,
            raw_tensor=self.raw_tensor,
        )

    def copy_template(self, name: str | None = None) -> Tensor:
        """The same dims, without values."""
        template = self.copy(name)
        template.raw_tensor = None
        return template


def sizes_tensor(name: str, raw_tensor: Any) -> Tensor:
    """The sizes of a dynamic dim: int32 values over the batch dim."""
    return Tensor(name, (batch_dim,), "int32", raw_tensor=raw_tensor)
