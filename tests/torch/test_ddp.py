"""reduce_type "grad" (DistributedDataParallel around the config's own module) against the explicit all_reduce and
one process accumulating, in forked processes of a gloo process group (see ``test_distributed.run_in_processes``)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from returnn.torch.engine import Engine
from tests.torch.test_distributed import run_in_processes

pytestmark = pytest.mark.slow

EXPLICIT = {"reduce_type": "grad_explicit"}


class TwoPartModel(torch.nn.Module):
    """The step calls ``encode`` and ``out`` itself, never ``forward``; ``unused`` never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(5, 8)
        self.out = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(3, 3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hidden(x))


def get_model(*, epoch: int, step: int, **kwargs: Any) -> torch.nn.Module:
    return TwoPartModel()


def train_step(*, model: TwoPartModel, data: dict[str, Any], run_ctx: Any, **kwargs: Any) -> None:
    logits = model.out(model.encode(data["data"].float()))
    mask = torch.arange(logits.shape[1])[None, :] < data["data:size1"][:, None]
    ce = torch.nn.functional.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=mask.sum())


def _train(make_config, run_dir: str, *, processes: int, **overrides: Any) -> dict[int, dict[str, torch.Tensor]]:
    """Train 2 epochs (by default one sequence per batch, plain SGD); the checkpoints' parameters by epoch."""
    options = dict(get_model=get_model, train_step=train_step, optimizer={"class": "sgd"}, max_seqs=1, dev=None)
    overrides = {**options, **overrides}
    if processes > 1:  # a hung collective fails after 30 s with the place it hung in, before the harness gives up
        overrides["torch_distributed"] = {"timeout_sec": 30, **overrides.get("torch_distributed", {})}
    config = make_config(run_dir=run_dir, **overrides)
    if processes == 1:
        Engine(config).train()
    else:
        run_in_processes(lambda: Engine(config).train(), options=None)
    prefix = config.value("model")
    return {epoch: torch.load(f"{prefix}.00{epoch}.pt", weights_only=True)["model"] for epoch in (1, 2)}


def _assert_close(a: dict[int, dict[str, torch.Tensor]], b: dict[int, dict[str, torch.Tensor]]) -> None:
    for epoch in a:
        assert a[epoch].keys() == b[epoch].keys()
        for name in a[epoch]:
            torch.testing.assert_close(a[epoch][name], b[epoch][name], rtol=1e-5, atol=1e-6, msg=f"{epoch} {name}")


def test_ddp_equals_the_explicit_all_reduce_and_one_process_accumulating(make_config):
    # 50 sequences in batches of 5 (batch_size 20, 4 frames each): 10 batches per epoch. With 2 processes, step k
    # trains the epoch's batches 2k and 2k + 1, and an update every 2 steps averages over 4 batches. One process
    # accumulating 4 steps sums the same gradients: with half the learning rate it makes the same updates (also the
    # one that spans the epoch boundary).
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 50, "seq_len": 4}
    common = dict(train=train, max_seqs=None, batch_size=20)
    ddp_options = {"options": {"find_unused_parameters": True}}
    one = _train(make_config, "one", processes=1, accum_grad_multiple_step=4, learning_rate=0.1, **common)
    ddp = _train(
        make_config, "ddp", processes=2, accum_grad_multiple_step=2, learning_rate=0.2, torch_distributed=ddp_options,
        **common,
    )  # fmt: skip
    explicit = _train(
        make_config, "explicit", processes=2, accum_grad_multiple_step=2, learning_rate=0.2,
        torch_distributed=EXPLICIT, **common,
    )  # fmt: skip
    assert not torch.equal(one[1]["out.weight"], one[2]["out.weight"])  # it trained
    assert torch.equal(one[2]["unused.weight"], ddp[2]["unused.weight"])  # initial values: the same seed
    _assert_close(ddp, one)
    _assert_close(ddp, explicit)


def test_ddp_uneven_last_round_and_bucket_views_equal_the_explicit_all_reduce(make_config, tmp_path):
    # 11 sequences: in the last step of each epoch only rank 0 has data; it is an update step, which rank 1 takes
    # part in with zero gradients, and the average is over the one process that had data (as with the explicit path)
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 11, "seq_len": 4}
    options = {"find_unused_parameters": True, "gradient_as_bucket_view": True}
    common = dict(train=train, accum_grad_multiple_step=2, learning_rate=0.2)
    ddp = _train(make_config, "ddp", processes=2, torch_distributed={"options": options}, **common)
    explicit = _train(make_config, "explicit", processes=2, torch_distributed=EXPLICIT, **common)
    _assert_close(ddp, explicit)
    optimizer_file = torch.load(tmp_path / "ddp/epoch.002.opt.pt", weights_only=True)
    assert optimizer_file["pending_grads_by_rank"] == [None, None]  # the last step was an update step
    assert os.path.exists(tmp_path / "ddp/epoch.002.pt")


