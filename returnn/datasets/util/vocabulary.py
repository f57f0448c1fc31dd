"""Vocabularies: map text to label sequences and back, with RETURNN's classes, options and vocab files.

A vocab file maps each label to its index. Accepted forms: a Python dict literal (``{"a": 0, "b": 1}``, the
format RETURNN writes), a pickled dict (``*.pkl``, as written by i6_core), or one label per line; each optionally
gzipped (``*.gz``). Several labels may share an index (BPE vocabs map ``<s>`` and ``</s>`` both to 0); the first one
is the label of that index. Indices must cover ``0 .. N-1``.

:meth:`Vocabulary.create_vocab` builds the class named by the ``class`` option, or guesses it: ``bpe_file`` means
:class:`BytePairEncoding`, ``model_file`` means :class:`SentencePieces`, anything else a word-level
:class:`Vocabulary`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from returnn.datasets.util.bpe import SamplingBytePairEncoder, StandardBytePairEncoder
from returnn.datasets.util.files import parse_dict_literal, read_file_bytes, unpickle_plain
from returnn.errors import DatasetError

__all__ = [
    "Vocabulary",
    "BytePairEncoding",
    "SamplingBytePairEncoding",
    "SentencePieces",
    "CharacterTargets",
    "Utf8ByteTargets",
]

_RAISE = object()


class Vocabulary:
    """A word-level vocabulary: labels separated by whitespace in the text.

    :param vocab_file: the vocab file (see module docs); not needed when ``labels`` are given
    :param seq_postfix: label indices appended to every sequence (e.g. ``[0]`` for an end-of-sentence label)
    :param unknown_label: the label that stands for labels missing from the vocabulary; it must be in the
        vocabulary. ``None``: missing labels are an error.
    :param bos_label: begin-of-sequence label (only recorded as ``bos_label_id``)
    :param eos_label: end-of-sequence label (only recorded as ``eos_label_id``)
    :param pad_label: padding label (only recorded as ``pad_label_id``)
    :param control_symbols: ``{name: label}``, looked up into ``control_symbol_ids``
    :param user_defined_symbols: ``{name: label}``, looked up into ``user_defined_symbol_ids``
    :param num_labels: if given, checked against the vocabulary's size
    :param labels: the labels in index order, instead of a vocab file
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        seq_postfix: Sequence[int] | None = None,
        unknown_label: str | None = "UNK",
        bos_label: str | None = None,
        eos_label: str | None = None,
        pad_label: str | None = None,
        control_symbols: dict[str, str] | None = None,
        user_defined_symbols: dict[str, str] | None = None,
        num_labels: int | None = None,
        labels: Sequence[str] | None = None,
    ):
        self.vocab_file = os.fspath(vocab_file) if vocab_file is not None else None
        self.seq_postfix = list(seq_postfix or [])
        if labels is not None:
            if callable(labels):
                labels = labels()
            self.labels = [str(label) for label in labels]
            self.vocab = self.create_vocab_dict_from_labels(self.labels)
        elif self.vocab_file is not None:
            self.vocab, self.labels = _vocab_and_labels(read_vocab_file(self.vocab_file), self.vocab_file)
        else:
            raise DatasetError(f"{type(self).__name__}: give 'vocab_file' (or 'labels')")
        self.num_labels = len(self.labels)
        if num_labels is not None and num_labels != self.num_labels:
            raise DatasetError(
                f"{self._where()} has {self.num_labels} labels, but num_labels={num_labels} was given; "
                "fix num_labels or use the matching vocab file"
            )
        self.unknown_label = unknown_label
        self.unknown_label_id = self._special_id("unknown_label", unknown_label)
        self.bos_label_id = self._special_id("bos_label", bos_label)
        self.eos_label_id = self._special_id("eos_label", eos_label)
        self.pad_label_id = self._special_id("pad_label", pad_label)
        self.control_symbol_ids = {
            name: self._special_id(f"control_symbols[{name!r}]", label)
            for name, label in (control_symbols or {}).items()
        }
        self.user_defined_symbol_ids = {
            name: self._special_id(f"user_defined_symbols[{name!r}]", label)
            for name, label in (user_defined_symbols or {}).items()
        }
        for i, idx in enumerate(self.seq_postfix):
            if not self.is_id_valid(idx):
                raise DatasetError(f"{self._where()}: seq_postfix[{i}] = {idx!r} is not a label index")

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self._where()}, num_labels={self.num_labels}, unknown_label={self.unknown_label!r})"

    def _where(self) -> str:
        return f"vocab file {self.vocab_file!r}" if self.vocab_file else "vocabulary given by labels"

    def _special_id(self, option: str, label: str | None) -> int | None:
        if label is None:
            return None
        if label in self.vocab:
            return self.vocab[label]
        similar = [known for known in self.vocab if known.lower().strip("<>[]") == label.lower().strip("<>[]")]
        hint = f"; did you mean {similar[0]!r}?" if similar else ""
        fix = " or set unknown_label=None to make unknown labels an error" if option == "unknown_label" else ""
        raise DatasetError(f"{option}={label!r} is not in the {self._where()}{hint} (fix the option{fix})")

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def create_vocab(cls, **opts: Any) -> Vocabulary:
        """Build a vocabulary from options as in a dataset's ``targets`` dict (see module docs).

        :param opts: ``class`` (a class name or class) plus the options of that class
        """
        opts = dict(opts)
        clazz = opts.pop("class", None)
        if clazz is None:
            if "bpe_file" in opts:
                clazz = BytePairEncoding
            elif "model_file" in opts or "model_proto" in opts:
                clazz = SentencePieces
            else:
                clazz = Vocabulary
        elif isinstance(clazz, str):
            if clazz not in VOCABULARY_CLASSES:
                raise DatasetError(
                    f"vocabulary options: unknown class {clazz!r}; choose one of: {', '.join(VOCABULARY_CLASSES)}"
                )
            clazz = VOCABULARY_CLASSES[clazz]
        elif not (isinstance(clazz, type) and issubclass(clazz, Vocabulary)):
            raise DatasetError(f"vocabulary options: 'class' must be a vocabulary class name, got {clazz!r}")
        return _construct(clazz, opts)

    @classmethod
    def from_option(cls, value: dict[str, Any] | Vocabulary, where: str) -> Vocabulary:
        """The vocabulary of a dataset option (``targets``, ``orth_vocab``): options for :meth:`create_vocab`, or a
        Vocabulary as it is. Errors are prefixed with ``where`` (the dataset and the option)."""
        if isinstance(value, Vocabulary):
            return value
        if not isinstance(value, dict):
            raise DatasetError(f"{where}: expected vocabulary options (a dict) or a Vocabulary, got {value!r}")
        try:
            return cls.create_vocab(**value)
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from exc

    @staticmethod
    def create_vocab_dict_from_labels(labels: Sequence[str]) -> dict[str, int]:
        """``{label: index}``; each label must be unique."""
        vocab = {label: idx for idx, label in enumerate(labels)}
        if len(vocab) != len(labels):
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            raise DatasetError(f"vocabulary labels must be unique, these repeat: {duplicates[:10]}")
        return vocab

    @classmethod
    def create_vocab_from_labels(cls, labels: Sequence[str], **opts: Any) -> Vocabulary:
        """A :class:`Vocabulary` (or a subclass taking ``labels``) from a label list."""
        return cls(labels=labels, **opts)

    def set_random_seed(self, seed: int) -> None:
        """Seed the randomness of sampling vocabularies (called each epoch by datasets); no effect here."""

    def get_opts(self) -> dict[str, Any]:
        """Options that rebuild this vocabulary with :meth:`create_vocab`."""
        return {"class": type(self).__name__, "vocab_file": self.vocab_file, "unknown_label": self.unknown_label}

    # ---------------------------------------------------------------- lookups

    def is_id_valid(self, idx: int) -> bool:
        return isinstance(idx, (int, np.integer)) and 0 <= int(idx) < self.num_labels

    def label_to_id(self, label: str, default: Any = _RAISE) -> int | Any:
        """The index of a label; missing labels give the unknown label's index, else ``default``, else an error."""
        idx = self.vocab.get(label)
        if idx is not None:
            return idx
        if self.unknown_label_id is not None:
            return self.unknown_label_id
        if default is not _RAISE:
            return default
        raise DatasetError(
            f"label {label!r} is not in the {self._where()} and there is no unknown label "
            "(unknown_label=None); add the label to the vocabulary or set unknown_label to one of its labels"
        )

    def id_to_label(self, idx: int, default: Any = _RAISE) -> str | Any:
        if self.is_id_valid(idx):
            return self.labels[int(idx)]
        if default is not _RAISE:
            return default
        raise DatasetError(f"label index {idx!r} is out of range for the {self._where()} ({self.num_labels} labels)")

    def to_id(self, label: str | int | None, default: Any = _RAISE, allow_none: bool = False) -> int | None:
        """A label or an index to the index (``None`` stays ``None`` with ``allow_none``)."""
        if label is None and allow_none:
            return None
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not self.is_id_valid(label):
                if default is not _RAISE:
                    return default
                raise DatasetError(f"label index {label!r} is out of range for the {self._where()}")
            return int(label)
        if isinstance(label, str):
            return self.label_to_id(label, default=default)
        raise TypeError(f"expected a label (str) or an index (int), got {label!r}")

    # ---------------------------------------------------------------- sequences

    def get_seq(self, sentence: str) -> list[int]:
        """The label indices of a text (labels separated by whitespace), plus ``seq_postfix``."""
        return self.get_seq_indices(sentence.split()) + self.seq_postfix

    def get_seq_indices(self, seq: Sequence[str]) -> list[int]:
        """The indices of a list of labels (no ``seq_postfix``)."""
        return [self.label_to_id(label) for label in seq]

    def get_seq_labels(self, seq: Sequence[int] | np.ndarray) -> str:
        """The text of a label index sequence (labels joined by spaces)."""
        return " ".join(self.id_to_label(idx) for idx in seq)


