"""The construction of a recurrent unit's layers (see :mod:`returnn.torch.network.rec_unit`): what the unit needs
from the enclosing network, and its layers built with per-step specs, where a reference that closes a cycle through
``prev:`` takes the layer's template spec (inferred as RETURNN infers its templates).
"""

from __future__ import annotations

import re
from typing import Any

from returnn.errors import ConfigError
from returnn.torch.network.construction import LayerEntry, NetworkBuilder, output_layer_names
from returnn.torch.network.data import DataSpec

__all__ = ["UnitBuilder", "unit_dependencies"]

_PREFIXES = ("prev:", "base:", "data:")


def _strip(ref: str) -> str:
    return ref.split(":", 1)[1] if ref.startswith(_PREFIXES) else ref


def _refs_of(layer: dict[str, Any]) -> list[str]:
    """Every reference a unit layer makes (its ``from`` and the options that name layers)."""
    sources = layer.get("from", "data")
    refs = [sources] if isinstance(sources, str) else list(sources or [])
    for key in ("base", "base_ctx", "weights", "position", "keys", "values", "chunking_layer"):
        value = layer.get(key)
        if isinstance(value, str):
            refs.append(value)
    return refs


def unit_dependencies(
    unit: dict[str, Any], default_target: str, max_seq_len: Any = None, size_target: str | None = None
) -> list[str]:
    """What a unit needs from outside, as references of the enclosing network: its ``base:`` layers (as names)
    and its data keys (``data:KEY``, targets of choice layers and losses and ``size_target`` included), sorted."""
    deps = set(re.findall(r"base:([A-Za-z0-9_/-]+)", max_seq_len)) if isinstance(max_seq_len, str) else set()
    if size_target:
        deps.add(f"data:{size_target}")
    for layer in unit.values():
        if not isinstance(layer, dict):
            continue
        for ref in _refs_of(layer):
            if ref.startswith("base:"):
                deps.add(ref[len("base:") :])
            elif ref.startswith("data:") and ref != "data:source":
                deps.add(ref)
        if layer.get("class") == "choice" or layer.get("loss"):
            target = layer.get("target", default_target)
            if isinstance(target, str) and not target.startswith("layer:"):
                deps.add(f"data:{target}")
    return sorted(deps)


