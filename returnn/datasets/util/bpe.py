"""Byte-pair-encoding segmenters: the standard merge-table encoder and a sampling encoder over a vocabulary.

:class:`StandardBytePairEncoder` reads a merge table in the format of subword-nmt (``learn_bpe.py``): optionally a
first line ``#version: 0.2``, then one merge ``left right`` per line, most frequent first. A word is split into
characters (the last one carrying the end-of-word marker ``</w>`` in version 0.2, a separate ``</w>`` symbol in
version 0.1), and the pair with the best rank is merged everywhere until no known pair is left. Pieces that are
followed by another piece of the same word get the merge symbol (``@@``) appended.

With a vocabulary, pieces missing from it are split back along their merges until they are known (or are single
characters), so that a vocabulary restricted by frequency still covers the text.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

import numpy as np

from returnn.errors import DatasetError

__all__ = ["StandardBytePairEncoder", "SamplingBytePairEncoder", "read_bpe_codes"]

END_OF_WORD = "</w>"


def read_bpe_codes(filename: str | os.PathLike) -> tuple[tuple[int, int], list[tuple[str, str]]]:
    """Read a merge table.

    :return: (version, merges in rank order)
    """
    filename = os.fspath(filename)
    try:
        with open(filename, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read BPE codes file (bpe_file) {filename!r}: {exc}") from exc
    version = (0, 1)
    if lines and lines[0].startswith("#version:"):
        text = lines.pop(0)[len("#version:") :].strip()
        try:
            version = tuple(int(part) for part in text.split("."))[:2]
        except ValueError:
            raise DatasetError(f"BPE codes file {filename!r}: bad version line {text!r}") from None
    merges = []
    for line_no, line in enumerate(lines, start=2 if version != (0, 1) else 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(
                f"BPE codes file {filename!r}, line {line_no}: expected a merge 'left right', got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return version, merges  # type: ignore[return-value]


class StandardBytePairEncoder:
    """Segments text with a BPE merge table (see the module docs).

    :param bpe_codes_file: the merge table
    :param labels: if given, the vocabulary that pieces must belong to (pieces with ``@@`` where they are not final)
    :param merge_symbol: appended to every piece that is not the last one of its word
    """

    def __init__(
        self, bpe_codes_file: str | os.PathLike, labels: Collection[str] | None = None, merge_symbol: str = "@@"
    ):
        self.bpe_codes_file = os.fspath(bpe_codes_file)
        self.merge_symbol = merge_symbol
        self.version, merges = read_bpe_codes(self.bpe_codes_file)
        if self.version not in ((0, 1), (0, 2)):
            raise DatasetError(f"BPE codes file {self.bpe_codes_file!r}: unsupported version {self.version}")
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            self._ranks.setdefault(pair, rank)  # a repeated merge keeps its first (best) rank
        self._split_of: dict[str, tuple[str, str]] = {left + right: (left, right) for left, right in self._ranks}
        self._labels = frozenset(labels) if labels is not None else None
        self._cache: dict[str, tuple[str, ...]] = {}

    def segment_sentence(self, sentence: str) -> list[str]:
        """Split a sentence at whitespace and each word into pieces, non-final ones with the merge symbol."""
        result = []
        for word in sentence.split():
            pieces = self.encode_word(word)
            result += [piece + self.merge_symbol for piece in pieces[:-1]]
            result.append(pieces[-1])
        return result

    def encode_word(self, word: str) -> tuple[str, ...]:
        """The pieces of one word, without merge symbols."""
        pieces = self._cache.get(word)
        if pieces is None:
            pieces = self._merge(word)
            if self._labels is not None:
                pieces = self._restrict_to_vocab(pieces)
            if len(self._cache) < 1_000_000:  # bound the memory of a long-running worker
                self._cache[word] = pieces
        return pieces

    def _merge(self, word: str) -> tuple[str, ...]:
        if len(word) == 1:
            return (word,)
        if self.version == (0, 1):
            symbols = list(word) + [END_OF_WORD]
        else:
            symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: self._ranks.get(pair, len(self._ranks)))
            if best not in self._ranks:
                break
            symbols = _merge_pair(symbols, best)
        if symbols[-1] == END_OF_WORD:
            symbols.pop()
        elif symbols[-1].endswith(END_OF_WORD):
            symbols[-1] = symbols[-1][: -len(END_OF_WORD)]
        return tuple(symbols)

    def _restrict_to_vocab(self, pieces: tuple[str, ...]) -> tuple[str, ...]:
        result: list[str] = []
        for i, piece in enumerate(pieces):
            final = i == len(pieces) - 1
            if self._in_vocab(piece, final):
                result.append(piece)
            else:
                result += self._split_until_known(piece, final)
        return tuple(result)

    def _in_vocab(self, piece: str, final: bool) -> bool:
        assert self._labels is not None
        return (piece if final else piece + self.merge_symbol) in self._labels

    def _split_until_known(self, piece: str, final: bool) -> list[str]:
        """Undo the merge that built ``piece``, recursively, until the parts are in the vocabulary."""
        if final:
            split = self._split_of.get(piece + END_OF_WORD)
            if split is not None:
                split = (split[0], split[1][: -len(END_OF_WORD)])
        else:
            split = self._split_of.get(piece)
        if split is None:
            return [piece]  # a single symbol: nothing left to undo
        left, right = split
        parts = [left] if self._in_vocab(left, False) else self._split_until_known(left, False)
        parts += [right] if self._in_vocab(right, final) else self._split_until_known(right, final)
        return parts


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Merge every occurrence of ``pair``, scanning left to right (``a a a`` with pair ``a a`` gives ``aa a``)."""
    first, second = pair
    merged = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class SamplingBytePairEncoder:
    """Samples a segmentation of each word into pieces of a vocabulary (BPE dropout-like regularisation).

    At each position of a word, the pieces of the vocabulary that start there and still allow the rest of the word
    to be segmented are ordered longest first. Each is passed over with probability ``breadth_prob``, so
    ``breadth_prob=0`` gives the deterministic longest-match segmentation and larger values give shorter pieces.

    :param labels: the vocabulary; pieces that are not final in their word carry ``merge_symbol`` as postfix
    :param breadth_prob: probability to pass over the longest remaining candidate
    :param merge_symbol: postfix of non-final pieces (unused with ``word_prefix_symbol``)
    :param word_prefix_symbol: if given (e.g. ``"▁"``), words are marked by this prefix on their first piece
        instead of merge symbols on the non-final pieces (SentencePiece style)
    """

    def __init__(
        self,
        labels: Iterable[str],
        breadth_prob: float,
        merge_symbol: str = "@@",
        word_prefix_symbol: str | None = None,
    ):
        if not 0.0 <= breadth_prob < 1.0:
            raise DatasetError(f"SamplingBytePairEncoding: breadth_prob must be in [0, 1), got {breadth_prob!r}")
        self.breadth_prob = breadth_prob
        self.merge_symbol = merge_symbol
        self.word_prefix_symbol = word_prefix_symbol
        self._labels = frozenset(labels)
        self._max_piece_len = max((len(label) for label in self._labels), default=0)
        self.rng = np.random.RandomState(0)

    def segment_sentence(self, sentence: str) -> list[str | None]:
        """The pieces (labels) of a sentence; ``None`` for a word that no combination of labels covers."""
        result: list[str | None] = []
        for word in sentence.split():
            labels = self.segment_word(word)
            result += labels if labels is not None else [None]
        return result

    def segment_word(self, word: str) -> list[str] | None:
        """The labels of one word (with merge symbol / prefix symbol), or None if the vocabulary cannot cover it."""
        if self.word_prefix_symbol is not None:
            word = self.word_prefix_symbol + word
        completes = self._completable_positions(word)
        if not completes[0]:
            return None
        labels = []
        pos = 0
        while pos < len(word):
            candidates = [end for end in self._piece_ends(word, pos) if completes[end]]
            candidates.sort(reverse=True)
            choice = 0
            while choice < len(candidates) - 1 and self.rng.random_sample() < self.breadth_prob:
                choice += 1
            end = candidates[choice]
            labels.append(self._label(word, pos, end))
            pos = end
        return labels

    def _label(self, word: str, start: int, end: int) -> str:
        piece = word[start:end]
        if self.word_prefix_symbol is None and end < len(word):
            return piece + self.merge_symbol
        return piece

    def _piece_ends(self, word: str, start: int) -> list[int]:
        limit = min(len(word), start + self._max_piece_len)
        return [end for end in range(start + 1, limit + 1) if self._label(word, start, end) in self._labels]

    def _completable_positions(self, word: str) -> list[bool]:
        """``completes[i]``: the suffix ``word[i:]`` can be covered by labels."""
        completes = [False] * (len(word) + 1)
        completes[len(word)] = True
        for start in range(len(word) - 1, -1, -1):
            completes[start] = any(completes[end] for end in self._piece_ends(word, start))
        return completes
