"""The engine's tasks besides train and forward: eval, initialize_model, cleanup_old_models, and for network dicts
search and compute_priors.

Each is a function of the engine. :class:`~returnn.torch.engine.Engine`'s methods of the same names call them: the
methods stay the entry points that ``returnn.__main__`` dispatches to and that a ``CustomEngine`` may override. The
functions run in the engine's own set-up (the process group, the task's model and the data loaders), so the engine's
hooks (``build_model``, ``build_data_loader``, ``evaluate_dataset``, ``load_checkpoint``, ``save_checkpoint``) apply as
in the other tasks. They call the engine's private set-up methods as its own methods would: this module is a part of
the engine, not a user of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from returnn.errors import ConfigError
from returnn.learning_rate_control import learning_rate_control_from_config
from returnn.torch import checkpoints
from returnn.torch.device import autocast
from returnn.torch.distributed import all_gather_values
from returnn.torch.model_loading import initialize_model_start_point
from returnn.torch.output_files import output_locations, remove_stale_temporary_files
from returnn.torch.scores import format_scores

if TYPE_CHECKING:
    from returnn.torch.engine import Engine

__all__ = ["run_eval", "run_search", "run_compute_priors", "run_initialize_model", "run_cleanup_old_models"]

logger = logging.getLogger(__name__)


def run_eval(engine: Engine) -> None:
    """Task eval (documented at :meth:`~returnn.torch.engine.Engine.eval`)."""
    engine.functions.require("train_step", "task 'eval'")
    if not engine.options.eval_names:
        raise ConfigError("task 'eval' needs datasets to evaluate: set 'dev' and/or 'eval_datasets'")
    with engine._running_task():
        engine._init_model_for_task("eval")
        engine.learning_rate_control = learning_rate_control_from_config(engine.config)
        engine._init_data_loaders(engine.options.eval_names)
        for name in engine.options.eval_names:
            scores = engine.evaluate_dataset(name, engine.data_loaders[name])
            if engine.epoch >= 1:
                engine._record_scores(scores)
            logger.info(f"eval: epoch={engine.epoch} {format_scores(scores)}")


def run_search(engine: Engine) -> None:
    """Task search (documented at :meth:`~returnn.torch.engine.Engine.search`)."""
    from returnn.torch.network.search_task import (
        SearchOptions,
        SearchResult,
        search_hypotheses,
        write_search_output,
    )

    _require_network_dict(engine, "search", "decodes (e.g. with returnn.torch.network.search.beam_search)")
    options = SearchOptions(engine.config)
    definition = options.dataset or engine.options.datasets.get("dev")
    if not definition:
        raise ConfigError("task 'search' needs a dataset: set 'search_data' (or 'dev')")
    engine.options.datasets["search"] = definition
    with _model_and_batches(engine, "search", "search") as batches:
        target = engine.config.value("target")
        with autocast(engine.device, engine.options.amp_dtype):
            result = search_hypotheses(engine.model, batches, options.output_layer, target)
        result = SearchResult.merged(all_gather_values(engine.data_parallel, result))
        dataset = engine.datasets["search"]
        write_search_output(options, result.hyps, dataset.labels.get(target))
        error_rate = f" label_error_rate={result.errors / result.ref_length:.6g}" if result.ref_length else ""
        logger.info(f"search: seqs={len(result.hyps)}{error_rate} wrote {options.output_file}")


def run_compute_priors(engine: Engine) -> None:
    """Task compute_priors (documented at :meth:`~returnn.torch.engine.Engine.compute_priors`)."""
    from returnn.torch.network.priors import accumulate_priors, mean_priors, write_log_priors

    _require_network_dict(
        engine, "compute_priors", "accumulates the priors (and a forward_finish_hook that writes them),"
    )
    filename = engine.config.value("output_file")
    if not filename:
        raise ConfigError("task 'compute_priors' needs 'output_file': where to write the log priors")
    name = "train" if "train" in engine.options.datasets else "forward"
    if name not in engine.options.datasets:
        raise ConfigError("task 'compute_priors' needs a dataset: set 'train' (or 'forward')")
    with _model_and_batches(engine, "compute_priors", name) as batches:
        sums = accumulate_priors(engine.model, batches, engine.config.value("forward_output_layer"))
        priors = mean_priors(all_gather_values(engine.data_parallel, sums))
        write_log_priors(filename, priors)
        logger.info(f"compute_priors: dataset={name} dim={len(priors)} wrote {filename}")


def _require_network_dict(engine: Engine, task: str, forward_step_that: str) -> None:
    """Search and compute_priors are for network dicts: with ``get_model``, an error that points to task forward.

    :param forward_step_that: what the config's forward_step would do instead
    """
    if engine.config.typed_value("network") is None:
        raise ConfigError(
            f"task {task!r} is for network dicts; with get_model, write a forward_step that {forward_step_that} and "
            "run task 'forward'"
        )


@contextlib.contextmanager
def _model_and_batches(engine: Engine, task: str, name: str) -> Iterator[Iterator[dict[str, Any]]]:
    """Search and compute_priors, in the engine's set-up of ``task``: the model of its checkpoint in eval mode, and the
    batches of dataset ``name`` on the device, without gradients."""
    with engine._running_task():
        engine._init_model_for_task(task)
        loader = engine._init_data_loaders([name], mode="forward")[name]
        engine.model.eval()
        with torch.no_grad():
            yield (engine._to_device(data) for data in loader.iter_epoch(None))


def run_initialize_model(engine: Engine) -> None:
    """Task initialize_model (documented at :meth:`~returnn.torch.engine.Engine.initialize_model`)."""
    engine.functions.require("get_model", "task 'initialize_model'")
    prefix = engine.options.require_model_prefix("task 'initialize_model'")
    engine._init_model(initialize_model_start_point(engine.config, engine.load_checkpoint), for_train=True)
    engine.epoch, engine.global_step = 0, 0
    engine.save_checkpoint(0)
    logger.info(f"initialize_model: saved {checkpoints.checkpoint_filename(prefix, 0)}")


def run_cleanup_old_models(engine: Engine) -> None:
    """Task cleanup_old_models (documented at :meth:`~returnn.torch.engine.Engine.cleanup_old_models`)."""
    engine.options.require_model_prefix("task 'cleanup_old_models'")
    remove_stale_temporary_files(output_locations(engine.config))
    engine.learning_rate_control = learning_rate_control_from_config(engine.config)
    engine._cleanup(engine.options.cleanup or checkpoints.CleanupPolicy())
