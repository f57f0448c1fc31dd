"""``use_last_best_model``: at the start of an epoch, go back to the best recent epoch's model when the last epoch
is not the best, as RETURNN's TF engine does.

``use_last_best_model = {"modulo": 5, "filter_score": 1.5, "only_last_n": 5, "min_score_dist": 0.2}`` (or True for
the defaults). At the start of every epoch divisible by ``modulo`` (and of the other epochs too when the last epoch's
score is above ``filter_score``), the watched score of the finished epochs (the key newbob watches:
``learning_rate_control_error_measure``, else the first dev score) decides, in RETURNN's order:

1. epochs ``first_epoch`` .. last (default 1; after pretraining, the last pretrain epoch), or only the last
   ``only_last_epochs`` of them, that have the watched score (the key of the newest such epoch);
2. without those whose score is above ``filter_score``;
3. of the rest, the last ``only_last_n``;
4. of those, the ones better than the newest score by more than ``min_score_dist``;
5. the lowest score wins (the earlier epoch on a tie).

The model then gets the parameters of that epoch's checkpoint and training goes on with a fresh optimizer state (as
RETURNN re-initializes the optimizer's variables); the learning rate of the epoch stays as decided, and the global
step goes on counting the steps done (RETURNN's TF checkpoint restored its step counter too). One difference: an
epoch whose checkpoint is gone (``cleanup_old_models``, ``save_interval``) is not a candidate, where RETURNN would
fail to load it. Pretrain epochs never go back. The decision depends only on the learning_rates file and the
checkpoints present, so a restarted training decides as an uninterrupted one; an epoch resumed from its mid-epoch
checkpoint made its decision before that checkpoint was written, and does not make it again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.learning_rate_control import LearningRateControl
from returnn.torch import checkpoints
from returnn.torch.network.pretrain import pretrain_from_config

if TYPE_CHECKING:
    from returnn.torch.engine import Engine
    from returnn.torch.updater import Updater

__all__ = ["LastBestOptions", "epoch_to_load", "watched_scores", "reset_to_last_best_model"]

logger = logging.getLogger(__name__)

declare_options(
    "Training",
    {
        "use_last_best_model": (
            None,
            "At the start of an epoch, go back to the best recent epoch's model (fresh optimizer state) if the last "
            "epoch is not the best: True, or {'modulo': 1, 'filter_score': inf, 'only_last_n': -1, "
            "'min_score_dist': 0.0, 'first_epoch': 1, 'only_last_epochs': None}.",
        ),
    },
)


@dataclasses.dataclass(frozen=True)
class LastBestOptions:
    """The options of ``use_last_best_model`` (RETURNN's names and defaults; see the module doc).

    :param only_last_n: None (RETURNN's -1): all candidates
    :param first_epoch: None: 1, or after pretraining the last pretrain epoch
    """

    modulo: int = 1
    filter_score: float = math.inf
    only_last_n: int | None = None
    min_score_dist: float = 0.0
    first_epoch: int | None = None
    only_last_epochs: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> LastBestOptions | None:
        """From ``use_last_best_model``: None/False (off), True (the defaults) or a dict of the fields."""
        return cls.from_config_value(config.bool_or_other("use_last_best_model", None))

    @classmethod
    def from_config_value(cls, value: Any) -> LastBestOptions | None:
        """See :meth:`from_config`."""
        where = "config key 'use_last_best_model'"
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected True/False or a dict, got {type(value).__name__} {value!r}")
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(map(str, set(value) - set(fields)))
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(fields)} "
                "(the score watched is learning_rate_control_error_measure's)"
            )
        options = dict(value)
        if options.get("only_last_n") == -1:
            options["only_last_n"] = None
        for name in ("modulo", "only_last_n", "first_epoch", "only_last_epochs"):
            given = options.get(name, 1 if name == "modulo" else None)
            if (given is not None or name == "modulo") and not (_is_int(given) and given >= 1):
                also = " (or -1: all)" if name == "only_last_n" else ""
                raise ConfigError(f"{where}: {name!r} must be an int >= 1{also}, got {given!r}")
        if not _is_number(options.get("filter_score", 0.0)):
            raise ConfigError(f"{where}: 'filter_score' must be a number, got {options['filter_score']!r}")
        if not (_is_number(options.get("min_score_dist", 0.0)) and options.get("min_score_dist", 0.0) >= 0):
            raise ConfigError(f"{where}: 'min_score_dist' must be a number >= 0, got {options['min_score_dist']!r}")
        return cls(**options)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_to_load(
    epoch: int,
    scores: Mapping[int, float],
    options: LastBestOptions,
    *,
    first_epoch: int = 1,
    saved: Collection[int] | None = None,
) -> int | None:
    """The epoch whose model training goes on from at the start of ``epoch``; None: go on with the current one.

    :param scores: the watched score of the finished epochs that have it (see :func:`watched_scores`)
    :param first_epoch: the first epoch to consider when the options do not say (1, or the last pretrain epoch)
    :param saved: the epochs whose checkpoint exists (None: all)
    """
    last_epoch = epoch - 1
    if epoch % options.modulo != 0 and (scores.get(last_epoch) or 0) <= options.filter_score:
        return None  # an epoch in between: only a last score above filter_score makes it look back
    first = options.first_epoch if options.first_epoch is not None else first_epoch
    if options.only_last_epochs:
        first = max(first, last_epoch - options.only_last_epochs + 1)
    candidates = [(scores[e], e) for e in range(first, last_epoch + 1) if e in scores]
    if not candidates:
        return None
    latest_score = candidates[-1][0]
    candidates = [(score, e) for score, e in candidates if score <= options.filter_score]
    if options.only_last_n is not None:
        candidates = candidates[-options.only_last_n :]
    candidates = [(score, e) for score, e in candidates if score + options.min_score_dist < latest_score]
    if saved is not None:
        candidates = [(score, e) for score, e in candidates if e in saved]
    if not candidates:
        return None
    best = min(candidates)[1]
    return best if best != last_epoch else None


def watched_scores(control: LearningRateControl, last_epoch: int) -> tuple[str | None, dict[int, float]]:
    """The watched score key of the newest epoch up to ``last_epoch`` that has scores, and the score of each epoch
    whose watched key is the same one (as RETURNN compares only those)."""
    keys = {epoch: control.get_error_key(epoch) for epoch in sorted(control.epoch_data) if epoch <= last_epoch}
    keys = {epoch: key for epoch, key in keys.items() if key is not None}
    if not keys:
        return None, {}
    last_key = keys[max(keys)]
    scores = {epoch: control.get_epoch_error_value(epoch, last_key) for epoch, key in keys.items() if key == last_key}
    return last_key, {epoch: score for epoch, score in scores.items() if score is not None}


def reset_to_last_best_model(engine: Engine, epoch: int) -> Updater | None:
    """At the start of ``epoch`` (the engine's ``on_epoch_start``): if ``use_last_best_model`` says so, load the
    best recent epoch's parameters into the engine's model. Returns the new (fresh) updater then, else None."""
    options = LastBestOptions.from_config(engine.config)
    if options is None or engine.run_control.resuming_mid_epoch:
        return None
    pretrain = pretrain_from_config(engine.config)
    if pretrain is not None and pretrain.is_pretrain_epoch(epoch):
        return None
    key, scores = watched_scores(engine.learning_rate_control, epoch - 1)
    prefix = engine.options.require_model_prefix("use_last_best_model")
    first_epoch = pretrain.num_epochs if pretrain is not None else 1
    best = epoch_to_load(epoch, scores, options, first_epoch=first_epoch, saved=checkpoints.existing_epochs(prefix))
    if best is None:
        return None
    path = checkpoints.checkpoint_filename(prefix, best)
    content = engine.load_checkpoint(path)
    checkpoints.load_model_state(
        engine.model, content["model"], source=path, ignore_missing=engine.options.load_ignore_missing_vars
    )
    engine.model.zero_grad(set_to_none=True)  # gradients accumulated for the model left behind
    logger.info(
        f"use_last_best_model: epoch={epoch} last_epoch={epoch - 1} last_score={_format(scores.get(epoch - 1))} "
        f"best_epoch={best} best_score={_format(scores[best])} key={key}: "
        f"going on from {path} with a fresh optimizer state"
    )
    return engine.build_updater(engine.model)


def _format(score: float | None) -> str:
    return "-" if score is None else f"{score:.6g}"
