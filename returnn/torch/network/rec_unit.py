"""Recurrent units: ``{"class": "rec", "unit": {...layers...}}``, a network run once per time step.

Inside the unit a layer sees one step (``[B, F]``). References: a unit layer ``x`` (this step), ``prev:x`` (its
output at the previous step; at the first step its ``initial_output``, zeros by default), ``base:x`` (a layer of the
enclosing network, whole), ``data:source`` or ``data`` (this step's frame of the rec layer's input), ``data:KEY``
(this step's frame of the data key KEY) and ``:i`` (the step index).

Training runs with teacher forcing (a ``choice`` layer gives the target), and only what must be computed step by
step runs in the loop, as RETURNN moves layers out of its loop:

- the **loop** layers: those on a cycle through ``prev:`` references, and what such a layer needs that itself
  depends on one;
- the **pre** layers (depending on no loop layer) run once over the whole sequence before the loop;
- the **post** layers (depending on loop layers, but needed by none) run once over the stacked loop outputs after it.

A layer that runs over the whole sequence sees the steps as rows of a larger batch (``[B*T, F]``), which is exactly
its per-step computation; ``rnn_cell`` and ``cumsum`` outside the loop run over the time axis instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from returnn.torch.network.construction import LayerEntry
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.base import Layer, LayerContext, concat_outputs, concat_spec
from returnn.torch.network.layers.loop import ChoiceLayer, StatefulLayer
from returnn.torch.network.losses import LossSpec
from returnn.torch.network.unit_construction import UnitBuilder, unit_dependencies

__all__ = ["RecOutput", "RecUnitLayer", "loop_phases", "run_order"]


@dataclasses.dataclass
class RecOutput(LayerOutput):
    """The output of a rec layer with a unit, and every unit layer's output over the whole sequence."""

    inner: dict[str, LayerOutput] = dataclasses.field(default_factory=dict)
    nbest: Any = None  # in search: the hypotheses (a returnn.torch.network.search.SearchResult)


class RecUnitLayer(Layer):
    """``rec`` with a ``unit`` dict: see the module doc. Its unit's parameters are ``<rec>.<unit layer>.<param>``."""

    layer_class = "rec"
    concat_sources = False

    def __init__(
        self,
        ctx: LayerContext,
        *,
        unit: dict[str, Any],
        n_out: int | None = None,
        max_seq_len: Any = None,
        size_target: str | None = None,
        include_eos: bool = False,
        unit_opts: dict[str, Any] | None = None,
    ):
        super().__init__(ctx)
        default_target = ctx.builder.default_target if ctx.builder is not None else "classes"
        self.dep_refs = unit_dependencies(unit, default_target, max_seq_len, size_target)
        num_from = len(ctx.sources) - len(self.dep_refs)
        input_spec = concat_spec(ctx.sources[:num_from], ctx) if num_from else None
        if input_spec is not None and not input_spec.time:
            raise ctx.error(f"its input {input_spec.describe()} has no time axis to iterate over")
        self.num_from = num_from
        outer = {
            (ref if ref.startswith("data:") else ref): spec for ref, spec in zip(self.dep_refs, ctx.sources[num_from:])
        }
        builder = UnitBuilder(
            unit, rec_name=ctx.name, outer=outer, input_spec=input_spec, default_target=default_target
        )
        self.entries = builder.build()
        for entry in self.entries:
            self._modules[entry.name] = entry.module
        self.time_key = self._time_key(size_target, ctx, input_spec)
        self.max_seq_len = max_seq_len
        self.include_eos = include_eos
        self.searching = False  # set while the network searches (Network.search)
        if max_seq_len is not None and not isinstance(max_seq_len, (int, str)):
            raise ctx.error("max_seq_len must be an int or an expression like \"max_len_from('base:encoder') * 2\"")
        self.initial_values = {e.name: _initial_value(e, ctx) for e in self.entries}
        self.phases = loop_phases(self.entries)
        self.order = run_order(self.entries, teacher_forcing=True, phases=self.phases)
        self.inner_losses: dict[str, LossSpec] = {e.name: e.loss for e in self.entries if e.loss is not None}
        self.out_spec = builder.specs["output"].copy(time=True)
        if n_out is not None and self.out_spec.dim != n_out:
            raise ctx.error(f"n_out={n_out}, but the unit's output is {self.out_spec.describe()}")

    def layer(self, name: str) -> Layer:
        """The unit layer ``name``."""
        return self._modules[name]

    def initial_output(
        self, name: str, rows: int, device: torch.device, dtype: torch.dtype | None = None
    ) -> LayerOutput:
        """``prev:name`` at the first step: the layer's ``initial_output`` for ``rows`` rows of one step."""
        spec = self.layer(name).out_spec
        shape = (rows, *spec.spatial) + ((spec.dim,) if spec.feature_axis else ())
        tensor = torch.full(shape, self.initial_values[name], dtype=dtype or getattr(torch, spec.dtype), device=device)
        return LayerOutput(tensor, None, spec)

    def _time_key(self, size_target: str | None, ctx: LayerContext, input_spec: DataSpec | None) -> str | None:
        """The data key whose lengths are the loop's in training (None: the input's)."""
        if input_spec is not None and size_target is None:
            return None
        key = size_target
        if key is None:
            choices = [e for e in self.entries if isinstance(e.module, ChoiceLayer)]
            targets = [r for e in choices for r in e.sources if r.startswith("data:")]
            key = targets[0][len("data:") :] if targets else None
        if key is None:
            raise ctx.error("needs a 'from' with a time axis, or a choice layer with a target, to know its length")
        return key

    @staticmethod
    def dependencies_from_options(options: dict[str, Any], default_target: str) -> list[str]:
        return unit_dependencies(
            options["unit"], default_target, options.get("max_seq_len"), options.get("size_target")
        )

    def forward(self, sources: list[LayerOutput]) -> RecOutput:
        x = concat_outputs(sources[: self.num_from]) if self.num_from else None
        outer = dict(zip(self.dep_refs, sources[self.num_from :]))
        if self.searching:
            from returnn.torch.network.unit_search import UnitSearch

            return UnitSearch(self, x, outer).run()
        timing = x if self.time_key is None else outer[f"data:{self.time_key}"]
        run = _TeacherForcedRun(self, x, outer, timing.tensor.shape[1], timing.lengths)
        return run.run()


