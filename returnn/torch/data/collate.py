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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass
class _Slot:
    """Where one array of the batch lies in the buffer."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


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
    num_seqs = len(items)
    plans: list[tuple[str, list[np.ndarray], list[_Slot]]] = []
    lists: dict[str, list] = {}
    offset = 0
    for key, value in first.items():
        if not (type(value) is np.ndarray and value.dtype.kind in _NUMERIC_KINDS):
            lists[key] = [_plain(item[key]) for item in items]
            continue
        arrays = [item[key] for item in items]
        slots = _slots_for(key, arrays, offset)
        offset = _aligned(slots[-1].offset + slots[-1].nbytes)
        plans.append((key, arrays, slots))
    buffer = _allocate(offset, shared_memory)
    flat = buffer.numpy()
    batch = CollatedBatch(buffer, [slot for _, _, slots in plans for slot in slots], lists, num_seqs)
    for key, arrays, slots in plans:
        views = [flat[s.offset : s.offset + s.nbytes].view(s.dtype).reshape(s.shape) for s in slots]
        _fill(key, arrays, views)
        if len(views) > 2:
            lengths = views[2]
            batch.frames[key] = (int(lengths.sum()), int(views[0].shape[1]))
    return batch


def _plain(value: Any) -> Any:
    """Python objects for the lists (numpy string arrays and scalars become str, bytes, lists ...)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _slots_for(key: str, arrays: list[np.ndarray], offset: int) -> list[_Slot]:
    """Slots of ``key`` (padded data, then size0, size1, ...), laid out from ``offset`` on."""
    first = arrays[0]
    ndim = first.ndim
    for array in arrays:
        if array.ndim != ndim:
            raise DatasetError(
                f"key {key!r}: sequences have different numbers of axes ({first.shape} and {array.shape}) in one batch"
            )
    dtype = first.dtype.newbyteorder("=")
    dtype = _CONVERTED_DTYPES.get(dtype, dtype)
    if dtype not in _TORCH_DTYPES:
        raise DatasetError(f"key {key!r}: dtype {first.dtype} has no torch equivalent; convert the data in the dataset")
    shape = (len(arrays),) + tuple(max(array.shape[axis] for array in arrays) for axis in range(ndim))
    slots = [_Slot(key, offset, shape, dtype)]
    offset = _aligned(offset + slots[0].nbytes)
    slots.append(_Slot(f"{key}:size0", offset, (), _INT64))
    if ndim:
        # size1 .. size<ndim> share one [ndim, B] block: each row is one [B] tensor.
        offset = _aligned(offset + _INT64.itemsize)
        row_bytes = len(arrays) * _INT64.itemsize
        slots += [
            _Slot(f"{key}:size{axis + 1}", offset + axis * row_bytes, (len(arrays),), _INT64) for axis in range(ndim)
        ]
    return slots


def _fill(key: str, arrays: list[np.ndarray], views: list[np.ndarray]) -> None:
    """Copy the sequences into their padded places and write the sizes."""
    out = views[0]
    views[1][()] = len(arrays)
    if out.ndim == 1:
        out[:] = arrays
        return
    inner = out.shape[2:]
    for index, array in enumerate(arrays):
        length = array.shape[0]
        if array.shape[1:] == inner:
            out[index, :length] = array
            out[index, length:] = 0
        else:
            out[index] = 0
            out[index][tuple(slice(0, extent) for extent in array.shape)] = array
    for axis, sizes in enumerate(views[2:]):
        sizes[:] = [array.shape[axis] for array in arrays]


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _allocate(nbytes: int, shared_memory: bool) -> torch.Tensor:
    if not shared_memory or nbytes == 0:
        return torch.empty(nbytes, dtype=torch.uint8)
    if not hasattr(torch.UntypedStorage, "_new_shared"):
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    # A fresh shared-memory storage: torch would otherwise copy the batch into shared memory when sending it.
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)
