"""Average the model parameters of several checkpoints into one.

``tools/torch_avg_checkpoints.py --checkpoints A.pt B.pt ... --output_path OUT.pt``

Floating-point tensors of ``"model"`` are averaged; other tensors (integer buffers such as BatchNorm's
``num_batches_tracked``) are taken from the newest checkpoint. ``epoch`` and ``step`` are the maximum over the inputs,
``merged_epochs`` / ``merged_steps`` list them all, and any other keys come from the first checkpoint.
The output is written atomically and holds plain types only (``torch.load(weights_only=True)`` loads it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from returnn.errors import CheckpointError, ReturnnError


def average_checkpoints(paths: Sequence[str]) -> dict[str, Any]:
    """Load the checkpoints and return the averaged checkpoint dict."""
    if not paths:
        raise CheckpointError("no checkpoints given to average")
    checkpoints = [_load(path) for path in paths]
    newest = max(range(len(checkpoints)), key=lambda i: checkpoints[i].get("epoch", 0))
    reference = checkpoints[0]["model"]
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        _check_same_parameters(paths[0], reference, path, checkpoint["model"])
    averaged: dict[str, Any] = {}
    for name, tensor in reference.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            total = torch.zeros_like(tensor, dtype=torch.float64)
            for checkpoint in checkpoints:
                total += checkpoint["model"][name].to(torch.float64)
            averaged[name] = (total / len(checkpoints)).to(tensor.dtype)
        else:
            averaged[name] = checkpoints[newest]["model"][name]
    result = dict(checkpoints[0])
    result["model"] = averaged
    result["epoch"] = max(int(c.get("epoch", 0)) for c in checkpoints)
    result["step"] = max(int(c.get("step", 0)) for c in checkpoints)
    result["merged_epochs"] = [int(c.get("epoch", 0)) for c in checkpoints]
    result["merged_steps"] = [int(c.get("step", 0)) for c in checkpoints]
    return result


def _load(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"checkpoint {path!r} has no 'model' state dict (is it an optimizer file?)")
    return checkpoint


def _check_same_parameters(first_path: str, first: dict, path: str, other: dict) -> None:
    if first.keys() != other.keys():
        missing = sorted(set(first) - set(other))
        extra = sorted(set(other) - set(first))
        raise CheckpointError(
            f"checkpoint {path!r} has other parameters than {first_path!r}: missing {missing}, extra {extra}"
        )
    for name, tensor in first.items():
        if torch.is_tensor(tensor) and tuple(other[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"parameter {name!r}: shape {tuple(other[name].shape)} in {path!r}, {tuple(tensor.shape)} in "
                f"{first_path!r}"
            )


def save_atomic(obj: Any, path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp_path = f"{path}.tmp_write"
    torch.save(obj, tmp_path)
    os.replace(tmp_path, path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (or names with --postfix)")
    parser.add_argument("--separator", default=",", help="also split each --checkpoints argument at this string")
    parser.add_argument("--prefix", default="", help="put in front of each checkpoint name")
    parser.add_argument("--postfix", default="", help="append to each checkpoint name that does not exist as given")
    parser.add_argument("--output_path", required=True, help="where to write the averaged checkpoint")
    return parser.parse_args(argv)


def checkpoint_paths(args: argparse.Namespace) -> list[str]:
    names = [name for arg in args.checkpoints for name in arg.split(args.separator) if name]
    paths = []
    for name in names:
        path = args.prefix + name
        if args.postfix and not os.path.exists(path):
            path += args.postfix
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = checkpoint_paths(args)
        save_atomic(average_checkpoints(paths), args.output_path)
    except ReturnnError as exc:
        print(f"torch_avg_checkpoints: error: {exc}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints into {args.output_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
