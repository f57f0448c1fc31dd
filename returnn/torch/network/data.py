"""What flows between the layers of a network: a batch tensor with its sequence lengths, and its static description.

A layer's output is ``[B, T, *spatial, F]``: the batch axis first, then the time axis (if the data has one), then
static spatial axes (after ``split_dims``, ``window``, 2D ``conv``), then the feature axis (if any; sparse data has
none, its values are class indices below ``dim``). :class:`DataSpec` describes this without a tensor (what the
construction checks dimensions with); :class:`LayerOutput` is the tensor, its lengths and its spec.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["DataSpec", "LayerOutput", "sequence_mask"]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The static description of a layer's output.

    :param dim: the feature dimension (dense), the number of classes (sparse), or None for data without a feature
        axis (e.g. one number per frame)
    :param sparse: class indices (``int64``) instead of features
    :param time: whether axis 1 is a time axis with per-sequence lengths
    :param spatial: static axes between the time and the feature axis
    :param dtype: ``"float32"``, ``"int64"``, ...
    """

    dim: int | None
    sparse: bool = False
    time: bool = True
    spatial: tuple[int, ...] = ()
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.sparse and self.dtype.startswith("float"):
            object.__setattr__(self, "dtype", "int64")

    @property
    def feature_axis(self) -> bool:
        """Whether the tensor has a feature axis (the last one)."""
        return not self.sparse and self.dim is not None

    @property
    def ndim(self) -> int:
        """The number of tensor axes, batch included."""
        return 1 + int(self.time) + len(self.spatial) + int(self.feature_axis)

    def describe(self) -> str:
        """A short description for messages, e.g. ``[B,T,F=40]`` or ``[B,T] sparse dim=10``."""
        axes = ["B"] + (["T"] if self.time else []) + [str(d) for d in self.spatial]
        if self.feature_axis:
            axes.append(f"F={self.dim}")
        text = f"[{','.join(axes)}]"
        return text + (f" sparse dim={self.dim}" if self.sparse else "")

    def copy(self, **changes) -> DataSpec:
        """A spec like this one with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class LayerOutput:
    """A layer's output on a batch.

    :param tensor: ``[B, T, *spatial, F]`` as :class:`DataSpec` describes; frames past a sequence's length are
        undefined (layers that mix frames mask them first)
    :param lengths: ``[B]`` int64 sequence lengths, or None without a time axis
    :param spec: the static description
    :param pre_activation: the tensor before the layer's activation (softmax layers: the logits, which the losses
        use for numerical stability)
    """

    tensor: torch.Tensor
    lengths: torch.Tensor | None
    spec: DataSpec
    pre_activation: torch.Tensor | None = None

    def mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True at frames within the sequence lengths."""
        assert self.lengths is not None, "mask of data without a time axis"
        return sequence_mask(self.lengths, self.tensor.shape[1])

    def masked(self, value: float = 0.0) -> torch.Tensor:
        """The tensor with the frames past each sequence's length set to ``value``."""
        if self.lengths is None:
            return self.tensor
        mask = self.mask().reshape(self.mask().shape + (1,) * (self.tensor.dim() - 2))
        return self.tensor.masked_fill(~mask, value)


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` bool, True where the frame index is below the sequence's length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
