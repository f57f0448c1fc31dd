""":class:`ConcatSeqsDataset`: sequences of another dataset glued together, as a list file says."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.epoch_wise_filter import EpochWiseFilter, EpochWiseFiltered
from returnn.datasets.util.files import read_dict_file
from returnn.datasets.util.seq_lists import index_by_tag, read_tag_list
from returnn.datasets.util.sub_datasets import DescribedByInner
from returnn.errors import DatasetError

__all__ = ["ConcatSeqsDataset"]


class ConcatSeqsDataset(EpochWiseFiltered, DescribedByInner, CachedDataset2):
    """Each sequence is several sequences of an inner dataset, concatenated along time (every data key).

    ``seq_list_file`` has one line per sequence: the inner tags joined by ``seq_tag_delim``, e.g.
    ``rec1/seg1;rec1/seg2``; that line is also the sequence's tag. The length for the length-based orderings is the
    sum of the parts' lengths from ``seq_len_file``. Ordering, ``partition_epoch`` and sharding are this dataset's;
    the inner dataset is told exactly which sequences to visit.

    The ``*in_between*`` options change every part but the last, for targets that must line up with
    downsampled features:

    :param dataset: the inner dataset (dict).
    :param seq_list_file: the concatenated sequences, one per line (text, optionally gzipped).
    :param seq_len_file: a Python/JSON dict ``{inner tag: length}``.
    :param seq_tag_delim: separates the inner tags in a line.
    :param remove_in_between_postfix: ``{key: label}``: the parts of these (sparse) keys end in ``label`` (e.g. an
        end-of-sentence symbol); it is removed, so that it appears only at the very end.
    :param repeat_in_between_last_frame_up_to_multiple_of: ``{key: n}``: repeat a part's last frame until its
        length is a multiple of n (e.g. n = 6 for 6-fold downsampled alignments of the features).
    :param pad_narrow_data_to_multiple_of_target_len: ``{key: (target_key, n)}``: cut or pad (repeating the last
        frame) a part to exactly n times the length of its ``target_key`` part.
    :param use_cache_manager: fetch the two files through :func:`returnn.util.basic.cf`.
    :param epoch_wise_filter: see :mod:`returnn.datasets.util.epoch_wise_filter` (lengths from seq_len_file).
    """

    def __init__(
        self,
        dataset: dict[str, Any] | Dataset,
        seq_list_file: str,
        seq_len_file: str,
        seq_tag_delim: str = ";",
        remove_in_between_postfix: dict[str, int] | None = None,
        repeat_in_between_last_frame_up_to_multiple_of: dict[str, int] | None = None,
        pad_narrow_data_to_multiple_of_target_len: dict[str, tuple[str, int]] | None = None,
        use_cache_manager: bool = False,
        epoch_wise_filter: dict[Any, Any] | EpochWiseFilter | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.inner = init_dataset(dataset, default_kwargs={"name": f"{self.name}_subdataset"})
        self.copy_inner_description()
        if use_cache_manager:
            from returnn.util.basic import cf

            seq_list_file, seq_len_file = cf(seq_list_file), cf(seq_len_file)
        self.seq_list_file = seq_list_file
        self.seq_len_file = seq_len_file
        self.seq_tag_delim = seq_tag_delim
        self.remove_in_between_postfix = dict(remove_in_between_postfix or {})
        self.repeat_in_between_last_frame_up_to_multiple_of = dict(repeat_in_between_last_frame_up_to_multiple_of or {})
        self.pad_narrow_data_to_multiple_of_target_len = dict(pad_narrow_data_to_multiple_of_target_len or {})
        self._check_option_keys()
        self._in_between_keys = (
            set(self.remove_in_between_postfix)
            | set(self.repeat_in_between_last_frame_up_to_multiple_of)
            | set(self.pad_narrow_data_to_multiple_of_target_len)
        )
        self.epoch_wise_filter = EpochWiseFilter.from_option(epoch_wise_filter, f"{self} epoch_wise_filter")
        self._parts: list[list[str]] | None = None  # the inner tags of each sequence, read on first use
        self._lens: np.ndarray | None = None
        self._inner_index: np.ndarray | None = None  # the inner corpus index of every part, flat
        self._part_starts: np.ndarray | None = None  # where each sequence's parts start in _inner_index
        self._epoch_starts = np.zeros(1, dtype=np.int64)  # per epoch position: where its parts start in the inner

    def _check_option_keys(self) -> None:
        keys = self.inner.get_data_keys()
        options = {
            "remove_in_between_postfix": self.remove_in_between_postfix,
            "repeat_in_between_last_frame_up_to_multiple_of": self.repeat_in_between_last_frame_up_to_multiple_of,
            "pad_narrow_data_to_multiple_of_target_len": self.pad_narrow_data_to_multiple_of_target_len,
        }
        for option, values in options.items():
            for key in values:
                if key not in keys:
                    raise DatasetError(f"{self}: {option}[{key!r}]: the inner dataset has no such key; it has {keys}")
        for key, value in self.pad_narrow_data_to_multiple_of_target_len.items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and value[0] in keys):
                raise DatasetError(
                    f"{self}: pad_narrow_data_to_multiple_of_target_len[{key!r}] = {value!r}; expected "
                    f"(target_key, multiple) with a target key of the inner dataset ({keys})"
                )

    # --- the corpus --------------------------------------------------------------------------------------

    def _load_corpus(self) -> None:
        if self._parts is not None:
            return
        lines = read_tag_list(self.seq_list_file, f"{self} seq_list_file")
        parts = [line.split(self.seq_tag_delim) for line in lines]
        lens_by_tag = read_dict_file(self.seq_len_file, f"{self} seq_len_file")
        inner_index = index_by_tag(self.inner.get_all_tags())
        flat = [tag for seq_parts in parts for tag in seq_parts]
        for what, known in (
            ("seq_len_file " + repr(self.seq_len_file), lens_by_tag),
            ("the inner dataset", inner_index),
        ):
            missing = [tag for tag in flat if tag not in known]
            if missing:
                raise DatasetError(
                    f"{self}: seq_list_file {self.seq_list_file!r} names {len(missing)} tag(s) that {what} does not "
                    f"have, e.g. {missing[:3]}; remove them from the list, or fix the list's seq_tag_delim "
                    f"({self.seq_tag_delim!r})"
                )
        self._lens = np.array([sum(lens_by_tag[tag] for tag in seq_parts) for seq_parts in parts], dtype=np.int64)
        self._inner_index = np.array([inner_index[tag] for tag in flat], dtype=np.int64)
        self._part_starts = np.concatenate([[0], np.cumsum([len(seq_parts) for seq_parts in parts])]).astype(np.int64)
        self._parts = parts

    def get_total_num_seqs(self) -> int:
        self._load_corpus()
        return len(self._parts)

    def get_all_tags(self) -> list[str]:
        self._load_corpus()
        return [self.seq_tag_delim.join(seq_parts) for seq_parts in self._parts]

    def supports_sharding(self) -> bool:
        return True

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        self._load_corpus()
        return self._lens.item

    # --- epochs ------------------------------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        self._load_corpus()
        changed = super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        order = np.asarray(self._seq_order, dtype=np.int64)
        starts, ends = self._part_starts[order], self._part_starts[order + 1]
        inner_order = [self._inner_index[start:end] for start, end in zip(starts.tolist(), ends.tolist())]
        self._epoch_starts = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        flat = np.concatenate(inner_order).tolist() if inner_order else []
        self.inner.init_seq_order(epoch=epoch, seq_order=flat)
        return changed

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self.inner.finish_epoch()

    # --- sequences ---------------------------------------------------------------------------------------

    def _collect_single_seq(self, seq_idx: int) -> DatasetSeq:
        tag = self.seq_tag_delim.join(self._parts[self.get_corpus_seq_idx(seq_idx)])
        start, end = self._epoch_starts[seq_idx].item(), self._epoch_starts[seq_idx + 1].item()
        self.inner.load_seqs(start, end)
        features = {}
        for key in self.inner.get_data_keys():
            pieces = [self.inner.get_data(pos, key) for pos in range(start, end)]
            if key in self._in_between_keys:
                for part_idx in range(len(pieces) - 1):
                    pieces[part_idx] = self._in_between(key, pieces[part_idx], start + part_idx, tag)
            features[key] = np.concatenate(pieces, axis=0)
        return DatasetSeq(seq_idx, features, seq_tag=tag)

    def _in_between(self, key: str, data: np.ndarray, inner_pos: int, tag: str) -> np.ndarray:
        """Apply the ``*in_between*`` options to one part that is not the last."""
        if key in self.remove_in_between_postfix:
            postfix = self.remove_in_between_postfix[key]
            if data.ndim != 1 or not len(data) or data[-1] != postfix:
                raise DatasetError(
                    f"{self._part_where(tag, inner_pos, key)}: remove_in_between_postfix expects it to end in "
                    f"{postfix!r}, got {data!r}"
                )
            data = data[:-1]
        if key in self.repeat_in_between_last_frame_up_to_multiple_of:
            multiple = self.repeat_in_between_last_frame_up_to_multiple_of[key]
            data = self._resize_repeating_last(data, len(data) + (-len(data)) % multiple, tag, inner_pos, key)
        if key in self.pad_narrow_data_to_multiple_of_target_len:
            target_key, multiple = self.pad_narrow_data_to_multiple_of_target_len[key]
            target_len = len(self.inner.get_data(inner_pos, target_key))
            data = self._resize_repeating_last(data, target_len * multiple, tag, inner_pos, key)
        return data

    def _resize_repeating_last(self, data: np.ndarray, length: int, tag: str, inner_pos: int, key: str) -> np.ndarray:
        """``data`` cut to ``length`` frames, or padded by repeating its last frame."""
        if length <= len(data):
            return data[:length]
        if not len(data):
            raise DatasetError(
                f"{self._part_where(tag, inner_pos, key)}: cannot pad an empty part by repeating its last frame"
            )
        return np.concatenate([data, np.repeat(data[-1:], length - len(data), axis=0)], axis=0)

    def _part_where(self, tag: str, inner_pos: int, key: str) -> str:
        """Names a part in errors (built only when one is raised)."""
        return f"{self}: sequence {tag!r}, part {self.inner.get_tag(inner_pos)!r}, key {key!r}"
