"""RETURNN's import path of :class:`WrapEpochValue` (configs write ``from returnn.pretrain import WrapEpochValue``);
pretraining itself is :mod:`returnn.torch.network.pretrain`."""

from returnn.torch.network.pretrain import WrapEpochValue

__all__ = ["WrapEpochValue"]
