"""The results of tasks search and compute_priors put together from the shares of several processes."""

from __future__ import annotations

import numpy as np
import pytest

from returnn.errors import DatasetError
from returnn.torch.network.priors import mean_priors
from returnn.torch.network.search_task import SearchResult


def test_search_results_of_processes_merge_into_the_order_of_one_process():
    # batches of 2 dealt to 2 processes: rank 0 searched positions 0, 1, 4 and rank 1 positions 2, 3
    rank0 = SearchResult(
        hyps={"a": [1], "b": [2, 2], "e": []}, positions={"a": 0, "b": 1, "e": 4}, errors=1, ref_length=5
    )
    rank1 = SearchResult(hyps={"c": [3], "d": [4]}, positions={"c": 2, "d": 3}, errors=2, ref_length=4)
    merged = SearchResult.merged([rank0, rank1])
    assert list(merged.hyps.items()) == [("a", [1]), ("b", [2, 2]), ("c", [3]), ("d", [4]), ("e", [])]
    assert (merged.errors, merged.ref_length) == (3, 9)
    assert SearchResult.merged([rank0, SearchResult()]).hyps == rank0.hyps  # a process without batches


def test_priors_are_the_mean_over_the_frames_of_all_processes():
    parts = [(np.array([3.0, 1.0]), 4), (np.array([0.5, 1.5]), 2), (None, 0)]  # the last process had no batch
    np.testing.assert_allclose(mean_priors(parts), [3.5 / 6, 2.5 / 6])
    with pytest.raises(DatasetError, match=r"task 'compute_priors': the dataset yielded no frames"):
        mean_priors([(None, 0), (None, 0)])