def test_ddp_hooks_fire_when_the_step_calls_submodules(make_config):
    # Without find_unused_parameters, DDP's reducer (prepared around train_step) waits for the gradient of
    # 'unused', which never comes: torch's error shows that the hooks are active although the step never calls
    # the DDP wrapper.
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 4, "seq_len": 4}
    with pytest.raises(AssertionError, match=r"TrainingError: .* set torch_distributed = \{'options': \{'find_unused"):
        _train(make_config, "ddp", processes=2, train=train, learning_rate=0.1)


def test_ddp_static_graph_equals_the_explicit_all_reduce(make_config):
    # static_graph finds the unused parameter in the first step by itself
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 8, "seq_len": 4}
    common = dict(train=train, learning_rate=0.2)
    ddp = _train(make_config, "ddp", processes=2, torch_distributed={"options": {"static_graph": True}}, **common)
    _assert_close(ddp, _train(make_config, "explicit", processes=2, torch_distributed=EXPLICIT, **common))


def test_ddp_fp16_compression_stays_close_to_the_explicit_all_reduce(make_config):
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 8, "seq_len": 4}
    common = dict(train=train, learning_rate=0.2)
    ddp_options = {"options": {"find_unused_parameters": True}, "comm_hook": "fp16_compress"}
    ddp = _train(make_config, "ddp", processes=2, torch_distributed=ddp_options, **common)
    explicit = _train(make_config, "explicit", processes=2, torch_distributed=EXPLICIT, **common)
    assert not torch.equal(ddp[2]["out.weight"], explicit[2]["out.weight"])  # the gradients were rounded
    for epoch in ddp:
        for name, value in ddp[epoch].items():
            torch.testing.assert_close(value, explicit[epoch][name], rtol=1e-3, atol=1e-4)


def test_bf16_compression_on_gloo_is_a_clear_config_error(make_config):
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 4, "seq_len": 4}
    ddp_options = {"options": {"find_unused_parameters": True}, "comm_hook": "bf16_compress"}
    with pytest.raises(
        AssertionError,
        match=r"ConfigError: config key 'torch_distributed': comm_hook 'bf16_compress' cannot be used here \(.*\); use "
        r"another comm_hook or none",
    ):
        _train(make_config, "ddp", processes=2, train=train, learning_rate=0.1, torch_distributed=ddp_options)


class BackwardItself(Engine):
    """A CustomEngine whose run_train_step calls backward itself instead of self.updater.backward."""

    def run_train_step(self, data: dict[str, Any], run_ctx: Any) -> torch.Tensor:
        self.functions.train_step(model=self.model, data=data, run_ctx=run_ctx)
        run_ctx.total_loss().backward()
        return torch.zeros(2)


def test_a_step_that_bypasses_the_updater_backward_is_an_error_not_unsynchronised_gradients(make_config):
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 4, "seq_len": 4}
    config = make_config(
        get_model=get_model, train_step=train_step, optimizer={"class": "sgd"}, max_seqs=1, dev=None, train=train,
        torch_distributed={"options": {"find_unused_parameters": True}},
    )  # fmt: skip
    with pytest.raises(AssertionError, match=r"TrainingError: a train step computed gradients without passing"):
        run_in_processes(lambda: BackwardItself(config).train(), options=None)


class CountingAllReduces(Engine):
    """Counts DDP's gradient all-reduces, through a comm hook registered before the first step."""

    all_reduces = 0

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if epoch == 1:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            def count(state, bucket):  # no annotations: DDP checks them, and they are strings here
                CountingAllReduces.all_reduces += 1
                return default_hooks.allreduce_hook(state, bucket)

            self.data_parallel.ddp.ddp.register_comm_hook(None, count)


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_ddp_all_reduces_only_in_update_steps(make_config, accum):
    # 2 processes, 8 sequences of one batch each: 4 steps per process and epoch, an update every `accum` steps; the
    # small model's gradients fit one bucket, so one all-reduce per update and none in the steps between (no_sync)
    train = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 8, "seq_len": 4}
    config = make_config(
        get_model=get_model, train_step=train_step, optimizer={"class": "sgd"}, max_seqs=1, dev=None, train=train,
        accum_grad_multiple_step=accum, torch_distributed={"options": {"find_unused_parameters": True}},
    )  # fmt: skip

    def train_and_count() -> tuple[int, int]:
        engine = CountingAllReduces(config)
        engine.train()
        return CountingAllReduces.all_reduces, engine.global_step

    results = run_in_processes(train_and_count, options=None)
    assert results == [(2 * 4 // accum, 2 * 4)] * 2  # (all-reduces, steps) in 2 epochs, in both processes
