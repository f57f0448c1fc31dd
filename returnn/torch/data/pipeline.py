"""The stages composed for one dataset and epoch: sequences -> length filter -> chunks -> batches -> collation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np

from returnn.torch.data.batching import batch_items, shuffle_batches
from returnn.torch.data.chunking import add_context, chunk_items
from returnn.torch.data.collate import CollatedBatch, collate_batch
from returnn.torch.data.filter import filter_by_length
from returnn.torch.data.iterate import Item, ItemLoader, iterate_dataset, iterate_lengths
from returnn.torch.data.options import DataPipelineOptions

if TYPE_CHECKING:
    from returnn.datasets.basic import Dataset

__all__ = ["MODES", "Mode", "check_mode", "iterate_batches"]

Mode = Literal["train", "eval", "forward"]
MODES = ("train", "eval", "forward")

_CHUNKING_STREAM, _SHUFFLE_STREAM = 1, 2  # random streams of the stages, so that they draw independently


def check_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`MODES` (the engine passes it, not the user)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def iterate_batches(
    dataset: Dataset,
    options: DataPipelineOptions,
    *,
    epoch: int | None,
    mode: Mode = "train",
    shard_index: int = 0,
    num_shards: int = 1,
    shared_memory: bool = False,
) -> Iterator[CollatedBatch]:
    """The collated batches of one epoch (of one shard), in the calling process.

    What each mode applies: ``train`` all stages (``drop_last`` drops the last batch of the last shard: one batch
    per epoch); ``eval`` no batch shuffling and no ``drop_last`` (every sequence is evaluated); ``forward`` also no
    length filter and no chunking (every sequence, whole). ``context_window`` frames are added in every mode.

    Sharding (``options.batching_scope``): with "epoch", every shard runs the stages over the whole epoch and keeps
    the batches ``shard_index, shard_index + num_shards, ...``, so the batches (and ``drop_last``, the shuffle, the
    chunk starts) are the same for any number of shards. With "shard", the shard's sequences are every
    ``num_shards``-th of the epoch's order, and it batches them alone. Random choices (chunk starts, batch
    shuffling) are seeded by the epoch (and with "shard" by the shard): reproducible for the same number of shards.
    A dataset that splits its data over the shards itself (``shards_itself``, e.g. ``DistributeFilesDataset`` with
    ``distrib_shard_files``: each process reads only its files) is always batched per shard.

    :param shared_memory: collate into shared memory (in DataLoader workers).
    """
    check_mode(mode)
    if options.batching_scope == "epoch" and not getattr(dataset, "shards_itself", False):
        if num_shards > 1 and dataset.knows_lengths_without_loading():
            yield from _own_batches_read_alone(dataset, options, epoch, mode, shard_index, num_shards, shared_memory)
            return
        batches = _epoch_batches(dataset, options, epoch=epoch, mode=mode, shard_index=0, num_shards=1)
        for batch in itertools.islice(batches, shard_index, None, num_shards):
            yield collate_batch(batch, shared_memory=shared_memory)
    else:
        for batch in _epoch_batches(
            dataset, options, epoch=epoch, mode=mode, shard_index=shard_index, num_shards=num_shards
        ):
            yield collate_batch(batch, shared_memory=shared_memory)


def _own_batches_read_alone(
    dataset: Dataset,
    options: DataPipelineOptions,
    epoch: int | None,
    mode: Mode,
    shard_index: int,
    num_shards: int,
    shared_memory: bool,
) -> Iterator[CollatedBatch]:
    """Batching scope "epoch" for a dataset that knows its lengths without loading: the stages run on the lengths
    alone, and this shard reads only the sequences of its own batches."""
    items = iterate_lengths(dataset, epoch=epoch)
    loader = ItemLoader(dataset)
    try:
        batches = _batches_of(items, options, epoch=epoch, mode=mode, shard_index=0, num_shards=1)
        for batch in itertools.islice(batches, shard_index, None, num_shards):
            yield collate_batch(loader.load(batch), shared_memory=shared_memory)
    finally:
        dataset.finish_epoch()


def _epoch_batches(
    dataset: Dataset, options: DataPipelineOptions, *, epoch: int | None, mode: Mode, shard_index: int, num_shards: int
) -> Iterator[list[Item]]:
    """The batches (lists of items) of the sequences of one shard of the dataset's epoch."""
    items = iterate_dataset(dataset, epoch=epoch, shard_index=shard_index, num_shards=num_shards)
    return _batches_of(items, options, epoch=epoch, mode=mode, shard_index=shard_index, num_shards=num_shards)


def _batches_of(
    items: Iterator[Item],
    options: DataPipelineOptions,
    *,
    epoch: int | None,
    mode: Mode,
    shard_index: int,
    num_shards: int,
) -> Iterator[list[Item]]:
    """The stages after reading: length filter, chunks (or context), batches, batch shuffling."""
    chunked = mode != "forward" and options.chunking is not None
    if mode != "forward":
        items = filter_by_length(items, min_seq_length=options.min_seq_length, max_seq_length=options.max_seq_length)
    if chunked:
        rng = _rng(epoch, shard_index, _CHUNKING_STREAM)
        items = chunk_items(items, options.chunking, rng=rng, context=options.context)
    elif options.context:
        items = add_context(items, options.context)
    # drop_last drops one batch per epoch, not one per shard: the last shard's last batch
    drop_last = options.drop_last and mode == "train" and shard_index == num_shards - 1
    batches = batch_items(items, batch_size=options.batch_size, max_seqs=options.max_seqs, drop_last=drop_last)
    if mode == "train" and options.shuffle_buffer_size:
        batches = shuffle_batches(
            batches,
            buffer_size=options.shuffle_buffer_size,
            rng=_rng(epoch, shard_index, _SHUFFLE_STREAM, seed=options.shuffle_seed),
        )
    return batches


def _rng(epoch: int | None, shard_index: int, stream: int, *, seed: int | None = None) -> np.random.Generator:
    """The random generator of a stage for this epoch and shard (and the configured seed, if any)."""
    return np.random.default_rng([epoch or 0, shard_index, stream] + ([] if seed is None else [seed]))
