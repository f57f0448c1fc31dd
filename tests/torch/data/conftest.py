"""Tiny datasets shared by the data-pipeline tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from returnn.datasets.generating import StaticDataset


def _make_static(num_seqs: int = 8, **kwargs: Any) -> StaticDataset:
    """Sequence i (tag ``seq-i``): ``data`` float32 [i + 1, 2] filled with i, ``classes`` int32 [i + 1] counting up."""
    data = [
        {"data": np.full((i + 1, 2), i, dtype=np.float32), "classes": np.arange(i + 1, dtype=np.int32)}
        for i in range(num_seqs)
    ]
    return StaticDataset(data=data, **kwargs)


def _epoch_tags(dataset: StaticDataset, epoch: int) -> list[str]:
    """The tags of the epoch's sequences, in the epoch's order (sets up the epoch of ``dataset``)."""
    dataset.init_seq_order(epoch=epoch)
    return [dataset.get_tag(i) for i in range(dataset.num_seqs)]


@pytest.fixture
def static_dataset() -> Callable[..., StaticDataset]:
    """``static_dataset(num_seqs=8, **dataset_options)``: see :func:`_make_static`."""
    return _make_static


@pytest.fixture
def epoch_tags() -> Callable[[StaticDataset, int], list[str]]:
    """``epoch_tags(dataset, epoch)``: the tags in the epoch's order."""
    return _epoch_tags
