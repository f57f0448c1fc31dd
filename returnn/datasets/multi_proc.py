""":class:`MultiProcDataset`: mainline's wrapper that loads a dataset in worker processes; here the data loader does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from returnn.datasets.basic import Dataset
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import CorpusOfInner, DescribedByInner, EpochOfInner
from returnn.errors import DatasetError

__all__ = ["MultiProcDataset"]


class MultiProcDataset(CorpusOfInner, EpochOfInner, DescribedByInner, Dataset):
    """The sequences of ``dataset``, in its order.

    Mainline runs the inner dataset in ``num_workers`` processes of its own. This trainer loads every dataset in the
    DataLoader's worker processes (``num_workers_per_gpu``), which shard the data the same way, so the wrapper only
    passes the inner dataset through: configs that use it run unchanged, with the same sequences in the same order.

    :param dataset: the inner dataset dict
    :param num_workers: accepted for compatibility (see ``num_workers_per_gpu``)
    :param buffer_size: accepted for compatibility
    :param sharding_method: accepted for compatibility ("seq_order" or "dedicated")
    """

    def __init__(
        self,
        dataset: dict[str, Any] | Dataset,
        num_workers: int = 1,
        buffer_size: int = 1,
        sharding_method: str = "seq_order",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not (isinstance(num_workers, int) and num_workers >= 1):
            raise DatasetError(f"{self}: num_workers must be an int >= 1, got {num_workers!r}")
        if sharding_method not in ("seq_order", "dedicated"):
            raise DatasetError(f"{self}: sharding_method must be 'seq_order' or 'dedicated', got {sharding_method!r}")
        self.inner = init_dataset(dataset, default_kwargs={"name": f"{self.name}_inner"})
        self.copy_inner_description()

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        return self.inner.init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
