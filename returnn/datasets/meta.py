"""Datasets that combine other datasets.

- :class:`MetaDataset`: several datasets describe the *same* sequences (e.g. audio from one, transcriptions from
  another); each sequence has the data keys of all of them. The usual top-level dataset of real setups.
- :class:`~returnn.datasets.combined.ConcatDataset` and :class:`~returnn.datasets.combined.CombinedDataset`:
  the sequences of several datasets, one after the other or mixed (defined in :mod:`returnn.datasets.combined`).
- :class:`~returnn.datasets.concat_seqs.ConcatSeqsDataset`: sequences of one dataset glued together.

All are importable from here, as in RETURNN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from returnn.datasets.basic import Dataset
from returnn.datasets.combined import CombinedDataset, ConcatDataset
from returnn.datasets.concat_seqs import ConcatSeqsDataset
from returnn.datasets.generating import convert_data_dims
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.files import read_dict_file
from returnn.datasets.util.seq_lists import index_by_tag, read_seq_list_file, read_tag_list
from returnn.datasets.util.sub_datasets import (
    ORDERING_OPTIONS,
    data_spec_of,
    describe_key,
    epoch_corpus_indices,
    reject_options,
)
from returnn.errors import DatasetError
from returnn.log import V4

__all__ = ["MetaDataset", "ConcatDataset", "CombinedDataset", "ConcatSeqsDataset"]

logger = logging.getLogger(__name__)


class _MetaCorpus(NamedTuple):
    """The sequences of a MetaDataset and where each one lies in every sub-dataset."""

    tags: list[str]  # the tag of each sequence, as the default dataset names it
    sub_indices: dict[str, np.ndarray]  # dataset key -> the sub-dataset's corpus index of each sequence
    control_to_meta: np.ndarray | None  # control corpus index -> sequence (-1: not used); None: the identity


class MetaDataset(Dataset):
    """The data keys of several datasets over the same sequences, as one dataset.

    Example (a zip corpus for audio and text, alignments from an HDF file)::

        train = {
            "class": "MetaDataset",
            "datasets": {"zip_dataset": {"class": "OggZipDataset", ...}, "align": {"class": "HDFDataset", ...}},
            "data_map": {"raw_audio": ("zip_dataset", "data"), "labels": ("zip_dataset", "classes"),
                         "align": ("align", "data")},
            "seq_order_control_dataset": "zip_dataset",
        }

    Which sequences: the tags of the *default* dataset (``seq_order_control_dataset``, else the dataset of the
    ``"data"`` key), or those of ``seq_list_file``. Every other dataset must have them all: sequences are matched
    by tag, or by position in ``seq_list_file`` when that gives one list per dataset.

    Their order per epoch: with ``seq_order_control_dataset``, the control dataset's own order (its
    ``seq_ordering``, ``partition_epoch`` etc.; sequences it visits that ``seq_list_file`` does not list are
    skipped); set those options there, not here. Without it, this dataset orders the sequences itself with its
    own options, taking lengths from ``seq_lens_file`` or from the default dataset.

    Sharding (DataLoader workers, distributed ranks) always works: the epoch's order is split here, and every
    sub-dataset is told exactly which sequences to visit.

    :param datasets: ``{dataset_key: dataset dict}``; only those that ``data_map`` or the control option name are
        built (each gets the name ``<name>_<dataset_key>`` unless its dict sets one).
    :param data_map: ``{data_key: (dataset_key, dataset_data_key)}``: the data keys of this dataset.
    :param seq_list_file: the sequences (see :mod:`returnn.datasets.util.seq_lists` for the formats), or a dict
        ``{dataset_key: file}`` with one tag list per dataset, all of the same length.
    :param seq_order_control_dataset: the dataset key that orders every epoch (recommended).
    :param seq_lens_file: a JSON/Python dict ``{tag: {data_key: length}}`` for the length-based orderings and
        :meth:`get_seq_length`; sorting uses the ``"data"`` length (else the largest).
    :param data_dims: ``{data_key: (dim, ndim)}``: checked against the sub-datasets (RETURNN's double check).
    :param data_dtypes: ``{data_key: dtype}``: checked against the sub-datasets.
    """

    def __init__(
        self,
        datasets: dict[str, dict[str, Any] | Dataset],
        data_map: dict[str, tuple[str, str]],
        seq_list_file: str | dict[str, str] | None = None,
        seq_order_control_dataset: str | None = None,
        seq_lens_file: str | None = None,
        data_dims: dict[str, Any] | None = None,
        data_dtypes: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(datasets, dict) or not datasets:
            raise DatasetError(f"{self}: 'datasets' must be a non-empty dict {{dataset_key: dataset dict}}")
        self.data_map = self._check_data_map(data_map, datasets)
        self.seq_list_file = seq_list_file
        self.seq_order_control_dataset = seq_order_control_dataset
        self.seq_lens_file = seq_lens_file
        used_keys = {dataset_key for dataset_key, _ in self.data_map.values()}
        if seq_order_control_dataset is not None:
            if seq_order_control_dataset not in datasets:
                raise DatasetError(
                    f"{self}: seq_order_control_dataset {seq_order_control_dataset!r} is not in datasets "
                    f"({sorted(datasets)})"
                )
            reject_options(self, list(ORDERING_OPTIONS), f"set it on the control dataset {seq_order_control_dataset!r}")
            used_keys.add(seq_order_control_dataset)
        self.default_dataset_key = self._pick_default_dataset(used_keys)
        unused = sorted(set(datasets) - used_keys)
        if unused:
            logger.warning(f"{self}: datasets {unused} are not used by data_map; they are not loaded")
        self.datasets: dict[str, Dataset] = {
            key: init_dataset(datasets[key], default_kwargs={"name": f"{self.name}_{key}"}) for key in sorted(used_keys)
        }
        self._check_sub_data_keys()
        self._describe(data_dims, data_dtypes)
        self._corpus: _MetaCorpus | None = None
        self._seq_lens_by_tag: dict[str, dict[str, int]] | None = None
        self._sort_lens: np.ndarray | None = None  # from seq_lens_file, by corpus index

    # --- set-up ------------------------------------------------------------------------------------------

    def _check_data_map(self, data_map: Any, datasets: dict[str, Any]) -> dict[str, tuple[str, str]]:
        if not isinstance(data_map, dict) or not data_map:
            raise DatasetError(f"{self}: 'data_map' must be a non-empty dict {{data_key: (dataset_key, data_key)}}")
        checked = {}
        for key, target in data_map.items():
            if not (isinstance(target, (tuple, list)) and len(target) == 2 and all(isinstance(t, str) for t in target)):
                raise DatasetError(
                    f"{self}: data_map[{key!r}] = {target!r}; expected (dataset_key, dataset_data_key), "
                    f"e.g. ('zip_dataset', 'data')"
                )
            if target[0] not in datasets:
                raise DatasetError(
                    f"{self}: data_map[{key!r}] names dataset {target[0]!r}, which is not in datasets "
                    f"({sorted(datasets)}); add it there or fix the name"
                )
            checked[key] = (target[0], target[1])
        return checked

    def _pick_default_dataset(self, used_keys: set[str]) -> str:
        """The dataset whose tags name the sequences (and whose lengths sort them)."""
        if self.seq_order_control_dataset is not None:
            return self.seq_order_control_dataset
        if "data" in self.data_map:
            return self.data_map["data"][0]
        if len(used_keys) == 1:
            return next(iter(used_keys))
        raise DatasetError(
            f"{self}: without a 'data' key in data_map, set seq_order_control_dataset to the dataset that names "
            f"and orders the sequences (one of {sorted(used_keys)})"
        )

    def _check_sub_data_keys(self) -> None:
        for key, (dataset_key, sub_key) in self.data_map.items():
            sub_keys = self.datasets[dataset_key].get_data_keys()
            if sub_key not in sub_keys:
                raise DatasetError(
                    f"{self}: data_map[{key!r}] = ({dataset_key!r}, {sub_key!r}), but dataset {dataset_key!r} "
                    f"({type(self.datasets[dataset_key]).__name__}) has no data key {sub_key!r}; it has {sub_keys}"
                )

    def _describe(self, data_dims: dict[str, Any] | None, data_dtypes: dict[str, str] | None) -> None:
        for key, (dataset_key, sub_key) in self.data_map.items():
            dataset = self.datasets[dataset_key]
            describe_key(self, key, data_spec_of(dataset, sub_key), dataset, sub_key)
        expected = {key: dim for key, (dim, _) in convert_data_dims(data_dims, owner=self).items()}
        for what, given, actual in (
            ("data_dims", expected, {key: self.get_data_dim(key) for key in self.data_map}),
            ("data_dtypes", data_dtypes or {}, {key: self.get_data_dtype(key) for key in self.data_map}),
        ):
            for key, value in given.items():
                if key not in actual:
                    raise DatasetError(f"{self}: {what} names {key!r}, which is not in data_map ({sorted(actual)})")
                if value != actual[key]:
                    raise DatasetError(
                        f"{self}: {what}[{key!r}] = {value!r}, but {self.data_map[key]} has {actual[key]!r}; "
                        f"fix {what} or drop it (it is only a check)"
                    )

    # --- the corpus: which sequences, and where each lies in the sub-datasets ------------------------------

    def _get_corpus(self) -> _MetaCorpus:
        if self._corpus is None:
            self._corpus = self._load_corpus()
        return self._corpus

    def _load_corpus(self) -> _MetaCorpus:
        seq_lists = self._read_seq_lists()
        default = self.default_dataset_key
        sub_indices = {}
        if seq_lists is None:
            tags = self.datasets[default].get_all_tags()
            logger.log(V4, f"{self}: {len(tags)} sequences, named by dataset {default!r}")
            for key in self.datasets:
                sub_indices[key] = (
                    np.arange(len(tags), dtype=np.int64) if key == default else self._find_tags(key, tags, None)
                )
        else:
            tags = seq_lists[default]
            for key in self.datasets:
                sub_indices[key] = self._find_tags(key, seq_lists[key], self.seq_list_file)
        control_to_meta = None
        if self.seq_order_control_dataset is not None and seq_lists is not None:
            control = self.seq_order_control_dataset
            control_to_meta = np.full(self.datasets[control].get_total_num_seqs(), -1, dtype=np.int64)
            control_to_meta[sub_indices[control][::-1]] = np.arange(len(tags) - 1, -1, -1)  # first listing wins
        return _MetaCorpus(tags=list(tags), sub_indices=sub_indices, control_to_meta=control_to_meta)

    def _read_seq_lists(self) -> dict[str, list[str]] | None:
        """The tag list of each dataset from ``seq_list_file``; None without one."""
        what = f"{self} seq_list_file"
        if self.seq_list_file is None:
            return None
        if isinstance(self.seq_list_file, dict):
            missing = sorted(set(self.datasets) - set(self.seq_list_file))
            if missing:
                raise DatasetError(f"{what}: has no file for datasets {missing}; give one per dataset")
            seq_lists = {}
            for key in self.datasets:
                seq_lists[key] = read_tag_list(self.seq_list_file[key], f"{what}[{key!r}]")
        else:
            tags = read_seq_list_file(self.seq_list_file, what)
            if isinstance(tags, dict):
                missing = sorted(set(self.datasets) - set(tags))
                if missing:
                    raise DatasetError(f"{what} {self.seq_list_file!r}: has no tag list for datasets {missing}")
                seq_lists = {key: tags[key] for key in self.datasets}
            else:
                seq_lists = dict.fromkeys(self.datasets, tags)
        lengths = {key: len(tags) for key, tags in seq_lists.items()}
        if len(set(lengths.values())) > 1:
            raise DatasetError(f"{what}: the tag lists differ in length {lengths}; each position is one sequence")
        return seq_lists

    def _find_tags(self, key: str, tags: Sequence[str], seq_list_file: Any) -> np.ndarray:
        """The corpus index of each tag in dataset ``key``; a DatasetError naming the missing tags."""
        corpus_index = index_by_tag(self.datasets[key].get_all_tags())
        indices = np.fromiter((corpus_index.get(tag, -1) for tag in tags), dtype=np.int64, count=len(tags))
        if (indices >= 0).all():
            return indices
        missing = [tag for tag, idx in zip(tags, indices.tolist()) if idx < 0]
        dataset = f"dataset {key!r} ({type(self.datasets[key]).__name__})"
        if seq_list_file is None:
            raise DatasetError(
                f"{self}: the datasets disagree on sequence tags: {dataset} lacks {len(missing)} of the "
                f"{len(tags)} tags of dataset {self.default_dataset_key!r}, e.g. {missing[:3]}. Make them cover the "
                "same sequences, or give a seq_list_file that lists the tags to use (per dataset if they differ)"
            )
        raise DatasetError(
            f"{self}: seq_list_file {seq_list_file!r} names {len(missing)} tag(s) that {dataset} does not have, e.g. "
            f"{missing[:3]}; remove them from the list, or give one list per dataset if the datasets name the "
            "sequences differently"
        )

    def get_total_num_seqs(self) -> int:
        return len(self._get_corpus().tags)

    def get_all_tags(self) -> list[str]:
        return list(self._get_corpus().tags)

    def supports_sharding(self) -> bool:
        return True

    # --- epochs ------------------------------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Set up the epoch (see the class docs), then tell every sub-dataset its sequences, position by position."""
        changed = super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        corpus = self._get_corpus()
        order = epoch_corpus_indices(self, len(corpus.tags))
        for key, dataset in self.datasets.items():
            dataset.init_seq_order(epoch=epoch, seq_order=corpus.sub_indices[key][order].tolist())
        return changed

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> list[int]:
        if seq_list is None and seq_order is None and self.seq_order_control_dataset is not None:
            return self._control_epoch_order(epoch)
        return super()._get_epoch_seq_order(epoch, seq_list, seq_order)

    def _control_epoch_order(self, epoch: int | None) -> list[int]:
        corpus = self._get_corpus()
        control = self.datasets[self.seq_order_control_dataset]
        control.init_seq_order(epoch=epoch)
        order = np.asarray(control.get_current_seq_order(), dtype=np.int64)
        if corpus.control_to_meta is not None:
            order = corpus.control_to_meta[order]
            order = order[order >= 0]
        return self._shard_order(order)

    def _get_seq_len_for_ordering(self) -> Callable[[int], int] | None:
        if self.seq_lens_file:
            if self._sort_lens is None:
                self._sort_lens = np.array([self._sort_len(tag) for tag in self._get_corpus().tags], dtype=np.int64)
            return self._sort_lens.item
        get_len = self.datasets[self.default_dataset_key].get_corpus_seq_len_fn()
        if get_len is None:
            return None
        sub_indices = self._get_corpus().sub_indices[self.default_dataset_key]
        return lambda idx: get_len(int(sub_indices[idx]))

    def _get_seq_lens_by_tag(self) -> dict[str, dict[str, int]]:
        if self._seq_lens_by_tag is None:
            self._seq_lens_by_tag = read_dict_file(self.seq_lens_file, f"{self} seq_lens_file")
        return self._seq_lens_by_tag

    def _file_lens(self, tag: str) -> dict[str, int]:
        """The lengths of a sequence from ``seq_lens_file``."""
        lens = self._get_seq_lens_by_tag().get(tag)
        if not isinstance(lens, dict) or not lens:
            raise DatasetError(
                f"{self}: seq_lens_file {self.seq_lens_file!r} has no entry {{data_key: length}} for {tag!r}"
            )
        return lens

    def _sort_len(self, tag: str) -> int:
        lens = self._file_lens(tag)
        return int(lens["data"] if "data" in lens else max(lens.values()))

    def finish_epoch(self) -> None:
        super().finish_epoch()
        for dataset in self.datasets.values():
            dataset.finish_epoch()

    # --- sequences of the epoch --------------------------------------------------------------------------

    def _sub(self, key: str) -> tuple[Dataset, str]:
        if key not in self.data_map:
            raise DatasetError(f"{self}: unknown data key {key!r}; data_map has {sorted(self.data_map)}")
        dataset_key, sub_key = self.data_map[key]
        return self.datasets[dataset_key], sub_key

    def load_seqs(self, start: int, end: int) -> None:
        super().load_seqs(start, end)
        for dataset in self.datasets.values():
            dataset.load_seqs(start, end)

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        dataset, sub_key = self._sub(key)
        return dataset.get_data(seq_idx, sub_key)

    def get_tag(self, seq_idx: int) -> str:
        return self._get_corpus().tags[self.get_corpus_seq_idx(seq_idx)]

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        if self.seq_lens_file:
            return dict(self._file_lens(self.get_tag(seq_idx)))
        lengths = {}
        for key in self.data_map:
            dataset, sub_key = self._sub(key)
            lengths[key] = dataset.get_seq_length(seq_idx)[sub_key]
        return lengths

    # --- data description --------------------------------------------------------------------------------

    def get_data_keys(self) -> list[str]:
        return sorted(self.data_map)

    def get_target_list(self) -> list[str]:
        return sorted(key for key in self.data_map if key != "data")

    def get_data_dim(self, key: str) -> int:
        dataset, sub_key = self._sub(key)
        return dataset.get_data_dim(sub_key)

    def get_data_dtype(self, key: str) -> str:
        dataset, sub_key = self._sub(key)
        return dataset.get_data_dtype(sub_key)

    def is_data_sparse(self, key: str) -> bool:
        dataset, sub_key = self._sub(key)
        return dataset.is_data_sparse(sub_key)

    def get_data_shape(self, key: str) -> list[int]:
        dataset, sub_key = self._sub(key)
        return dataset.get_data_shape(sub_key)

    def len_info(self) -> str:
        return f"{self.name}, {self.get_total_num_seqs()} seqs from datasets {sorted(self.datasets)}"
