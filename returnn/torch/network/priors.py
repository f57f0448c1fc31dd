"""Task ``compute_priors`` of a network: the average of the output layer's softmax over all frames of a dataset,
written as log priors (one line of space-separated numbers, as ``numpy.loadtxt`` reads them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from returnn.errors import ConfigError, DatasetError
from returnn.torch.distributed import write_file_atomic
from returnn.torch.network.network import Network

__all__ = ["accumulate_priors", "mean_priors", "write_log_priors"]


def accumulate_priors(network: Network, batches: Iterable[dict[str, Any]], layer: str) -> tuple[np.ndarray | None, int]:
    """The sum over all valid frames of the batches of ``layer``'s output (its softmax), float64 ``[dim]`` (None
    without batches), and the number of frames."""
    if layer not in network.specs():
        raise ConfigError(f"task 'compute_priors': the network has no layer {layer!r} (forward_output_layer)")
    total: torch.Tensor | None = None
    frames = 0
    for data in batches:
        out = network(data)[layer]
        probs = out.tensor.double()
        if out.lengths is not None:
            probs = probs[out.mask()]
            frames += int(out.lengths.sum())
        else:
            frames += probs.shape[0]
        summed = probs.reshape(-1, probs.shape[-1]).sum(dim=0)
        total = summed if total is None else total + summed
    return (None if total is None else total.cpu().numpy()), frames


def mean_priors(parts: Sequence[tuple[np.ndarray | None, int]]) -> np.ndarray:
    """The mean over all frames from the sums of :func:`accumulate_priors` (one part per process)."""
    sums = [total for total, _ in parts if total is not None]
    frames = sum(count for _, count in parts)
    if not sums or frames == 0:
        raise DatasetError("task 'compute_priors': the dataset yielded no frames")
    return sum(sums) / frames


def write_log_priors(filename: str, priors: np.ndarray) -> None:
    """Write ``log(priors)`` to ``filename`` as one line of space-separated numbers (atomically)."""
    log_priors = np.log(np.maximum(priors, np.finfo(np.float64).tiny))
    write_file_atomic(filename, lambda f: f.write(" ".join(repr(float(v)) for v in log_priors) + "\n"))