def current_edges(entries: list[LayerEntry], *, teacher_forcing: bool) -> dict[str, set[str]]:
    """For each unit layer the unit layers it reads at the same step (with teacher forcing a choice reads none)."""
    names = {e.name for e in entries}
    edges = {e.name: {r for r in e.sources if r in names} for e in entries}
    if teacher_forcing:
        for entry in entries:
            if isinstance(entry.module, ChoiceLayer):
                edges[entry.name] = set()
    return edges


def run_order(
    entries: list[LayerEntry], *, teacher_forcing: bool, phases: dict[str, str] | None = None
) -> list[LayerEntry]:
    """The unit layers in an order in which each comes after the layers it reads at the same step; with
    ``phases``, a layer that runs over the whole sequence also after the layers whose previous output it reads
    (outside the loop, ``prev:x`` is ``x`` shifted by one step)."""
    edges = current_edges(entries, teacher_forcing=teacher_forcing)
    if phases is not None:
        for entry in entries:
            if phases[entry.name] != "loop":
                prev = {r[len("prev:") :] for r in entry.sources if r.startswith("prev:")}
                edges[entry.name] |= {name for name in prev if phases[name] != "loop" and name != entry.name}
    by_name = {e.name: e for e in entries}
    order: list[LayerEntry] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(edges[name]):
            visit(dep)
        order.append(by_name[name])

    for entry in entries:
        visit(entry.name)
    return order


def loop_phases(entries: list[LayerEntry]) -> dict[str, str]:
    """For each unit layer whether it runs ``"pre"`` (before the loop, over the whole sequence), in the ``"loop"``
    or ``"post"`` (after it); in training, where a choice layer's label is the target."""
    current = current_edges(entries, teacher_forcing=True)
    previous = {e.name: {r[5:] for r in e.sources if r.startswith("prev:")} for e in entries}
    edges = {name: current[name] | previous[name] for name in current}
    reach = {name: _reachable(name, edges) for name in edges}  # what each layer depends on, transitively
    on_cycle = {name for name in edges if name in reach[name]}
    depends_on_cycle = {name for name in edges if reach[name] & on_cycle or name in on_cycle}
    needed_by_cycle = set()
    for name in on_cycle:
        needed_by_cycle |= _reachable(name, current)
    phases = {}
    for name in edges:
        if name in on_cycle or (name in depends_on_cycle and name in needed_by_cycle):
            phases[name] = "loop"
        elif name in depends_on_cycle:
            phases[name] = "post"
        else:
            phases[name] = "pre"
    return phases


