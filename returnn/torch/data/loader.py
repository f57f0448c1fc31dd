"""Stage 6: the torch DataLoader of a dataset, its worker processes, and the epoch that reaches them.

:func:`build_data_loader` makes one :class:`BatchLoader` per dataset; it lives for the whole run, and its worker
processes persist across epochs. Each epoch, :meth:`BatchLoader.iter_epoch` writes the epoch into a shared-memory
cell before it starts the DataLoader's iteration; every worker reads the cell when it starts the epoch, so the
dataset's ``init_seq_order(epoch)`` runs in the worker with the right epoch.

Sharding (``batching_scope``): with "epoch" (the default), every worker of every rank runs the stages over the whole
epoch, so the epoch's batches are those of one process; the batches are then dealt out: rank ``r`` of ``R`` gets
batches ``r, r + R, r + 2R, ...``, and of these its worker ``w`` of ``W`` (0 workers count as 1) every ``W``-th from
the ``w``-th on. The DataLoader takes batches from the workers in turn, so each rank yields its batches in the
epoch's order, and in step ``k`` the ranks train batches ``kR .. kR + R - 1``: what one process accumulating ``R``
steps trains. Every worker reads every sequence (to know the sizes); only its own batches are collated. With
"shard", worker ``w`` on rank ``r`` iterates shard ``r * W + w`` of ``R * W``, and the dataset's shard ``i`` of ``n``
holds the sequences ``i, i + n, i + 2n, ...`` of the epoch's order; each worker batches its own shard. For example,
8 sequences (epoch order 0..7) with ``max_seqs = 8`` and 2 workers give two batches of 4, not one of 8: first worker
0's ``[0, 2, 4, 6]``, then worker 1's ``[1, 3, 5, 7]``. There, a dataset that cannot be sharded works only with one
shard; asking for more is a ConfigError.

Spawned workers: the dataset is pickled once, when the loader is built. If the pickle refers to functions or classes
defined in the config file (e.g. a ``map_seq``), a worker first rebuilds the config from its command line
(``DataPipelineOptions.config_args``; this installs the ``__returnn_config__`` module), so that they resolve; then it
unpickles the dataset. Other datasets do not execute the config file again.

Shutdown: :meth:`BatchLoader.close` stops the workers; the same happens when the loader is garbage collected and
at interpreter exit. Workers also exit on their own when the main process dies (torch's watchdog).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import pickle
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.data

from returnn.config import Config, load_config
from returnn.errors import ConfigError, DatasetError
from returnn.log import V4
from returnn.torch.data.batching import exceeds_batch_size
from returnn.torch.data.collate import CollatedBatch
from returnn.torch.data.options import DataPipelineOptions
from returnn.torch.data.pipeline import Mode, check_mode, iterate_batches
from returnn.torch.data.stats import BatchStatistics
from returnn.torch.signals import ignore_stop_signals

if TYPE_CHECKING:
    from returnn.datasets.basic import Dataset

__all__ = ["BatchLoader", "PipelineDataset", "build_data_loader", "default_num_workers"]

logger = logging.getLogger(__name__)

_NO_EPOCH = -(2**63)  # stands for epoch None in the shared int64 cell


def default_num_workers(device: str | torch.device | None) -> int:
    """Worker processes when ``num_workers_per_gpu`` is not set: 1 on CUDA, else 0.

    On CPU a worker competes with the training threads for the same cores and costs start-up time and memory;
    measured with ``benchmarks/pipeline_bench.py`` (see benchmarks/README.md), loading in the main process is
    faster. On CUDA the main process mostly waits for the device, and one worker hides the loading.
    """
    device_type = torch.device(device).type if device is not None else "cpu"
    return 1 if device_type == "cuda" else 0


class PipelineDataset(torch.utils.data.IterableDataset):
    """The pipeline of one dataset as a torch IterableDataset, run in the main process or in each worker.

    :param dataset: the RETURNN dataset.
    :param num_workers: DataLoader workers (0: main process); with workers, the epoch lives in shared memory.
    :param mp_context: the multiprocessing context of the workers (default spawn), which allocates that memory.
    """

    def __init__(
        self,
        dataset: Dataset,
        options: DataPipelineOptions,
        *,
        mode: Mode,
        num_workers: int,
        rank: int = 0,
        world_size: int = 1,
        mp_context: Any = None,
    ):
        super().__init__()
        self.dataset = dataset
        self.options = options
        self.mode = mode
        self.rank = rank
        self.world_size = world_size
        self._dataset_bytes = _pickle_dataset(dataset) if num_workers else None
        context = mp_context or multiprocessing.get_context("spawn")
        self._epoch = context.RawValue(ctypes.c_int64, _NO_EPOCH) if num_workers else SimpleNamespace(value=_NO_EPOCH)

    def set_epoch(self, epoch: int | None) -> None:
        """The epoch of the next iteration (takes effect in the workers when the next iteration starts)."""
        self._epoch.value = _NO_EPOCH if epoch is None else epoch

    @property
    def epoch(self) -> int | None:
        """The epoch of the current (or next) iteration."""
        value = self._epoch.value
        return None if value == _NO_EPOCH else value

    def __iter__(self) -> Iterator[CollatedBatch]:
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.dataset is None:  # first iteration in a worker process
            ignore_stop_signals()  # the main process saves and stops the workers (returnn.torch.signals)
            self.dataset = self._unpickle_dataset()
        if self.options.batching_scope == "epoch":
            # rank r gets the epoch's batches r, r + R, r + 2R, ..., and its workers deal them out in turn, so the
            # DataLoader, which takes one batch from each worker in turn, yields them in the epoch's order
            shard_index = self.rank + self.world_size * worker_id
        else:
            shard_index = self.rank * num_workers + worker_id
        yield from iterate_batches(
            self.dataset,
            self.options,
            epoch=self.epoch,
            mode=self.mode,
            shard_index=shard_index,
            num_shards=self.world_size * num_workers,
            shared_memory=info is not None,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["dataset"] = None  # travels as the bytes pickled up front; unpickled at the first iteration
        return state

    def _unpickle_dataset(self) -> Dataset:
        """In a worker: rebuild the config (defines its functions and classes), then the dataset.

        This runs inside the first iteration rather than while the worker process unpickles its arguments, so
        that an error reaches the main process as the exception it is, not as a dead worker.
        """
        # only a dataset that refers to the config module needs it (the config's side effects run once per worker)
        if self.options.config_args and Config.MODULE_NAME.encode() in self._dataset_bytes:
            load_config(self.options.config_args)
        try:
            return pickle.loads(self._dataset_bytes)
        except (AttributeError, ImportError, pickle.UnpicklingError) as exc:
            raise DatasetError(
                f"a DataLoader worker cannot rebuild the dataset: {exc}. Functions and classes defined in the "
                "config are found only when the options come from a config loaded from files "
                "(DataPipelineOptions.from_config); or set num_workers_per_gpu = 0"
            ) from exc


def _pickle_dataset(dataset: Dataset) -> bytes:
    try:
        return pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise DatasetError(
            f"{dataset} cannot be sent to DataLoader worker processes: {exc}. Set num_workers_per_gpu = 0, or "
            "define functions used by the dataset at the top level of the config or of a module (no lambdas)"
        ) from exc


class BatchLoader:
    """The batches of one dataset, epoch after epoch (see the module docstring).

    :ivar data_loader: the torch DataLoader (its dataset is a :class:`PipelineDataset`).
    :ivar last_epoch_stats: the :class:`BatchStatistics` of the last completed epoch.
    """

    def __init__(self, pipeline: PipelineDataset, data_loader: torch.utils.data.DataLoader, *, name: str):
        self.pipeline = pipeline
        self.data_loader = data_loader
        self.name = name
        self.last_epoch_stats: BatchStatistics | None = None
        self._oversize_reported = False
        self._finalizer = weakref.finalize(self, _shutdown_workers, data_loader)

    def __repr__(self) -> str:
        return f"<BatchLoader {self.name!r} mode={self.pipeline.mode} workers={self.num_workers}>"

    @property
    def num_workers(self) -> int:
        """DataLoader worker processes (0: the batches are made in the main process)."""
        return self.data_loader.num_workers

    def iter_epoch(self, epoch: int | None) -> Iterator[dict[str, Any]]:
        """The data dicts of one epoch (tensors on the CPU; the engine moves them to the device)."""
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} is closed")
        self.pipeline.set_epoch(epoch)
        stats = BatchStatistics(epoch=epoch, dataset_name=self.name)
        for batch in self.data_loader:
            stats.add(batch)
            if batch.num_seqs == 1 and batch.frames:
                self._check_oversized(batch, stats)
            yield batch.to_data_dict()
        self.last_epoch_stats = stats
        logger.log(V4, stats.summary())

    def _check_oversized(self, batch: CollatedBatch, stats: BatchStatistics) -> None:
        batch_size = self.pipeline.options.batch_size
        lengths = {key: longest for key, (_, longest) in batch.frames.items()}
        if not exceeds_batch_size(lengths, batch_size):
            return
        stats.num_oversized += 1
        if not self._oversize_reported:
            self._oversize_reported = True
            logger.warning(
                f"dataset {self.name!r}: sequence {batch.lists.get('seq_tag', ['?'])[0]!r} with lengths {lengths} "
                f"is larger than batch_size {batch_size} and forms a batch of its own; further ones are counted "
                "in the batch statistics (log_verbosity 4)"
            )

    def close(self) -> None:
        """Stop the worker processes. The loader cannot be used afterwards."""
        self._finalizer()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shutdown_workers(data_loader: torch.utils.data.DataLoader) -> None:
    # Persistent workers belong to the DataLoader's kept iterator; torch has no public call to stop them.
    iterator = getattr(data_loader, "_iterator", None)
    data_loader._iterator = None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if data_loader.num_workers:
        # The worker iterators (also those of finished epochs) hold multiprocessing queues in reference cycles; freed
        # only by the garbage collector, their semaphores could outlive the process, and Python's resource tracker
        # then prints "leaked semaphore objects" at exit. Free them now.
        del iterator
        gc.collect()


def build_data_loader(
    dataset: Dataset,
    options: DataPipelineOptions,
    *,
    mode: Mode = "train",
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    name: str | None = None,
) -> BatchLoader:
    """Build the loader of one dataset (see the module docstring). Build it once; iterate it every epoch.

    :param mode: ``train``, ``eval`` or ``forward`` (see :func:`~returnn.torch.data.pipeline.iterate_batches`).
    :param device: picks the default number of workers (:func:`default_num_workers`).
    :param rank: this process's rank in distributed training.
    :param world_size: the number of distributed processes.
    :param name: for logs; the dataset's name by default.
    """
    check_mode(mode)
    num_workers = options.num_workers if options.num_workers is not None else default_num_workers(device)
    num_shards = world_size * max(1, num_workers)
    if num_shards > 1 and options.batching_scope == "shard" and not dataset.supports_sharding():
        raise ConfigError(
            f"{dataset} cannot be split over {num_shards} shards ({num_workers} DataLoader workers x {world_size} "
            "distributed processes): it does not support sharding. Set batching_scope = 'epoch' (every shard reads "
            "the whole dataset), or num_workers_per_gpu = 1 (or 0), or use a dataset that supports sharding"
            + (" (distributed training needs one)" if world_size > 1 else "")
        )
    mp_context = _mp_context(options.dataloader_opts.get("multiprocessing_context", "spawn")) if num_workers else None
    pipeline = PipelineDataset(
        dataset, options, mode=mode, num_workers=num_workers, rank=rank, world_size=world_size, mp_context=mp_context
    )
    kwargs = dict(options.dataloader_opts)
    if num_workers:
        kwargs["multiprocessing_context"] = mp_context
        kwargs.setdefault("persistent_workers", True)
    else:
        for key in ("prefetch_factor", "persistent_workers", "multiprocessing_context", "timeout"):
            kwargs.pop(key, None)  # meaningless without workers; torch rejects some of them
    data_loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, collate_fn=_identity, num_workers=num_workers, **kwargs
    )
    return BatchLoader(pipeline, data_loader, name=name or getattr(dataset, "name", type(dataset).__name__))


def _mp_context(name: Any) -> Any:
    try:
        return multiprocessing.get_context(name) if isinstance(name, str) else name
    except ValueError as exc:
        raise ConfigError(
            f"torch_dataloader_opts['multiprocessing_context'] = {name!r}: {exc}; use 'spawn' or 'forkserver'"
        ) from exc


def _identity(batch: CollatedBatch) -> CollatedBatch:
    """The DataLoader's collate_fn: the pipeline collates already."""
    return batch
