"""returnn.tensor: Dim, Tensor, TensorDict and mainline's data specs."""

from __future__ import annotations

import pytest
import torch

from returnn.errors import ConfigError
from returnn.tensor import Dim, Tensor, TensorDict, batch_dim, single_step_dim


def test_specs_as_mainline_configs_write_them():
    time_dim, feature_dim = Dim(None, name="time", kind=Dim.Types.Spatial), Dim(80, name="feature")
    specs = TensorDict(
        {
            "data": {"dim": 9},
            "classes": {"dim": 2, "sparse": True, "available_for_inference": False},
            "audio": {"shape": (None, 1)},
            "feats": {"dims": [batch_dim, time_dim, feature_dim]},
        }
    )
    data, classes = specs["data"], specs["classes"]
    assert [d.dimension for d in data.dims] == [None, None, 9] and data.dim == 9 and data.dtype == "float32"
    assert data.dims[0] is batch_dim and data.dims[1].is_dynamic() and not data.sparse
    assert classes.batch_shape == (None, None) and classes.sparse and classes.dim == 2 and classes.dtype == "int32"
    assert specs["audio"].shape == (None, 1)
    assert specs["feats"].dims == (batch_dim, time_dim, feature_dim) and specs["feats"].feature_dim is feature_dim
    assert single_step_dim.dimension == 1 and batch_dim.is_batch_dim()
    assert sorted(specs) == ["audio", "classes", "data", "feats"]


def test_bad_spec_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data spec 'data': unknown keys \['dimm'\]"):
        TensorDict({"data": {"dimm": 9}})
    with pytest.raises(ConfigError, match="sparse data needs 'dim'"):
        TensorDict({"classes": {"sparse": True}})


def test_dynamic_dim_sizes_and_values():
    sizes = Tensor("len", [batch_dim], "int32", raw_tensor=torch.tensor([3, 5]))
    time_dim = Dim(sizes, name="time")
    x = Tensor("x", [batch_dim, time_dim], raw_tensor=torch.zeros(2, 5))
    assert time_dim.is_dynamic() and time_dim.get_dim_value() == 5
    assert x.get_time_dim_tag() is time_dim and x.get_sequence_lengths().tolist() == [3, 5]
    specs = TensorDict({"x": x})
    specs.reset_content()
    assert x.raw_tensor is None and time_dim.dyn_size_ext.raw_tensor is None


def test_what_i6_core_config_serialization_reads_of_dims():
    """ReturnnConfigV2 writes dims as 'Dim(<dimension>, name=..., kind=Dim.Types.<kind>)' and reads these attributes."""
    import returnn.tensor

    time_dim = Dim(None, name="time", kind=Dim.Types.Spatial)
    kinds = {Dim.Types.Batch: "Batch", Dim.Types.Spatial: "Spatial", Dim.Types.Feature: "Feature"}
    assert len(kinds) == 3 and kinds[time_dim.kind] == "Spatial"
    assert (time_dim.match_priority, time_dim.derived_from_op, time_dim.get_same_base()) == (0, None, time_dim)
    assert type(time_dim).__module__.startswith("returnn.") and returnn.tensor.batch_dim is batch_dim
    rebuilt = eval(f"Dim({time_dim.dimension}, name={time_dim.name!r}, kind=Dim.Types.{kinds[time_dim.kind]})")
    assert (rebuilt.dimension, rebuilt.name, rebuilt.kind) == (None, "time", Dim.Types.Spatial)


def test_cached_file_is_the_file_itself(tmp_path):
    import os

    from returnn.util.file_cache import CachedFile

    assert os.fspath(CachedFile(tmp_path / "a.hdf")) == str(tmp_path / "a.hdf")
