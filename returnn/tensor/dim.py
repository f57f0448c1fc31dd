"""``Dim``: one axis of a :class:`~returnn.tensor.Tensor`, static (an int) or dynamic (sizes per sequence)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from returnn.tensor.tensor import Tensor

__all__ = ["Dim", "batch_dim", "single_step_dim"]


class _DimTypes:
    """Mainline's ``Dim.Types`` (kinds of axes); kept for configs that pass ``kind=Dim.Types.Spatial``."""

    Unspecified = None
    Batch = "batch"
    Spatial = "spatial"
    Time = "spatial"
    Feature = "feature"


class Dim:
    """An axis: ``dimension`` is its size, or None when it differs per sequence; then ``dyn_size_ext`` holds the
    sizes (a Tensor over the batch dim).

    :param dimension: an int (static), None (dynamic), or a Tensor of sizes (dynamic, those sizes)
    :param name: for messages, e.g. "time"
    :param kind: one of ``Dim.Types`` (informative only)
    :param dyn_size_ext: the sizes of a dynamic dim
    """

    Types = _DimTypes

    def __init__(
        self,
        dimension: int | Tensor | None = None,
        name: str | None = None,
        *,
        kind: str | None = None,
        description: str | None = None,
        dyn_size_ext: Tensor | None = None,
        **_mainline_options: Any,
    ):
        if hasattr(dimension, "raw_tensor"):  # a Tensor of sizes (no import: tensor.py imports this module)
            dimension, dyn_size_ext = None, dimension
        if dimension is not None and (not isinstance(dimension, int) or isinstance(dimension, bool)):
            raise TypeError(f"Dim: dimension must be an int, None or a Tensor of sizes, got {dimension!r}")
        self.dimension = dimension
        self.name = name or description
        self.kind = kind
        self.dyn_size_ext = dyn_size_ext
        # what i6_core's config serialization (ReturnnConfigV2) reads of a Dim; dims here derive from nothing
        self.match_priority = 0
        self.derived_from_op = None

    def __repr__(self) -> str:
        size = self.dimension if self.dimension is not None else "?"
        return f"Dim({self.name or 'unnamed'!r}, {size})"

    @property
    def description(self) -> str | None:
        """Mainline's name for :attr:`name`."""
        return self.name

    @property
    def dyn_size(self) -> Any:
        """The raw sizes of a dynamic dim (``dyn_size_ext.raw_tensor``), or None."""
        return self.dyn_size_ext.raw_tensor if self.dyn_size_ext is not None else None

    def is_batch_dim(self) -> bool:
        """Whether this is the batch dim."""
        return self.kind == _DimTypes.Batch

    def is_dynamic(self) -> bool:
        """Whether the size differs per sequence (or per batch, for the batch dim)."""
        return self.dimension is None

    def is_static(self) -> bool:
        """Whether the size is a fixed int."""
        return self.dimension is not None

    def get_dim_value(self) -> int:
        """The size: the static dimension, else the largest dynamic size."""
        if self.dimension is not None:
            return self.dimension
        if self.dyn_size_ext is not None and self.dyn_size_ext.raw_tensor is not None:
            sizes = self.dyn_size_ext.raw_tensor
            return int(sizes.max()) if sizes.numel() else 0
        raise ValueError(f"{self!r}: a dynamic dim without sizes has no value yet")

    def get_same_base(self) -> Dim:
        """This dim (mainline's dims can be declared the same as another one; these cannot)."""
        return self

    def copy(self, *, name: str | None = None, match_priority: int = 0) -> Dim:
        """A new Dim of the same size and sizes."""
        return Dim(self.dimension, name or self.name, kind=self.kind, dyn_size_ext=self.dyn_size_ext)


batch_dim = Dim(None, "batch", kind=_DimTypes.Batch)
single_step_dim = Dim(1, "single-step", kind=_DimTypes.Spatial)
