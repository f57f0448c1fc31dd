"""From a ``network`` dict to a :class:`Network` module, as RETURNN constructs it.

- ``from`` is a layer name or a list of them (concatenated on the feature axis); missing, it is ``"data"``;
  ``"data:KEY"`` is the input data key ``KEY``; ``[]`` means no sources.
- Only what the outputs need is built: the layers with a ``loss``, the layer ``"output"`` and the layers with
  ``is_output_layer``, and what they depend on. A cycle is an error naming its layers.
- ``subnetwork`` layers are flattened: the inner layer ``x`` of ``sub`` becomes ``sub/x`` (its parameters
  ``sub/x.W``), inside it ``"data"`` is the subnetwork's sources and ``"base:y"`` the outer layer ``y``, and
  ``sub`` is the inner ``output``.
- Each layer's options are checked against its class's signature and the common options; an unknown option is an
  error with a suggestion, an option of RETURNN's TensorFlow backend that means nothing here is logged once.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec
from returnn.torch.network.layers.base import (
    COMMON_OPTIONS,
    TF_ONLY_OPTIONS,
    Layer,
    LayerContext,
    check_initializer_options,
    get_layer_class,
    layer_classes,
    layer_options,
)
from returnn.torch.network.losses import LossSpec, loss_spec_from_options
from returnn.util.suggest import did_you_mean

__all__ = ["LayerEntry", "NetworkBuilder", "flatten_subnetworks", "output_layer_names"]

logger = logging.getLogger(__name__)

_logged_tf_only: set[str] = set()


@dataclasses.dataclass
class LayerEntry:
    """A built layer and how the network runs it.

    :param name: the layer's name
    :param module: the layer
    :param sources: where its inputs come from: layer names or ``"data:KEY"``
    :param options: the common options (dropout, L2, loss, ...)
    :param loss: its loss, if it has one
    :param num_from: how many of ``sources`` are its ``from`` (the rest are layers it reads otherwise, e.g. ``base``;
        dropout applies to the ``from`` sources only)
    """

    name: str
    module: Layer
    sources: list[str]
    options: dict[str, Any]
    loss: LossSpec | None = None
    num_from: int = 0


def flatten_subnetworks(net_dict: dict[str, Any], prefix: str = "", parent_prefix: str = "") -> dict[str, Any]:
    """``net_dict`` with every ``subnetwork`` layer replaced by its inner layers (``sub/x``), see the module doc."""
    if not isinstance(net_dict, dict):
        raise ConfigError(
            f"network{' of ' + prefix[:-1] if prefix else ''}: expected a dict of layers, got {net_dict!r}"
        )
    flat: dict[str, Any] = {}
    for name, layer in net_dict.items():
        if not isinstance(name, str) or "." in name or not name:
            raise ConfigError(f"network: layer name {name!r} must be a non-empty string without '.'")
        if not isinstance(layer, dict):
            raise ConfigError(f"network: layer {prefix + name!r}: expected a dict {{'class': ...}}, got {layer!r}")
        layer = _rewrite_refs(dict(layer), prefix, parent_prefix)
        full = prefix + name
        if layer.get("class") != "subnetwork":
            flat[full] = layer
            continue
        inner = layer.pop("subnetwork", None)
        if not isinstance(inner, dict) or "output" not in inner:
            raise ConfigError(
                f"network: layer {full!r}: a subnetwork needs 'subnetwork': {{...layers...}} with an 'output' layer"
            )
        layer.pop("concat_sources", None)
        outer = {key: value for key, value in layer.items() if key not in ("class", "from")}
        flat[full + "/data"] = {"class": "copy", "from": layer.get("from", "data"), **_input_options(outer)}
        flat.update(flatten_subnetworks(inner, prefix=full + "/", parent_prefix=prefix))
        flat[full] = {"class": "copy", "from": full + "/output", **_output_options(outer)}
    return flat


def _input_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k.startswith("dropout")}


def _output_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if not k.startswith("dropout")}


def _rewrite_refs(layer: dict[str, Any], prefix: str, parent_prefix: str) -> dict[str, Any]:
    """Inside a subnetwork (``prefix = "sub/"``): layer names get the prefix, ``data`` is ``sub/data``, ``base:x``
    the layer ``x`` of the enclosing network."""
    if not prefix:
        return layer

    def rewrite(ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        if ref == "data":
            return prefix + "data"
        if ref.startswith("data:"):
            return ref
        if ref.startswith("base:"):
            return parent_prefix + ref[len("base:") :]
        return prefix + ref

    if "from" in layer:
        sources = layer["from"]
        layer["from"] = [rewrite(s) for s in sources] if isinstance(sources, (list, tuple)) else rewrite(sources)
    else:
        layer["from"] = prefix + "data"
    if isinstance(layer.get("reuse_params"), str):
        layer["reuse_params"] = rewrite(layer["reuse_params"])
    return layer


def output_layer_names(flat: dict[str, Any]) -> list[str]:
    """The layers the network is built from, backwards: those with a loss, ``output``, ``is_output_layer``."""
    names = [name for name, layer in flat.items() if layer.get("loss") or layer.get("is_output_layer")]
    if "output" in flat and "output" not in names:
        names.insert(0, "output")
    if not names:
        raise ConfigError(
            "network: no output layer: name one layer 'output', give one a 'loss', or set 'is_output_layer': True"
        )
    return names


class NetworkBuilder:
    """Builds the layers of a flattened network dict in dependency order.

    :param flat: the flattened network dict (see :func:`flatten_subnetworks`)
    :param data_specs: the input data keys and their specs
    :param default_target: the data key of a loss target where a layer sets no ``target``
    """

    def __init__(self, flat: dict[str, Any], data_specs: dict[str, DataSpec], default_target: str):
        self.flat = flat
        self.data_specs = dict(data_specs)
        self.default_target = default_target
        self.entries: dict[str, LayerEntry] = {}
        self.specs: dict[str, DataSpec] = {}
        self._building: list[str] = []

    def build(self) -> list[LayerEntry]:
        """Build the layers the outputs need; returns them in the order they run."""
        for name in output_layer_names(self.flat):
            self._build(name, needed_by=None)
        return list(self.entries.values())

    def source_spec(self, ref: str, needed_by: str) -> DataSpec:
        """The spec of a ``from`` entry (building the layer first)."""
        if ref.startswith("data:") or ref == "data":
            key = "data" if ref == "data" else ref[len("data:") :]
            if key not in self.data_specs:
                self._build_registered_data(key, needed_by)
            if key not in self.data_specs:
                raise ConfigError(
                    f"network: layer {needed_by!r}: 'from' names the data key {key!r}, which the data does not "
                    f"have; data keys: {', '.join(sorted(self.data_specs))}"
                )
            return self.data_specs[key]
        self._build(ref, needed_by=needed_by)
        return self.specs[ref]

    def _build_registered_data(self, key: str, needed_by: str) -> None:
        for name, layer in self.flat.items():
            if layer.get("register_as_extern_data") == key:
                self._build(name, needed_by=needed_by)

    def _build(self, name: str, *, needed_by: str | None) -> None:
        if name in self.entries:
            return
        if name in self._building:
            cycle = self._building[self._building.index(name) :] + [name]
            raise ConfigError(
                f"network: the layers form a cycle: {' -> '.join(cycle)}; a layer cannot depend on itself"
            )
        if name not in self.flat:
            where = f"layer {needed_by!r}" if needed_by else "the network"
            raise ConfigError(
                f"network: {where} refers to {name!r}, which is neither a layer{did_you_mean(name, self.flat)} "
                f"nor a data key ('data:KEY'; keys: {', '.join(sorted(self.data_specs))})"
            )
        self._building.append(name)
        try:
            self._build_layer(name, dict(self.flat[name]))
        finally:
            self._building.pop()

    def _build_layer(self, name: str, options: dict[str, Any]) -> None:
        where = f"network: layer {name!r}"
        class_name = options.pop("class", None)
        cls, sources, num_from = self._class_and_sources(class_name, options, where)
        own, common = self._split_options(cls, class_name, options, where)
        source_specs = [self.source_spec(ref, name) for ref in sources]
        reuse = common.get("reuse_params")
        if reuse is not None and not isinstance(reuse, str):
            raise ConfigError(
                f"{where}: reuse_params {reuse!r}: only the name of the layer whose parameters to share is supported"
            )
        if reuse is not None:
            self._build(reuse, needed_by=name)
        target_spec, target_key = self._target(name, common)
        loss_name = common.get("loss")
        ctx = LayerContext(
            name=name, sources=source_specs, target=target_spec, loss=loss_name, builder=self, source_refs=sources
        )
        params = layer_options(cls)
        n_out = common.get("n_out", _out_type_dim(common))
        if "n_out" in params and n_out is not None:
            own["n_out"] = n_out
        if "out_type" in params and "out_type" in common:
            own["out_type"] = common["out_type"]
        check_initializer_options(own, where)
        missing = [p for p, param in params.items() if param.default is param.empty and p not in own]
        if missing:
            raise ConfigError(f"{where}: class {class_name!r} needs the option(s) {', '.join(missing)}")
        module = cls(ctx, **own)
        spec = module.out_spec
        if n_out is not None and spec.dim != n_out:
            raise ConfigError(
                f"{where}: n_out/out_type says dim {n_out}, but the layer outputs {spec.describe()}; fix n_out"
            )
        if common.get("trainable") is False:
            for param in module.parameters():
                param.requires_grad_(False)
        loss = None
        if loss_name:
            loss = loss_spec_from_options(name, common, spec, target_spec, target_key)
            loss = dataclasses.replace(loss, activation=getattr(module, "activation_name", None))
        self.entries[name] = LayerEntry(
            name=name, module=module, sources=sources, options=common, loss=loss, num_from=num_from
        )
        self.specs[name] = spec
        registered = common.get("register_as_extern_data")
        if registered:
            self.data_specs[registered] = spec

    def _class_and_sources(
        self, class_name: Any, options: dict[str, Any], where: str
    ) -> tuple[type[Layer], list[str], int]:
        """The layer class, its sources (``from``, then the layers its options name) and how many are ``from``."""
        if class_name is None:
            raise ConfigError(f"{where}: needs 'class' (e.g. 'linear', 'rec', 'softmax')")
        cls = get_layer_class(class_name, where)
        if hasattr(cls, "select_class"):  # e.g. rec: a cell unit or a unit of layers
            cls = cls.select_class(options)
        if hasattr(cls, "sources_from_options"):
            if options.get("from") not in (None, [], ()):
                raise ConfigError(f"{where}: a {class_name!r} layer takes no 'from'")
            options["from"] = cls.sources_from_options(options)
        sources = _as_list(options.pop("from", "data"), where)
        return cls, sources + cls.dependencies_from_options(options, self.default_target), len(sources)

    def _split_options(
        self, cls: type[Layer], class_name: str, options: dict[str, Any], where: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The layer class's own options and the common ones; unknown options are an error."""
        params = layer_options(cls)
        own, common = {}, {}
        for key, value in options.items():
            if key in params and key not in ("n_out", "out_type"):
                own[key] = value
            elif key in COMMON_OPTIONS:
                common[key] = value
            elif key in TF_ONLY_OPTIONS:
                if key not in _logged_tf_only:
                    _logged_tf_only.add(key)
                    logger.info(f"network: option {key!r} (of {where[len('network: ') :]}) has no effect here; ignored")
            else:
                known = sorted(set(params) | set(COMMON_OPTIONS))
                raise ConfigError(
                    f"{where}: unknown option {key!r} for class {class_name!r}{did_you_mean(key, known)}; "
                    f"it takes: {', '.join(known)}"
                )
        return own, common

    def _target(self, name: str, common: dict[str, Any]) -> tuple[DataSpec | None, str | None]:
        """The spec and data key of the layer's target (None without ``loss`` and ``target``)."""
        key = common.get("target")
        if key is None and not common.get("loss"):
            return None, None
        key = key or self.default_target
        if isinstance(key, str) and key.startswith("layer:"):
            layer = key[len("layer:") :]
            self._build(layer, needed_by=name)
            return self.specs[layer], key
        if key not in self.data_specs:
            self._build_registered_data(key, name)
        if key not in self.data_specs:
            raise ConfigError(
                f"network: layer {name!r}: its target {key!r} is not a data key; data keys: "
                f"{', '.join(sorted(self.data_specs))} (set 'target', or describe the data in extern_data)"
            )
        return self.data_specs[key], key


def _as_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: 'from' must be a layer name or a list of them, got {value!r}")


def _out_type_dim(common: dict[str, Any]) -> int | None:
    out_type = common.get("out_type")
    if isinstance(out_type, dict):
        return out_type.get("dim")
    return None


def supported_layer_classes() -> list[str]:
    """The layer class names a network dict may use."""
    return sorted([*layer_classes(), "subnetwork"])