class BytePairEncoding(Vocabulary):
    """Subword labels from a BPE merge table (subword-nmt format) and its vocabulary.

    :param vocab_file: the BPE vocabulary (non-final pieces carry ``label_postfix_merge_symbol``)
    :param bpe_file: the merge table
    :param label_postfix_merge_symbol: postfix of pieces that are not the last one of a word
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        bpe_file: str | os.PathLike,
        seq_postfix: Sequence[int] | None = None,
        unknown_label: str | None = "UNK",
        label_postfix_merge_symbol: str = "@@",
        **kwargs: Any,
    ):
        super().__init__(vocab_file, seq_postfix=seq_postfix, unknown_label=unknown_label, **kwargs)
        self.bpe_file = os.fspath(bpe_file)
        self.label_postfix_merge_symbol = label_postfix_merge_symbol
        self.bpe = StandardBytePairEncoder(self.bpe_file, labels=self.vocab, merge_symbol=label_postfix_merge_symbol)

    def get_opts(self) -> dict[str, Any]:
        return {**super().get_opts(), "bpe_file": self.bpe_file}

    def get_seq(self, sentence: str) -> list[int]:
        return self.get_seq_indices(self.bpe.segment_sentence(sentence)) + self.seq_postfix


class SamplingBytePairEncoding(Vocabulary):
    """Subword labels sampled from the vocabulary alone (no merge table), different in each epoch.

    See :class:`returnn.datasets.util.bpe.SamplingBytePairEncoder` for the sampling.

    :param breadth_prob: probability to pass over the longest possible piece at each position (0: always longest)
    :param word_prefix_symbol: mark word starts with this prefix (``"▁"``) instead of merge symbols on pieces
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        breadth_prob: float,
        seq_postfix: Sequence[int] | None = None,
        label_postfix_merge_symbol: str = "@@",
        word_prefix_symbol: str | None = None,
        unknown_label: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(vocab_file, seq_postfix=seq_postfix, unknown_label=unknown_label, **kwargs)
        self.breadth_prob = breadth_prob
        self.bpe = SamplingBytePairEncoder(
            self.labels,
            breadth_prob=breadth_prob,
            merge_symbol=label_postfix_merge_symbol,
            word_prefix_symbol=word_prefix_symbol,
        )

    def set_random_seed(self, seed: int) -> None:
        self.bpe.rng = np.random.RandomState(seed)

    def get_seq(self, sentence: str) -> list[int]:
        ids = []
        for word, labels in ((word, self.bpe.segment_word(word)) for word in sentence.split()):
            if labels is None:
                if self.unknown_label_id is None:
                    raise DatasetError(
                        f"word {word!r} cannot be built from the labels of the {self._where()} and there is no "
                        "unknown label; set unknown_label to one of its labels"
                    )
                ids.append(self.unknown_label_id)
            else:
                ids += [self.vocab[label] for label in labels]
        return ids + self.seq_postfix


