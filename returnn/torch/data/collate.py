"""Stage 5: collate a list of items into one batch, following the data-dict contract (ARCHITECTURE.md).

For each data key ``k``:

- numeric data with a time axis: ``data[k]`` is ``[B, T, ...]``, zero-padded (every axis is padded to the batch's
  maximum; normally only the first one differs); ``data["k:size0"]`` is a 0-d int64 tensor holding B, and
  ``data["k:size<i>"]`` for i = 1..ndim a ``[B]`` int64 tensor with each sequence's extent on axis i - 1;
- numeric scalars per sequence: ``data[k]`` is ``[B]``, with only ``k:size0``;
- strings and other objects (``seq_tag``, ``seq_idx`` too): a plain Python list of length B (numpy string arrays
  as ``.tolist()``).

uint32 data becomes int64 and uint16 int32 (torch lacks arithmetic on them); other dtypes stay.

All numeric arrays of a batch live in one flat byte buffer (a :class:`CollatedBatch`), each sequence copied once
into its padded place. In a DataLoader worker the buffer is allocated in shared memory, so that a batch crosses
to the main process as a single shared tensor; :meth:`CollatedBatch.to_data_dict` then makes the tensors as
views of it, without copying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from returnn.errors import DatasetError
from returnn.torch.data.iterate import SEQ_TAG, Item

__all__ = ["CollatedBatch", "collate_batch"]

_ALIGN = 64  # bytes; every array starts aligned, so that dtype views of the buffer are valid
_CONVERTED_DTYPES = {np.dtype(np.uint32): np.dtype(np.int64), np.dtype(np.uint16): np.dtype(np.int32)}
_TORCH_DTYPES = {
    np.dtype(name): getattr(torch, name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
_INT64 = np.dtype(np.int64)
_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: become tensors; everything else goes into lists


class _Slot(NamedTuple):
    """Where one array of the batch lies in the buffer."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def _slot(key: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> _Slot:
    return _Slot(key, offset, shape, dtype, math.prod(shape) * dtype.itemsize)


class CollatedBatch:
    """One batch: numeric arrays in one flat byte buffer, everything else in lists.

    :ivar num_seqs: B.
    :ivar frames: per padded key, (sum of the sequence lengths, the longest length).
    """

    def __init__(self, buffer: torch.Tensor, slots: list[_Slot], lists: dict[str, list], num_seqs: int):
        self.buffer = buffer
        self.slots = slots
        self.lists = lists
        self.num_seqs = num_seqs
        self.frames: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"<CollatedBatch B={self.num_seqs} {self.buffer.numel()} bytes keys={[s.key for s in self.slots]}>"

    def to_data_dict(self) -> dict[str, Any]:
        """The batch as the step functions see it: tensors (views of the buffer) and lists."""
        data: dict[str, Any] = {}
        for slot in self.slots:
            raw = self.buffer[slot.offset : slot.offset + slot.nbytes]
            data[slot.key] = raw.view(_TORCH_DTYPES[slot.dtype]).view(slot.shape)
        data.update(self.lists)
        return data

    def pin_memory(self) -> CollatedBatch:
        """Called by the DataLoader with ``pin_memory=True``: one pinned buffer for all tensors."""
        pinned = CollatedBatch(self.buffer.pin_memory(), self.slots, self.lists, self.num_seqs)
        pinned.frames = self.frames
        return pinned


def collate_batch(items: Sequence[Item], *, shared_memory: bool = False) -> CollatedBatch:
    """Collate items (all with the same keys) into a :class:`CollatedBatch`.

    :param shared_memory: allocate the buffer in shared memory (in DataLoader workers).
    """
    if not items:
        raise ValueError("collate_batch: no items")
    first = items[0]
    for item in items:
        if item.keys() != first.keys():
            raise DatasetError(
                f"sequences {first.get(SEQ_TAG)!r} and {item.get(SEQ_TAG)!r} have different keys "
                f"{sorted(first)} and {sorted(item)}; every sequence of a dataset needs the same keys"
            )
    plans: list[tuple[list[np.ndarray], np.ndarray, list[_Slot]]] = []
    lists: dict[str, list] = {}
    offset = 0
    for key, value in first.items():
        if not (type(value) is np.ndarray and value.dtype.kind in _NUMERIC_KINDS):
            lists[key] = [_plain(item[key]) for item in items]
            continue
        arrays = [item[key] for item in items]
        extents = _extents(key, arrays)
        slots = _layout(key, value.dtype, extents, offset)
        offset = _aligned(slots[-1].offset + slots[-1].nbytes)
        plans.append((arrays, extents, slots))
    flat, buffer = _allocate(offset, shared_memory)
    batch = CollatedBatch(buffer, [slot for _, _, slots in plans for slot in slots], lists, len(items))
    for arrays, extents, slots in plans:
        _fill(flat, arrays, extents, slots)
        if extents.shape[1]:
            batch.frames[slots[0].key] = (int(extents[:, 0].sum()), slots[0].shape[1])
    return batch


