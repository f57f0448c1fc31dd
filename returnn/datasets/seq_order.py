"""Sequence orderings: the ``seq_ordering`` option of every dataset, as pure functions.

Each ordering maps a number of sequences to a permutation of ``range(num_seqs)``. Random orderings draw from
an explicitly seeded :class:`numpy.random.Generator`, never from global random state, so every process that
asks for the same (ordering, seed) gets the same order.

Orderings (RETURNN's names):

- ``default``: corpus order; ``reverse``: corpus order reversed.
- ``sorted`` / ``sorted_reverse``: by sequence length, shortest / longest first (stable).
- ``random[:N]``: a random permutation; with ``:N`` the same permutation for N consecutive epochs.
- ``laplace[:B | .S][:N]``: shuffle, cut into B bins (or bins of about S sequences; without either, of about
  100; at least 2 bins), sort each bin by length, alternately ascending and descending (neighbouring sequences
  have similar lengths, so little padding, while the epoch still goes up and down in length).
- ``sort_bin_shuffle[:B | .S][:N]``: shuffle, sort by length, cut into B bins (or of about S sequences),
  shuffle the order of the bins. ``sort_bin_shuffle_x2`` also shuffles the sequences inside each bin.
- ``default_every_n:N``: cut the corpus into N equal blocks and interleave them, so that each run of N
  sequences holds one sequence of each block (sequences left over by the cut come last).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from returnn.errors import DatasetError

__all__ = ["ORDERINGS", "SeqOrdering", "parse_seq_ordering", "make_seq_order"]

ORDERINGS = (
    "default",
    "reverse",
    "sorted",
    "sorted_reverse",
    "random[:N]",
    "laplace[:B | .S][:N]",
    "sort_bin_shuffle[:B | .S][:N]",
    "sort_bin_shuffle_x2[:B | .S][:N]",
    "default_every_n:N",
)

_DEFAULT_BIN_SIZE = 100  # sequences per bin when laplace / sort_bin_shuffle get no bin argument


@dataclass(frozen=True)
class SeqOrdering:
    """A parsed ``seq_ordering`` string.

    :param method: ``default``, ``reverse``, ``sorted``, ``sorted_reverse``, ``random``, ``laplace``,
        ``sort_bin_shuffle``, ``sort_bin_shuffle_x2`` or ``default_every_n``.
    :param num_bins: fixed number of bins (laplace, sort_bin_shuffle), if given as ``:B``.
    :param bin_size: approximate sequences per bin, if given as ``:.S``.
    :param num_epochs_fixed: the random order stays the same for this many epochs (the ``:N`` suffix).
    :param every_n: the N of ``default_every_n:N``.
    """

    method: str
    num_bins: int | None = None
    bin_size: int | None = None
    num_epochs_fixed: int = 1
    every_n: int = 1

    @property
    def is_random(self) -> bool:
        return self.method in ("random", "laplace", "sort_bin_shuffle", "sort_bin_shuffle_x2")

    @property
    def needs_seq_lens(self) -> bool:
        return self.method in ("sorted", "sorted_reverse", "laplace", "sort_bin_shuffle", "sort_bin_shuffle_x2")

    def get_num_bins(self, num_seqs: int) -> int:
        if self.num_bins is not None:
            return self.num_bins
        return max(num_seqs // (self.bin_size or _DEFAULT_BIN_SIZE), 2)


def _bad_ordering(text: str, why: str) -> DatasetError:
    return DatasetError(
        f"seq_ordering {text!r}: {why}. Valid orderings: {', '.join(ORDERINGS)} "
        "(B = number of bins, .S = sequences per bin, N = epochs with the same random order)"
    )


def _positive_int(text: str, part: str) -> int:
    try:
        value = int(part)
    except ValueError:
        raise _bad_ordering(text, f"{part!r} is not an integer") from None
    if value < 1:
        raise _bad_ordering(text, f"{part!r} must be at least 1")
    return value


def parse_seq_ordering(text: str) -> SeqOrdering:
    """Parse a ``seq_ordering`` string; a :class:`DatasetError` lists the valid ones if it is unknown."""
    if not isinstance(text, str):
        raise _bad_ordering(str(text), f"expected a string, got {type(text).__name__}")
    method, *args = text.split(":")
    if method in ("default", "reverse", "sorted", "sorted_reverse") and not args:
        return SeqOrdering(method)
    if method == "default_every_n":
        if len(args) != 1:
            raise _bad_ordering(text, "default_every_n needs exactly one argument N")
        return SeqOrdering(method, every_n=_positive_int(text, args[0]))
    if method == "random":
        if len(args) > 1:
            raise _bad_ordering(text, "random takes at most one argument N")
        return SeqOrdering(method, num_epochs_fixed=_positive_int(text, args[0]) if args else 1)
    if method in ("laplace", "sort_bin_shuffle", "sort_bin_shuffle_x2"):
        if len(args) > 2:
            raise _bad_ordering(text, f"{method} takes at most two arguments (bins, epochs)")
        num_bins = bin_size = None
        if args and args[0].startswith("."):
            bin_size = _positive_int(text, args[0][1:])
        elif args:
            num_bins = _positive_int(text, args[0])
        num_epochs_fixed = _positive_int(text, args[1]) if len(args) == 2 else 1
        return SeqOrdering(method, num_bins=num_bins, bin_size=bin_size, num_epochs_fixed=num_epochs_fixed)
    raise _bad_ordering(text, "unknown ordering")


def make_seq_order(
    ordering: SeqOrdering, num_seqs: int, *, seed: int, seq_lens: np.ndarray | None = None
) -> np.ndarray:
    """A permutation of ``range(num_seqs)`` (int64) for one epoch.

    :param seed: seeds the random orderings; ignored by the others.
    :param seq_lens: the length of each sequence; needed by the length-based orderings.
    """
    if ordering.needs_seq_lens and seq_lens is None:
        raise DatasetError(
            f"seq_ordering {ordering.method!r} sorts by sequence length, but this dataset does not know the "
            "lengths before loading; use seq_order_seq_lens_file or an ordering that does not sort"
        )
    rng = np.random.default_rng(seed) if ordering.is_random else None
    method = ordering.method
    if method == "default":
        return np.arange(num_seqs, dtype=np.int64)
    if method == "reverse":
        return np.arange(num_seqs - 1, -1, -1, dtype=np.int64)
    if num_seqs == 0:
        return np.zeros((0,), dtype=np.int64)
    if method == "sorted":
        return np.argsort(seq_lens, kind="stable").astype(np.int64)
    if method == "sorted_reverse":
        return np.argsort(-seq_lens, kind="stable").astype(np.int64)
    if method == "random":
        return rng.permutation(num_seqs).astype(np.int64)
    if method == "laplace":
        return _laplace_order(seq_lens, ordering.get_num_bins(num_seqs), rng)
    if method in ("sort_bin_shuffle", "sort_bin_shuffle_x2"):
        return _sort_bin_shuffle_order(
            seq_lens, ordering.get_num_bins(num_seqs), rng, shuffle_in_bins=method.endswith("_x2")
        )
    if method == "default_every_n":
        return _every_n_order(num_seqs, ordering.every_n)
    raise AssertionError(f"unhandled ordering {method!r}")


def _laplace_order(seq_lens: np.ndarray, num_bins: int, rng: np.random.Generator) -> np.ndarray:
    shuffled = rng.permutation(len(seq_lens))
    parts = []
    for i, part in enumerate(np.array_split(shuffled, min(num_bins, len(shuffled)))):
        by_len = part[np.argsort(seq_lens[part], kind="stable")]
        parts.append(by_len[::-1] if i % 2 else by_len)
    return np.concatenate(parts).astype(np.int64)


def _sort_bin_shuffle_order(
    seq_lens: np.ndarray, num_bins: int, rng: np.random.Generator, *, shuffle_in_bins: bool
) -> np.ndarray:
    # Shuffle first, so that sequences of equal length come in a random order after the stable sort.
    shuffled = rng.permutation(len(seq_lens))
    by_len = shuffled[np.argsort(seq_lens[shuffled], kind="stable")]
    bins = np.array_split(by_len, min(num_bins, len(by_len)))
    if shuffle_in_bins:
        bins = [rng.permutation(part) for part in bins]
    return np.concatenate([bins[i] for i in rng.permutation(len(bins))]).astype(np.int64)


def _every_n_order(num_seqs: int, every_n: int) -> np.ndarray:
    block = num_seqs // every_n
    interleaved = np.arange(block * every_n, dtype=np.int64).reshape(every_n, block).T.reshape(-1)
    return np.concatenate([interleaved, np.arange(block * every_n, num_seqs, dtype=np.int64)])