class SentencePieces(Vocabulary):
    """A SentencePiece model (needs the ``sentencepiece`` package).

    Options are those of ``sentencepiece.SentencePieceProcessor``: ``model_file`` or ``model_proto``, ``add_bos``,
    ``add_eos``, ``reverse``, ``enable_sampling``, ``nbest_size``, ``alpha``, ... ``seq_postfix`` as for
    :class:`Vocabulary`. The processor is loaded on first use, so the object pickles cheaply.
    """

    def __init__(self, **opts: Any):
        self.seq_postfix = list(opts.pop("seq_postfix", None) or [])
        self.unknown_label = None
        self._opts = opts
        self.vocab_file = opts.get("model_file")
        if self.vocab_file is None and opts.get("model_proto") is None:
            raise DatasetError("SentencePieces: give 'model_file' (the .model file of sentencepiece)")
        self._sp: Any = None
        sp = self.sp
        self.labels = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        self.vocab = {label: idx for idx, label in enumerate(self.labels)}
        self.num_labels = len(self.labels)
        self.unknown_label_id = sp.unk_id() if sp.unk_id() >= 0 else None
        self.unknown_label = self.labels[self.unknown_label_id] if self.unknown_label_id is not None else None
        self.bos_label_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_label_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.pad_label_id = sp.pad_id() if sp.pad_id() >= 0 else None
        self.control_symbol_ids: dict[str, int | None] = {}
        self.user_defined_symbol_ids: dict[str, int | None] = {}

    @property
    def sp(self) -> Any:
        """The ``sentencepiece.SentencePieceProcessor``."""
        if self._sp is None:
            try:
                import sentencepiece
            except ImportError:
                raise DatasetError(
                    "SentencePieces vocabularies need the 'sentencepiece' package: pip install sentencepiece"
                ) from None
            try:
                self._sp = sentencepiece.SentencePieceProcessor(**self._opts)
            except (OSError, RuntimeError, TypeError) as exc:
                raise DatasetError(f"cannot load the SentencePiece model with options {self._opts!r}: {exc}") from exc
        return self._sp

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sp": None}

    def get_opts(self) -> dict[str, Any]:
        return {"class": "SentencePieces", **self._opts}

    def set_random_seed(self, seed: int) -> None:
        import sentencepiece

        # Seed 0 would mean "non-deterministic" to sentencepiece.
        sentencepiece.set_random_generator_seed(seed + 1)

    def get_seq(self, sentence: str) -> list[int]:
        return list(self.sp.encode(sentence, out_type=int)) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int] | np.ndarray) -> str:
        return self.sp.decode([int(idx) for idx in seq])


