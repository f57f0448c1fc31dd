""":class:`TextDictDataset`: the texts of a Python dict file ``{seq_tag: text}``, as search or forward jobs write
them, encoded with a vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from returnn.datasets.basic import DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.util.files import read_dict_file
from returnn.datasets.util.vocabulary import Vocabulary
from returnn.errors import DatasetError

__all__ = ["TextDictDataset"]

ITEM_FORMATS = ("list_with_scores", "single")


class TextDictDataset(CachedDataset2):
    """The sequences of a dict file (maybe gzipped), in the file's order (or ordered by ``seq_ordering``).

    ``item_format = "single"``: ``{tag: "text"}``; data key ``data``, the text's labels.
    ``item_format = "list_with_scores"`` (default, search output): ``{tag: [(score, "text"), ...]}``; data keys
    ``data`` (the labels of the best-scoring text), ``data_flat`` (all texts' labels, one after the other),
    ``data_seq_lens`` (the number of labels of each text) and ``scores``.

    :param filename: the dict file
    :param vocab: vocabulary options (as in a dataset's ``targets``) or a Vocabulary
    :param item_format: see above
    """

    def __init__(
        self, *, filename: str, vocab: dict[str, Any] | Vocabulary, item_format: str = "list_with_scores", **kwargs: Any
    ):
        super().__init__(**kwargs)
        if item_format not in ITEM_FORMATS:
            raise DatasetError(f"{self}: item_format must be one of {ITEM_FORMATS}, got {item_format!r}")
        self.filename = filename
        self.item_format = item_format
        self.vocab = Vocabulary.from_option(vocab, f"{self} vocab")
        num_labels = self.vocab.num_labels
        self.num_inputs = num_labels
        self.num_outputs = {"data": (num_labels, 1)}
        self.labels = {"data": list(self.vocab.labels)}
        if item_format == "list_with_scores":
            self.num_outputs.update({"data_flat": (num_labels, 1), "data_seq_lens": (1, 1), "scores": (1, 1)})
            self.labels["data_flat"] = list(self.vocab.labels)
        self._entries: list[tuple[str, Any]] | None = None  # (tag, value) in file order, read on first use

    def _load(self) -> list[tuple[str, Any]]:
        if self._entries is None:
            content = read_dict_file(self.filename, f"{self} text dict file")
            for tag, value in content.items():
                _check_item(self, tag, value)
            self._entries = list(content.items())
        return self._entries

    def get_data_dtype(self, key: str) -> str:
        return {"data_seq_lens": "int32", "scores": "float32"}.get(key, "int32")

    def is_data_sparse(self, key: str) -> bool:
        return key in ("data", "data_flat")

    def get_data_shape(self, key: str) -> list[int]:
        return []

    def get_total_num_seqs(self) -> int:
        return len(self._load())

    def get_all_tags(self) -> list[str]:
        return [tag for tag, _ in self._load()]

    def supports_sharding(self) -> bool:
        return True

    def _texts(self, value: Any) -> list[str]:
        return [value] if self.item_format == "single" else [text for _, text in value]

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        return lambda corpus_idx: sum(len(text) for text in self._texts(self._load()[corpus_idx][1]))

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        tag, value = self._load()[corpus_idx]
        if self.item_format == "single":
            return DatasetSeq(corpus_idx, {"data": self._labels(value)}, seq_tag=tag)
        _, best = max(value, key=lambda item: item[0])
        encoded = [self._labels(text) for _, text in value]
        features = {
            "data": self._labels(best),
            "data_flat": np.concatenate(encoded) if encoded else np.zeros(0, "int32"),
            "data_seq_lens": np.array([len(labels) for labels in encoded], dtype="int32"),
            "scores": np.array([score for score, _ in value], dtype="float32"),
        }
        return DatasetSeq(corpus_idx, features, seq_tag=tag)

    def _labels(self, text: str) -> np.ndarray:
        return np.array(self.vocab.get_seq(text), dtype="int32")


def _check_item(dataset: TextDictDataset, tag: Any, value: Any) -> None:
    where = f"{dataset}: {dataset.filename!r} entry {tag!r}"
    if not isinstance(tag, str):
        raise DatasetError(f"{where}: the keys must be sequence tags (str)")
    if dataset.item_format == "single" and not isinstance(value, str):
        raise DatasetError(f"{where}: expected a text (item_format='single'), got {value!r:.80}")
    if dataset.item_format == "list_with_scores" and not (
        isinstance(value, list)
        and value
        and all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str) for item in value)
    ):
        raise DatasetError(
            f"{where}: expected a non-empty list [(score, text), ...] (item_format='list_with_scores'), got "
            f"{value!r:.80}; for {{tag: text}} set item_format='single'"
        )
