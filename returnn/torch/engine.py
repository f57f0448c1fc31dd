"""The engine: the train, eval and forward loops around the config's step functions.

Tasks (``returnn.__main__`` calls one of them on ``Engine(config)``): :meth:`Engine.train`, :meth:`Engine.eval`,
:meth:`Engine.forward`, :meth:`Engine.initialize_model`, :meth:`Engine.cleanup_old_models`, and for network dicts
:meth:`Engine.search` and :meth:`Engine.compute_priors`; the bodies of all but train and forward are in
:mod:`returnn.torch.tasks`. ``Engine(config)`` only reads options; datasets and the model are built when a task runs.

A config may define ``class CustomEngine(Engine)`` and override these hooks (each documented where defined):

- :meth:`Engine.build_model`, :meth:`Engine.build_updater` (the optimizer), :meth:`Engine.build_data_loader`
- :meth:`Engine.run_train_step` (step function and backward), :meth:`Engine.optimizer_step`
- :meth:`Engine.evaluate_dataset`
- :meth:`Engine.on_epoch_start`, :meth:`Engine.on_epoch_end`
- :meth:`Engine.save_checkpoint`, :meth:`Engine.load_checkpoint`

The engine's options are read in :mod:`returnn.torch.engine_options`; where a task starts (which checkpoint, and
``preload_from_files``) is decided in :mod:`returnn.torch.model_loading`; the optimizer step is
:mod:`returnn.torch.updater`'s; loss bookkeeping and the per-step log line are in :mod:`returnn.torch.scores`.

Around the loops: mid-epoch checkpoints and stops on signals and time limits are :mod:`returnn.torch.run_control`'s,
the progress lines and per-epoch resource line :mod:`returnn.torch.progress`'s, the metrics loggers
:mod:`returnn.torch.metrics_log`'s, early stopping, debug limits, ``fast_dev_run`` and ``torch_compile``
:mod:`returnn.torch.training_switches`'.

Log lines have a stable ``key=value`` shape: one per step at verbosity 5 (``epoch=... step=... loss_<name>=...
seqs=... step_time=... eta=...``), one per evaluated dataset at verbosity 4 and one per epoch at verbosity 3
(``epoch=... train_loss_<name>=... dev_loss_<name>=... lr=... time=...``).

Started by torchrun as several processes, tasks train and eval run data-parallel (see :mod:`returnn.torch.distributed`):
each process reads its share of the batches, gradients are averaged at every update (by torch's DDP by default),
the scores are summed over the processes, and only rank 0 writes files. In task forward each process forwards its
share, and rank 0 puts the outputs together as one process would have written them (see
:mod:`returnn.torch.forward_output` and :mod:`returnn.torch.forward_parts`). Hooks that a ``CustomEngine`` overrides
then run in every process; an overridden :meth:`Engine.evaluate_dataset` sums its scores over the processes itself
(as the default one does); an overridden :meth:`Engine.run_train_step` must call ``self.updater.backward(loss)``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

import returnn
from returnn.config import Config
from returnn.datasets import Dataset, init_dataset
from returnn.errors import ConfigError, DatasetError, StepFunctionError, TrainingError
from returnn.learning_rate_control import LearningRateControl, learning_rate_control_from_config
from returnn.log import V4
from returnn.torch import checkpoints, distributed, tasks
from returnn.torch.context import RunCtx, using_run_ctx
from returnn.torch.data.loader import BatchLoader, build_data_loader
from returnn.torch.data.options import DataPipelineOptions
from returnn.torch.device import autocast
from returnn.torch.engine_options import EngineOptions
from returnn.torch.forward_parts import ProcessDirectory
from returnn.torch.last_best import reset_to_last_best_model
from returnn.torch.metrics_log import MetricsLog
from returnn.torch.model_loading import (
    PreloadSpec,
    StartPoint,
    apply_preload_from_files,
    checkpoint_for_task,
    explicit_start,
    load_model_params,
    train_start_point,
)
from returnn.torch.network.growth import pretrain_epoch_start, train_start_model_epoch
from returnn.torch.output_files import prepare_outputs
from returnn.torch.progress import Progress, ProgressOptions, expected_num_seqs
from returnn.torch.random_state import derive_seed, get_rng_state, seed_all, set_rng_state
from returnn.torch.run_control import RunControl
from returnn.torch.scores import LossTotals, check_finite, format_scores, loss_values
from returnn.torch.step_functions import StepFunctions
from returnn.torch.training_switches import TrainingSwitches, compile_model
from returnn.torch.updater import Updater

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineOptions"]


class Engine:
    """Runs the tasks of a config. See the module docstring for the hooks a ``CustomEngine`` overrides.

    :ivar epoch: the current epoch (train), or the loaded checkpoint's epoch
    :ivar global_step: the number of training steps done so far
    """

    def __init__(self, config: Config):
        self.config = config
        self.switches = TrainingSwitches(config)  # first: fast_dev_run redirects the outputs
        self.options = EngineOptions.from_config(config)
        self.functions = StepFunctions.from_config(config)
        self._model: torch.nn.Module | None = None
        self.updater: Updater | None = None
        self.learning_rate_control: LearningRateControl | None = None
        self.epoch = 0
        self.global_step = 0
        self.data_loaders: dict[str, BatchLoader] = {}
        self.datasets: dict[str, Dataset] = {}
        self.data_parallel: distributed.DataParallel | None = None  # while a task runs in several processes
        self._last_batch: dict[str, Any] | None = None  # with FSDP: repeated where this process has no batch
        self.run_control = RunControl.from_config(config)  # mid-epoch checkpoints, stops on signals and time limits
        self.progress_options = ProgressOptions.from_config(config)
        self.metrics_log = MetricsLog()  # while training: metrics_csv, tensorboard_dir

    @property
    def device(self) -> str:
        """The device of this process, e.g. "cpu" or "cuda:0" (from the config's ``device``)."""
        return self.options.device

    @property
    def model(self) -> torch.nn.Module:
        """The model of the running task (built by :meth:`build_model` when the task starts)."""
        if self._model is None:
            raise RuntimeError(
                "Engine.model is used before a task built the model; use it in the hooks that run after build_model"
            )
        return self._model

    # ================================================================ tasks

    def train(self) -> None:
        """Task train: epochs from the start epoch (after the newest checkpoint) up to ``num_epochs``."""
        with self._running_task(), self.run_control.running():
            start = self._init_train()
            if start.epoch > self.options.num_epochs:
                if self.options.cleanup is not None:  # the run may have stopped before its last cleanup
                    self._cleanup(self.options.cleanup)
                logger.info(
                    f"train: nothing to do, epochs 1..{start.epoch - 1} are done (num_epochs={self.options.num_epochs})"
                )
                return
            first_epoch = self.run_control.resume_point(self, start, explicit_start=explicit_start(self.config))
            logger.info(
                f"train: epochs={first_epoch}..{self.options.num_epochs} start={start.kind} "
                f"global_step={self.global_step} device={self.device} processes={distributed.world_size()}"
            )
            resume_step = self.run_control.resume_step(default=self.global_step)
            with MetricsLog.from_config(self.config, resume_step=resume_step, first_epoch=first_epoch) as metrics_log:
                self.metrics_log = metrics_log
                if (done := self.learning_rate_control.epoch_data.get(first_epoch - 1)) is not None:
                    values = {**done.scores, "learning_rate": done.learning_rate}
                    metrics_log.epoch_if_missing(first_epoch - 1, self.global_step, values)
                for epoch in range(first_epoch, self.options.num_epochs + 1):
                    if (reason := self.switches.early_stop_reason(self.learning_rate_control.epoch_data)) is not None:
                        logger.info(f"{reason}: training ends before epoch {epoch}")
                        break
                    self.run_control.before_epoch(self, epoch)
                    self.train_epoch(epoch)

    def train_epoch(self, epoch: int) -> None:
        """One epoch: train steps, learning_rates file, checkpoint, evaluation, cleanup."""
        start_time = time.monotonic()
        self.on_epoch_start(epoch)
        scores = self._record_scores(self._train_steps(self.data_loaders["train"]))
        if epoch % self.options.save_interval == 0 or epoch == self.options.num_epochs:
            self.save_checkpoint(epoch)
        self.run_control.epoch_saved(self)
        for name in self.options.eval_names:
            scores.update(self._record_scores(self.evaluate_dataset(name, self.data_loaders[name])))
            if self.updater.ema is not None:  # the same data with the averaged weights: <name>_ema_loss_...
                with self.updater.ema.swapped_into(self._model):
                    scores.update(self._record_scores(self.evaluate_dataset(f"{name}_ema", self.data_loaders[name])))
        self.on_epoch_end(epoch, scores)
        logger.info(
            f"epoch={epoch} {format_scores(scores)} lr={self.updater.learning_rate:.6g} "
            f"time={time.monotonic() - start_time:.1f}s"
        )
        self.metrics_log.epoch(epoch, self.global_step, {**scores, "learning_rate": self.updater.epoch_learning_rate})

    def eval(self) -> None:
        """Task eval: score a checkpoint on ``dev`` and ``eval_datasets``; the scores go to the learning_rates
        file (for epochs >= 1)."""
        tasks.run_eval(self)

    def forward(self) -> None:
        """Task forward: ``forward_step`` over the ``forward`` dataset, between ``forward_init_hook`` and
        ``forward_finish_hook``. ``run_ctx.epoch`` and ``global_step`` are the checkpoint's.

        Under torchrun each process forwards its share of the batches. The trainer's own forward functions gather
        the outputs into ``output_file`` or ``forward_callback`` on rank 0 (:mod:`returnn.torch.forward_output`); a
        config's own hooks and steps run in a directory per process, whose files rank 0 merges
        (:mod:`returnn.torch.forward_parts`). Either way the results are those of one process."""
        forward_step = self.functions.require("forward_step", "task 'forward'")
        if "forward" not in self.options.datasets:
            raise ConfigError("task 'forward' needs the config key 'forward': the dataset to run forward_step over")
        with self._running_task():
            self._init_model_for_task("forward")
            loader = self._init_data_loaders(["forward"], mode="forward")["forward"]
            run_ctx = RunCtx(
                stage="forward_step", device=self.device, engine=self, epoch=self.epoch, global_step=self.global_step
            )
            self._model.eval()
            directory = None
            if self.data_parallel is not None and not self.functions.forward_gathers_outputs:
                directory = ProcessDirectory(self.data_parallel)
            in_directory = directory.inside if directory is not None else contextlib.nullcontext
            num_batches = 0
            with using_run_ctx(run_ctx), torch.no_grad():
                if self.functions.forward_init_hook is not None:
                    with in_directory():
                        self.functions.forward_init_hook(run_ctx)
                for data in loader.iter_epoch(None):
                    run_ctx.init_step(self.global_step)
                    with in_directory(), autocast(self.device, self.options.amp_dtype):
                        forward_step(model=self._model, data=self._to_device(data), run_ctx=run_ctx)
                    if directory is not None:
                        directory.note_batch(data["seq_tag"], data["seq_idx"])
                    num_batches += 1
                # before the finish hooks: after them, only rank 0 has work (merging), and nobody waits for it
                if self.data_parallel is not None:  # a process may have had no batch: the shares differ by one
                    _, (num_batches,) = self.data_parallel.sum_totals({}, [num_batches])
                if self.functions.forward_finish_hook is not None:
                    with in_directory():
                        self.functions.forward_finish_hook(run_ctx)
            if directory is not None:
                directory.finish()
            _check_not_empty(num_batches, "forward", None)
            logger.info(f"forward: batches={num_batches} epoch={self.epoch} processes={distributed.world_size()}")

    def search(self) -> None:
        """Task search (network dicts): beam search over ``search_data`` (else ``dev``), the hypotheses written to
        ``search_output_file`` (see :mod:`returnn.torch.network.search_task`)."""
        tasks.run_search(self)

    def compute_priors(self) -> None:
        """Task compute_priors (network dicts): the average softmax of ``forward_output_layer`` over all frames of
        the ``train`` dataset (else ``forward``), written as log priors to ``output_file``."""
        tasks.run_compute_priors(self)

    def initialize_model(self) -> None:
        """Task initialize_model: save a freshly initialized model (with ``import_model_train_epoch1``, ``load`` and
        the ``init_for_train`` entries of ``preload_from_files`` applied) as epoch 0, ``<model>.000.pt``. Training
        with the same ``model`` then starts from it."""
        tasks.run_initialize_model(self)

    def cleanup_old_models(self) -> None:
        """Task cleanup_old_models: delete checkpoints as ``cleanup_old_models`` says (its defaults when unset)."""
        tasks.run_cleanup_old_models(self)

    # ================================================================ hooks

    def build_model(self, *, epoch: int, step: int) -> torch.nn.Module:
        """Hook: the model, from the config's ``get_model(epoch=, step=)``, on the device.

        Randomness is seeded from (random_seed, epoch, step) first, so the initialization is reproducible.
        """
        get_model = self.functions.require("get_model", "building the model")
        seed_all(derive_seed(self.options.random_seed, epoch, step))
        with using_run_ctx(RunCtx(stage="load", device=self.device, engine=self, epoch=epoch, global_step=step)):
            model = get_model(epoch=epoch, step=step)
        if not isinstance(model, torch.nn.Module):
            raise StepFunctionError(
                f"get_model must return a torch.nn.Module, got {type(model).__name__}; end it with 'return model'"
            )
        num_params = sum(p.numel() for p in model.parameters())
        logger.info(f"model: class={type(model).__name__} params={num_params}")
        logger.log(V4, f"{model}")
        model = model.to(self.device)
        return compile_model(model, self.switches.torch_compile) if self.switches.torch_compile is not None else model

    def build_updater(self, model: torch.nn.Module) -> Updater:
        """Hook: the updater (optimizer, gradient clipping, accumulation, AMP scaler) from the config."""
        return Updater.from_config(
            self.config, model, device=self.device, amp_dtype=self.options.amp_dtype, data_parallel=self.data_parallel
        )

    def build_data_loader(self, name: str, dataset: Dataset, *, mode: str) -> BatchLoader:
        """Hook: the loader of one dataset; it lives for the whole task (``iter_epoch(epoch)`` per epoch).

        :param mode: "train", "eval" or "forward"
        """
        return build_data_loader(
            dataset,
            self._pipeline_options,
            mode=mode,
            device=self.device,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
            name=name,
        )

    def run_train_step(self, data: dict[str, Any], run_ctx: RunCtx) -> torch.Tensor:
        """Hook: run the config's ``train_step`` on a batch and add the gradients of its total loss.

        :return: the step's loss values ``[loss_0, inv_norm_0, loss_1, ...]`` on the device (see :func:`loss_values`)
        """
        with autocast(self.device, self.options.amp_dtype):
            self.functions.train_step(model=self._model, data=data, run_ctx=run_ctx)
        values = loss_values(run_ctx.losses)
        total = run_ctx.total_loss()
        if not total.requires_grad:
            raise StepFunctionError(
                f"train_step: the total loss of {list(run_ctx.losses)} has no gradient (all scales 0, or computed "
                "under torch.no_grad / from detached tensors)"
            )
        self.updater.backward(total)
        return values

    def optimizer_step(self, step_values: torch.Tensor | None) -> list[float]:
        """Hook: update the parameters (every ``accum_grad_multiple_step`` steps).

        :param step_values: what :meth:`run_train_step` returned; None in a process whose data of the epoch is done
            while other processes still train (it takes part in their update without gradients of its own)
        :return: ``step_values`` as floats, fetched together with the gradient norm (one device sync per step)
        """
        return self.updater.step(self.global_step, fetch=step_values)

    def evaluate_dataset(self, name: str, data_loader: BatchLoader) -> dict[str, float]:
        """Hook: the scores ``{"<name>_loss_<loss>": value}`` of the config's ``train_step`` on one dataset
        (no gradients, no update; the model in eval mode)."""
        start_time = time.monotonic()
        self._model.eval()
        run_ctx = RunCtx(
            stage="train_step", device=self.device, engine=self, epoch=self.epoch, global_step=self.global_step
        )
        totals = LossTotals()
        batches = self.switches.eval_batches(data_loader.iter_epoch(self.epoch))
        if self.data_parallel is not None and self.data_parallel.needs_every_forward:
            batches = self.data_parallel.in_step(batches)
        with using_run_ctx(run_ctx), torch.no_grad():
            for data in batches:
                if data is None:  # FSDP: the other processes' forwards need this one's
                    self._repeat_last_batch(run_ctx, name)
                    continue
                self._last_batch = data
                run_ctx.init_step(self.global_step)
                with autocast(self.device, self.options.amp_dtype):
                    self.functions.train_step(model=self._model, data=self._to_device(data), run_ctx=run_ctx)
                totals.add(run_ctx.losses, loss_values(run_ctx.losses).tolist())
                self.run_control.during_evaluation(self, name)
        self._sum_over_processes(totals)
        _check_not_empty(totals.num_steps, name, self.epoch)
        scores = totals.scores(name)
        logger.log(
            V4, f"epoch={self.epoch} dataset={name} {format_scores(scores)} time={time.monotonic() - start_time:.1f}s"
        )
        return scores

    def on_epoch_start(self, epoch: int) -> None:
        """Hook: before the epoch's first step: the network of a pretrain epoch, back to the best model
        (``use_last_best_model``), seed, learning rate, train mode."""
        self.epoch = epoch
        grown = pretrain_epoch_start(self, epoch)  # a network dict with 'pretrain': this epoch's network
        if grown is not None:
            self._model, self.updater = grown
        if (updater := reset_to_last_best_model(self, epoch)) is not None:  # use_last_best_model
            self.updater = updater
        seed_all(distributed.process_seed(derive_seed(self.options.random_seed, epoch, self.global_step)))
        learning_rate = self.learning_rate_control.get_learning_rate_for_epoch(epoch)
        self.updater.set_epoch_learning_rate(epoch, learning_rate)
        self._model.train()

    def on_epoch_end(self, epoch: int, scores: dict[str, float]) -> None:
        """Hook: after the epoch's evaluation: delete old checkpoints (``cleanup_old_models``)."""
        if self.options.cleanup is not None:
            self._cleanup(self.options.cleanup)

    def save_checkpoint(self, epoch: int) -> None:
        """Hook: write ``<model>.<epoch>.opt.pt`` (if there is an updater), then ``<model>.<epoch>.pt``; keep the
        optimizer files of the last two saved epochs."""
        prefix = self.options.require_model_prefix("saving checkpoints")
        if self.updater is not None:
            optimizer_state = {**self.updater.state_dict(), "epoch": epoch, "step": self.global_step}
            checkpoints.save_checkpoint(checkpoints.optimizer_filename(prefix, epoch), optimizer_state)
        fsdp = self.data_parallel.fsdp if self.data_parallel is not None else None
        content = {
            "model": fsdp.model_state_dict() if fsdp is not None else self._model.state_dict(),
            "epoch": epoch,
            "step": self.global_step,
            "effective_learning_rate": self.updater.learning_rate if self.updater is not None else None,
            "returnn_version": returnn.__version__,
            "rng": get_rng_state(include_cuda=torch.device(self.device).type == "cuda"),
        }
        if self.updater is not None and self.updater.ema is not None:
            content["model_ema"] = self.updater.ema.state_dict()
        checkpoints.save_checkpoint(checkpoints.checkpoint_filename(prefix, epoch), content)
        if self.updater is not None:
            checkpoints.delete_old_optimizer_files(prefix)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Hook: read a checkpoint or optimizer file (``weights_only=True``, tensors onto the device)."""
        return checkpoints.load_checkpoint(path, map_location=self.device)

    # ================================================================ set-up

    def _init_train(self) -> StartPoint:
        self.functions.require("get_model", "task 'train'")
        self.functions.require("train_step", "task 'train'")
        self.options.require_model_prefix("task 'train'")
        if "train" not in self.options.datasets:
            raise ConfigError("task 'train' needs the config key 'train': the training dataset")
        prepare_outputs(self.config)
        self.learning_rate_control = learning_rate_control_from_config(self.config)
        start = train_start_point(self.config, self.load_checkpoint)
        if start.kind == "resume" and start.epoch > self.options.num_epochs and not self._missing_eval_names(start):
            return start  # a finished run started again: no model, optimizer or datasets needed
        self._init_model(start, for_train=True)
        if self.data_parallel is not None:
            self.data_parallel.check_same((start.kind, start.epoch, start.step), "where training starts")
            self.data_parallel.broadcast_module(self._model)
            self.data_parallel.wrap_model(self._model, self.device)
        self.updater = self.build_updater(self._model)
        if start.optimizer_file is not None:
            self.updater.load_state_dict(self.load_checkpoint(start.optimizer_file), source=start.optimizer_file)
        self._init_data_loaders(["train"], mode="train")
        self._init_data_loaders(self.options.eval_names, mode="eval")
        if start.kind == "resume":
            self._evaluate_missing(start)
        return start

    def _init_model_for_task(self, task: str) -> None:
        self.functions.require("get_model", f"task {task!r}")
        self._init_model(checkpoint_for_task(self.config, task, self.load_checkpoint), for_train=False)

    def _init_model(self, start: StartPoint, *, for_train: bool) -> None:
        """Build the model of ``start`` and load its parameters, then ``preload_from_files``: in training only when
        it starts anew (``init_for_train`` entries), in the other tasks always (the other entries)."""
        self.epoch, self.global_step = start.epoch, start.step
        model_epoch = train_start_model_epoch(self.config, start) if for_train else start.epoch
        self._model = self.build_model(epoch=model_epoch, step=start.step)
        load_model_params(self._model, start, ignore_missing=self.options.load_ignore_missing_vars)
        if not for_train or start.kind in ("fresh", "import"):
            specs = PreloadSpec.list_from_config(self.config)
            apply_preload_from_files(self._model, specs, for_train=for_train, load=self.load_checkpoint)

    def _evaluate_missing(self, start: StartPoint) -> None:
        """A run stopped between saving epoch k and evaluating it: evaluate what the learning_rates file lacks,
        with the random state of that moment, exactly as the interrupted run would have."""
        epoch = start.epoch - 1
        missing = self._missing_eval_names(start)
        if not missing:
            return
        logger.info(f"epoch={epoch}: evaluating {missing}, which the interrupted run did not finish")
        if start.content and "rng" in start.content:
            set_rng_state(start.content["rng"])
        self.epoch = epoch
        for name in missing:
            self._record_scores(self.evaluate_dataset(name, self.data_loaders[name]))

    def _missing_eval_names(self, start: StartPoint) -> list[str]:
        """The datasets whose scores of the epoch before ``start`` are not in the learning_rates file (on resume)."""
        epoch = start.epoch - 1
        if start.kind != "resume" or epoch < 1:
            return []
        data = self.learning_rate_control.epoch_data.get(epoch)
        scores = data.scores if data is not None else {}
        return [name for name in self.options.eval_names if not any(k.startswith(f"{name}_") for k in scores)]

    @functools.cached_property
    def _pipeline_options(self) -> DataPipelineOptions:
        # read when the first loader is built: tasks without datasets do not depend on the pipeline's options
        return DataPipelineOptions.from_config(self.config)

    @contextlib.contextmanager
    def _running_task(self) -> Iterator[None]:
        """Around a task: the process group when torchrun started several processes; the data loaders are closed
        at the end, also after an error."""
        with contextlib.ExitStack() as stack:
            stack.callback(self._close_data_loaders)
            if distributed.world_size() > 1:
                started = distributed.DataParallel.started(self.options.distributed, self.device)
                self.data_parallel = stack.enter_context(started)
                stack.callback(setattr, self, "data_parallel", None)
            yield

    def _init_data_loaders(self, names: Iterable[str], *, mode: str = "eval") -> dict[str, BatchLoader]:
        for name in names:
            dataset = init_dataset(self.options.datasets[name], default_kwargs=self.options.dataset_defaults(name))
            self.datasets[name] = dataset
            self.data_loaders[name] = self.build_data_loader(name, dataset, mode=mode)
        return self.data_loaders

    def _close_data_loaders(self) -> None:
        for loader in self.data_loaders.values():
            loader.close()
        self.data_loaders = {}

    # ================================================================ the steps

    def _train_steps(self, data_loader: BatchLoader) -> dict[str, float]:
        """The train steps of one epoch. Returns the epoch's scores ``train_loss_<name>``."""
        run_ctx = RunCtx(
            stage="train_step", device=self.device, engine=self, epoch=self.epoch, global_step=self.global_step
        )
        totals = LossTotals()
        expected = expected_num_seqs(self.datasets["train"], data_loader)
        progress = Progress(
            self.epoch, expected, self.progress_options, device=self.device, metrics_log=self.metrics_log
        )
        batches = self.switches.train_batches(data_loader.iter_epoch(self.epoch))
        batches = self.run_control.resumed_batches(self, totals, progress, batches)
        batches = progress.timed(batches)
        skipped_before = self.updater.num_skipped_updates
        with using_run_ctx(run_ctx):
            for data in batches if self.data_parallel is None else self.data_parallel.in_step(batches):
                run_ctx.init_step(self.global_step)
                self.updater.epoch_continuous = self.epoch - 1 + progress.epoch_fraction()
                if data is None:  # this process's data is done, others' not: their steps go on with it
                    with self._gradient_step():
                        if self.data_parallel.needs_every_forward:
                            self._repeat_last_batch(run_ctx, "train").backward()
                        else:
                            self.data_parallel.backward_without_data()
                    self.optimizer_step(None)
                    self.global_step += 1
                    self.run_control.after_step(self, totals, progress)
                    continue
                self._last_batch = data
                with self._gradient_step():
                    step_values = self.run_train_step(self._to_device(data), run_ctx)
                values = self.optimizer_step(step_values)
                step_losses = totals.add(run_ctx.losses, values)
                if self.options.stop_on_nonfinite_train_score:
                    check_finite(step_losses, values, data, epoch=self.epoch, step=self.global_step)
                self.global_step += 1
                progress.step(
                    self.global_step,
                    step_losses,
                    data,
                    learning_rate=self.updater.learning_rate,
                    grad_norm=self.updater.last_grad_norm,
                )
                self.config.report_unread_keys()  # after the first step, everything has read its options
                self.run_control.after_step(self, totals, progress)
        progress.close()
        num_seqs = self._sum_over_processes(totals, progress.num_seqs)
        if self.data_parallel is not None:
            self.data_parallel.sync_module(self._model)
        _check_not_empty(totals.num_steps, "train", self.epoch)
        skipped = self.updater.num_skipped_updates - skipped_before
        logger.info(progress.epoch_summary(num_steps=totals.num_steps, num_seqs=num_seqs, skipped_updates=skipped))
        return totals.scores("train")

    def _repeat_last_batch(self, run_ctx: RunCtx, name: str) -> torch.Tensor:
        """FSDP, in a step in which this process has no batch but others have: run ``train_step`` on the last batch
        of this process again, so that it takes part in the others' gathering of the parameters. Its losses are
        not counted. Returns zero times its total loss, whose backward pass adds zero gradients."""
        if self._last_batch is None:
            raise TrainingError(
                f"torch_distributed reduce_type 'fsdp': process {self.data_parallel.rank} got no batch of dataset "
                f"{name!r} to run the other processes' forward steps with; every process needs at least one batch "
                "of each dataset (more sequences, or fewer processes)"
            )
        run_ctx.init_step(self.global_step)
        with autocast(self.device, self.options.amp_dtype):
            self.functions.train_step(model=self._model, data=self._to_device(self._last_batch), run_ctx=run_ctx)
        total = run_ctx.total_loss()
        run_ctx.init_step(self.global_step)
        return total * 0.0

    def _gradient_step(self) -> contextlib.AbstractContextManager[None]:
        """Around a train step's forward and backward pass: with several processes, whether DDP all-reduces."""
        if self.data_parallel is None:
            return contextlib.nullcontext()
        return self.data_parallel.gradient_step(sync=self.updater.is_update_step(self.global_step))

    def _sum_over_processes(self, totals: LossTotals, num_seqs: int = 0) -> int:
        """With several processes, turn ``totals`` into the sums over all of them. Returns the total ``num_seqs``."""
        if self.data_parallel is None:
            return num_seqs
        totals.sums, (totals.num_steps, num_seqs) = self.data_parallel.sum_totals(
            totals.sums, [totals.num_steps, num_seqs]
        )
        return num_seqs

    def _to_device(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.device == "cpu":
            return data
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in data.items()}

    # ================================================================ scores and cleanup

    def _record_scores(self, scores: dict[str, float]) -> dict[str, float]:
        """Add scores of the current epoch to the learning_rates file (rewritten now)."""
        self.learning_rate_control.set_epoch_error(self.epoch, scores)
        self.learning_rate_control.save()
        return scores

    def _cleanup(self, policy: checkpoints.CleanupPolicy) -> None:
        scores = {epoch: data.scores for epoch, data in self.learning_rate_control.epoch_data.items()}
        checkpoints.delete_old_epochs(self.options.model_prefix, policy, scores)


def _check_not_empty(num_batches: int, name: str, epoch: int | None) -> None:
    if num_batches == 0:
        raise DatasetError(
            f"dataset {name!r} yielded no batches"
            + (f" in epoch {epoch}" if epoch is not None else "")
            + "; check the dataset (and min_seq_length / max_seq_length, which may filter out every sequence)"
        )
