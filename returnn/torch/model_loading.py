"""Which checkpoint a task starts from, and ``preload_from_files``.

Training (task train) starts from, in this order:

1. the newest ``<model>.<epoch>.pt`` that exists (``start_epoch = N`` picks epoch N - 1 instead, ``start_epoch = 1``
   ignores existing files, ``load_epoch = N`` picks epoch N): training continues after it, with the optimizer state,
   global step and random state of that epoch;
2. ``import_model_train_epoch1``: its parameters, then epoch 1 from step 0;
3. ``load``: its parameters (and its optimizer file if there is one); training continues after its epoch (or at
   ``start_epoch``);
4. a freshly initialized model at epoch 1 (or ``start_epoch``).

Other tasks (eval, forward) load ``load``, else ``<model>.<load_epoch>.pt``, else the newest ``<model>.<epoch>.pt``;
without any of these they stop with an error unless ``allow_random_model_init`` is set. Task initialize_model starts
from ``import_model_train_epoch1``, else ``load``, else a freshly initialized model.

With several processes (torchrun), every process finds and loads its start point itself, from the same files; the
engine then checks that all found the same one and gives them rank 0's parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import CheckpointError, ConfigError
from returnn.torch import checkpoints

logger = logging.getLogger(__name__)

__all__ = [
    "path_option",
    "StartPoint",
    "train_start_point",
    "explicit_start",
    "checkpoint_for_task",
    "initialize_model_start_point",
    "load_model_params",
    "PreloadSpec",
    "apply_preload_from_files",
]

LoadFunction = Callable[[str], dict[str, Any]]

declare_options(
    "Checkpoints",
    {
        "model": (None, "Checkpoint file prefix: epoch N is saved as <model>.<N:03d>.pt (and .opt.pt)."),
        "load": (
            None,
            "A checkpoint (with or without .pt) to load: training starts after its epoch; eval/forward use it.",
        ),
        "load_epoch": (None, "Load <model>.<load_epoch>.pt (train: continue after it; eval/forward: use it)."),
        "start_epoch": (
            "auto",
            '"auto" (continue after the newest checkpoint) or N: start at epoch N (loading epoch N - 1; 1 = afresh).',
        ),
        "import_model_train_epoch1": (None, "A checkpoint whose parameters initialize a new training at epoch 1."),
        "preload_from_files": (
            None,
            "{name: {'filename', 'prefix', 'init_for_train', 'ignore_missing', 'ignore_params', "
            "'ignore_params_prefixes', 'var_name_mapping', 'checkpoint_key'}}: load (parts of) other checkpoints; "
            "applied in the order of the names.",
        ),
        "allow_missing_optimizer_checkpoint": (
            False,
            "When training continues from a checkpoint without .opt.pt, start with a fresh optimizer state.",
        ),
        "allow_random_model_init": (False, "eval/forward without any checkpoint use a randomly initialized model."),
    },
)


def path_option(config: Config, key: str) -> str | None:
    """A file path option: a string or an ``os.PathLike`` (pipelines may put path objects into configs)."""
    value = config.typed_value(key)
    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"config key {key!r}: expected a file path, got {type(value).__name__} {value!r}")


@dataclasses.dataclass(frozen=True)
class StartPoint:
    """Where a task starts.

    :param epoch: train: the first epoch to train; other tasks: the checkpoint's epoch
    :param step: the global step (steps done so far)
    :param checkpoint: the checkpoint file to load the model from, if any
    :param content: that checkpoint's content (loaded already: its epoch and step were needed)
    :param optimizer_file: the optimizer file to load (train), if any
    :param kind: "resume", "import", "load", "fresh" (train) or "checkpoint", "random" (other tasks)
    """

    epoch: int
    step: int
    checkpoint: str | None = None
    content: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    optimizer_file: str | None = None
    kind: str = "fresh"


def _start_epoch_option(config: Config) -> int | None:
    value = config.typed_value("start_epoch")
    if value in ("auto", None):
        return None
    try:
        epoch = int(value)
    except (TypeError, ValueError):
        epoch = 0
    if epoch < 1 or isinstance(value, bool):
        raise ConfigError(f"config key 'start_epoch': expected 'auto' or an int >= 1, got {value!r}")
    return epoch


def _epoch_of(content: dict[str, Any], path: str) -> tuple[int, int]:
    try:
        return int(content["epoch"]), int(content.get("step", 0))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"checkpoint {path!r} has no valid 'epoch' entry, so the epoch to continue after is unknown; to take only "
            "its parameters, use import_model_train_epoch1 (training) or preload_from_files"
        ) from None


def train_start_point(config: Config, load: LoadFunction) -> StartPoint:
    """Where training starts (see the module doc).

    :param load: loads a checkpoint file (the engine's load_checkpoint hook)
    """
    prefix = path_option(config, "model")
    start_epoch = _start_epoch_option(config)
    load_epoch = config.int("load_epoch")
    existing = checkpoints.existing_epochs(prefix) if prefix else []
    wanted: int | None = None
    if start_epoch is not None and start_epoch > 1:
        wanted = start_epoch - 1
    elif start_epoch is None and load_epoch is not None:
        wanted = load_epoch
    elif start_epoch is None and existing:
        wanted = existing[-1]
    if wanted is not None and prefix and wanted in existing:
        return _resume_point(config, prefix, wanted, load)
    if wanted is not None and (start_epoch is not None or load_epoch is not None) and not path_option(config, "load"):
        raise CheckpointError(
            f"training should continue after epoch {wanted} (start_epoch/load_epoch), but there is no checkpoint "
            f"{checkpoints.checkpoint_filename(prefix or '<model>', wanted)!r}"
            + (f"; existing epochs: {existing}" if existing else "")
            + "; set start_epoch / load_epoch to an existing epoch, or remove them to continue after the newest one"
        )
    import_path = path_option(config, "import_model_train_epoch1")
    if import_path and start_epoch in (None, 1):
        path = checkpoints.resolve_checkpoint_path(import_path, config_key="import_model_train_epoch1")
        return StartPoint(epoch=1, step=0, checkpoint=path, content=load(path), kind="import")
    load_path = path_option(config, "load")
    if load_path:
        path = checkpoints.resolve_checkpoint_path(load_path, config_key="load")
        content = load(path)
        epoch, step = _epoch_of(content, path)
        optimizer_file = path[: -len(".pt")] + ".opt.pt" if path.endswith(".pt") else path + ".opt.pt"
        return StartPoint(
            epoch=start_epoch or epoch + 1,
            step=step,
            checkpoint=path,
            content=content,
            optimizer_file=optimizer_file if os.path.isfile(optimizer_file) else None,
            kind="load",
        )
    return StartPoint(epoch=start_epoch or 1, step=0, kind="fresh")


def explicit_start(config: Config) -> bool:
    """``start_epoch`` or ``load_epoch`` choose where training starts (then no mid-epoch checkpoint is used)."""
    return config.typed_value("start_epoch") not in ("auto", None) or config.typed_value("load_epoch") is not None


def _resume_point(config: Config, prefix: str, epoch: int, load: LoadFunction) -> StartPoint:
    path = checkpoints.checkpoint_filename(prefix, epoch)
    content = load(path)
    saved_epoch, step = _epoch_of(content, path)
    optimizer_file = checkpoints.optimizer_filename(prefix, epoch)
    if epoch == 0:  # written by task initialize_model: parameters only
        optimizer_file = None
    elif not os.path.isfile(optimizer_file):
        if not config.bool("allow_missing_optimizer_checkpoint"):
            raise CheckpointError(
                f"training continues from {path!r}, but its optimizer state {optimizer_file!r} is missing; restore "
                "it, or set allow_missing_optimizer_checkpoint = True to go on with a fresh optimizer state"
            )
        logger.warning(f"{optimizer_file!r} is missing: continuing with a fresh optimizer state")
        optimizer_file = None
    return StartPoint(
        epoch=saved_epoch + 1, step=step, checkpoint=path, content=content, optimizer_file=optimizer_file, kind="resume"
    )


def checkpoint_for_task(config: Config, task: str, load: LoadFunction) -> StartPoint:
    """The checkpoint that eval/forward use (see the module doc).

    :param task: for messages
    :param load: loads a checkpoint file (the engine's load_checkpoint hook)
    """
    prefix = path_option(config, "model")
    load_path = path_option(config, "load")
    load_epoch = config.int("load_epoch")
    path = None
    if load_path:
        path = checkpoints.resolve_checkpoint_path(load_path, config_key="load")
    elif prefix and load_epoch is not None:
        path = checkpoints.resolve_checkpoint_path(
            checkpoints.checkpoint_filename(prefix, load_epoch), config_key="load_epoch"
        )
    elif prefix and checkpoints.existing_epochs(prefix):
        path = checkpoints.checkpoint_filename(prefix, checkpoints.existing_epochs(prefix)[-1])
        logger.info(f"task={task}: using the newest checkpoint {path}")
    if path is None:
        if config.bool("allow_random_model_init"):
            logger.warning(f"task={task}: no checkpoint given, using a randomly initialized model")
            return StartPoint(epoch=0, step=0, kind="random")
        raise CheckpointError(
            f"task {task!r} needs a checkpoint: set 'load' to a checkpoint file, or 'model' (and 'load_epoch'); "
            "or set allow_random_model_init = True"
        )
    content = load(path)
    epoch, step = _epoch_of(content, path)
    return StartPoint(epoch=epoch, step=step, checkpoint=path, content=content, kind="checkpoint")


def initialize_model_start_point(config: Config, load: LoadFunction) -> StartPoint:
    """What task initialize_model starts from (see the module doc): the model of epoch 1 at step 0, with the
    parameters of ``import_model_train_epoch1`` or ``load`` if one is set.

    :param load: loads a checkpoint file (the engine's load_checkpoint hook)
    """
    for key in ("import_model_train_epoch1", "load"):
        source = path_option(config, key)
        if source:
            path = checkpoints.resolve_checkpoint_path(source, config_key=key)
            return StartPoint(epoch=1, step=0, checkpoint=path, content=load(path), kind="import")
    return StartPoint(epoch=1, step=0, kind="fresh")


def load_model_params(model: torch.nn.Module, start: StartPoint, *, ignore_missing: bool) -> None:
    """Load the parameters of ``start``'s checkpoint into ``model`` (nothing if it starts without one).

    :param ignore_missing: parameters that the checkpoint lacks keep their initialization (else an error)
    """
    if start.content is None:
        return
    if "model" not in start.content:
        raise CheckpointError(
            f"checkpoint {start.checkpoint!r} has no 'model' entry (it has: {', '.join(map(str, start.content))}); "
            "to load parameters stored under another entry, use preload_from_files with 'checkpoint_key'"
        )
    checkpoints.load_model_state(
        model, start.content["model"], source=f"checkpoint {start.checkpoint!r}", ignore_missing=ignore_missing
    )


# --------------------------------------------------------------------------------------------------
# preload_from_files


@dataclasses.dataclass(frozen=True)
class PreloadSpec:
    """One entry of ``preload_from_files``.

    Model parameter ``prefix + name`` gets the checkpoint's ``name``, or the checkpoint's ``var_name_mapping[param]``
    for parameters named in ``var_name_mapping`` (``{model parameter: checkpoint name}``). Parameters without the
    prefix, and those in ``ignore_params`` or starting with one of ``ignore_params_prefixes`` (model names), are not
    touched. Parameters that the checkpoint lacks are an error unless ``ignore_missing``.
    """

    name: str
    filename: str
    init_for_train: bool = False
    prefix: str = ""
    ignore_missing: bool = False
    ignore_params: tuple[str, ...] = ()
    ignore_params_prefixes: tuple[str, ...] = ()
    var_name_mapping: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoint_key: str | None = "model"

    @classmethod
    def list_from_config(cls, config: Config) -> list[PreloadSpec]:
        """The entries of ``preload_from_files``, ordered by name."""
        value = config.typed_value("preload_from_files")
        if not value:
            return []
        if not isinstance(value, dict):
            raise ConfigError(f"config key 'preload_from_files': expected a dict {{name: options}}, got {value!r}")
        fields = [field.name for field in dataclasses.fields(cls) if field.name != "name"]
        specs = []
        for name, options in sorted(value.items()):
            where = f"config key 'preload_from_files', entry {name!r}"
            if not isinstance(options, dict) or not options.get("filename"):
                raise ConfigError(f"{where}: expected a dict with 'filename', got {options!r}")
            unknown = sorted(set(options) - set(fields))
            if unknown:
                raise ConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; choose from: {fields}")
            kwargs = dict(options)
            kwargs["filename"] = str(kwargs["filename"])
            for key in ("ignore_params", "ignore_params_prefixes"):
                kwargs[key] = tuple(kwargs.get(key) or ())
            kwargs["var_name_mapping"] = dict(kwargs.get("var_name_mapping") or {})
            specs.append(cls(name=str(name), **kwargs))
        return specs

    def _is_ignored(self, param: str) -> bool:
        return param in self.ignore_params or any(param.startswith(p) for p in self.ignore_params_prefixes)

    def apply(self, model: torch.nn.Module, load: LoadFunction) -> None:
        """Load this entry's parameters into ``model``.

        :param load: loads a checkpoint file (the engine's load_checkpoint hook)
        """
        path = checkpoints.resolve_checkpoint_path(self.filename, config_key=f"preload_from_files[{self.name!r}]")
        content = load(path)
        state = content
        if self.checkpoint_key is not None:
            if self.checkpoint_key not in content:
                raise CheckpointError(
                    f"preload_from_files[{self.name!r}]: {path!r} has no entry {self.checkpoint_key!r} "
                    f"(it has: {', '.join(map(str, content))}); set 'checkpoint_key'"
                )
            state = content[self.checkpoint_key]
        to_load, missing = {}, []
        for param in model.state_dict():
            if not param.startswith(self.prefix) or self._is_ignored(param):
                continue
            source = self.var_name_mapping.get(param, param[len(self.prefix) :])
            if source in state:
                to_load[param] = state[source]
            else:
                missing.append(param)
        if missing and not self.ignore_missing:
            raise CheckpointError(
                f"preload_from_files[{self.name!r}]: {path!r} lacks parameters for {', '.join(missing[:10])}"
                + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
                + "; set 'ignore_missing': True, 'ignore_params' or 'var_name_mapping'"
            )
        checkpoints.check_shapes(model, to_load, source=f"preload_from_files[{self.name!r}]: {path!r}")
        model.load_state_dict(to_load, strict=False)
        logger.info(f"preload_from_files[{self.name!r}]: loaded {len(to_load)} parameters from {path}")


def apply_preload_from_files(
    model: torch.nn.Module, specs: list[PreloadSpec], *, for_train: bool, load: LoadFunction
) -> None:
    """Apply the entries meant for this case: ``init_for_train`` ones when a training starts afresh (or for task
    initialize_model), the others for eval and forward."""
    for spec in specs:
        if spec.init_for_train == for_train:
            spec.apply(model, load)
