""":class:`NumpyDumpDataset`: reads the text dumps of ``dump-dataset.py --type numpy``.

Sequence ``i`` is the file ``<prefix><i>.data<postfix>`` (features, one frame per line, as written by
``numpy.savetxt``) and, if present, ``<prefix><i>.targets.classes<postfix>`` (one label index per line; the older
name ``<prefix><i>.targets<postfix>`` works too). A postfix ending in ``.gz`` means gzipped files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from returnn.datasets.basic import DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.errors import DatasetError

__all__ = ["NumpyDumpDataset"]


class NumpyDumpDataset(CachedDataset2):
    """Sequences from numpy text dumps. Data keys ``data`` (float32 ``[T, D]``) and ``classes`` (int32 ``[T]``).

    :param prefix: path prefix of the files
    :param postfix: file name ending after ``.data`` / ``.targets``
    :param start_seq: the first sequence number
    :param end_seq: one past the last sequence number; None: up to the first missing file
    :param num_inputs: feature dimension; None: read from the first data file
    :param num_outputs: number of classes; None: the largest label of all target files + 1 (reads them all)
    """

    def __init__(
        self,
        prefix: str,
        postfix: str = ".txt.gz",
        start_seq: int = 0,
        end_seq: int | None = None,
        num_inputs: int | None = None,
        num_outputs: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.prefix = prefix
        self.postfix = postfix
        self.start_seq = start_seq
        if end_seq is None:
            end_seq = start_seq
            while os.path.exists(self._filename(end_seq, "data")):
                end_seq += 1
        self.end_seq = end_seq
        if self.end_seq <= start_seq:
            raise DatasetError(f"{self}: no dump files {self._filename(start_seq, 'data')!r} ... found")
        self.num_inputs = num_inputs if num_inputs is not None else self._load(start_seq, "data").shape[1]
        self.num_outputs = {"data": (self.num_inputs, 2)}
        self.targets_kind = next(
            (kind for kind in ("targets.classes", "targets") if os.path.exists(self._filename(start_seq, kind))), None
        )
        if self.targets_kind is not None:
            if num_outputs is None:
                num_outputs = 1 + max(
                    int(self._load(i, self.targets_kind).max(initial=0)) for i in range(start_seq, end_seq)
                )
            self.num_outputs["classes"] = (num_outputs, 1)

    def _filename(self, seq_number: int, kind: str) -> str:
        return f"{self.prefix}{seq_number}.{kind}{self.postfix}"

    def _load(self, seq_number: int, kind: str) -> np.ndarray:
        filename = self._filename(seq_number, kind)
        try:
            if kind == "data":
                return np.loadtxt(filename, dtype=np.float32, ndmin=2)
            return np.loadtxt(filename, dtype=np.int32, ndmin=1)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self}: cannot read {filename!r}: {exc}") from exc

    def get_total_num_seqs(self) -> int:
        return self.end_seq - self.start_seq

    def supports_sharding(self) -> bool:
        return True

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        return lambda corpus_idx: len(self._load(self.start_seq + corpus_idx, "data"))

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        number = self.start_seq + corpus_idx
        features = {"data": self._load(number, "data")}
        if self.targets_kind is not None:
            features["classes"] = self._load(number, self.targets_kind)
        return DatasetSeq(corpus_idx, features, seq_tag=f"seq-{corpus_idx}")