class UnitBuilder(NetworkBuilder):
    """Builds the layers of a unit with per-step specs.

    A reference that closes a cycle through ``prev:`` cannot wait for the layer to be built: its spec is taken from
    the layer's options (``n_out``; the target of a ``choice`` layer) and checked once the layer is built.

    :param unit: the unit dict
    :param rec_name: the rec layer's name, for messages
    :param outer: the specs of the enclosing network's references the unit makes (``name`` and ``data:KEY``)
    :param input_spec: the spec of the rec layer's input (with its time axis), or None without ``from``
    """

    def __init__(
        self,
        unit: dict[str, Any],
        *,
        rec_name: str,
        outer: dict[str, DataSpec],
        input_spec: DataSpec | None,
        default_target: str,
    ):
        data_specs = {
            ref[len("data:") :]: spec.copy(time=False) for ref, spec in outer.items() if ref.startswith("data:")
        }
        if input_spec is not None:
            data_specs["source"] = input_spec.copy(time=False)
        for name, layer in unit.items():
            if not isinstance(name, str) or not name or "." in name or "/" in name or ":" in name:
                raise ConfigError(f"network: layer {rec_name!r}: unit layer name {name!r} must be a plain name")
            if not isinstance(layer, dict):
                raise ConfigError(f"network: layer {rec_name}/{name}: expected a dict {{'class': ...}}, got {layer!r}")
            if layer.get("class") == "subnetwork":
                raise ConfigError(f"network: layer {rec_name}/{name}: subnetworks inside a rec unit are not supported")
        layers = {name: dict(layer) for name, layer in unit.items()}
        for layer in layers.values():
            if layer.get("class") == "rec" and isinstance(layer.get("unit", "lstm"), str):
                layer["class"] = "rnn_cell"  # a cell unit inside a unit runs one step at a time
            elif layer.get("class") == "rec":
                raise ConfigError(
                    f"network: layer {rec_name!r}: a rec layer with a unit of layers inside a unit is not supported; "
                    "write its layers into the outer unit"
                )
        super().__init__(layers, data_specs, default_target)
        self.rec_name = rec_name
        self.outer = outer
        self._via_prev: list[bool] = []
        self._next_via_prev = False
        self.guessed: dict[str, DataSpec] = {}
        self._templates: dict[str, DataSpec] | None = None

    def build(self) -> list[LayerEntry]:
        if "output" not in self.flat:
            raise ConfigError(f"network: layer {self.rec_name!r}: its unit needs an 'output' layer")
        names = output_layer_names(self.flat) + (["end"] if "end" in self.flat else [])
        for name in names:
            self._build(name, needed_by=None)
        for name, guess in self.guessed.items():
            if self.specs[name] != guess:
                raise ConfigError(
                    f"network: layer {self.rec_name}/{name}: prev:{name} was taken as {guess.describe()} (from its "
                    f"options), but the layer outputs {self.specs[name].describe()}; set its n_out"
                )
        return list(self.entries.values())

    def source_spec(self, ref: str, needed_by: str) -> DataSpec:
        if ref == ":i":
            return DataSpec(dim=None, time=False, dtype="int64")
        if ref == "data":
            ref = "data:source"
        if ref == "data:source" and "source" not in self.data_specs:
            raise ConfigError(
                f"network: layer {self.rec_name}/{needed_by}: 'data:source' is the rec layer's input, but "
                f"{self.rec_name!r} has no 'from'"
            )
        if ref.startswith("data:"):
            return super().source_spec(ref, needed_by)
        if ref.startswith("base:"):
            name = ref[len("base:") :]
            if name not in self.outer:
                raise ConfigError(f"network: layer {self.rec_name}/{needed_by}: {ref} names no layer of the network")
            return self.outer[name]
        via_prev = ref.startswith("prev:")
        name = _strip(ref)
        if via_prev and name not in self.flat:
            raise ConfigError(
                f"network: layer {self.rec_name}/{needed_by}: {ref!r} names no layer of the unit"
                f" (layers: {', '.join(self.flat)})"
            )
        if name in self.specs:
            return self.specs[name]
        if name in self._building:
            position = self._building.index(name)
            if via_prev or any(self._via_prev[position + 1 :]):
                return self._guess(name, needed_by)
        self._next_via_prev = via_prev
        self._build(name, needed_by=needed_by)
        return self.specs[name]

    def _build(self, name: str, *, needed_by: str | None) -> None:
        if name in self.entries:
            return
        self._via_prev.append(self._next_via_prev)
        self._next_via_prev = False
        try:
            super()._build(name, needed_by=f"{self.rec_name}/{needed_by}" if needed_by else None)
        finally:
            self._via_prev.pop()

    def _guess(self, name: str, needed_by: str) -> DataSpec:
        if self._templates is None:
            self._templates = self._template_specs()
        spec = self._templates.get(name)
        if spec is None:
            raise ConfigError(
                f"network: layer {self.rec_name}/{needed_by}: needs {name!r} of the previous step before {name!r} "
                f"can be built; give {self.rec_name}/{name} an 'n_out'"
            )
        self.guessed[name] = spec
        return spec

    def _seed_spec(self, options: dict[str, Any]) -> DataSpec | None:
        """A layer's spec from its options alone (a choice's target, ``n_out``), or None."""
        if options.get("class") == "choice":
            return self.data_specs.get(options.get("target", self.default_target))
        if options.get("n_out") is not None and options.get("class") != "get_last_hidden_state":
            return DataSpec(dim=options["n_out"], time=False)
        return None

    def _template_specs(self) -> dict[str, DataSpec]:
        """The specs of the unit's layers without building them in dependency order (RETURNN's templates): those
        given by options first, then every layer whose sources' specs are known, built on the side, until nothing
        changes."""
        specs = {name: spec for name, options in self.flat.items() if (spec := self._seed_spec(options)) is not None}
        changed = True
        while changed:
            changed = False
            for name, options in self.flat.items():
                if name in specs:
                    continue
                side = _TemplateBuilder(self, specs, name)
                try:
                    side._build_layer(name, dict(options))
                except _UnknownSpec:
                    continue
                specs[name] = side.specs[name]
                changed = True
        return specs


class _UnknownSpec(Exception):
    """A template needs the spec of a layer that is not known yet."""


class _TemplateBuilder(NetworkBuilder):
    """Builds one unit layer on the side, from known specs only (see :meth:`UnitBuilder._template_specs`)."""

    def __init__(self, unit: UnitBuilder, known: dict[str, DataSpec], layer: str):
        super().__init__(unit.flat, unit.data_specs, unit.default_target)
        self.unit = unit
        self.known = known
        self.layer = layer

    def source_spec(self, ref: str, needed_by: str) -> DataSpec:
        name = _strip(ref) if ref.startswith("prev:") else ref
        if ref == ":i" or ref == "data" or ref.startswith(("data:", "base:")):
            return self.unit.source_spec(ref, needed_by)
        if name in self.known:
            return self.known[name]
        if ref == f"prev:{self.layer}":
            # the layer's own previous output (an accumulator): assume the spec of its other sources; the built
            # layer is checked against it
            for other in _refs_of(self.flat[self.layer]):
                if other != ref:
                    try:
                        return self.source_spec(other, needed_by)
                    except _UnknownSpec:
                        continue
        raise _UnknownSpec(name)

    def _build(self, name: str, *, needed_by: str | None) -> None:
        if name not in self.known:
            raise _UnknownSpec(name)
