"""Seeding, and the random state as plain types (for checkpoints that load with ``weights_only=True``).

The engine seeds torch, numpy and Python's ``random`` from ``(random_seed, epoch, global step)`` before building the
model and at the start of every epoch. A training that restarts after epoch k therefore draws the same random numbers
from epoch k + 1 on as one that ran through.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "seed_all", "get_rng_state", "set_rng_state"]


def derive_seed(random_seed: int, epoch: int, step: int) -> int:
    """A seed in [0, 2**31) that differs for each (random_seed, epoch, step)."""
    digest = hashlib.sha256(f"{random_seed}:{epoch}:{step}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_all(seed: int) -> None:
    """Seed torch (all devices), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def get_rng_state(*, include_cuda: bool = False) -> dict[str, Any]:
    """The random state of torch, numpy and Python's random module, as tensors, numbers and lists."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if include_cuda else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
