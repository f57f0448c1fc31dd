"""Beam search: over the ``choice`` layer of a recurrent unit, or for any step function (:func:`beam_search`).

All sequences of a batch and all beam entries are one batch of ``B * K`` rows: each step scores every label of
every entry, keeps the ``K`` best (entry, label) pairs of each sequence (:func:`prune`), and reorders the state of
every layer accordingly. A hypothesis that has ended keeps its place and its score (it can only be continued by
one label with log probability 0) until all of its sequence's hypotheses have ended, or ``max_seq_len`` is reached.
With ``length_normalization`` the final hypotheses are ranked by their score divided by their length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BeamState", "SearchResult", "beam_search", "prune", "finish"]


@dataclasses.dataclass
class SearchResult:
    """The hypotheses of a batch, best first.

    :param tokens: ``[B, K, T]`` labels (past a hypothesis' length undefined)
    :param lengths: ``[B, K]`` hypothesis lengths (the end label included where the search ended by it)
    :param scores: ``[B, K]`` log probabilities (length-normalized if the search used that)
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The best hypothesis of each sequence: ``[B, T]`` labels and ``[B]`` lengths."""
        return self.tokens[:, 0], self.lengths[:, 0]


@dataclasses.dataclass
class BeamState:
    """The search's own state over the steps (``B`` sequences, ``K`` entries each, flattened as ``b * K + k``)."""

    scores: torch.Tensor  # [B, K]
    tokens: list[torch.Tensor]  # per step [B*K]
    ended: torch.Tensor  # [B*K] bool
    lengths: torch.Tensor  # [B*K]

    @classmethod
    def start(cls, batch: int, beam: int, device: torch.device) -> BeamState:
        scores = torch.full((batch, beam), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live entry per sequence at the start
        ended = torch.zeros(batch * beam, dtype=torch.bool, device=device)
        return cls(scores, [], ended, torch.zeros(batch * beam, dtype=torch.int64, device=device))


def prune(state: BeamState, log_probs: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the search: the ``beam`` best continuations of each sequence.

    :param log_probs: ``[B*K, V]`` log probabilities of the next label for every entry
    :return: ``origin`` ``[B*K]`` (the row each new entry continues, for reordering states) and the new labels
        ``[B*K]``; ``state`` is updated (scores, token history, ended flags and lengths reordered)
    """
    batch = state.scores.shape[0]
    vocab = log_probs.shape[-1]
    log_probs = log_probs.float()
    if state.ended.any():
        # an ended entry continues only with label 0 at no cost: it keeps its score and its place
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, 0] = 0.0
        log_probs = torch.where(state.ended[:, None], frozen, log_probs)
    total = (state.scores.reshape(-1, 1) + log_probs).reshape(batch, -1)  # [B, K*V]
    scores, index = total.topk(beam, dim=-1)  # [B, K]
    entry = index // vocab
    labels = (index % vocab).reshape(-1)
    origin = (entry + torch.arange(batch, device=index.device)[:, None] * (state.scores.shape[1])).reshape(-1)
    state.scores = scores
    state.tokens = [tokens[origin] for tokens in state.tokens] + [labels]
    state.ended = state.ended[origin]
    state.lengths = state.lengths[origin] + (~state.ended).long()
    return origin, labels


def finish(state: BeamState, beam: int, *, length_normalization: bool) -> SearchResult:
    """The hypotheses of the search, best first in each sequence."""
    batch = state.scores.shape[0]
    steps = len(state.tokens)
    tokens = torch.stack(state.tokens, dim=1) if steps else state.ended.new_zeros((batch * beam, 0), dtype=torch.int64)
    lengths = state.lengths.reshape(batch, beam)
    scores = state.scores.detach()
    if length_normalization:
        scores = scores / lengths.clamp(min=1).to(scores.dtype)
    order = scores.argsort(dim=-1, descending=True)
    tokens = tokens.reshape(batch, beam, -1).gather(1, order[:, :, None].expand(-1, -1, tokens.shape[-1]))
    return SearchResult(tokens, lengths.gather(1, order), scores.gather(1, order))


def beam_search(
    step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]],
    initial_state: Any,
    *,
    batch: int,
    beam_size: int,
    max_len: int,
    end_label: int | None,
    length_normalization: bool = True,
    bos_label: int = 0,
    device: torch.device | str = "cpu",
) -> SearchResult:
    """Beam search for explicit models (the same search as network dicts use).

    :param step: ``step(labels [B*K], state) -> (log_probs [B*K, V], new_state)``: scores the next label given the
        previous one; ``state`` is a tensor or a (nested) tuple/list/dict of tensors with ``B*K`` rows, which the
        search reorders as the beam changes
    :param initial_state: the state for ``B`` sequences (``B`` rows); it is repeated for the ``K`` entries
    :param max_len: the most labels a hypothesis gets
    :param end_label: the label that ends a hypothesis (it counts in the length); None: all run ``max_len`` steps
    :param bos_label: the "previous label" of the first step
    """
    state_tree = _map(lambda t: t.repeat_interleave(beam_size, dim=0), initial_state)
    search = BeamState.start(batch, beam_size, torch.device(device))
    labels = torch.full((batch * beam_size,), bos_label, dtype=torch.int64, device=device)
    for _ in range(max_len):
        log_probs, state_tree = step(labels, state_tree)
        origin, labels = prune(search, log_probs, beam_size)
        state_tree = _map(lambda t, o=origin: t[o], state_tree)
        if end_label is not None:
            search.ended = search.ended | (labels == end_label)
            if bool(search.ended.all()):
                break
    return finish(search, beam_size, length_normalization=length_normalization)


def _map(function: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, dict):
        return {k: _map(function, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(function, v) for v in tree)
    return tree
