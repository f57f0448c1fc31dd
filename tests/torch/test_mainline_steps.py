"""extern_data built from the batch's data dict, as mainline step functions get it."""

from __future__ import annotations

import pytest
import torch

from returnn.errors import StepFunctionError
from returnn.tensor import TensorDict, batch_dim
from returnn.torch.mainline_steps import extern_data_from_batch


def batch(with_classes: bool = True) -> dict:
    data = {
        "data": torch.zeros(2, 4, 3),
        "data:size0": torch.tensor(2),
        "data:size1": torch.tensor([4, 2]),
        "data:size2": torch.tensor([3, 3]),
        "seq_tag": ["a", "b"],
    }
    if with_classes:
        data.update({"classes": torch.zeros(2, 4, dtype=torch.int32), "classes:size1": torch.tensor([4, 2])})
    return data


def test_from_the_config_extern_data():
    template = TensorDict({"data": {"dim": 3}, "classes": {"dim": 5, "sparse": True, "available_for_inference": False}})
    extern_data = extern_data_from_batch(template, batch())
    data = extern_data["data"]
    assert data.dims[0] is batch_dim and data.dims[1].dyn_size_ext.raw_tensor.tolist() == [4, 2]
    assert data.raw_tensor.shape == (2, 4, 3) and data.dim == 3
    assert extern_data["classes"].sparse_dim.dimension == 5 and extern_data["classes"].raw_tensor.dtype == torch.int32
    forwarding = extern_data_from_batch(template, batch(with_classes=False))  # targets may be missing then
    assert forwarding["classes"].raw_tensor is None
    with pytest.raises(StepFunctionError, match=r"extern_data\['data'\]: the dataset has no data key 'data'"):
        extern_data_from_batch(template, {"classes": torch.zeros(1, 1)})
    with pytest.raises(StepFunctionError, match=r"extern_data\['data'\] declares 3 dims"):
        extern_data_from_batch(TensorDict({"data": {"dim": 3}}), {"data": torch.zeros(2, 3)})


def test_inferred_without_extern_data():
    extern_data = extern_data_from_batch(None, batch())
    assert sorted(extern_data.keys()) == ["classes", "data"]
    assert [dim.dimension for dim in extern_data["data"].dims] == [None, None, 3]
    assert extern_data["classes"].dims[1].dyn_size.tolist() == [4, 2]