class CharacterTargets(Vocabulary):
    """One label per character (no whitespace splitting); unknown characters map to ``unknown_label`` ("@")."""

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        seq_postfix: Sequence[int] | None = None,
        unknown_label: str | None = "@",
        labels: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(vocab_file, seq_postfix=seq_postfix, unknown_label=unknown_label, labels=labels, **kwargs)

    def get_seq(self, sentence: str) -> list[int]:
        return self.get_seq_indices(list(sentence)) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int] | np.ndarray) -> str:
        return "".join(self.id_to_label(idx) for idx in seq)


class Utf8ByteTargets(Vocabulary):
    """The UTF-8 bytes of the text: 256 labels, no vocab file."""

    def __init__(self, seq_postfix: Sequence[int] | None = None):
        super().__init__(labels=[chr(i) for i in range(256)], seq_postfix=seq_postfix, unknown_label=None)

    def get_opts(self) -> dict[str, Any]:
        return {"class": "Utf8ByteTargets"}

    def get_seq(self, sentence: str) -> list[int]:
        return list(sentence.encode("utf-8")) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int] | np.ndarray) -> str:
        # Model outputs need not be valid UTF-8; show broken bytes as U+FFFD instead of failing.
        return bytes(int(idx) for idx in seq).decode("utf-8", errors="replace")