def _reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(edges.get(start, ()))
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(edges.get(name, ()))
    return seen


class _TeacherForcedRun:
    """One forward pass of a unit in training / scoring: pre layers, the loop, post layers (see the module doc)."""

    def __init__(
        self,
        layer: RecUnitLayer,
        x: LayerOutput | None,
        outer: dict[str, LayerOutput],
        time: int,
        lengths: torch.Tensor,
    ):
        self.layer = layer
        self.x = x
        self.outer = outer
        self.time = time
        self.lengths = lengths
        self.batch = lengths.shape[0]
        self.full: dict[str, LayerOutput] = {}  # unit layer -> [B, T, ...]

    def run(self) -> RecOutput:
        order = self.layer.order
        phases = self.layer.phases
        for entry in order:
            if phases[entry.name] == "pre":
                self.full[entry.name] = self._over_time(entry)
        loop = [e for e in order if phases[e.name] == "loop"]
        if loop:
            self._loop(loop)
        for entry in order:
            if phases[entry.name] == "post":
                self.full[entry.name] = self._over_time(entry)
        out = self.full["output"]
        return RecOutput(out.tensor, self.lengths, self.layer.out_spec, inner=dict(self.full))

    # ------------------------------------------------------------ whole sequences (pre and post)

    def _flat(self, out: LayerOutput) -> LayerOutput:
        """``[B, T, ...]`` as ``[B*T, ...]`` steps."""
        tensor = out.tensor.reshape(self.batch * self.time, *out.tensor.shape[2:])
        return LayerOutput(tensor, None, out.spec.copy(time=False))

    def _unflat(self, out: LayerOutput) -> LayerOutput:
        tensor = out.tensor.reshape(self.batch, self.time, *out.tensor.shape[1:])
        return LayerOutput(tensor, self.lengths, out.spec.copy(time=True), _unflat_opt(out.pre_activation, self))

    def _over_time(self, entry: LayerEntry) -> LayerOutput:
        sources = [self._flat_source(ref, entry) for ref in _teacher_forced_refs(entry)]
        module = entry.module
        if isinstance(module, StatefulLayer):
            whole = _apply_dropout(module, entry, [self._unflat(s) for s in sources])
            return module.sequence(whole[0] if len(whole) == 1 else concat_outputs(whole))
        return self._unflat(_call(module, entry, sources))

    def _flat_source(self, ref: str, entry: LayerEntry) -> LayerOutput:
        if ref.startswith("base:"):
            base = self.outer[ref[len("base:") :]]
            return _repeat_batch(base, self.time)
        if ref in ("data", "data:source"):
            return self._flat(_fit_time(self.x, self.time))
        if ref.startswith("data:"):
            return self._flat(_fit_time(self.outer[ref], self.time))
        if ref == ":i":
            steps = torch.arange(self.time, device=self.lengths.device).repeat(self.batch)
            return LayerOutput(steps, None, DataSpec(dim=None, time=False, dtype="int64"))
        if ref.startswith("prev:"):
            name = ref[len("prev:") :]
            full = self.full[name]
            first = self.layer.initial_output(name, self.batch, full.tensor.device, full.tensor.dtype).tensor
            shifted = torch.cat([first[:, None], full.tensor[:, :-1]], dim=1)
            return self._flat(LayerOutput(shifted, full.lengths, full.spec))
        return self._flat(self.full[ref])

    # ------------------------------------------------------------ the loop

    def _loop(self, loop: list[LayerEntry]) -> None:
        previous: dict[str, LayerOutput] = {}
        states: dict[str, Any] = {}
        steps: dict[str, list[torch.Tensor]] = {e.name: [] for e in loop}
        for t in range(self.time):
            current: dict[str, LayerOutput] = {}
            for entry in loop:
                sources = [self._step_source(ref, t, current, previous) for ref in _teacher_forced_refs(entry)]
                module = entry.module
                if isinstance(module, StatefulLayer):
                    x = _apply_dropout(module, entry, sources)
                    x = x[0] if len(x) == 1 else concat_outputs(x)
                    if entry.name not in states:
                        states[entry.name] = module.initial_state(self.batch, x.tensor)
                    out, states[entry.name] = module.step(x, states[entry.name])
                else:
                    out = _call(module, entry, sources)
                current[entry.name] = out
                steps[entry.name].append(out.tensor)
            previous = current
        for entry in loop:
            spec = entry.module.out_spec.copy(time=True)
            self.full[entry.name] = LayerOutput(torch.stack(steps[entry.name], dim=1), self.lengths, spec)

    def _step_source(
        self, ref: str, t: int, current: dict[str, LayerOutput], previous: dict[str, LayerOutput]
    ) -> LayerOutput:
        if ref.startswith("base:"):
            return self.outer[ref[len("base:") :]]
        if ref in ("data", "data:source"):
            return _frame(_fit_time(self.x, self.time), t)
        if ref.startswith("data:"):
            return _frame(_fit_time(self.outer[ref], self.time), t)
        if ref == ":i":
            steps = torch.full((self.batch,), t, dtype=torch.int64, device=self.lengths.device)
            return LayerOutput(steps, None, DataSpec(dim=None, time=False, dtype="int64"))
        if ref.startswith("prev:"):
            name = ref[len("prev:") :]
            if name in previous:
                return previous[name]
            if name in self.full:
                if t > 0:
                    return _frame(self.full[name], t - 1)
                full = self.full[name]
                first = self.layer.initial_output(name, self.batch, full.tensor.device, full.tensor.dtype).tensor
                return LayerOutput(first, None, full.spec.copy(time=False))
            return self.layer.initial_output(name, self.batch, self.lengths.device)
        if ref in current:
            return current[ref]
        return _frame(self.full[ref], t)


