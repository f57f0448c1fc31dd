"""A recurrent unit in search: every layer runs step by step on ``B * K`` rows (the ``K`` beam entries of each
sequence), the ``choice`` layer extends and prunes the beam (:mod:`returnn.torch.network.search`), and the unit's
``end`` layer (or ``max_seq_len``, or the length of the rec layer's input) ends the hypotheses.

The unit's ``output`` must be its choice layer; the rec layer's output is the best hypothesis of each sequence
(without the end label unless ``include_eos``), with all hypotheses in :attr:`RecOutput.nbest`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec, LayerOutput
from returnn.torch.network.layers.loop import ChoiceLayer, StatefulLayer
from returnn.torch.network.rec_unit import RecOutput, _call, _frame, _repeat_batch, run_order
from returnn.torch.network.search import BeamState, finish, prune

if TYPE_CHECKING:
    from returnn.torch.network.rec_unit import RecUnitLayer

__all__ = ["UnitSearch", "max_len_from_expression"]


class UnitSearch:
    """One search over a batch (see the module doc)."""

    def __init__(self, layer: RecUnitLayer, x: LayerOutput | None, outer: dict[str, LayerOutput | None]):
        self.layer = layer
        choices = [e for e in layer.entries if isinstance(e.module, ChoiceLayer)]
        if len(choices) != 1 or choices[0].name != "output":
            raise ConfigError(
                f"network: layer {layer.ctx_name!r}: search needs exactly one choice layer, the unit's 'output' "
                f"(found: {', '.join(e.name for e in choices) or 'none'})"
            )
        self.choice = choices[0]
        self.beam = self.choice.module.beam_size
        self.x = x
        self.outer = outer
        some = x if x is not None else next((o for o in outer.values() if o is not None), None)
        if some is None:
            raise ConfigError(f"network: layer {layer.ctx_name!r}: search needs an input or a base layer")
        self.batch = some.tensor.shape[0]
        self.device = some.tensor.device
        self.max_len = self._max_len()
        self.has_end = any(e.name == "end" for e in layer.entries)

    def _max_len(self) -> int:
        layer = self.layer
        if layer.max_seq_len is not None:
            return max_len_from_expression(layer.max_seq_len, self.outer, layer.ctx_name)
        if self.x is not None:
            return int(self.x.tensor.shape[1])
        if not any(e.name == "end" for e in layer.entries):
            raise ConfigError(
                f"network: layer {layer.ctx_name!r}: in search the loop has no way to end: give its unit an 'end' "
                "layer or the rec layer a 'max_seq_len'"
            )
        longest = [int(o.lengths.max()) for o in self.outer.values() if o is not None and o.lengths is not None]
        if not longest:
            raise ConfigError(f"network: layer {layer.ctx_name!r}: set 'max_seq_len' for the search")
        return 10 * max(longest)  # a generous bound where the config gives none

    def run(self) -> RecOutput:
        layer, beam = self.layer, self.beam
        rows = self.batch * beam
        expanded = {ref: _repeat_batch(out, beam) for ref, out in self.outer.items() if out is not None}
        x = _repeat_batch(self.x, beam) if self.x is not None else None
        order = run_order(layer.entries, teacher_forcing=False)
        search = BeamState.start(self.batch, beam, self.device)
        previous: dict[str, LayerOutput] = {}
        states: dict[str, Any] = {}
        for t in range(self.max_len):
            current: dict[str, LayerOutput] = {}
            for entry in order:
                module = entry.module
                refs = entry.sources[: entry.num_from] if isinstance(module, ChoiceLayer) else entry.sources
                sources = [self._source(ref, t, current, previous, expanded, x, rows) for ref in refs]
                if isinstance(module, ChoiceLayer):
                    origin, labels = prune(search, self._log_probs(sources[0]), beam)
                    current = {k: _take(v, origin) for k, v in current.items()}
                    previous = {k: _take(v, origin) for k, v in previous.items()}
                    states = {k: _take_state(v, origin) for k, v in states.items()}
                    out = LayerOutput(labels, None, module.out_spec)
                elif isinstance(module, StatefulLayer):
                    source = sources[0] if len(sources) == 1 else _concat(sources)
                    if entry.name not in states:
                        states[entry.name] = module.initial_state(rows, source.tensor)
                    out, states[entry.name] = module.step(source, states[entry.name])
                else:
                    out = _call(module, entry, sources)
                current[entry.name] = out
            self._update_ended(search, current, t)
            previous = current
            if bool(search.ended.all()):
                break
        result = finish(search, beam, length_normalization=self.choice.module.length_normalization)
        tokens, lengths = result.best()
        spec = layer.out_spec
        return RecOutput(tokens, lengths, spec, nbest=result)

    def _update_ended(self, search: BeamState, current: dict[str, LayerOutput], t: int) -> None:
        if self.has_end:
            ended_now = current["end"].tensor.reshape(-1).bool() & ~search.ended
            if not self.layer.include_eos:
                search.lengths = search.lengths - ended_now.long()  # the end label is not part of the output
            search.ended = search.ended | ended_now
        if self.x is not None:
            input_lengths = self.x.lengths.repeat_interleave(self.beam)
            search.ended = search.ended | (t + 1 >= input_lengths)

    def _log_probs(self, source: LayerOutput) -> torch.Tensor:
        choice = self.choice.module
        if choice.input_type == "log_prob":
            return source.tensor.float()
        if source.pre_activation is not None and choice.input_type == "prob":
            return torch.log_softmax(source.pre_activation.float(), dim=-1)
        return torch.log(source.tensor.float().clamp(min=1e-30))

    def _source(
        self,
        ref: str,
        t: int,
        current: dict[str, LayerOutput],
        previous: dict[str, LayerOutput],
        expanded: dict[str, LayerOutput],
        x: LayerOutput | None,
        rows: int,
    ) -> LayerOutput:
        if ref.startswith("base:"):
            return expanded[ref[len("base:") :]]
        if ref in ("data", "data:source"):
            return _frame(x, min(t, x.tensor.shape[1] - 1))
        if ref.startswith("data:"):
            raise ConfigError(
                f"network: layer {self.layer.ctx_name!r}: a unit layer reads {ref!r}, which search does not have "
                "(only the choice layer's target is replaced by the search)"
            )
        if ref == ":i":
            return LayerOutput(torch.full((rows,), t, dtype=torch.int64, device=self.device), None, _STEP_SPEC)
        if ref.startswith("prev:"):
            name = ref[len("prev:") :]
            if name in previous:
                return previous[name]
            return self.layer.initial_output(name, rows, self.device)
        return current[ref]


_STEP_SPEC = DataSpec(dim=None, time=False, dtype="int64")


def _take(out: LayerOutput, index: torch.Tensor) -> LayerOutput:
    pre = out.pre_activation[index] if out.pre_activation is not None else None
    lengths = out.lengths[index] if out.lengths is not None else None
    return LayerOutput(out.tensor[index], lengths, out.spec, pre)


def _take_state(state: Any, index: torch.Tensor) -> Any:
    if isinstance(state, torch.Tensor):
        return state[index]
    if isinstance(state, (tuple, list)):
        return type(state)(_take_state(s, index) for s in state)
    return state


def _concat(sources: list[LayerOutput]) -> LayerOutput:
    from returnn.torch.network.layers.base import concat_outputs

    return concat_outputs(sources)


def max_len_from_expression(value: int | str, outer: dict[str, LayerOutput | None], where: str) -> int:
    """``max_seq_len`` as a number of steps: an int, or an expression such as ``"max_len_from('base:encoder') * 2"``
    (``max_len_from`` gives the longest sequence of the batch in that layer)."""
    if isinstance(value, int):
        return value

    def max_len_from(ref: str) -> int:
        out = outer.get(ref[len("base:") :] if ref.startswith("base:") else ref)
        if out is None or out.lengths is None:
            raise ConfigError(f"network: layer {where!r}: max_seq_len: {ref!r} is no layer with a time axis")
        return int(out.lengths.max())

    try:
        result = eval(value, {"__builtins__": {}, "max_len_from": max_len_from, "math": math})
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"network: layer {where!r}: max_seq_len {value!r} cannot be evaluated: {exc}") from exc
    return int(result)
