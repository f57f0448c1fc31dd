"""The base class of datasets that make one sequence at a time (generated data, text corpora, ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.errors import DatasetError

__all__ = ["CachedDataset2"]


class CachedDataset2(Dataset):
    """A dataset that produces its sequences one by one and keeps only the recently loaded ones.

    A subclass implements:

    - the sequences: ``get_corpus_seq(corpus_idx)`` with ``have_get_corpus_seq()`` returning True, for random
      access by corpus index; or ``_collect_single_seq(seq_idx) -> DatasetSeq | None``, the sequence at position
      ``seq_idx`` of the current epoch (``self.get_corpus_seq_idx(seq_idx)`` gives its corpus index when the order
      is known; a stream of unknown length returns None past its end).
    - the order of an epoch, one of:

      - ``get_total_num_seqs()`` (and ``get_all_tags()`` if the tags are not ``seq-<corpus index>``): the base
        :meth:`init_seq_order` then orders the corpus with ``seq_ordering``, ``partition_epoch`` etc., and
        sharding works (return True from ``supports_sharding``); override ``_get_seq_len_for_ordering`` for
        the length-based orderings;
      - or, for streams, ``_get_epoch_seq_order`` returning None and ``self._num_seqs`` set in
        ``init_seq_order`` (an int, ``math.inf``, or None when only the end of the stream tells).

    - the description of the data: ``num_inputs`` / ``num_outputs`` / ``labels`` set in ``__init__``, or the
      ``get_data_*`` methods.

    :meth:`load_seqs` collects the sequences of a range and forgets those before it; :meth:`get_data` loads a
    sequence on demand, so a forward pass over the epoch holds one sequence at a time.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._num_seqs: int | float | None = None
        self._loaded: dict[int, DatasetSeq] = {}

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        self._loaded.clear()
        self._num_seqs = None
        return super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)

    def _collect_single_seq(self, seq_idx: int) -> DatasetSeq | None:
        """The sequence at position ``seq_idx`` of the epoch (see the class docs); by default by corpus index."""
        if not self.have_get_corpus_seq():
            raise NotImplementedError(f"{type(self).__name__}: implement get_corpus_seq or _collect_single_seq")
        seq = self.get_corpus_seq(self.get_corpus_seq_idx(seq_idx))
        seq.seq_idx = seq_idx
        return seq

    @property
    def num_seqs(self) -> int:
        if self._seq_order is not None:
            return len(self._seq_order)
        if self._num_seqs is None:
            raise DatasetError(f"{self}: number of sequences not known before the end of the epoch")
        if math.isinf(self._num_seqs):
            raise DatasetError(f"{self}: infinite number of sequences")
        return int(self._num_seqs)

    def is_less_than_num_seqs(self, n: int) -> bool:
        if self._seq_order is not None:
            return n < len(self._seq_order)
        if self._num_seqs is not None:
            return n < self._num_seqs
        self.load_seqs(n, n + 1)
        return n in self._loaded

    def load_seqs(self, start: int, end: int) -> None:
        super().load_seqs(start, end)
        for seq_idx in [idx for idx in self._loaded if idx < start]:
            del self._loaded[seq_idx]
        for seq_idx in range(start, end):
            if seq_idx in self._loaded:
                continue
            if self._seq_order is not None and seq_idx >= len(self._seq_order):
                break
            seq = self._collect_single_seq(seq_idx)
            if seq is None:  # end of a stream of unknown length
                self._num_seqs = seq_idx
                break
            self._loaded[seq_idx] = seq

    def _get_seq(self, seq_idx: int) -> DatasetSeq:
        if seq_idx not in self._loaded:
            self.load_seqs(seq_idx, seq_idx + 1)
            if seq_idx not in self._loaded:
                raise DatasetError(f"{self}: sequence index {seq_idx} is past the end of the epoch")
        return self._loaded[seq_idx]

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        return self._get_seq(seq_idx).get_data(key)

    def get_tag(self, seq_idx: int) -> str:
        return self._get_seq(seq_idx).seq_tag

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        return self._get_seq(seq_idx).num_frames

    def get_data_keys(self) -> list[str]:
        keys = super().get_data_keys()
        if keys or self._seq_order == []:
            return keys
        return self._get_seq(0).get_data_keys() if self.is_less_than_num_seqs(0) else []

    def finish_epoch(self) -> None:
        self._loaded.clear()