def _plain(value: Any) -> Any:
    """Python objects for the lists (numpy string arrays and scalars become str, bytes, lists ...)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _extents(key: str, arrays: list[np.ndarray]) -> np.ndarray:
    """``[B, ndim]``: each sequence's shape."""
    try:
        return np.array([array.shape for array in arrays], dtype=np.int64).reshape(len(arrays), arrays[0].ndim)
    except ValueError:
        shapes = sorted({array.shape for array in arrays}, key=len)
        raise DatasetError(
            f"key {key!r}: sequences have different numbers of axes ({shapes[0]} and {shapes[-1]}); every sequence "
            "of a data key needs the same axes (e.g. [time, feature]): fix the dataset's data of this key"
        ) from None


def _layout(key: str, dtype: np.dtype, extents: np.ndarray, offset: int) -> list[_Slot]:
    """Slots of ``key`` from ``offset`` on: the padded data, size0, then size1 .. size<ndim> in one block."""
    dtype = dtype.newbyteorder("=")
    dtype = _CONVERTED_DTYPES.get(dtype, dtype)
    if dtype not in _TORCH_DTYPES:
        raise DatasetError(f"key {key!r}: dtype {dtype} has no torch equivalent; convert the data in the dataset")
    num_seqs, ndim = extents.shape
    data = _slot(key, offset, (num_seqs, *extents.max(axis=0, initial=0).tolist()), dtype)
    size0 = _slot(f"{key}:size0", _aligned(offset + data.nbytes), (), _INT64)
    sizes_offset = _aligned(size0.offset + size0.nbytes)
    sizes = [
        _slot(f"{key}:size{axis + 1}", sizes_offset + axis * num_seqs * 8, (num_seqs,), _INT64) for axis in range(ndim)
    ]
    return [data, size0, *sizes]


def _view(flat: np.ndarray, slot: _Slot) -> np.ndarray:
    return flat[slot.offset : slot.offset + slot.nbytes].view(slot.dtype).reshape(slot.shape)


def _fill(flat: np.ndarray, arrays: list[np.ndarray], extents: np.ndarray, slots: list[_Slot]) -> None:
    """Copy the sequences into their padded places and write the sizes (the buffer is zero-filled already)."""
    data, size0, *sizes = slots
    out = _view(flat, data)
    _view(flat, size0)[()] = len(arrays)
    if not sizes:
        out[:] = arrays
        return
    inner = data.shape[2:]
    for index, array in enumerate(arrays):
        if array.shape[1:] == inner:
            out[index, : array.shape[0]] = array
        else:
            out[index][tuple(slice(0, extent) for extent in array.shape)] = array
    block = flat[sizes[0].offset : sizes[-1].offset + sizes[-1].nbytes].view(np.int64)
    block.reshape(len(sizes), len(arrays))[...] = extents.T


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _allocate(nbytes: int, shared_memory: bool) -> tuple[np.ndarray, torch.Tensor]:
    """The zero-filled batch buffer, as numpy (to fill) and as torch tensor (to ship and to view).

    Zero pages come from the kernel (calloc, a fresh shared-memory file), so padding costs no writes.
    """
    if not shared_memory or nbytes == 0:
        flat = np.zeros(nbytes, dtype=np.uint8)
        return flat, torch.from_numpy(flat)
    if hasattr(torch.UntypedStorage, "_new_shared"):
        # A fresh shared-memory storage: torch would otherwise copy the batch into shared memory when sending it.
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
    else:
        buffer = torch.zeros(nbytes, dtype=torch.uint8).share_memory_()
    return buffer.numpy(), buffer
