"""Datasets: the :class:`Dataset` base class and :func:`init_dataset`, which makes one from a dataset dict.

Dataset classes live in modules by family (``generating``, ``hdf``, ``meta``, ...); ``init_dataset`` finds them
by their class name.
"""

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.datasets.registry import get_dataset_class, init_dataset, register_dataset_class

__all__ = ["Dataset", "DatasetSeq", "init_dataset", "get_dataset_class", "register_dataset_class"]
