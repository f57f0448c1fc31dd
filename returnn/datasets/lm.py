"""Text datasets: :class:`LmDataset` (language-model corpora), :class:`TranslationDataset` and
:class:`TranslationFactorsDataset` (parallel text).

All three read their corpus on first use (not in the constructor, so that a dataset pickled into DataLoader
workers is cheap) and keep it as one packed integer array per data key. Files may be gzipped (recognised by their
content). Sequence tags are ``line-<n>``.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.util.files import open_text_file, read_dict_file, read_text_file
from returnn.datasets.util.vocabulary import Vocabulary, read_vocab_file
from returnn.errors import DatasetError

__all__ = ["LmDataset", "TranslationDataset", "TranslationFactorsDataset", "iter_corpus_orths"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Files


def _is_bliss(path: str, what: str) -> bool:
    with open_text_file(path, what) as f:
        head = f.read(256).lstrip()
    return head.startswith(("<?xml", "<corpus"))


def iter_corpus_orths(path: str, skip_empty_lines: bool = True, what: str = "corpus_file") -> Iterator[tuple[int, str]]:
    """The sequences of a corpus file: ``(line number or segment number, text)``.

    A Bliss XML corpus (``<corpus>`` with ``<recording>``/``<segment>``/``<orth>``, subcorpora nested) gives the
    orthography of each segment, whitespace normalised; any other file gives its lines.

    :param what: names the file in errors
    """
    if _is_bliss(path, what):
        yield from _iter_bliss_orths(path, what)
        return
    with open_text_file(path, what) as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if text or not skip_empty_lines:
                yield line_no, text


def _iter_bliss_orths(path: str, what: str) -> Iterator[tuple[int, str]]:
    num_segments = 0
    with open_text_file(path, what) as f:
        try:
            for _, element in ElementTree.iterparse(f, events=("end",)):
                if element.tag == "segment":
                    num_segments += 1
                    orth = element.find("orth")
                    yield num_segments, " ".join((orth.text or "").split()) if orth is not None else ""
                    element.clear()
                elif element.tag == "recording":
                    element.clear()
        except ElementTree.ParseError as exc:
            raise DatasetError(f"{what} {path!r} (a Bliss corpus) is not valid XML: {exc}") from exc


def _read_lines(path: str, what: str) -> list[str]:
    return read_text_file(path, what).splitlines()


def _read_symbol_map(path: str) -> dict[str, int]:
    """``orth_symbols_map_file``: lines ``<symbol> <index>``, or a vocab file (dict literal or pickle)."""
    if path.endswith((".pkl", ".pkl.gz")):
        return read_vocab_file(path)
    lines = _read_lines(path, "orth_symbols_map_file")
    if lines and lines[0].lstrip().startswith("{"):
        return read_vocab_file(path)
    symbols = {}
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetError(
                f"orth_symbols_map_file {path!r}, line {line_no}: expected '<symbol> <index>', got {line!r}"
            )
        symbols[parts[0]] = int(parts[1])
    return symbols


class _PackedSeqs:
    """Many integer sequences in one array (4 bytes per label instead of a Python object per sequence)."""

    def __init__(self, chunks: list[np.ndarray], dtype: str):
        lengths = np.array([len(chunk) for chunk in chunks], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.values = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.values[self.offsets[idx] : self.offsets[idx + 1]]

    def length(self, idx: int) -> int:
        return int(self.offsets[idx + 1] - self.offsets[idx])


class _TextDataset(CachedDataset2):
    """Shared by the text datasets: a lazily loaded corpus of packed sequences per data key, tags ``line-<n>``."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._seqs: dict[str, _PackedSeqs] | None = None
        self._tags: list[str] | None = None

    def _load(self) -> tuple[dict[str, list[np.ndarray]], list[str]]:
        """Read the corpus: sequences per data key, and the tags."""
        raise NotImplementedError

    def _ensure_loaded(self) -> dict[str, _PackedSeqs]:
        if self._seqs is None:
            chunks, tags = self._load()
            self._seqs = {key: _PackedSeqs(seqs, self.get_data_dtype(key)) for key, seqs in chunks.items()}
            self._tags = tags
            logger.info(f"{self}: {len(tags)} sequences")
        return self._seqs

    def get_total_num_seqs(self) -> int:
        return len(self.get_all_tags())

    def get_all_tags(self) -> list[str]:
        self._ensure_loaded()
        assert self._tags is not None
        return self._tags

    def supports_sharding(self) -> bool:
        return True

    def _get_seq_len_for_ordering(self) -> Callable[[int], int]:
        seqs = self._ensure_loaded()
        main = seqs["data"] if "data" in seqs else next(iter(seqs.values()))
        return main.length

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        features = {key: packed[corpus_idx] for key, packed in self._ensure_loaded().items()}
        return DatasetSeq(corpus_idx, features, seq_tag=self.get_all_tags()[corpus_idx])

    def get_data_dtype(self, key: str) -> str:
        return "int32"


