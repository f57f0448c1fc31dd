"""Stage 2: drop sequences that are too short or too long (``min_seq_length`` / ``max_seq_length``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from returnn.torch.data.iterate import Item

__all__ = ["LengthLimit", "filter_by_length"]

LengthLimit = int | Mapping[str, int] | None


def filter_by_length(
    items: Iterable[Item], *, min_seq_length: LengthLimit = None, max_seq_length: LengthLimit = None
) -> Iterator[Item]:
    """Yield the items whose lengths (first axis) lie within the limits.

    A limit is an int for every key with a time axis, or ``{key: int}`` for some keys. Keys that the data does not
    have are ignored: one config often serves datasets with different keys. Scalars, strings, ``seq_tag`` and
    ``seq_idx`` have no length and pass.

    :param min_seq_length: drop a sequence if any of its lengths is shorter.
    :param max_seq_length: drop a sequence if any of its lengths is longer.
    """
    if min_seq_length is None and max_seq_length is None:
        yield from items
        return
    min_default, min_by_key = _split(min_seq_length)
    max_default, max_by_key = _split(max_seq_length)
    for item in items:
        for key, value in item.items():
            if type(value) is not np.ndarray or not value.ndim:
                continue
            length = value.shape[0]
            lower = min_by_key.get(key, min_default)
            upper = max_by_key.get(key, max_default)
            if (lower is not None and length < lower) or (upper is not None and length > upper):
                break
        else:
            yield item


def _split(limit: LengthLimit) -> tuple[int | None, Mapping[str, int]]:
    """(limit for every key, limits by key)."""
    if limit is None:
        return None, {}
    if isinstance(limit, Mapping):
        return None, limit
    return limit, {}
