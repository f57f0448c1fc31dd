"""A bidirectional LSTM for zero-padded batches, shared by the demos.

``torch.nn.LSTM(bidirectional=True)`` on a padded batch lets the backward direction start in the padding of every
sequence shorter than the longest: its state at the last real frame has already seen padding frames. That breaks
tasks that count from the end (such as number base conversion). Packing the batch avoids it but makes the backward
pass about ten times slower on CPU. Here the backward LSTM reads each sequence reversed within its own length
instead, which is exact and as fast as a plain LSTM.
"""

from __future__ import annotations

import torch

__all__ = ["Blstm", "reverse_padded"]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, T, D]`` with each sequence reversed within its length; frames past the length are undefined."""
    positions = (lengths[:, None] - 1 - torch.arange(x.shape[1], device=x.device)[None, :]).clamp(min=0)
    return x.gather(1, positions[:, :, None].expand(-1, -1, x.shape[2]))


class Blstm(torch.nn.Module):
    """Stacked bidirectional LSTM layers; each output frame is ``[forward, backward]`` (``2 * hidden`` wide).

    :param input_dim: features per input frame
    :param hidden: LSTM units per direction
    :param num_layers: stacked bidirectional layers
    """

    def __init__(self, input_dim: int, hidden: int, num_layers: int = 1):
        super().__init__()
        dims = [input_dim] + [2 * hidden] * (num_layers - 1)
        self.forward_layers = torch.nn.ModuleList(torch.nn.LSTM(dim, hidden, batch_first=True) for dim in dims)
        self.backward_layers = torch.nn.ModuleList(torch.nn.LSTM(dim, hidden, batch_first=True) for dim in dims)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:param x: ``[B, T, input_dim]``; :param lengths: ``[B]``. Returns ``[B, T, 2 * hidden]``."""
        for forward_lstm, backward_lstm in zip(self.forward_layers, self.backward_layers):
            backward, _ = backward_lstm(reverse_padded(x, lengths))
            x = torch.cat([forward_lstm(x)[0], reverse_padded(backward, lengths)], dim=-1)
        return x