# --------------------------------------------------------------------------------------------------
# LmDataset


class LmDataset(_TextDataset):
    """Label sequences from text corpora, for language models: data key ``data`` (and ``delayed``).

    :param corpus_file: a file or a list of files: plain text (one sequence per line) or Bliss XML, maybe gzipped;
        or a function returning such
    :param orth_symbols_file: the labels, one per line (index = line number)
    :param orth_symbols_map_file: the labels with their indices: lines ``<symbol> <index>``, or a vocab file
    :param orth_vocab: :class:`Vocabulary` options (or a Vocabulary) instead of the two above; the text is then
        split by the vocabulary (BPE, SentencePiece, ...) and ``seq_end_symbol`` etc. are not used
    :param orth_replace_map_file: a dict literal (JSON or Python) ``{symbol: replacement text}``, applied to each
        symbol before the lookup
    :param word_based: labels are the whitespace-separated words; else characters, where ``[...]`` is one symbol
    :param word_end_symbol: character-based only: put this symbol after each word instead of the spaces
    :param seq_end_symbol: appended to every sequence (None: nothing)
    :param unknown_symbol: stands for symbols missing from the labels, for word-based corpora or with
        ``auto_replace_unknown_symbol``, if it is one of the labels
    :param error_on_invalid_seq: a sequence with an unknown symbol (that is not replaced) is an error; if False,
        it is skipped (and logged, at most ``log_skipped_seqs`` times)
    :param add_delayed_seq_data: add key ``delayed``: ``delayed_seq_data_start_symbol`` then the data without its
        last label (the input of a language model whose target is ``data``)
    :param dtype: the integer type of the data
    """

    def __init__(
        self,
        corpus_file: str | Sequence[str] | Callable[[], Any],
        skip_empty_lines: bool = True,
        orth_symbols_file: str | None = None,
        orth_symbols_map_file: str | None = None,
        orth_replace_map_file: str | None = None,
        orth_vocab: dict[str, Any] | Vocabulary | None = None,
        word_based: bool = False,
        word_end_symbol: str | None = None,
        seq_end_symbol: str | None = "[END]",
        unknown_symbol: str | None = "[UNKNOWN]",
        auto_replace_unknown_symbol: bool = False,
        log_auto_replace_unknown_symbols: int = 10,
        log_skipped_seqs: int = 10,
        error_on_invalid_seq: bool = True,
        add_delayed_seq_data: bool = False,
        delayed_seq_data_start_symbol: str = "[START]",
        dtype: str = "int32",
        phone_info: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if phone_info is not None:
            raise DatasetError(f"{self}: 'phone_info' (phone sequences from a lexicon) is not supported")
        self.corpus_file = corpus_file
        self.skip_empty_lines = skip_empty_lines
        self.word_based = word_based
        self.word_end_symbol = word_end_symbol
        self.seq_end_symbol = seq_end_symbol
        self.unknown_symbol = unknown_symbol
        self.auto_replace_unknown_symbol = auto_replace_unknown_symbol
        self.log_auto_replace_unknown_symbols = log_auto_replace_unknown_symbols
        self.log_skipped_seqs = log_skipped_seqs
        self.error_on_invalid_seq = error_on_invalid_seq
        self.add_delayed_seq_data = add_delayed_seq_data
        self.dtype = dtype
        self.orth_vocab, self.labels_list, self.symbol_map = self._make_symbols(
            orth_symbols_file, orth_symbols_map_file, orth_vocab
        )
        self.orth_replace_map = self._read_replace_map(orth_replace_map_file) if orth_replace_map_file else {}
        num_labels = len(self.labels_list)
        self.num_outputs = {"data": (num_labels, 1)}
        self.labels = {"data": self.labels_list}
        self.delayed_start_id: int | None = None
        if add_delayed_seq_data:
            self.delayed_start_id = self._symbol_id_or_error(
                delayed_seq_data_start_symbol, "delayed_seq_data_start_symbol"
            )
            self.num_outputs["delayed"] = (num_labels, 1)
            self.labels["delayed"] = self.labels_list

    def _make_symbols(
        self, symbols_file: str | None, map_file: str | None, vocab: dict[str, Any] | Vocabulary | None
    ) -> tuple[Vocabulary | None, list[str], dict[str, int]]:
        options = {"orth_symbols_file": symbols_file, "orth_symbols_map_file": map_file, "orth_vocab": vocab}
        given = [name for name, value in options.items() if value is not None]
        if len(given) != 1:
            raise DatasetError(
                f"{self}: give exactly one of orth_symbols_file, orth_symbols_map_file, orth_vocab "
                f"(got {', '.join(given) or 'none'})"
            )
        if vocab is not None:
            vocab = Vocabulary.from_option(vocab, f"{self} orth_vocab")
            return vocab, list(vocab.labels), dict(vocab.vocab)
        if symbols_file is not None:
            labels = [line for line in _read_lines(symbols_file, "orth_symbols_file") if line]
            return None, labels, {label: idx for idx, label in enumerate(labels)}
        assert map_file is not None
        symbol_map = _read_symbol_map(map_file)
        labels_by_id: dict[int, str] = {}
        for symbol, idx in symbol_map.items():
            labels_by_id.setdefault(idx, symbol)
        num_labels = max(labels_by_id, default=-1) + 1
        return None, [labels_by_id.get(idx, "") for idx in range(num_labels)], symbol_map

    def _symbol_id_or_error(self, symbol: str, option: str) -> int:
        if symbol not in self.symbol_map:
            raise DatasetError(
                f"{self}: {option}={symbol!r} is not one of the {len(self.labels_list)} labels; add it to the labels "
                f"or set {option} to one of them"
            )
        return self.symbol_map[symbol]

    def _read_replace_map(self, path: str) -> dict[str, list[str]]:
        mapping = read_dict_file(path, f"{self} orth_replace_map_file")
        return {str(key): self._symbolize(str(value)) for key, value in mapping.items()}

    # ---------------------------------------------------------------- parsing

    def _symbolize(self, orth: str) -> list[str]:
        """Split a text into symbols: words, or characters with ``[...]`` kept together."""
        if self.word_based:
            return orth.split()
        symbols: list[str] = []
        words = orth.split()
        for word_idx, word in enumerate(words):
            if word_idx > 0 and self.word_end_symbol is None:
                symbols.append(" ")
            pos = 0
            while pos < len(word):
                end = word.find("]", pos) if word[pos] == "[" else -1
                if end > pos:
                    symbols.append(word[pos : end + 1].upper())
                    pos = end + 1
                else:
                    symbols.append(word[pos])
                    pos += 1
            if self.word_end_symbol is not None:
                symbols.append(self.word_end_symbol)
        return symbols

    def _orth_to_ids(self, orth: str, where: str, counts: dict[str, int]) -> np.ndarray | None:
        """The label ids of one sequence; None if it is to be skipped."""
        if self.orth_vocab is not None:
            try:
                return np.array(self.orth_vocab.get_seq(orth), dtype=self.dtype)
            except DatasetError as exc:
                return self._invalid_seq(f"{where}: {exc}", counts)
        symbols = self._symbolize(orth)
        if self.orth_replace_map:
            symbols = [part for symbol in symbols for part in self.orth_replace_map.get(symbol, [symbol])]
        if self.seq_end_symbol is not None:
            symbols.append(self.seq_end_symbol)
        ids = []
        replace = self.word_based or self.auto_replace_unknown_symbol
        unknown_id = self.symbol_map.get(self.unknown_symbol) if replace and self.unknown_symbol is not None else None
        for symbol in symbols:
            idx = self.symbol_map.get(symbol)
            if idx is None:
                if unknown_id is None:
                    return self._invalid_seq(f"{where}: symbol {symbol!r} is not one of the labels", counts)
                counts["replaced"] += 1
                if counts["replaced"] <= self.log_auto_replace_unknown_symbols:
                    logger.warning(f"{self}: {where}: replacing unknown symbol {symbol!r} by {self.unknown_symbol!r}")
                idx = unknown_id
            ids.append(idx)
        return np.array(ids, dtype=self.dtype)

    def _invalid_seq(self, message: str, counts: dict[str, int]) -> None:
        if self.error_on_invalid_seq:
            raise DatasetError(
                f"{self}: {message}; add it to the labels, set unknown_symbol (word_based or "
                "auto_replace_unknown_symbol=True), or skip such sequences with error_on_invalid_seq=False"
            )
        counts["skipped"] += 1
        if counts["skipped"] <= self.log_skipped_seqs:
            logger.warning(f"{self}: skipping sequence: {message}")
        return None

    def _corpus_files(self) -> list[str]:
        files = self.corpus_file() if callable(self.corpus_file) else self.corpus_file
        files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        return [os.fspath(f) for f in files]

    def _load(self) -> tuple[dict[str, list[np.ndarray]], list[str]]:
        counts = {"replaced": 0, "skipped": 0}
        data: list[np.ndarray] = []
        for path in self._corpus_files():
            for line_no, orth in iter_corpus_orths(path, self.skip_empty_lines, f"{self} corpus_file"):
                ids = self._orth_to_ids(orth, f"{path!r}, sequence {line_no}", counts)
                if ids is not None:
                    data.append(ids)
        if counts["replaced"] or counts["skipped"]:
            logger.info(f"{self}: {counts['replaced']} unknown symbols replaced, {counts['skipped']} sequences skipped")
        chunks = {"data": data}
        if self.add_delayed_seq_data:
            start = np.array([self.delayed_start_id], dtype=self.dtype)
            chunks["delayed"] = [np.concatenate([start, ids[:-1]]) for ids in data]
        return chunks, [f"line-{idx}" for idx in range(len(data))]

    def get_data_dtype(self, key: str) -> str:
        return self.dtype


# --------------------------------------------------------------------------------------------------
# Parallel text


class TranslationDataset(_TextDataset):
    """Parallel text: ``<path>/source.<file_postfix>`` and ``<path>/target.<file_postfix>`` (each maybe ``.gz``),
    one sentence per line, words looked up in ``<path>/source.vocab.pkl`` / ``target.vocab.pkl``. Data keys
    ``data`` (source) and ``classes`` (target).

    :param source_postfix: text appended to every source line (e.g. ``" </S>"``)
    :param target_postfix: likewise for the target
    :param source_only: read no target
    :param search_without_reference: like ``source_only``, but ``classes`` stays a data key (empty sequences)
    :param unknown_label: label for words missing from a vocabulary, or ``{data_key: label}``; None: an error
    :param seq_list_file: a file with line numbers (0-based, one per line): use only these lines
    :param use_cache_manager: copy the files to the local cache first (:func:`returnn.util.basic.cf`)
    """

    MAIN_KEYS = {"source": "data", "target": "classes"}

    def __init__(
        self,
        path: str,
        file_postfix: str,
        source_postfix: str = "",
        target_postfix: str = "",
        source_only: bool = False,
        search_without_reference: bool = False,
        unknown_label: str | dict[str, str] | None = None,
        seq_list_file: str | None = None,
        use_cache_manager: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.path = os.fspath(path)
        self.file_postfix = file_postfix
        self.postfixes = {"source": source_postfix.split(), "target": target_postfix.split()}
        self.source_only = source_only
        self.search_without_reference = search_without_reference
        self.seq_list_file = seq_list_file
        self.use_cache_manager = use_cache_manager
        self.sides = ["source"] if source_only or search_without_reference else ["source", "target"]
        self.streams = self._streams()  # side -> data keys of its factors, main factor first
        announced = ["source"] if source_only else ["source", "target"]
        self.vocabs: dict[str, dict[str, int]] = {}
        self.num_outputs = {}
        self.labels = {}
        for side in announced:
            for key in self.streams[side]:
                vocab = Vocabulary(self._file(f"{self._vocab_name(side, key)}.vocab.pkl"), unknown_label=None)
                self.vocabs[key] = vocab.vocab
                self.labels[key] = vocab.labels
                self.num_outputs[key] = (vocab.num_labels, 1)
        self.unknown_ids = self._unknown_ids(unknown_label)

    def _streams(self) -> dict[str, list[str]]:
        return {side: [key] for side, key in self.MAIN_KEYS.items()}

    def _vocab_name(self, side: str, key: str) -> str:
        return side if key == self.MAIN_KEYS[side] else key

    def _file(self, name: str) -> str:
        path = os.path.join(self.path, name)
        if not os.path.exists(path) and os.path.exists(path + ".gz"):
            path += ".gz"
        if not os.path.exists(path):
            raise DatasetError(f"{self}: file {path!r} (or .gz) does not exist")
        if self.use_cache_manager:
            from returnn.util.basic import cf

            path = cf(path)
        return path

    def _unknown_ids(self, unknown_label: str | dict[str, str] | None) -> dict[str, int]:
        if unknown_label is None:
            return {}
        labels = unknown_label if isinstance(unknown_label, dict) else dict.fromkeys(self.vocabs, unknown_label)
        ids = {}
        for key, label in labels.items():
            if key not in self.vocabs:
                raise DatasetError(
                    f"{self}: unknown_label for {key!r}, which is not a data key ({sorted(self.vocabs)})"
                )
            if label is None:
                continue
            if label not in self.vocabs[key]:
                raise DatasetError(f"{self}: unknown_label {label!r} is not in the vocabulary of {key!r}")
            ids[key] = self.vocabs[key][label]
        return ids

    def _selected_lines(self) -> list[int] | None:
        if self.seq_list_file is None:
            return None
        try:
            return [int(line) for line in _read_lines(self.seq_list_file, f"{self} seq_list_file") if line.strip()]
        except ValueError as exc:
            raise DatasetError(
                f"{self}: seq_list_file {self.seq_list_file!r}: expected line numbers (0-based), one per line: {exc}"
            ) from None

    def _load(self) -> tuple[dict[str, list[np.ndarray]], list[str]]:
        lines = {
            side: _read_lines(self._file(f"{side}.{self.file_postfix}"), f"{self} {side} file") for side in self.sides
        }
        num_lines = len(lines["source"])
        for side, side_lines in lines.items():
            if len(side_lines) != num_lines:
                raise DatasetError(
                    f"{self}: {len(side_lines)} {side} lines but {num_lines} source lines in {self.path!r}; "
                    "source and target must have one line per sentence"
                )
        selected = self._selected_lines()
        line_numbers = list(range(num_lines)) if selected is None else selected
        chunks: dict[str, list[np.ndarray]] = {key: [] for side in self.sides for key in self.streams[side]}
        for line_no in line_numbers:
            if not 0 <= line_no < num_lines:
                raise DatasetError(
                    f"{self}: seq_list_file {self.seq_list_file!r} names line {line_no}, but the corpus has lines "
                    f"0..{num_lines - 1}"
                )
            for side in self.sides:
                for key, ids in self._line_to_ids(side, lines[side][line_no], line_no).items():
                    chunks[key].append(ids)
        if "target" not in self.sides and not self.source_only:
            for key in self.streams["target"]:
                chunks[key] = [np.zeros(0, np.int32)] * len(line_numbers)
        return chunks, [f"line-{line_no}" for line_no in line_numbers]

    def _line_to_ids(self, side: str, line: str, line_no: int) -> dict[str, np.ndarray]:
        keys = self.streams[side]
        words = line.split()
        factors = [words] if len(keys) == 1 else _split_factors(words, len(keys), self, side, line_no)
        result = {}
        for key, tokens in zip(keys, factors):
            tokens = tokens + self.postfixes[side]
            vocab = self.vocabs[key]
            unknown = self.unknown_ids.get(key)
            ids = np.empty(len(tokens), dtype=np.int32)
            for i, token in enumerate(tokens):
                idx = vocab.get(token, unknown)
                if idx is None:
                    raise DatasetError(
                        f"{self}: {side} line {line_no} ('line-{line_no}'): word {token!r} is not in the vocabulary "
                        f"of {key!r}; set unknown_label (e.g. unknown_label='<UNK>') to map such words"
                    )
                ids[i] = idx
            result[key] = ids
        return result


def _split_factors(words: list[str], num: int, dataset: TranslationFactorsDataset, side: str, line_no: int):
    separator = dataset.factor_separator
    factors: list[list[str]] = [[] for _ in range(num)]
    for word in words:
        parts = word.split(separator)
        if len(parts) != num:
            raise DatasetError(
                f"{dataset}: {side} line {line_no}: word {word!r} has {len(parts)} factor(s) separated by "
                f"{separator!r}, expected {num}"
            )
        for factor, part in zip(factors, parts):
            factor.append(part)
    return factors


class TranslationFactorsDataset(TranslationDataset):
    """:class:`TranslationDataset` with factored words (``word|factor1|factor2``).

    The main factor is ``data`` (source) / ``classes`` (target) with vocabulary ``source.vocab.pkl`` /
    ``target.vocab.pkl``; each further factor is a data key of its own, with vocabulary ``<key>.vocab.pkl``.

    :param source_factors: data keys of the source factors after the main one
    :param target_factors: data keys of the target factors after the main one
    :param factor_separator: separates the factors of a word
    """

    def __init__(
        self,
        source_factors: Sequence[str] | None = None,
        target_factors: Sequence[str] | None = None,
        factor_separator: str = "|",
        **kwargs: Any,
    ):
        self.source_factors = list(source_factors or [])
        self.target_factors = list(target_factors or [])
        self.factor_separator = factor_separator
        super().__init__(**kwargs)

    def _streams(self) -> dict[str, list[str]]:
        return {"source": ["data"] + self.source_factors, "target": ["classes"] + self.target_factors}