VOCABULARY_CLASSES: dict[str, type[Vocabulary]] = {
    clazz.__name__: clazz
    for clazz in (
        Vocabulary,
        BytePairEncoding,
        SamplingBytePairEncoding,
        SentencePieces,
        CharacterTargets,
        Utf8ByteTargets,
    )
}


def _construct(clazz: type[Vocabulary], opts: dict[str, Any]) -> Vocabulary:
    """``clazz(**opts)``, with unknown or missing options reported as a config error listing the valid ones."""
    valid = _option_names(clazz)
    unknown = sorted(set(opts) - valid) if valid is not None else []
    if unknown:
        raise DatasetError(
            f"vocabulary options for {clazz.__name__}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(valid or ()))}"
        )
    try:
        return clazz(**opts)
    except TypeError as exc:
        raise DatasetError(f"vocabulary options for {clazz.__name__}: {exc}") from exc


def _option_names(clazz: type) -> set[str] | None:
    """The constructor options of a class and of the bases it forwards ``**kwargs`` to (None: not knowable)."""
    names: set[str] = set()
    for base in clazz.__mro__:
        if "__init__" not in vars(base):
            continue
        parameters = list(inspect.signature(base.__init__).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
        if base is SentencePieces:
            return None
    return names


# --------------------------------------------------------------------------------------------------
# Vocab files


def read_vocab_file(filename: str) -> dict[str, int]:
    """Read a vocab file (see module docs) into ``{label: index}``."""
    raw = read_file_bytes(filename, "vocab file")
    if filename.endswith((".pkl", ".pkl.gz")) or raw[:1] == b"\x80":
        return _unpickle_vocab(raw, filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"vocab file {filename!r} is not UTF-8 text nor a pickle: {exc}") from None
    if text.lstrip().startswith("{"):
        return parse_dict_literal(text, f"vocab file {filename!r}")
    return {label: idx for idx, label in enumerate(text.splitlines())}


def _unpickle_vocab(raw: bytes, filename: str) -> dict[str, int]:
    vocab = unpickle_plain(raw, f"vocab file {filename!r}", "a plain {label: index} dict")
    if not isinstance(vocab, dict):
        raise DatasetError(
            f"vocab file {filename!r}: expected a pickled dict {{label: index}}, got {type(vocab).__name__}"
        )
    return vocab


def _vocab_and_labels(vocab: dict[Any, Any], filename: str) -> tuple[dict[str, int], list[str]]:
    """Check the indices and list the labels in index order (the first label of a shared index wins)."""
    labels_by_idx: dict[int, str] = {}
    for label, idx in vocab.items():
        if not isinstance(label, str) or not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise DatasetError(
                f"vocab file {filename!r}: entries must be label (str) -> index (int >= 0), got {label!r}: {idx!r}"
            )
        labels_by_idx.setdefault(idx, label)
    num_labels = max(labels_by_idx, default=-1) + 1
    missing = [idx for idx in range(num_labels) if idx not in labels_by_idx]
    if missing:
        raise DatasetError(
            f"vocab file {filename!r}: the indices must cover 0..{num_labels - 1}, but {len(missing)} are unused "
            f"(first: {missing[:5]}); renumber the labels"
        )
    return dict(vocab), [labels_by_idx[idx] for idx in range(num_labels)]
