"""The small part of mainline RETURNN's ``returnn.tensor`` that pure-torch step functions use.

Mainline configs write ``train_step(*, model, extern_data: TensorDict, **kwargs)`` and read
``extern_data["data"].raw_tensor`` and ``extern_data["data"].dims[1].dyn_size_ext.raw_tensor``; the engine builds such
a :class:`TensorDict` from each batch (see :mod:`returnn.torch.mainline_steps`). Dims and tensors here only carry torch
tensors and their axes: there are no operations on them (RETURNN-frontend modules are not supported).
"""

from returnn.tensor.dim import Dim, batch_dim, single_step_dim
from returnn.tensor.tensor import Tensor
from returnn.tensor.tensor_dict import TensorDict

__all__ = ["Dim", "Tensor", "TensorDict", "batch_dim", "single_step_dim"]
