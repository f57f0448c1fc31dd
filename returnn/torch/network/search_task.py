"""Task ``search`` of a network: beam search over the ``search_data`` dataset (default ``dev``), the hypotheses
written to ``search_output_file`` as RETURNN writes them, and the label error rate against the target where the
data has it.

``search_output_file_format = "py"``: a Python dict literal ``{seq_tag: "hyp", ...}``; where ``search_output_layer``
keeps the beam (the rec layer itself, not a ``decide`` layer) ``{seq_tag: [(score, "hyp"), ...], ...}``, best
first. ``"txt"``: one line ``seq_tag<TAB>hyp`` per sequence. Labels are written with the dataset's vocabulary of the
target (``labels``), joined by spaces; without one as numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.torch.distributed import write_file_atomic
from returnn.torch.network.losses import edit_distance
from returnn.torch.network.network import Network

__all__ = ["SearchOptions", "SearchResult", "search_hypotheses", "write_search_output"]

logger = logging.getLogger(__name__)

declare_options(
    "Network dicts",
    {
        "search_data": (None, "Task search: the dataset to search over (default: dev)."),
        "search_output_file": (None, "Task search: where the hypotheses go."),
        "search_output_file_format": ("txt", "Task search: 'py' (a dict {seq_tag: hyp}) or 'txt' (tag<TAB>hyp)."),
        "search_output_layer": ("output", "Task search: the layer whose hypotheses are written."),
    },
)


class SearchOptions:
    """The search task's options, read once."""

    def __init__(self, config: Config):
        self.output_file = config.value("search_output_file")
        self.file_format = config.value("search_output_file_format")
        self.output_layer = config.value("search_output_layer")
        self.dataset = config.typed_value("search_data")
        if self.file_format not in ("py", "txt"):
            raise ConfigError(
                f"config key 'search_output_file_format': expected 'py' or 'txt', got {self.file_format!r}"
            )
        if not self.output_file:
            raise ConfigError("task 'search' needs 'search_output_file': where to write the hypotheses")


@dataclasses.dataclass
class SearchResult:
    """The hypotheses of a search, and its label errors against the target where the data has it.

    :ivar hyps: ``{seq_tag: [labels]}`` (or ``[(score, [labels]), ...]`` where the layer keeps the beam), in the
        order of the sequences in the epoch
    :ivar positions: each sequence's position in the epoch
    :ivar errors: Σ edit distance of the best hypotheses to the target
    :ivar ref_length: Σ target length (0: no target)
    """

    hyps: dict[str, Any] = dataclasses.field(default_factory=dict)
    positions: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: int = 0
    ref_length: int = 0

    @classmethod
    def merged(cls, parts: Sequence[SearchResult]) -> SearchResult:
        """The result of one search over the sequences of ``parts`` (one per process)."""
        positions = {tag: position for part in parts for tag, position in part.positions.items()}
        hyps = {tag: hyp for part in parts for tag, hyp in part.hyps.items()}
        return cls(
            hyps={tag: hyps[tag] for tag in sorted(hyps, key=positions.__getitem__)},
            positions=positions,
            errors=sum(part.errors for part in parts),
            ref_length=sum(part.ref_length for part in parts),
        )


def search_hypotheses(
    network: Network, batches: Iterable[dict[str, Any]], layer: str, target_key: str | None
) -> SearchResult:
    """Search every batch."""
    if layer not in network.specs():
        raise ConfigError(f"config key 'search_output_layer': the network has no layer {layer!r}")
    result = SearchResult()
    for data in batches:
        out = network.search(data).get(layer)
        if out is None:
            raise ConfigError(f"task 'search': layer {layer!r} could not run without the target data")
        best = _sequences(out.tensor, out.lengths)
        nbest = getattr(out, "nbest", None)
        for b, (tag, position) in enumerate(zip(data["seq_tag"], data["seq_idx"])):
            if nbest is not None:
                result.hyps[tag] = [
                    (nbest.scores[b, k].item(), nbest.tokens[b, k, : int(nbest.lengths[b, k])].tolist())
                    for k in range(nbest.tokens.shape[1])
                ]
            else:
                result.hyps[tag] = best[b]
            result.positions[tag] = int(position)
        if target_key is not None and target_key in data:
            refs = _sequences(data[target_key], data[f"{target_key}:size1"])
            for hyp, ref in zip(best, refs):
                result.errors += edit_distance(hyp, ref)
                result.ref_length += len(ref)
    return result


def _sequences(tensor: torch.Tensor, lengths: torch.Tensor | None) -> list[list[int]]:
    if lengths is None:
        return [row.tolist() for row in tensor.cpu()]
    return [row[: int(n)].tolist() for row, n in zip(tensor.cpu(), lengths.cpu())]


def write_search_output(options: SearchOptions, hyps: dict[str, Any], labels: list[str] | None) -> None:
    """Write the hypotheses (atomically) in the configured format."""

    def text(seq: list[int]) -> str:
        return " ".join(labels[i] if labels is not None and 0 <= i < len(labels) else str(i) for i in seq)

    def write(f) -> None:
        if options.file_format == "py":
            f.write("{\n")
            for tag, hyp in hyps.items():
                value = [(score, text(seq)) for score, seq in hyp] if _is_nbest(hyp) else text(hyp)
                f.write(f"{tag!r}: {value!r},\n")
            f.write("}\n")
        else:
            for tag, hyp in hyps.items():
                f.write(f"{tag}\t{text(hyp[0][1] if _is_nbest(hyp) else hyp)}\n")

    write_file_atomic(options.output_file, write)


def _is_nbest(hyp: Any) -> bool:
    return bool(hyp) and isinstance(hyp[0], tuple)
