#!/usr/bin/env python3
"""A decoder written as a RETURNN network dict (a ``rec`` layer with a unit) against the same decoder written by
hand in torch: epoch time of teacher-forced training.

    python benchmarks/decoder_bench.py --variant plain --reps 3
    python benchmarks/decoder_bench.py --variant attention --reps 3

Two variants, each with an encoder over a sparse input and a decoder over the target (teacher forcing):

- ``plain``: the shape of RETURNN's demo-tf-enc-dec: the encoder an embedding and an LSTM whose last state
  (``get_last_hidden_state``) feeds every decoder step; the decoder the embedding of the previous label, an LSTM fed
  with it and with the encoder state, a softmax with a ``ce`` loss. Nothing recurs through ``prev:`` but the label,
  so with teacher forcing the network runs the decoder LSTM over the whole target at once (RETURNN's layers moved
  out of the loop); the hand-written model runs ``torch.nn.LSTM`` over it.
- ``attention``: a BLSTM encoder and a decoder whose LSTM cell reads the previous attention context (dot-product
  attention over the encoder): the cell, the query and the attention run step by step in both implementations,
  the embedding before the loop and the readout and the softmax after it.

Both implementations have the same dims and see the same batches (random sparse sequences, a fixed seed); the
objective is the cross entropy summed over the target frames (RETURNN's), Adam at learning rate 1e-3. They start
from different random weights (the comparison is of time, not of numbers; the first batch's loss of each is
printed as a check that both compute the same kind of thing). Each round runs every implementation once, in
alternating order, one thread, in this process; an epoch is timed after one warm-up batch, as wall-clock and as
CPU time of the process (on a shared machine the CPU time is the steadier one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec
from returnn.torch.network.network import Network

SOURCE_DIM = 16
TARGET_DIM = 32


def network_dict(variant: str, dim: int) -> dict[str, Any]:
    """The network dict of ``variant`` with ``dim`` units per layer."""
    if variant == "plain":  # demo-tf-enc-dec's
        return {
            "input_embed": {"class": "linear", "activation": None, "from": "data", "n_out": dim},
            "input": {"class": "rec", "unit": "nativelstm2", "from": "input_embed", "n_out": dim},
            "input_last": {"class": "get_last_hidden_state", "from": "input", "n_out": dim * 2},
            "output": {"class": "rec", "from": [], "target": "classes", "unit": {
                "output_embed": {"class": "linear", "activation": None, "from": "prev:output", "n_out": dim},
                "s": {"class": "rec", "unit": "nativelstm2", "from": ["prev:output_embed", "base:input_last"],
                      "n_out": dim},
                "prob": {"class": "softmax", "from": "s", "target": "classes", "loss": "ce"},
                "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": 4},
            }},
        }  # fmt: skip
    return {
        "input_embed": {"class": "linear", "activation": None, "from": "data", "n_out": dim},
        "enc_fw": {"class": "rec", "unit": "lstm", "n_out": dim // 2, "direction": 1, "from": "input_embed"},
        "enc_bw": {"class": "rec", "unit": "lstm", "n_out": dim // 2, "direction": -1, "from": "input_embed"},
        "encoder": {"class": "copy", "from": ["enc_fw", "enc_bw"]},
        "enc_ctx": {"class": "linear", "activation": None, "n_out": dim, "from": "encoder"},
        "output": {"class": "rec", "from": [], "target": "classes", "unit": {
            "output_embed": {"class": "linear", "activation": None, "n_out": dim, "from": "prev:output"},
            "s": {"class": "rnn_cell", "unit": "lstm", "n_out": dim, "from": ["prev:output_embed", "prev:att"]},
            "query": {"class": "linear", "activation": None, "n_out": dim, "from": "s"},
            "att": {"class": "dot_attention", "from": "query", "base": "base:encoder", "base_ctx": "base:enc_ctx"},
            "readout": {"class": "linear", "activation": "tanh", "n_out": dim, "from": ["s", "att"]},
            "prob": {"class": "softmax", "from": "readout", "target": "classes", "loss": "ce"},
            "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": 4},
        }},
    }  # fmt: skip


class PlainDecoder(torch.nn.Module):
    """The ``plain`` network written by hand."""

    def __init__(self, dim: int):
        super().__init__()
        self.input_embed = torch.nn.Embedding(SOURCE_DIM, dim)
        self.encoder = torch.nn.LSTM(dim, dim, batch_first=True)
        self.output_embed = torch.nn.Embedding(TARGET_DIM, dim)
        self.decoder = torch.nn.LSTM(dim + 2 * dim, dim, batch_first=True)
        self.prob = torch.nn.Linear(dim, TARGET_DIM)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.input_embed(data["data"]), data["data:size1"], batch_first=True, enforce_sorted=False
        )
        _, (h, c) = self.encoder(packed)
        last = torch.cat([c[0], h[0]], dim=-1)
        labels = data["classes"]
        previous = F.pad(labels[:, :-1], (1, 0))  # the label before each step; 0 at the first
        x = torch.cat([self.output_embed(previous), last[:, None].expand(-1, labels.shape[1], -1)], dim=-1)
        return self.prob(self.decoder(x)[0])


class AttentionDecoder(torch.nn.Module):
    """The ``attention`` network written by hand."""

    def __init__(self, dim: int):
        super().__init__()
        self.input_embed = torch.nn.Embedding(SOURCE_DIM, dim)
        self.encoder = torch.nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
        self.enc_ctx = torch.nn.Linear(dim, dim)
        self.output_embed = torch.nn.Embedding(TARGET_DIM, dim)
        self.cell = torch.nn.LSTMCell(dim + dim, dim)
        self.query = torch.nn.Linear(dim, dim)
        self.readout = torch.nn.Linear(2 * dim, dim)
        self.prob = torch.nn.Linear(dim, TARGET_DIM)
        self.dim = dim

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        lengths = data["data:size1"]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.input_embed(data["data"]), lengths, batch_first=True, enforce_sorted=False
        )
        encoder = torch.nn.utils.rnn.pad_packed_sequence(self.encoder(packed)[0], batch_first=True)[0]
        keys = self.enc_ctx(encoder)
        mask = torch.arange(encoder.shape[1])[None, :] < lengths[:, None]
        labels = data["classes"]
        batch, steps = labels.shape
        embedded = self.output_embed(F.pad(labels[:, :-1], (1, 0)))
        h = c = att = encoder.new_zeros(batch, self.dim)
        outputs = []
        for t in range(steps):
            h, c = self.cell(torch.cat([embedded[:, t], att], dim=-1), (h, c))
            energy = torch.einsum("bf,btf->bt", self.query(h), keys).masked_fill(~mask, float("-inf"))
            att = torch.einsum("bt,btf->bf", torch.softmax(energy, dim=-1), encoder)
            outputs.append(torch.cat([h, att], dim=-1))
        return self.prob(torch.tanh(self.readout(torch.stack(outputs, dim=1))))


def make_batches(num_batches: int, batch_size: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Random sparse batches: sources of 5 to 20 labels, targets of 5 to 30, sorted by nothing."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        src_len = torch.randint(5, 21, (batch_size,), generator=gen)
        tgt_len = torch.randint(5, 31, (batch_size,), generator=gen)
        batches.append(
            {
                "data": torch.randint(0, SOURCE_DIM, (batch_size, int(src_len.max())), generator=gen),
                "data:size1": src_len,
                "classes": torch.randint(0, TARGET_DIM, (batch_size, int(tgt_len.max())), generator=gen),
                "classes:size1": tgt_len,
            }
        )
    return batches


def network_loss(model: Network, data: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(values.loss for values in model.losses(model(data)).values())


def hand_written_loss(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(data)
    labels = data["classes"]
    mask = torch.arange(labels.shape[1])[None, :] < data["classes:size1"][:, None]
    return F.cross_entropy(logits[mask], labels[mask], reduction="sum")


def build(impl: str, variant: str, dim: int) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    if impl == "network":
        specs = {"data": DataSpec(dim=SOURCE_DIM, sparse=True), "classes": DataSpec(dim=TARGET_DIM, sparse=True)}
        flat = flatten_subnetworks(network_dict(variant, dim))
        return Network(NetworkBuilder(flat, specs, default_target="classes").build(), specs), network_loss
    model = PlainDecoder(dim) if variant == "plain" else AttentionDecoder(dim)
    return model, hand_written_loss


def train_epoch(impl: str, variant: str, dim: int, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One epoch (after one warm-up batch); returns wall and CPU seconds and the first batch's loss per frame."""
    model, loss_fn = build(impl, variant, dim)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames = int(batches[0]["classes:size1"].sum())

    def step(data: dict[str, torch.Tensor]) -> float:
        optimizer.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    first = step(batches[0]) / frames
    wall, cpu = time.perf_counter(), time.process_time()
    for data in batches:
        step(data)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "first_loss": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("plain", "attention"), default="plain")
    parser.add_argument("--dim", type=int, default=128, help="units per layer")
    parser.add_argument("--batches", type=int, default=40, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    parser.add_argument("--reps", type=int, default=3, help="rounds (each runs both implementations)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = make_batches(args.batches, args.batch_size)
    frames = sum(int(b["classes:size1"].sum()) for b in batches)
    print(f"variant={args.variant} dim={args.dim} batches={args.batches} batch_size={args.batch_size} frames={frames}")
    results: dict[str, list[dict[str, float]]] = {"hand": [], "network": []}
    for rep in range(args.reps):
        order = ("hand", "network") if rep % 2 == 0 else ("network", "hand")
        for impl in order:
            results[impl].append(train_epoch(impl, args.variant, args.dim, batches))
        hand, net = results["hand"][-1], results["network"][-1]
        print(
            f"round={rep + 1} hand_wall={hand['wall']:.2f}s network_wall={net['wall']:.2f}s "
            f"ratio_wall={net['wall'] / hand['wall']:.3f} hand_cpu={hand['cpu']:.2f}s network_cpu={net['cpu']:.2f}s "
            f"ratio_cpu={net['cpu'] / hand['cpu']:.3f} first_loss hand={hand['first_loss']:.3f} "
            f"network={net['first_loss']:.3f}"
        )
    for key in ("wall", "cpu"):
        hand = statistics.median(r[key] for r in results["hand"])
        net = statistics.median(r[key] for r in results["network"])
        ratio = statistics.median(n[key] / h[key] for h, n in zip(results["hand"], results["network"]))
        print(f"median {key}: hand={hand:.2f}s network={net:.2f}s ratio={ratio:.3f} (the median of the rounds' ratios)")


if __name__ == "__main__":
    main()