def _teacher_forced_refs(entry: LayerEntry) -> list[str]:
    """What a layer reads in training: a choice layer only its target (its last source)."""
    return entry.sources[-1:] if isinstance(entry.module, ChoiceLayer) else entry.sources


def _unflat_opt(tensor: torch.Tensor | None, run: _TeacherForcedRun) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.reshape(run.batch, run.time, *tensor.shape[1:])


def _fit_time(out: LayerOutput, time: int) -> LayerOutput:
    """``out`` padded or cut to ``time`` frames (data keys may be shorter or longer than the loop)."""
    length = out.tensor.shape[1]
    if length == time:
        return out
    if length > time:
        return LayerOutput(out.tensor[:, :time], out.lengths, out.spec)
    pad = out.tensor.new_zeros(out.tensor.shape[0], time - length, *out.tensor.shape[2:])
    return LayerOutput(torch.cat([out.tensor, pad], dim=1), out.lengths, out.spec)


def _frame(out: LayerOutput, t: int) -> LayerOutput:
    return LayerOutput(out.tensor[:, t], None, out.spec.copy(time=False))


def _repeat_batch(out: LayerOutput, times: int) -> LayerOutput:
    """Each sequence of ``out`` repeated ``times`` times in the batch (for ``[B*T]`` steps)."""
    tensor = out.tensor.repeat_interleave(times, dim=0) if out.tensor.shape[0] > 1 else out.tensor
    lengths = out.lengths.repeat_interleave(times, dim=0) if out.lengths is not None else None
    return LayerOutput(tensor, lengths, out.spec)


def _initial_value(entry: LayerEntry, ctx: LayerContext) -> float | int | bool:
    """A unit layer's ``initial_output`` as a number (0 by default; ``"zeros"``, ``"ones"``)."""
    value = entry.options.get("initial_output", 0)
    if value is None or isinstance(value, str):
        value = {None: 0, "zeros": 0, "ones": 1}.get(value)
    if not isinstance(value, (int, float)):
        raise ctx.error(
            f"unit layer {entry.name!r}: initial_output must be a number, 'zeros' or 'ones', "
            f"got {entry.options.get('initial_output')!r}"
        )
    return value


def _apply_dropout(module: Layer, entry: LayerEntry, sources: list[LayerOutput]) -> list[LayerOutput]:
    from returnn.torch.network.network import prepared_sources

    return prepared_sources(entry, sources, module.training)


def _call(module: Layer, entry: LayerEntry, sources: list[LayerOutput]) -> LayerOutput:
    sources = _apply_dropout(module, entry, sources)
    return module(concat_outputs(sources)) if module.concat_sources else module(sources)
