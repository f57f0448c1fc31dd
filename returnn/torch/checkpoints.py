"""Checkpoint files: names, atomic save, safe load, finding epochs, random state, and the cleanup policy.

Per saved epoch there are two files:

- ``<model>.<epoch:03d>.pt`` (epoch 1000: ``.1000.pt``): ``{"model": state_dict, "epoch": int, "step": int,
  "effective_learning_rate": float, "returnn_version": str, "rng": {...}}``
- ``<model>.<epoch:03d>.opt.pt``: ``{"optimizer": optimizer state_dict, "optimizer_class_name": str,
  "param_names": [...], "epoch": int, "step": int, "grad_scaler": dict | None, "pending_grads": dict | None,
  "num_consecutive_invalid": int, "returnn_version": str}``; trained by several processes also
  ``"pending_grads_by_rank": [dict | None, ...]`` (by rank: the gradients each process accumulated but did not
  apply yet; each process continues with its own, see :meth:`returnn.torch.updater.Updater.state_dict`)

Both hold plain types only (tensors, numbers, strings, lists, dicts), so ``torch.load(..., weights_only=True)`` loads
them, and the trainer never unpickles anything else. The optimizer file is written first, so an existing model file
means its optimizer file was complete too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import torch

from returnn.errors import CheckpointError, ConfigError
from returnn.log import V4
from returnn.torch.distributed import remove_file, write_file_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "checkpoint_filename",
    "optimizer_filename",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "existing_epochs",
    "existing_optimizer_epochs",
    "load_model_state",
    "check_shapes",
    "CleanupPolicy",
    "delete_epoch",
    "delete_old_epochs",
    "delete_old_optimizer_files",
]


def checkpoint_filename(model_prefix: str, epoch: int) -> str:
    """``<model>.<epoch:03d>.pt``."""
    return f"{model_prefix}.{epoch:03d}.pt"


def optimizer_filename(model_prefix: str, epoch: int) -> str:
    """``<model>.<epoch:03d>.opt.pt``."""
    return f"{model_prefix}.{epoch:03d}.opt.pt"


def resolve_checkpoint_path(path: str | os.PathLike, *, config_key: str) -> str:
    """The checkpoint file that ``path`` names: as given, or with ``.pt`` added (pipelines write either).

    :param config_key: the config key that gave the path, for the error message
    """
    path = os.fspath(path)
    for candidate in (path, path + ".pt"):
        if os.path.isfile(candidate):
            return candidate
    raise CheckpointError(
        f"config key {config_key!r}: checkpoint file not found: {path!r} (also tried {path + '.pt'!r}); "
        "check the path, or remove the key to start without it"
    )


def save_checkpoint(path: str, content: dict[str, Any]) -> None:
    """Write a checkpoint atomically (only the main process writes)."""
    write_file_atomic(path, lambda f: torch.save(content, f), binary=True)


def load_checkpoint(path: str, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``.

    :raise CheckpointError: missing, unreadable, or holding objects other than plain types
    """
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path!r}") from None
    except pickle.UnpicklingError as exc:
        # Whether torch refused an object or the file is broken is decided from the file, not from torch's message.
        refused = _foreign_globals(path)
        if refused is None:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"cannot read checkpoint {path!r} (truncated or not a torch file?): {detail}"
            ) from None
        raise CheckpointError(
            f"checkpoint {path!r} holds objects other than tensors, numbers, strings, lists and dicts, which are "
            "not loaded for safety (refused by loading with weights_only=True)"
            + (f": {', '.join(refused)}" if refused else "")
            + "; re-save it with plain types only (e.g. torch.save({'model': model.state_dict(), ...}))"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r} (truncated or not a torch file?): {exc}") from exc
    if not isinstance(content, dict):
        raise CheckpointError(
            f"checkpoint {path!r}: expected a dict, got {type(content).__name__}; a checkpoint is saved as "
            "torch.save({'model': model.state_dict(), 'epoch': ..., ...}, path)"
        )
    return content


def _foreign_globals(path: str) -> list[str] | None:
    """The classes and functions other than torch's and ``collections``' that the checkpoint's pickle refers to,
    read without unpickling anything; None if the file is not an intact torch zip file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
            data = archive.read(names[0]) if names else None
        if data is None:
            return None
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None
    own = ("torch.", "collections.")
    return sorted({name for name in found if not name.startswith(own)})


def existing_epochs(model_prefix: str) -> list[int]:
    """Epochs that have a model file ``<model>.<epoch>.pt``, ascending (one directory listing)."""
    return _epochs_with_suffix(model_prefix, ".pt")


def existing_optimizer_epochs(model_prefix: str) -> list[int]:
    """Epochs that have an optimizer file ``<model>.<epoch>.opt.pt``, ascending."""
    return _epochs_with_suffix(model_prefix, ".opt.pt")


def _epochs_with_suffix(model_prefix: str, suffix: str) -> list[int]:
    directory, base = os.path.split(model_prefix)
    pattern = re.compile(re.escape(base) + r"\.(\d{3,})" + re.escape(suffix))
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(int(match.group(1)) for name in names if (match := pattern.fullmatch(name)))


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, ignore_missing: bool = False
) -> None:
    """Load parameters into ``model``; missing parameters are an error (listed) unless ``ignore_missing``.

    :param source: the file (and key) the state comes from, for messages
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a state dict, got {type(state).__name__}")
    expected = set(model.state_dict())  # parameters and persistent buffers
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing and not ignore_missing:
        raise CheckpointError(
            f"{source} does not match the model: missing {_name_list(missing)}"
            + (f"; it has instead {_name_list(unexpected)}" if unexpected else "")
            + "; load a checkpoint of this model, or set load_ignore_missing_vars = True to keep those parameters "
            "as initialized"
        )
    if missing:
        logger.warning(f"{source}: parameters not in the checkpoint, kept as initialized: {_name_list(missing)}")
    if unexpected:
        logger.warning(f"{source}: checkpoint entries the model does not have, ignored: {_name_list(unexpected)}")
    check_shapes(model, state, source=source)
    model.load_state_dict(state, strict=False)


