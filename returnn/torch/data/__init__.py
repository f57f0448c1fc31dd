"""The data pipeline: from a Dataset to batches in the data-dict contract, through torch's DataLoader.

Stages (each a plain generator over plain dicts, one module each): :mod:`~returnn.torch.data.iterate` (the
epoch's sequences of one shard), :mod:`~returnn.torch.data.filter` (length filter),
:mod:`~returnn.torch.data.chunking`, :mod:`~returnn.torch.data.batching` (and batch shuffling),
:mod:`~returnn.torch.data.collate`; :mod:`~returnn.torch.data.pipeline` composes them and
:mod:`~returnn.torch.data.loader` runs them in a DataLoader. :mod:`~returnn.torch.data.options` reads the config.

Use (the engine does this)::

    from returnn.torch.data import DataPipelineOptions, build_data_loader

    options = DataPipelineOptions.from_config(config)  # once: reads and checks every pipeline key
    loader = build_data_loader(dataset, options, mode="train", device="cuda", rank=0, world_size=1)
    for epoch in range(start_epoch, num_epochs + 1):
        for data in loader.iter_epoch(epoch):  # data dicts, tensors on the CPU
            ...
        loader.last_epoch_stats  # BatchStatistics of the epoch (also logged at verbosity 4)
    loader.close()  # stops the worker processes (also on garbage collection and at exit)

Build one loader per dataset (``mode="eval"`` for dev/eval data: no batch shuffling, no drop_last;
``mode="forward"``: also no length filter and no chunking) and keep it for the run: its workers persist.
"""

from returnn.torch.data.loader import BatchLoader, build_data_loader, default_num_workers
from returnn.torch.data.options import DataPipelineOptions
from returnn.torch.data.stats import BatchStatistics

__all__ = ["BatchLoader", "BatchStatistics", "DataPipelineOptions", "build_data_loader", "default_num_workers"]
