"""Stage 4: group items into batches, and optionally shuffle the batches.

A batch is limited by its padded size: the longest sequence in it times the number of sequences must stay within
``batch_size``, for every key (an int limits every key; ``{key: int}`` only the listed keys). A sequence's size in
a key is the length of its first axis; scalars, strings, ``seq_tag`` and ``seq_idx`` count as 1. Batching is
greedy and keeps the order: a batch is closed as soon as the next item would break a limit or ``max_seqs``. A
single sequence larger than ``batch_size`` still forms a batch of its own (the loader reports it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from returnn.errors import ConfigError
from returnn.torch.data.iterate import Item

__all__ = ["BatchSize", "batch_items", "exceeds_batch_size", "shuffle_batches"]

BatchSize = int | Mapping[str, int]


def batch_items(
    items: Iterable[Item], *, batch_size: BatchSize, max_seqs: int | None = None, drop_last: bool = False
) -> Iterator[list[Item]]:
    """Yield lists of consecutive items (see the module docstring).

    :param batch_size: limit of the padded size (longest sequence x number of sequences), for all keys or per key.
    :param max_seqs: at most this many sequences per batch; None for no limit.
    :param drop_last: drop the last batch (it is usually smaller than the others).
    """
    limits, sizes_of = _size_function(batch_size)
    max_seqs = max_seqs or float("inf")
    batch: list[Item] = []
    maxima = [0] * len(limits)
    for item in items:
        sizes = sizes_of(item)
        if batch:
            grown = [max(old, new) for old, new in zip(maxima, sizes)]
            count = len(batch) + 1
            if count > max_seqs or any(size * count > limit for size, limit in zip(grown, limits)):
                yield batch
                batch = []
                grown = sizes
        else:
            grown = sizes
        batch.append(item)
        maxima = grown
    if batch and not drop_last:
        yield batch


def _size_function(batch_size: BatchSize) -> tuple[list[int], Callable[[Item], list[int]]]:
    """The limits, and a function giving an item's sizes in the same order."""
    if not isinstance(batch_size, Mapping):
        # With one limit for all keys, only the longest key of each item matters.
        return [batch_size], lambda item: [_longest(item)]
    keys = list(batch_size)
    checked = False

    def sizes_of(item: Item) -> list[int]:
        nonlocal checked
        if not checked:
            if not any(key in item for key in keys):
                raise ConfigError(
                    f"config key 'batch_size': none of its keys {keys} is in the data (keys {sorted(item)}), "
                    "so batches would have no size limit; fix the key names"
                )
            checked = True
        return [_extent(item.get(key)) for key in keys]

    return list(batch_size.values()), sizes_of


def _longest(item: Item) -> int:
    longest = 1
    for value in item.values():
        if type(value) is np.ndarray and value.ndim and value.shape[0] > longest:
            longest = value.shape[0]
    return longest


def _extent(value: object) -> int:
    if value is None:
        return 0
    if type(value) is np.ndarray and value.ndim:
        return value.shape[0]
    return 1


def exceeds_batch_size(max_lengths: Mapping[str, int], batch_size: BatchSize) -> bool:
    """Whether one sequence with these lengths is larger than ``batch_size`` (so it had a batch of its own)."""
    if isinstance(batch_size, Mapping):
        return any(max_lengths.get(key, 0) > limit for key, limit in batch_size.items())
    return max(max_lengths.values(), default=1) > batch_size


def shuffle_batches(
    batches: Iterable[list[Item]], *, buffer_size: int, rng: np.random.Generator
) -> Iterator[list[Item]]:
    """Shuffle batches through a buffer: once it is full, each new batch replaces a random one, which is yielded.

    :param buffer_size: batches held back; 1 keeps the order.
    :param rng: seed it per epoch (and shard) so that every epoch has a different, reproducible order.
    """
    buffer: list[list[Item]] = []
    for batch in batches:
        if len(buffer) < buffer_size:
            buffer.append(batch)
            continue
        index = int(rng.integers(buffer_size))
        yield buffer[index]
        buffer[index] = batch
    for index in rng.permutation(len(buffer)):
        yield buffer[index]
