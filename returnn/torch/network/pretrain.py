"""RETURNN's pretraining of network dicts: the network grows by layers over the first epochs.

``pretrain = "default"`` (or ``True``, or a dict of the options below) makes the first epochs train smaller networks
built from the config's ``network``; each epoch of this pretrain phase has its own network dict, and the network of
the last stage (the whole ``network``) trains from then on. The stages are RETURNN's (``returnn/pretrain.py``):

- ``construction_algo="from_output"`` (default): the last stage is the whole network; each earlier stage removes
  the direct sources of the output layers (``output_layers``, default ``("output",)``) and connects the outputs to
  the sources of the removed layers, until the outputs would read the input data;
- ``"from_input"``: stage n holds the layers within n steps of ``data`` plus the output layers, which read the
  deepest layers that exist;
- ``"no_network_modifications"``: one stage, the whole network;
- a function ``construction_algo(idx, net_dict)``: stage ``idx`` is what it returns for a copy of the network (it may
  change ``net_dict`` in place and return it); returning None ends the stages, the whole network comes last.

For the built-in algorithms a stage that adds only non-trainable layers (``"trainable": False``) is dropped. Then
each stage trains ``repetitions`` epochs (an int, a list per stage, the last value repeated, or
``{"default": n, "final": m, idx: k}``; a stage's ``"#repetition"`` key overrides it), and
:class:`WrapEpochValue` entries in the dicts become their value for the epoch.

When the network of an epoch differs from the one trained before, the engine builds the new one
(:mod:`returnn.torch.network.growth`, called from its ``on_epoch_start``): parameters of layers in both networks are
copied (``copy_param_mode``: None / ``"ifpossible"``: those of the same shape; ``"subset"``: also the overlapping
part of a resized one; ``"reset"``: none; ``copy_output_layer=False`` keeps the output layers fresh), the others are
initialized fresh (seeded from the epoch and step, as every model build), and the optimizer keeps the state of the
copied parameters. The learning rate is fixed in the pretrain phase (``pretrain_learning_rate``, default
``learning_rate``), and the first epoch after it starts again from ``learning_rate``, unless
``use_learning_rate_control_always``; the learning_rates file records the epochs as any other.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Callable
from typing import Any

from returnn.config import Config, declare_options
from returnn.errors import ConfigError

__all__ = ["WrapEpochValue", "Pretrain", "pretrain_from_config"]

logger = logging.getLogger(__name__)

declare_options(
    "Network dicts: pretraining",
    {
        "pretrain": (
            None,
            'Grow the network dict over the first epochs: "default", True, or {"construction_algo": "from_output" | '
            '"from_input" | "no_network_modifications" | f(idx, net_dict), "repetitions": ..., "copy_param_mode": '
            'None | "ifpossible" | "subset" | "reset", "copy_output_layer": ..., "output_layers": ..., '
            '"input_layers": ...}.',
        ),
        "pretrain_construction_algo": (None, "Old form of pretrain's 'construction_algo'."),
        "pretrain_repetitions": (None, "Old form of pretrain's 'repetitions'."),
        "pretrain_copy_output_layer": (None, "Old form of pretrain's 'copy_output_layer'."),
        "pretrain_greedy": (None, "Old form of pretrain's 'greedy' (only False: greedy pretraining went with Theano)."),
    },
)

CONSTRUCTION_ALGOS = ("from_output", "from_input", "no_network_modifications")
COPY_PARAM_MODES = (None, "ifpossible", "subset", "reset")
_OPTIONS = (
    "construction_algo",
    "repetitions",
    "copy_param_mode",
    "copy_output_layer",
    "greedy",
    "output_layers",
    "input_layers",
)
_STAGE_KEYS = ("#copy_param_mode",)  # the "#" keys a stage's dict may hold (after "#repetition" is taken out)


class WrapEpochValue:
    """A value in a network dict that depends on the pretrain epoch: ``func(epoch=epoch)`` gives it.

    :param func: ``(*, epoch: int) -> value``
    """

    def __init__(self, func: Callable[..., Any]):
        self.func = func

    def get_value(self, epoch: int) -> Any:
        """The value for ``epoch``."""
        return self.func(epoch=epoch)


def _sources(layer: dict[str, Any]) -> list[str]:
    """A layer's ``from`` as a list (RETURNN's default ``["data"]``)."""
    sources = layer.get("from", ["data"])
    return [sources] if isinstance(sources, str) else list(sources)


class Pretrain:
    """The network dict of each pretrain epoch (see the module doc for the options).

    :param network: the config's whole network dict
    :ivar stages: the network dict of each pretrain epoch (after repetitions), the last one is the whole network
    """

    def __init__(
        self,
        network: dict[str, Any],
        *,
        construction_algo: str | Callable[..., Any] = "from_output",
        repetitions: int | list[int] | dict[Any, int] | None = None,
        copy_param_mode: str | None = None,
        copy_output_layer: bool | str | None = None,
        greedy: bool | None = None,
        output_layers: tuple[str, ...] | list[str] = ("output",),
        input_layers: tuple[str, ...] | list[str] = ("data",),
    ):
        _check_options(copy_param_mode, copy_output_layer, greedy, output_layers, input_layers)
        if copy_output_layer is None:
            copy_output_layer = copy_param_mode or "ifpossible"
        self.network = network
        self.data_specs: dict[str, Any] | None = None  # of the input data, once a stage was built
        self.construction_algo = construction_algo
        self.copy_param_mode = copy_param_mode
        self.copy_output_layer = copy_output_layer not in (False, "reset")  # RETURNN's default: copy_param_mode
        self.output_layers = tuple(output_layers)
        self.input_layers = tuple(input_layers)
        if callable(construction_algo):
            stages = self._stages_of_function(construction_algo)
        elif construction_algo == "from_output":
            stages = self._remove_non_trainable_added_only(self._stages_from_output())
        elif construction_algo == "from_input":
            stages = self._remove_non_trainable_added_only(self._stages_from_input())
        elif construction_algo == "no_network_modifications":
            stages = [network]
        else:
            raise ConfigError(
                f"pretrain 'construction_algo': unknown {construction_algo!r}; choose one of: "
                f"{', '.join(map(repr, CONSTRUCTION_ALGOS))}, or a function (idx, net_dict) -> net_dict | None"
            )
        self.repetitions = _repetitions(repetitions, len(stages))
        for i, stage in enumerate(stages):
            if "#repetition" in stage:
                stage = stages[i] = dict(stage)
                self.repetitions[i] = _repetition_count(stage.pop("#repetition"), f"stage {i} '#repetition'")
        self.stages = [
            _resolve_epoch_values(copy.deepcopy(stage), epoch)
            for epoch, stage in enumerate(
                (stage for stage, count in zip(stages, self.repetitions) for _ in range(count)), start=1
            )
        ]
        if not self.stages:
            raise ConfigError(f"pretrain 'repetitions': {repetitions!r} leaves no pretrain epoch; use counts >= 1")
        _check_stage_keys(self.stages)

    def __str__(self) -> str:
        algo = self.construction_algo if isinstance(self.construction_algo, str) else "custom function"
        text = f"construction_algo={algo!r} epochs={self.num_epochs}"
        if set(self.repetitions) != {1}:
            text += f" repetitions={self.repetitions}"
        return text

    @property
    def num_epochs(self) -> int:
        """The number of pretrain epochs (RETURNN's ``get_train_num_epochs``)."""
        return len(self.stages)

    def is_pretrain_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) belongs to the pretrain phase."""
        return epoch <= self.num_epochs

    def network_for_epoch(self, epoch: int) -> dict[str, Any]:
        """The network dict of ``epoch`` (from 1); after the pretrain phase the last stage, the whole network."""
        return self.stages[min(max(epoch, 1), self.num_epochs) - 1]

    def is_output_layer(self, net_dict: dict[str, Any], name: str) -> bool:
        """RETURNN's rule in the construction: an output layer name, a softmax, or a layer with a ``target``."""
        layer = net_dict[name]
        return name in self.output_layers or layer.get("class") == "softmax" or "target" in layer

    def _is_input(self, source: str) -> bool:
        return source in self.input_layers or source.startswith("data:")

    # ---------------------------------------------------------------- construction algorithms

    def _stages_from_output(self) -> list[dict[str, Any]]:
        stages = [self.network]
        while True:
            smaller = self._smaller_from_output(stages[0])
            if smaller is None:
                return stages
            stages.insert(0, smaller)

    def _smaller_from_output(self, net_dict: dict[str, Any]) -> dict[str, Any] | None:
        """The next smaller stage: the direct sources of the outputs replaced by their own sources."""
        new = copy.deepcopy(net_dict)
        while True:
            missing = [name for name in self.output_layers if name not in new]
            if missing:
                raise ConfigError(
                    f"pretrain 'from_output': the network has no output layer {missing[0]!r}; set pretrain "
                    f"'output_layers' to the names of its output layers (layers: {', '.join(sorted(new))})"
                )
            new_sources: set[str] = set()
            deleted: set[str] = set()
            for out in self.output_layers:
                for source in _sources(new[out]):
                    if self._is_input(source):
                        new_sources.add(source)
                    elif source in new:
                        new_sources.update(_sources(new[source]))
                        del new[source]
                        deleted.add(source)
                    elif source not in deleted:
                        raise ConfigError(
                            f"pretrain 'from_output': cannot shrink the network: {out!r} reads {source!r}, which an "
                            "earlier step removed (a connection that skips layers); use construction_algo "
                            "'from_input' or a function"
                        )
            old_sources = {source for out in self.output_layers for source in _sources(new[out])}
            if sorted(new_sources) == sorted(old_sources):
                return None  # the outputs read only the input already
            for out in self.output_layers:
                new[out]["from"] = sorted(new_sources)
            if new_sources & set(self.input_layers):
                continue  # the outputs would read the data (another input dim): go one step further
            if all(not self.network[name].get("trainable", True) for name in deleted):
                continue  # only non-trainable layers went away: not a stage of its own
            return new

    def _stages_from_input(self) -> list[dict[str, Any]]:
        stages = []
        depth = 1
        while True:
            stage = self._stage_from_input(depth)
            if stage is None:
                return [*stages, self.network]
            stages.append(stage)
            depth += 1

    def _descendants(self, sources: list[str]) -> list[str]:
        """The layers (sorted by name) that read any of ``sources``."""
        return [name for name, layer in sorted(self.network.items()) if set(_sources(layer)) & set(sources)]

    def _existing_inputs(self, net_dict: dict[str, Any], name: str) -> list[str]:
        """The layers of ``net_dict`` (or inputs) that ``name`` reads in the whole network, through missing ones."""
        collected: list[str] = []
        visited = {name}

        def visit(layer_name: str) -> None:
            for source in _sources(self.network[layer_name]):
                if source in net_dict or self._is_input(source):
                    if source not in collected:
                        collected.append(source)
                elif source not in visited:
                    visited.add(source)
                    visit(source)

        visit(name)
        return collected

    def _stage_from_input(self, depth: int) -> dict[str, Any] | None:
        """The layers within ``depth`` steps of the data plus the outputs; None once that is the whole network."""
        new: dict[str, Any] = {}
        needed: set[str] = set()

        def add(name: str) -> None:
            needed.discard(name)
            new[name] = copy.deepcopy(self.network[name])
            needed.update(set(_sources(new[name])) - set(new) - {"data"})

        sources = ["data"]
        added = True
        while added:  # non-trainable layers near the input (windows, ...) come with the first layer
            added = False
            for name in self._descendants(sources):
                if name not in new and not self.network[name].get("trainable", True):
                    add(name)
                    sources.append(name)
                    added = True
        for _ in range(depth):
            sources = [name for name in self._descendants(sources) if name not in new]
            for name in sources:
                add(name)
            if not sources:
                return None
        for name in sorted(self.network):
            if name not in new and self.is_output_layer(self.network, name):
                add(name)
        if not needed:
            return None
        for name in sorted(new):
            existing = self._existing_inputs(new, name)
            if _sources(new[name]) != existing:
                new[name]["from"] = [source for source in existing if source != "data"]
        return new

    def _stages_of_function(self, func: Callable[..., Any]) -> list[dict[str, Any]]:
        stages = []
        while True:
            stage = func(idx=len(stages), net_dict=copy.deepcopy(self.network))
            if not stage:
                return [*stages, self.network]
            if not isinstance(stage, dict):
                raise ConfigError(
                    f"pretrain 'construction_algo': the function returned {type(stage).__name__} for idx "
                    f"{len(stages)}; expected a network dict, or None to end the pretrain stages"
                )
            stages.append(stage)
            if len(stages) > 1000:
                raise ConfigError("pretrain 'construction_algo': the function never returned None (1000 stages)")

    def _remove_non_trainable_added_only(self, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop the stages that add only non-trainable layers (outputs aside) to the one before; keep the last."""
        kept = []
        for before, stage in zip([{}, *stages[:-2]], stages[:-1]):
            added = [name for name in stage if name not in before and not self.is_output_layer(stage, name)]
            if any(stage[name].get("trainable", True) for name in added):
                kept.append(stage)
        return [*kept, stages[-1]]


def _check_options(
    copy_param_mode: Any, copy_output_layer: Any, greedy: Any, output_layers: Any, input_layers: Any
) -> None:
    if copy_param_mode not in COPY_PARAM_MODES:
        raise ConfigError(
            f"pretrain 'copy_param_mode': unknown mode {copy_param_mode!r}; choose one of: "
            f"{', '.join(map(repr, COPY_PARAM_MODES))}"
        )
    if copy_output_layer not in (None, True, False, "ifpossible", "subset", "reset"):
        raise ConfigError(
            f"pretrain 'copy_output_layer': expected True, False, 'ifpossible', 'subset' or 'reset', got "
            f"{copy_output_layer!r}"
        )
    if greedy:
        raise ConfigError(
            "pretrain 'greedy': greedy pretraining (train only the newest layer) is not supported; RETURNN "
            "removed it with Theano. Remove 'greedy' / 'pretrain_greedy'"
        )
    for key, value in (("output_layers", output_layers), ("input_layers", input_layers)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
            raise ConfigError(f"pretrain {key!r}: expected a list of layer names, got {value!r}")


def _check_stage_keys(stages: list[dict[str, Any]]) -> None:
    """The "#" keys of the stages (RETURNN's per-epoch settings): only those this trainer takes."""
    for epoch, stage in enumerate(stages, start=1):
        unknown = sorted(
            key for key in stage if isinstance(key, str) and key.startswith("#") and key not in _STAGE_KEYS
        )
        if unknown:
            raise ConfigError(
                f"pretrain: the network of epoch {epoch} has the key(s) {', '.join(map(repr, unknown))}, which "
                f"this trainer does not support; supported: '#repetition', {', '.join(map(repr, _STAGE_KEYS))}"
            )
        if stage.get("#copy_param_mode") not in COPY_PARAM_MODES:
            raise ConfigError(
                f"pretrain: the network of epoch {epoch} has '#copy_param_mode': {stage['#copy_param_mode']!r}; "
                f"choose one of: {', '.join(map(repr, COPY_PARAM_MODES))}"
            )


def _repetition_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"pretrain {where}: expected an int >= 0 (epochs of a stage), got {value!r}")
    return value


def _repetitions(value: Any, num_stages: int) -> list[int]:
    """RETURNN's ``repetitions``: one count per stage."""
    if not value:
        return [1] * num_stages
    if isinstance(value, dict):
        counts = [_repetition_count(value.get("default", 1), "'repetitions' 'default'")] * num_stages
        for key, count in value.items():
            if key == "default":
                continue
            index = num_stages - 1 if key == "final" else key
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_stages:
                raise ConfigError(
                    f"pretrain 'repetitions': key {key!r} is no stage; the keys are 'default', 'final' or a stage "
                    f"index 0..{num_stages - 1}"
                )
            counts[index] = _repetition_count(count, f"'repetitions' {key!r}")
        return counts
    if isinstance(value, (list, tuple)):
        if len(value) > num_stages:
            raise ConfigError(
                f"pretrain 'repetitions': {len(value)} counts for {num_stages} stages; give at most {num_stages}"
            )
        counts = [_repetition_count(count, "'repetitions'") for count in value]
        return counts + [counts[-1]] * (num_stages - len(counts))
    return [_repetition_count(value, "'repetitions'")] * num_stages


def _resolve_epoch_values(value: Any, epoch: int) -> Any:
    """``value`` with every :class:`WrapEpochValue` (in dicts, lists, tuples) replaced by its value for ``epoch``."""
    if isinstance(value, WrapEpochValue):
        return value.get_value(epoch=epoch)
    if isinstance(value, dict):
        return {key: _resolve_epoch_values(item, epoch) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_resolve_epoch_values(item, epoch) for item in value)
    return value


# ---------------------------------------------------------------- config

_from_config: weakref.WeakKeyDictionary[Config, Pretrain | None] = weakref.WeakKeyDictionary()


def pretrain_from_config(config: Config) -> Pretrain | None:
    """The :class:`Pretrain` of the config's ``pretrain`` (and ``pretrain_*`` keys), or None without pretraining.

    Built once per config: the network's ``get_model`` and the engine's epoch start use the same stages.
    """
    if config not in _from_config:
        _from_config[config] = _pretrain_of(config)
    return _from_config[config]


def _pretrain_of(config: Config) -> Pretrain | None:
    value = config.bool_or_other("pretrain", None)
    if not value:
        return None
    if not (value is True or value == "default" or isinstance(value, dict)):
        raise ConfigError(f"config key 'pretrain': expected 'default', True or a dict of options, got {value!r}")
    options = dict(value) if isinstance(value, dict) else {}
    unknown = sorted(map(str, set(options) - set(_OPTIONS)))
    if unknown:
        raise ConfigError(
            f"config key 'pretrain': unknown option(s) {', '.join(map(repr, unknown))}; options: {', '.join(_OPTIONS)}"
        )
    old_keys = {
        "construction_algo": "pretrain_construction_algo",
        "repetitions": "pretrain_repetitions",
        "copy_output_layer": "pretrain_copy_output_layer",
        "greedy": "pretrain_greedy",
    }
    for key, config_key in old_keys.items():
        if config.has(config_key):
            option = config.bool_or_other(config_key)
            if key == "repetitions" and isinstance(option, str):  # "2" or "1,2,3" from the command line
                option = config.int_list(config_key)
            options.setdefault(key, option)
    network = config.typed_value("network")
    if not isinstance(network, dict):
        raise ConfigError(
            "config key 'pretrain': pretraining grows a network dict; the config needs network = {...} (for "
            "get_model, build the model of each epoch there: get_model(*, epoch, ...))"
        )
    pretrain = Pretrain(network, **options)
    logger.info(f"pretrain: {pretrain}")
    return pretrain
