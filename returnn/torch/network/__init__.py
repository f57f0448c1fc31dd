"""RETURNN's ``network = {...}`` dicts on torch: a config with ``network`` and no ``get_model`` trains the network
built from the dict (see :mod:`returnn.torch.network.steps` for what the engine runs, and
:mod:`returnn.torch.network.construction` for how the dict becomes modules)."""

from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.network import Network
from returnn.torch.network.steps import build_network, mark_losses

__all__ = ["DataSpec", "LayerOutput", "Network", "build_network", "mark_losses"]