def check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointError` listing the entries of ``state`` whose shape differs from the model's."""
    model_state = model.state_dict()
    mismatches = [
        f"{name} (checkpoint {list(value.shape)}, model {list(model_state[name].shape)})"
        for name, value in state.items()
        if name in model_state and isinstance(value, torch.Tensor) and value.shape != model_state[name].shape
    ]
    if mismatches:
        raise CheckpointError(
            f"{source} does not match the model: shapes differ for {_name_list(mismatches)}; load a checkpoint of a "
            "model built with the same sizes"
        )


def _name_list(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------------
# Deleting old checkpoints


@dataclasses.dataclass(frozen=True)
class CleanupPolicy:
    """Which saved epochs ``cleanup_old_models`` keeps.

    Kept are: the epochs in ``keep``; the ``keep_last_n`` newest; for every score key of the learning_rates file,
    the ``keep_best_n`` epochs with the lowest score (keys whose score is the same in every epoch do not count); and
    always the newest epoch, which a restarted training continues from. Nothing is deleted while there are at most
    ``max(keep_last_n, keep_best_n)`` epochs. There is no default ``keep`` pattern.
    """

    keep: frozenset[int] = frozenset()
    keep_last_n: int = 2
    keep_best_n: int = 4

    @classmethod
    def from_config_value(cls, value: Any) -> CleanupPolicy | None:
        """From ``cleanup_old_models``: False/None (no cleanup), True (the defaults) or a dict of the fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key 'cleanup_old_models': expected True/False or a dict, got {type(value).__name__} {value!r}"
            )
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(
                f"config key 'cleanup_old_models': unknown option(s) {', '.join(map(repr, unknown))}; "
                f"choose from: {', '.join(fields)}"
            )
        kwargs = dict(value)
        try:
            kwargs["keep"] = frozenset(int(epoch) for epoch in kwargs.get("keep") or ())
            for name in ("keep_last_n", "keep_best_n"):
                if name in kwargs:
                    kwargs[name] = int(kwargs[name])
                    if kwargs[name] < 0:
                        raise ValueError(name)
        except (TypeError, ValueError):
            raise ConfigError(
                f"config key 'cleanup_old_models': expected keep = a list of epochs and keep_last_n / keep_best_n "
                f"= ints >= 0, got {value!r}"
            ) from None
        return cls(**kwargs)

    def epochs_to_delete(self, epochs: Iterable[int], scores: dict[int, dict[str, float]]) -> list[int]:
        """The epochs to delete, ascending.

        :param epochs: the saved epochs
        :param scores: per epoch the scores from the learning_rates file
        """
        epochs = sorted(set(epochs))
        if len(epochs) <= max(self.keep_last_n, self.keep_best_n):
            return []
        keep = set(self.keep) | set(epochs[-max(self.keep_last_n, 1) :])
        score_keys = {key for epoch in epochs for key in scores.get(epoch, {})}
        for key in sorted(score_keys):
            # nan ranks last
            scored = [(_nan_last(scores[epoch][key]), epoch) for epoch in epochs if key in scores.get(epoch, {})]
            if len({value for value, _ in scored}) <= 1:
                continue
            keep.update(epoch for _, epoch in sorted(scored)[: self.keep_best_n])
        return [epoch for epoch in epochs if epoch not in keep]


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def delete_epoch(model_prefix: str, epoch: int) -> None:
    """Delete the model and optimizer files of an epoch."""
    remove_file(checkpoint_filename(model_prefix, epoch))
    remove_file(optimizer_filename(model_prefix, epoch))


def delete_old_epochs(model_prefix: str, policy: CleanupPolicy, scores: dict[int, dict[str, float]]) -> None:
    """Delete the saved epochs (both files) that ``policy`` does not keep (task and option ``cleanup_old_models``).

    :param scores: per epoch the scores from the learning_rates file
    """
    epochs = existing_epochs(model_prefix)
    to_delete = policy.epochs_to_delete(epochs, scores)
    for epoch in to_delete:
        delete_epoch(model_prefix, epoch)
    if to_delete:
        logger.log(V4, f"cleanup_old_models: deleted={to_delete} kept={sorted(set(epochs) - set(to_delete))}")


def delete_old_optimizer_files(model_prefix: str, *, keep_last: int = 2) -> None:
    """Keep only the newest ``keep_last`` optimizer files (they are large and only needed to resume)."""
    for epoch in existing_optimizer_epochs(model_prefix)[:-keep_last]:
        remove_file(optimizer_filename(model_prefix, epoch))
