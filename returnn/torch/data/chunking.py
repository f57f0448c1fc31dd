"""Stage 3: cut sequences into (overlapping) chunks.

Chunks of a key start at ``start``, ``start + step``, ``start + 2 * step``, ... while the start lies inside the
sequence; each covers ``[s, min(s + size, length))``. The last chunks may be shorter than ``size``; a chunk
shorter than ``min_chunk_size`` is dropped (and so are the ones after it, which are shorter still). A sequence
that fits into one chunk becomes a single chunk; one shorter than ``min_chunk_size`` disappears.

``start`` is 0, or with ``random_start`` a random offset ``int(u * step)`` with one ``u`` in [0, 1) per
sequence, shared by all chunked keys (so that e.g. features and 4x-downsampled labels stay aligned). A sequence
that fits into one chunk in every key always starts at 0, so that short sequences are never cut.

With ``context`` (RETURNN's ``context_window``), the chunks of a key reach ``left`` frames before and ``right``
frames after their bounds, with the sequence's own frames where it has them and zeros beyond its ends; without
chunking, :func:`add_context` pads whole sequences so.

All chunked keys of a sequence must give the same number of chunks; the other entries (``seq_tag``, ``seq_idx``,
keys that are not chunked) are carried along unchanged into every chunk. Chunks are views of the sequence's
arrays: nothing is copied here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from returnn.errors import ConfigError, DatasetError
from returnn.torch.data.iterate import SEQ_TAG, Item

__all__ = ["ChunkStream", "ChunkingSpec", "Context", "add_context", "chunk_bounds", "chunk_items"]

Context = Mapping[str, tuple[int, int]]  # {key: (frames before, frames after)}


@dataclass(frozen=True)
class ChunkStream:
    """How one key is chunked.

    :param size: frames per chunk.
    :param step: frames from one chunk start to the next (``step < size`` overlaps, ``step > size`` skips).
    :param min_chunk_size: shorter chunks are dropped.
    """

    size: int
    step: int
    min_chunk_size: int = 0


@dataclass(frozen=True)
class ChunkingSpec:
    """Which keys are chunked, and how.

    :param streams: ``{key: ChunkStream}``: exactly these keys are chunked (Mini-RETURNN's ``chunk_streams``).
    :param all_keys: RETURNN's ``chunking = size``: every key with a time axis longer than 1 frame is chunked
        alike; keys of length 0 or 1 (per-sequence labels) are carried along.
    :param random_start: start each sequence's chunks at a random offset below ``step``.
    """

    streams: Mapping[str, ChunkStream] = field(default_factory=dict)
    all_keys: ChunkStream | None = None
    random_start: bool = False


def chunk_bounds(length: int, stream: ChunkStream, start: int = 0) -> list[tuple[int, int]]:
    """The ``(begin, end)`` frames of the chunks of a sequence of ``length`` frames (see the module docstring)."""
    bounds = []
    begin = start
    while begin < length:
        end = min(begin + stream.size, length)
        if end - begin < stream.min_chunk_size:
            break
        bounds.append((begin, end))
        begin += stream.step
    return bounds


def chunk_items(
    items: Iterable[Item],
    spec: ChunkingSpec,
    *,
    rng: np.random.Generator | None = None,
    context: Context | None = None,
) -> Iterator[Item]:
    """Yield the chunks of every item, in order.

    :param rng: draws the random starts (``spec.random_start``); seed it per epoch and shard for reproducibility.
    :param context: frames around each chunk, per key (see the module docstring)
    """
    context = context or {}
    if spec.random_start and rng is None:
        rng = np.random.default_rng(0)
    for item in items:
        streams = _streams_of(item, spec)
        if not streams:  # nothing to chunk: the whole sequence gets its context
            yield _with_context(item, context)
            continue
        bounds = _bounds_of(item, streams, rng if spec.random_start else None)
        for chunk_index in range(len(next(iter(bounds.values())))):
            chunk = dict(item)
            for key, key_bounds in bounds.items():
                begin, end = key_bounds[chunk_index]
                left, right = context.get(key, (0, 0))
                chunk[key] = _frames(item[key], begin - left, end + right)
            yield chunk


def add_context(items: Iterable[Item], context: Context) -> Iterator[Item]:
    """Without chunking: each sequence of a key in ``context`` padded with zeros, ``left`` frames before it and
    ``right`` after."""
    for item in items:
        yield _with_context(item, context)


def _with_context(item: Item, context: Context) -> Item:
    if not context:
        return item
    padded = dict(item)
    for key, (left, right) in context.items():
        if key in item:
            padded[key] = _frames(item[key], -left, _length(item, key) + right)
    return padded


def _frames(array: np.ndarray, begin: int, end: int) -> np.ndarray:
    """Frames ``begin`` to ``end`` of ``array`` (a view), zeros where they lie outside it."""
    if begin >= 0 and end <= len(array):
        return array[begin:end]
    result = np.zeros((end - begin, *array.shape[1:]), dtype=array.dtype)
    inside_begin, inside_end = max(begin, 0), min(end, len(array))
    if inside_end > inside_begin:
        result[inside_begin - begin : inside_end - begin] = array[inside_begin:inside_end]
    return result


def _streams_of(item: Item, spec: ChunkingSpec) -> Mapping[str, ChunkStream]:
    if spec.all_keys is not None:
        return {
            key: spec.all_keys
            for key, value in item.items()
            if type(value) is np.ndarray and value.ndim and value.shape[0] > 1
        }
    missing = [key for key in spec.streams if key not in item]
    if missing:
        data_keys = sorted(key for key, value in item.items() if type(value) is np.ndarray)
        raise ConfigError(
            f"config key 'chunking_options': chunk_streams names {missing}, but the data has keys {data_keys}; "
            "fix the key names"
        )
    return spec.streams


def _bounds_of(
    item: Item, streams: Mapping[str, ChunkStream], rng: np.random.Generator | None
) -> dict[str, list[tuple[int, int]]]:
    lengths = {key: _length(item, key) for key in streams}
    fraction = 0.0
    if rng is not None and not all(lengths[key] <= stream.size for key, stream in streams.items()):
        fraction = rng.random()
    bounds = {
        key: chunk_bounds(lengths[key], stream, start=int(fraction * stream.step)) for key, stream in streams.items()
    }
    counts = {key: len(key_bounds) for key, key_bounds in bounds.items()}
    if len(set(counts.values())) > 1:
        raise DatasetError(
            f"sequence {item.get(SEQ_TAG)!r}: the chunked keys give different numbers of chunks {counts} "
            f"(lengths {lengths}); choose chunk sizes and steps in the ratio of the keys' lengths"
        )
    return bounds


def _length(item: Item, key: str) -> int:
    value = item[key]
    if type(value) is not np.ndarray or not value.ndim:
        raise DatasetError(
            f"sequence {item.get(SEQ_TAG)!r}: key {key!r} has no time axis to chunk (got {type(value).__name__} "
            f"of shape {getattr(value, 'shape', ())}); remove it from the chunked keys"
        )
    return value.shape[0]
