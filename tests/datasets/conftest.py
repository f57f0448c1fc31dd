"""Small dataset factories shared by the dataset tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from returnn.datasets import Dataset
from returnn.datasets.generating import StaticDataset

# 23 distinct lengths in a scrambled corpus order: sorting results are unambiguous.
SEQ_LENS = [7, 3, 19, 11, 2, 23, 5, 13, 17, 1, 29, 31, 37, 4, 41, 43, 47, 53, 6, 59, 61, 8, 67]


def make_static_dataset(seq_lens: Sequence[int] = SEQ_LENS, **kwargs: Any) -> StaticDataset:
    """Sequence i: ``"data"`` float32 ``[T, 2]`` filled with i, ``"classes"`` int32 ``[T]`` counting up (mod 5)."""
    data = [
        {
            "data": np.full((seq_len, 2), idx, dtype=np.float32),
            "classes": np.arange(seq_len, dtype=np.int32) % 5,
        }
        for idx, seq_len in enumerate(seq_lens)
    ]
    return StaticDataset(data=data, **kwargs)


def epoch_order(dataset: Dataset, epoch: int | None) -> list[int]:
    """The corpus indices the dataset visits in this epoch."""
    dataset.init_seq_order(epoch=epoch)
    return list(dataset.get_current_seq_order())


def read_epoch(
    dataset: Dataset, epoch: int | None, keys: Sequence[str] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Iterate one epoch the way the pipeline does: (tag, data by key) per sequence.

    :param keys: the data keys to read; all by default.
    """
    dataset.init_seq_order(epoch=epoch)
    keys = dataset.get_data_keys() if keys is None else keys
    seqs = []
    seq_idx = 0
    while dataset.is_less_than_num_seqs(seq_idx):
        dataset.load_seqs(seq_idx, seq_idx + 1)
        seqs.append((dataset.get_tag(seq_idx), {key: dataset.get_data(seq_idx, key) for key in keys}))
        seq_idx += 1
    return seqs


@pytest.fixture
def static_dataset() -> Callable[..., StaticDataset]:
    return make_static_dataset


@pytest.fixture(name="epoch_order")
def _epoch_order() -> Callable[[Dataset, int | None], list[int]]:
    return epoch_order


@pytest.fixture(name="read_epoch")
def _read_epoch() -> Callable[..., list[tuple[str, dict[str, np.ndarray]]]]:
    return read_epoch


@pytest.fixture(name="seq_lens")
def _seq_lens() -> list[int]:
    return list(SEQ_LENS)
