"""Building and running tiny networks from layer dicts in the layer tests."""

from __future__ import annotations

from typing import Any

import torch

from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.network import Network

DATA_SPECS = {"data": DataSpec(dim=4), "classes": DataSpec(dim=3, sparse=True)}


def build(net_dict: dict[str, Any], data_specs: dict[str, DataSpec] | None = None) -> Network:
    """The network of ``net_dict`` on ``data_specs`` (default: ``data`` [B,T,4], ``classes`` sparse dim 3)."""
    specs = data_specs or DATA_SPECS
    entries = NetworkBuilder(flatten_subnetworks(net_dict), specs, default_target="classes").build()
    return Network(entries, specs)


def batch(x: torch.Tensor, lengths: list[int]) -> dict[str, torch.Tensor]:
    """A data dict with features ``x`` [B,T,F] and its lengths (classes: zeros of the same lengths)."""
    sizes = torch.tensor(lengths, dtype=torch.int64)
    classes = torch.zeros(x.shape[:2], dtype=torch.int64)
    return {"data": x, "data:size1": sizes, "classes": classes, "classes:size1": sizes}


def random_batch(lengths: list[int], dim: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of random features with the given lengths; frames past each length are large garbage values."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=generator)
    for b, length in enumerate(lengths):
        x[b, length:] = 1e3
    return batch(x, lengths)


def run(network: Network, data: dict[str, torch.Tensor], layer: str = "output") -> LayerOutput:
    """The output of ``layer`` on ``data``."""
    return network(data)[layer]


def single(data: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """Sequence ``b`` of ``data`` alone, cut to its length."""
    length = int(data["data:size1"][b])
    return batch(data["data"][b : b + 1, :length], [length])


def assert_same_as_alone(network: Network, data: dict[str, torch.Tensor], layer: str = "output") -> None:
    """Each sequence of the padded batch gets the result it gets alone (within its output length)."""
    out = run(network, data, layer)
    for b in range(data["data"].shape[0]):
        alone = run(network, single(data, b), layer)
        length = int(alone.lengths[0])
        assert int(out.lengths[b]) == length
        torch.testing.assert_close(out.tensor[b, :length], alone.tensor[0, :length])
