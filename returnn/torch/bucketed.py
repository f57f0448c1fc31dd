"""All-reduce and broadcast of many tensors at once (gradients, parameters, buffers), as
:class:`~returnn.torch.distributed.DataParallel` does them: the tensors are grouped by device and dtype into flat
buckets of up to 32 MiB, with one collective per bucket.

Collectives of the default process group: every process must call them with tensors of the same shapes, in the same
order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = ["all_reduce", "broadcast"]

_BUCKET_BYTES = 32 * 2**20  # tensors are all-reduced in flat buckets of up to this size


def all_reduce(tensors: list[torch.Tensor], *, divide_by: int) -> None:
    """Sum in place over the processes, then divide."""
    for bucket in _buckets(tensors):
        flat = _flatten(bucket)
        dist.all_reduce(flat)
        if divide_by != 1:
            flat.div_(divide_by)
        _unflatten(flat, bucket)


def broadcast(tensors: list[torch.Tensor]) -> None:
    """Give every process rank 0's values (in place)."""
    for bucket in _buckets(tensors):
        flat = _flatten(bucket)
        dist.broadcast(flat, src=0)
        if dist.get_rank() != 0:
            _unflatten(flat, bucket)


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Groups of tensors of one device and dtype, each up to ``_BUCKET_BYTES`` (a larger tensor alone)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for tensor in group:
            nbytes = tensor.numel() * tensor.element_size()
            if bucket and size + nbytes > _BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
            bucket.append(tensor)
            size += nbytes
        if bucket:
            yield bucket


def _flatten(bucket: list[torch.Tensor]) -> torch.Tensor:
    """One contiguous tensor with the bucket's values (the tensor itself if it is alone and contiguous)."""
    if len(bucket) == 1 and bucket[0].is_contiguous():
        return bucket[0]
    return torch.cat([t.reshape(-1) for t in bucket])


def _unflatten(flat: torch.Tensor, bucket: list[torch.Tensor]) -> None:
    if flat is bucket[0]:
        return
    for tensor, part in zip(bucket, flat.split([t.numel() for t in bucket])):
        tensor.copy_(part.view_as(tensor))
